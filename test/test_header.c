/* test_header.c — gpuheap.h compiles on its own, with nothing included before it. */
#include "gpuheap.h"

int main(void) { return gpu_strerror(GPU_OK) ? 0 : 1; }
