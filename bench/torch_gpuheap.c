/*
 * torch_gpuheap.c — gpuheap as PyTorch's allocator, through
 * torch.cuda.memory.CUDAPluggableAllocator.
 *
 * PyTorch calls these two functions for every tensor allocation and free once the
 * pluggable allocator is installed, with no caching of its own in between. So a
 * training loop run over it shows gpuheap under a real framework's pattern, and
 * with GPUHEAP_TRACE=FILE it records that pattern as a trace (bench/traces/).
 * The stream is ignored: gpu_free's quarantine already waits for work issued
 * before the free, on every stream. torch_bench.py loads it.
 */
#include <stddef.h>
#include <sys/types.h>

#include "gpuheap.h"

__attribute__((visibility("default"))) void *gpuheap_torch_alloc(ssize_t size, int device, void *stream) {
    (void)device, (void)stream; /* PyTorch makes the device current before it calls */
    return gpu_malloc((size_t)size);
}

__attribute__((visibility("default"))) void gpuheap_torch_free(void *ptr, ssize_t size, int device, void *stream) {
    (void)size, (void)device, (void)stream;
    gpu_free(ptr);
}
