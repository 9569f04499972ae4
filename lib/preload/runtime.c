/*
 * runtime.c — the CUDA runtime's allocation calls, for programs that link
 * libcudart dynamically.
 *
 * PyTorch's libc10_cuda imports cudaMalloc@libcudart.so.13 through the dynamic
 * linker, so a definition here, loaded first, receives its calls without the
 * runtime's own bookkeeping in between. Each hook serves the current device's
 * heap (cudaGetDevice: the runtime's notion, which holds even before the runtime
 * made a context current) and calls the runtime's own function for everything
 * else, found by pl_cudart.
 *
 * These hooks and the driver wrappers do not count anything twice: the runtime
 * reaches the driver through the wrapped cuGetProcAddress, so a call the hook
 * passes on (cudaFree of a foreign pointer, cudaMemGetInfo) may pass through a
 * driver wrapper as well. A free handled here never reaches the driver;
 * cudaMemGetInfo adds idle heap memory only when the driver wrapper has not
 * already done it on this thread (a thread-local mark says so). Peer access is
 * recorded by both levels; adding a peer twice changes nothing.
 *
 * IPC memory handles (cudaIpcGetMemHandle, cudaIpcOpenMemHandle,
 * cudaIpcCloseMemHandle) are decided by ipc.c: heap memory and gpuheap's handles
 * are served by libgpuheap's IPC, the rest goes to the runtime, with
 * pl_ipc_in_runtime set so that the driver wrapper the runtime reaches passes
 * the call on without deciding it again. Event handles are not hooked.
 *
 * One difference a program may notice, the point of the exercise: cudaFree of
 * heap memory does not synchronize the device (the quarantine makes reuse safe).
 */
#include "preload.h"

typedef pl_cuda_error (*malloc_fn)(void **, size_t);
typedef pl_cuda_error (*free_fn)(void *);
typedef pl_cuda_error (*free_async_fn)(void *, pl_cu_stream);
typedef pl_cuda_error (*mem_get_info_fn)(size_t *, size_t *);
typedef pl_cuda_error (*ipc_get_mem_handle_fn)(void *, void *);
typedef pl_cuda_error (*ipc_open_mem_handle_fn)(void **, pl_ipc_handle, unsigned);
typedef pl_cuda_error (*ipc_close_mem_handle_fn)(void *);
typedef pl_cuda_error (*enable_peer_fn)(int, unsigned);
typedef pl_cuda_error (*disable_peer_fn)(int);
typedef pl_cuda_error (*get_device_fn)(int *);

/* The runtime's function `name`, looked up once it is loaded. */
#define CUDART(type, name)                                                            \
    ({                                                                                \
        static void *_Atomic slot_;                                                   \
        (type) pl_cudart_cached(&slot_, name);                                        \
    })

/* The runtime's current device; false when the runtime cannot say. */
static bool runtime_device(int *dev) {
    get_device_fn get = CUDART(get_device_fn, "cudaGetDevice");
    return get && get(dev) == PL_CUDA_SUCCESS;
}

PL_EXPORT pl_cuda_error cudaMalloc(void **ptr, size_t size) {
    int dev;
    if (ptr && size && runtime_device(&dev)) {
        gpu_heap_t *h = pl_heap_for_alloc(dev);
        bool oom = false;
        void *p = h ? pl_alloc(h, size, PL_VIA_RUNTIME, &oom) : NULL;
        if (p) {
            *ptr = p;
            return PL_CUDA_SUCCESS;
        }
        if (oom) return PL_CUDA_ERROR_MEMORY_ALLOCATION; /* past the cap: the driver must not serve it either */
    }
    malloc_fn real = CUDART(malloc_fn, "cudaMalloc");
    if (!real) return PL_CUDA_ERROR_INITIALIZATION;
    pl_count_forwarded_alloc();
    return real(ptr, size);
}

/* The answer for a free gpuheap handled, or -1 when the runtime takes it. */
static int free_served(void *ptr) {
    switch (ptr ? pl_free((uintptr_t)ptr) : PL_FREE_FOREIGN) {
    case PL_FREE_DONE: return PL_CUDA_SUCCESS;
    case PL_FREE_INVALID: return PL_CUDA_ERROR_INVALID_VALUE;
    case PL_FREE_FOREIGN: break;
    }
    return -1;
}

PL_EXPORT pl_cuda_error cudaFree(void *ptr) {
    int r = free_served(ptr); /* cudaFree(NULL) goes on: programs call it to create the context */
    if (r >= 0) return r;
    free_fn real = CUDART(free_fn, "cudaFree");
    return real ? real(ptr) : PL_CUDA_ERROR_INITIALIZATION;
}

PL_EXPORT pl_cuda_error cudaFreeAsync(void *ptr, pl_cu_stream stream) {
    int r = free_served(ptr);
    if (r >= 0) return r;
    free_async_fn real = CUDART(free_async_fn, "cudaFreeAsync");
    return real ? real(ptr, stream) : PL_CUDA_ERROR_INITIALIZATION;
}

PL_EXPORT pl_cuda_error cudaFreeAsync_ptsz(void *ptr, pl_cu_stream stream) {
    int r = free_served(ptr);
    if (r >= 0) return r;
    free_async_fn real = CUDART(free_async_fn, "cudaFreeAsync_ptsz");
    return real ? real(ptr, stream) : PL_CUDA_ERROR_INITIALIZATION;
}

PL_EXPORT pl_cuda_error cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    mem_get_info_fn real = CUDART(mem_get_info_fn, "cudaMemGetInfo");
    if (!real) return PL_CUDA_ERROR_INITIALIZATION;
    pl_info_adjusted = false;
    pl_cuda_error r = real(free_bytes, total_bytes);
    int dev;
    if (r == PL_CUDA_SUCCESS && free_bytes && !pl_info_adjusted && runtime_device(&dev))
        pl_add_idle(dev, free_bytes, total_bytes);
    return r;
}

/* Runs call, the runtime's own IPC function, with the driver wrappers told that
 * this call has been decided (and counted) here already. */
#define IN_RUNTIME(call)                           \
    ({                                             \
        bool was_ = pl_ipc_in_runtime;             \
        pl_ipc_in_runtime = true;                  \
        pl_cuda_error r_ = (call);                 \
        pl_ipc_in_runtime = was_;                  \
        r_;                                        \
    })

PL_EXPORT pl_cuda_error cudaIpcGetMemHandle(void *handle, void *ptr) {
    int r = pl_ipc_get(handle, (uintptr_t)ptr, "cudaIpcGetMemHandle");
    if (r != PL_IPC_PASS) return r;
    ipc_get_mem_handle_fn real = CUDART(ipc_get_mem_handle_fn, "cudaIpcGetMemHandle");
    return real ? IN_RUNTIME(real(handle, ptr)) : PL_CUDA_ERROR_INITIALIZATION;
}

PL_EXPORT pl_cuda_error cudaIpcOpenMemHandle(void **ptr, pl_ipc_handle handle, unsigned flags) {
    uintptr_t p;
    int r = pl_ipc_open(ptr ? &p : NULL, &handle, flags, "cudaIpcOpenMemHandle");
    if (r == PL_CUDA_SUCCESS) *ptr = (void *)p;
    if (r != PL_IPC_PASS) return r;
    ipc_open_mem_handle_fn real = CUDART(ipc_open_mem_handle_fn, "cudaIpcOpenMemHandle");
    if (!real) return PL_CUDA_ERROR_INITIALIZATION;
    r = IN_RUNTIME(real(ptr, handle, flags));
    pl_ipc_note_driver_refusal(r, "cudaIpcOpenMemHandle");
    return r;
}

PL_EXPORT pl_cuda_error cudaIpcCloseMemHandle(void *ptr) {
    int r = pl_ipc_close((uintptr_t)ptr);
    if (r != PL_IPC_PASS) return r;
    ipc_close_mem_handle_fn real = CUDART(ipc_close_mem_handle_fn, "cudaIpcCloseMemHandle");
    return real ? IN_RUNTIME(real(ptr)) : PL_CUDA_ERROR_INITIALIZATION;
}

PL_EXPORT pl_cuda_error cudaDeviceEnablePeerAccess(int peer, unsigned flags) {
    enable_peer_fn real = CUDART(enable_peer_fn, "cudaDeviceEnablePeerAccess");
    if (!real) return PL_CUDA_ERROR_INITIALIZATION;
    pl_cuda_error r = real(peer, flags);
    int dev;
    if ((r == PL_CUDA_SUCCESS || r == PL_CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) && runtime_device(&dev))
        pl_peer_enable(peer, dev);
    return r;
}

PL_EXPORT pl_cuda_error cudaDeviceDisablePeerAccess(int peer) {
    disable_peer_fn real = CUDART(disable_peer_fn, "cudaDeviceDisablePeerAccess");
    if (!real) return PL_CUDA_ERROR_INITIALIZATION;
    pl_cuda_error r = real(peer);
    int dev;
    if (r == PL_CUDA_SUCCESS && runtime_device(&dev)) pl_peer_disable(peer, dev);
    return r;
}
