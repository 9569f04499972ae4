/*
 * plugin.c — gpuheap as a framework's allocator, without LD_PRELOAD.
 *
 * Frameworks that take an allocator as a pair of C functions in a shared object
 * can use libgpuheap-preload.so directly (loading it with dlopen interposes
 * nothing: its cudaMalloc and dlsym stay out of the program's way):
 *  - PyTorch's CUDAPluggableAllocator calls
 *      void *alloc(ssize_t size, int device, cudaStream_t stream)
 *      void free(void *ptr, ssize_t size, int device, cudaStream_t stream)
 *    → gpu_torch_alloc / gpu_torch_free;
 *  - CuPy's CFunctionAllocator(param, malloc_func, free_func, owner) calls
 *      void *malloc_func(void *param, size_t size, int device_id)
 *      void free_func(void *param, void *ptr, int device_id)
 *    → gpu_cupy_malloc / gpu_cupy_free.
 * Both allocate from the default heap of the device named (whatever backend the
 * configuration chooses, as gpu_malloc does) — inside a region of the calling
 * thread, from its tag's heap there — at cudaMalloc's alignment so that
 * results match a cudaMalloc run's bit for bit, and free through gpu_free, whose
 * quarantine makes a free safe while the stream still uses the block. Errors
 * are NULL returns and gpuheap's error path (GPUHEAP_VERBOSE=1 prints them); a
 * pointer no heap owns is reported, never passed anywhere.
 */
#include <sys/types.h>

#include "preload.h"

/* size bytes on device at cudaMalloc's alignment, or NULL. */
static void *plugin_alloc(size_t size, int device) {
    gpu_heap_t *h = gh_heap_for_alloc(device);
    return h ? pl_alloc(h, size, PL_VIA_PLUGIN, NULL) : NULL;
}

PL_EXPORT void *gpu_torch_alloc(ssize_t size, int device, void *stream) {
    (void)stream;
    if (size < 0) {
        gh_error(GPU_ERR_INVALID, "gpu_torch_alloc: negative size %zd", size);
        return NULL;
    }
    return plugin_alloc((size_t)size, device);
}

/* Frees a block the entry points handed out; anything else is an error. */
static void plugin_free(void *ptr, const char *call) {
    if (ptr && pl_free((uintptr_t)ptr) == PL_FREE_FOREIGN)
        gh_error(GPU_ERR_NOT_OWNED, "%s(%p): the pointer is not in any gpuheap heap", call, ptr);
}

PL_EXPORT void gpu_torch_free(void *ptr, ssize_t size, int device, void *stream) {
    (void)size, (void)device, (void)stream;
    plugin_free(ptr, "gpu_torch_free");
}

PL_EXPORT void *gpu_cupy_malloc(void *param, size_t size, int device_id) {
    (void)param;
    return plugin_alloc(size, device_id);
}

PL_EXPORT void gpu_cupy_free(void *param, void *ptr, int device_id) {
    (void)param, (void)device_id;
    plugin_free(ptr, "gpu_cupy_free");
}
