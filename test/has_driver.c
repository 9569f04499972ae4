/*
 * has_driver.c — exit status 0 when the CUDA driver (libcuda.so.1) loads here,
 * 1 when it does not. The tools' tests check what a machine without a driver
 * shows only where there is none (elsewhere that part is skipped).
 */
#include <dlfcn.h>

int main(void) { return dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL) ? 0 : 1; }
