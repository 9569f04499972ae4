/*
 * driver.c — the driver entry points gpuheap serves, as the driver's ABI.
 *
 * resolve.c hands these out in place of the driver's own functions (and they
 * are exported under the driver's names for programs linked with -lcuda). Each
 * one serves what belongs to gpuheap and calls the real function for the rest:
 *  - cuMemAlloc_v2: the current context's device heap; no context current, size
 *    0, or a failed allocation go to the driver, which answers as it would;
 *  - cuMemFree_v2, cuMemFreeAsync(_ptsz): heap memory is freed by gpuheap (its
 *    quarantine makes reuse safe without the sync cuMemFree implies, and without
 *    stream order for the async form); a double free or interior pointer inside
 *    a heap is CUDA_ERROR_INVALID_VALUE, as the driver says for a bad pointer;
 *  - cuMemGetInfo_v2: idle and quarantined heap memory counts as free, so a
 *    framework that sizes itself from free memory sees what it could allocate;
 *    under a cap (gpu_set_limit) the cap is the total (serve.c);
 *  - cuMemGetAddressRange_v2 and the RANGE_START_ADDR / RANGE_SIZE attributes:
 *    the bounds of the block the program allocated (the driver would report the
 *    extent behind it, since it knows only mappings), and for memory imported
 *    from another process through gpuheap, the bounds of the exported block;
 *  - cuCtxEnablePeerAccess / cuCtxDisablePeerAccess: the driver's answer, and on
 *    success the owning heap grants (or stops granting) the accessing device;
 *  - cuIpcGetMemHandle, cuIpcOpenMemHandle(_v2), cuIpcCloseMemHandle: heap
 *    memory and gpuheap's handles go through libgpuheap's IPC (ipc.c decides),
 *    the rest to the driver. Reached from a runtime hook that passed the call
 *    on (pl_ipc_in_runtime), they pass it on at once.
 */
#include "preload.h"

/* Calls the real entry point e with args, or answers NOT_INITIALIZED without a driver. */
#define REAL(e, type, ...) \
    (pl_real(e) ? ((type)pl_real(e))(__VA_ARGS__) : PL_CU_ERROR_NOT_INITIALIZED)

typedef pl_cu_result (*mem_alloc_fn)(pl_cu_ptr *, size_t);
typedef pl_cu_result (*mem_free_fn)(pl_cu_ptr);
typedef pl_cu_result (*mem_free_async_fn)(pl_cu_ptr, pl_cu_stream);
typedef pl_cu_result (*mem_get_info_fn)(size_t *, size_t *);
typedef pl_cu_result (*mem_get_address_range_fn)(pl_cu_ptr *, size_t *, pl_cu_ptr);
typedef pl_cu_result (*pointer_get_attribute_fn)(void *, int, pl_cu_ptr);
typedef pl_cu_result (*pointer_get_attributes_fn)(unsigned, int *, void **, pl_cu_ptr);
typedef pl_cu_result (*ctx_enable_peer_access_fn)(pl_cu_ctx, unsigned);
typedef pl_cu_result (*ctx_disable_peer_access_fn)(pl_cu_ctx);
typedef pl_cu_result (*ipc_get_mem_handle_fn)(void *, pl_cu_ptr);
typedef pl_cu_result (*ipc_open_mem_handle_fn)(pl_cu_ptr *, pl_ipc_handle, unsigned);
typedef pl_cu_result (*ipc_close_mem_handle_fn)(pl_cu_ptr);

PL_EXPORT pl_cu_result cuMemAlloc_v2(pl_cu_ptr *dptr, size_t size) {
    int dev;
    if (dptr && size && pl_current_device(&dev)) {
        gpu_heap_t *h = pl_heap_for_alloc(dev);
        bool oom = false;
        void *p = h ? pl_alloc(h, size, PL_VIA_DRIVER, &oom) : NULL;
        if (p) {
            *dptr = (pl_cu_ptr)(uintptr_t)p;
            return PL_CU_SUCCESS;
        }
        if (oom) return PL_CU_ERROR_OUT_OF_MEMORY; /* past the cap: the driver must not serve it either */
    }
    pl_count_forwarded_alloc();
    return REAL(PL_MEM_ALLOC, mem_alloc_fn, dptr, size);
}

/* The answer for a free that gpuheap handled, or -1 when the driver takes it. */
static int free_served(pl_cu_ptr dptr) {
    switch (pl_free((uintptr_t)dptr)) {
    case PL_FREE_DONE: return PL_CU_SUCCESS;
    case PL_FREE_INVALID: return PL_CU_ERROR_INVALID_VALUE;
    case PL_FREE_FOREIGN: break;
    }
    return -1;
}

PL_EXPORT pl_cu_result cuMemFree_v2(pl_cu_ptr dptr) {
    int r = dptr ? free_served(dptr) : -1;
    return r >= 0 ? r : REAL(PL_MEM_FREE, mem_free_fn, dptr);
}

PL_EXPORT pl_cu_result cuMemFreeAsync(pl_cu_ptr dptr, pl_cu_stream stream) {
    int r = dptr ? free_served(dptr) : -1;
    return r >= 0 ? r : REAL(PL_MEM_FREE_ASYNC, mem_free_async_fn, dptr, stream);
}

PL_EXPORT pl_cu_result cuMemFreeAsync_ptsz(pl_cu_ptr dptr, pl_cu_stream stream) {
    int r = dptr ? free_served(dptr) : -1;
    return r >= 0 ? r : REAL(PL_MEM_FREE_ASYNC_PTSZ, mem_free_async_fn, dptr, stream);
}

_Thread_local bool pl_info_adjusted;

PL_EXPORT pl_cu_result cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    pl_cu_result r = REAL(PL_MEM_GET_INFO, mem_get_info_fn, free_bytes, total_bytes);
    int dev;
    if (r == PL_CU_SUCCESS && free_bytes && pl_current_device(&dev)) {
        pl_info_adjusted = true;
        pl_add_idle(dev, free_bytes, total_bytes);
    }
    return r;
}

/* The block around p: 1 found (a live heap block, or a block imported through
 * gpuheap: the exported block's bounds), 0 heap memory but no live block, -1
 * neither. */
static int block_around(pl_cu_ptr p, uintptr_t *start, size_t *size) {
    if (pl_ipc_range((uintptr_t)p, start, size)) return 1;
    gpu_heap_t *h = pl_owner((uintptr_t)p);
    if (!h) return -1;
    return heap_block_containing(h, (uintptr_t)p, start, size) == GPU_OK ? 1 : 0;
}

PL_EXPORT pl_cu_result cuMemGetAddressRange_v2(pl_cu_ptr *base, size_t *size, pl_cu_ptr dptr) {
    uintptr_t start;
    size_t len;
    switch (block_around(dptr, &start, &len)) {
    case 1:
        if (base) *base = (pl_cu_ptr)start;
        if (size) *size = len;
        return PL_CU_SUCCESS;
    case 0: return PL_CU_ERROR_NOT_FOUND;
    default: return REAL(PL_MEM_GET_ADDRESS_RANGE, mem_get_address_range_fn, base, size, dptr);
    }
}

/* Writes a range attribute of the block [start, start+len) into data. */
static void range_attribute(int attribute, void *data, uintptr_t start, size_t len) {
    if (attribute == PL_CU_POINTER_ATTRIBUTE_RANGE_START_ADDR)
        *(pl_cu_ptr *)data = (pl_cu_ptr)start;
    else
        *(size_t *)data = len;
}

static bool is_range_attribute(int attribute) {
    return attribute == PL_CU_POINTER_ATTRIBUTE_RANGE_START_ADDR || attribute == PL_CU_POINTER_ATTRIBUTE_RANGE_SIZE;
}

PL_EXPORT pl_cu_result cuPointerGetAttribute(void *data, int attribute, pl_cu_ptr ptr) {
    uintptr_t start;
    size_t len;
    if (data && is_range_attribute(attribute)) {
        switch (block_around(ptr, &start, &len)) {
        case 1: range_attribute(attribute, data, start, len); return PL_CU_SUCCESS;
        case 0: return PL_CU_ERROR_INVALID_VALUE;
        default: break;
        }
    }
    return REAL(PL_POINTER_GET_ATTRIBUTE, pointer_get_attribute_fn, data, attribute, ptr);
}

PL_EXPORT pl_cu_result cuPointerGetAttributes(unsigned n, int *attributes, void **data, pl_cu_ptr ptr) {
    pl_cu_result r = REAL(PL_POINTER_GET_ATTRIBUTES, pointer_get_attributes_fn, n, attributes, data, ptr);
    if (r != PL_CU_SUCCESS || !attributes || !data) return r;
    uintptr_t start;
    size_t len;
    int found = -2; /* looked up at the first range attribute only */
    for (unsigned i = 0; i < n; i++) {
        if (!is_range_attribute(attributes[i]) || !data[i]) continue;
        if (found == -2) found = block_around(ptr, &start, &len);
        if (found == 1) range_attribute(attributes[i], data[i], start, len);
    }
    return r;
}

PL_EXPORT pl_cu_result cuCtxEnablePeerAccess(pl_cu_ctx peer, unsigned flags) {
    pl_cu_result r = REAL(PL_CTX_ENABLE_PEER_ACCESS, ctx_enable_peer_access_fn, peer, flags);
    int accessor, owner;
    if ((r == PL_CU_SUCCESS || r == PL_CU_ERROR_PEER_ACCESS_ALREADY_ENABLED) && pl_current_device(&accessor) &&
        pl_context_device(peer, &owner))
        pl_peer_enable(owner, accessor);
    return r;
}

PL_EXPORT pl_cu_result cuCtxDisablePeerAccess(pl_cu_ctx peer) {
    pl_cu_result r = REAL(PL_CTX_DISABLE_PEER_ACCESS, ctx_disable_peer_access_fn, peer);
    int accessor, owner;
    if (r == PL_CU_SUCCESS && pl_current_device(&accessor) && pl_context_device(peer, &owner))
        pl_peer_disable(owner, accessor);
    return r;
}

PL_EXPORT pl_cu_result cuIpcGetMemHandle(void *handle, pl_cu_ptr dptr) {
    int r = pl_ipc_get(handle, (uintptr_t)dptr, "cuIpcGetMemHandle");
    return r != PL_IPC_PASS ? r : REAL(PL_IPC_GET_MEM_HANDLE, ipc_get_mem_handle_fn, handle, dptr);
}

/* Both ABIs of cuIpcOpenMemHandle take the same arguments; e picks the real one. */
static pl_cu_result ipc_open(pl_entry e, pl_cu_ptr *pdptr, pl_ipc_handle handle, unsigned flags, const char *call) {
    uintptr_t p;
    int r = pl_ipc_open(pdptr ? &p : NULL, &handle, flags, call);
    if (r == PL_CU_SUCCESS) *pdptr = (pl_cu_ptr)p;
    if (r != PL_IPC_PASS) return r;
    bool decided_here = !pl_ipc_in_runtime;
    r = REAL(e, ipc_open_mem_handle_fn, pdptr, handle, flags);
    if (decided_here) pl_ipc_note_driver_refusal(r, call);
    return r;
}

PL_EXPORT pl_cu_result cuIpcOpenMemHandle_v2(pl_cu_ptr *pdptr, pl_ipc_handle handle, unsigned flags) {
    return ipc_open(PL_IPC_OPEN_MEM_HANDLE, pdptr, handle, flags, "cuIpcOpenMemHandle_v2");
}

PL_EXPORT pl_cu_result cuIpcOpenMemHandle(pl_cu_ptr *pdptr, pl_ipc_handle handle, unsigned flags) {
    return ipc_open(PL_IPC_OPEN_MEM_HANDLE_V1, pdptr, handle, flags, "cuIpcOpenMemHandle");
}

PL_EXPORT pl_cu_result cuIpcCloseMemHandle(pl_cu_ptr dptr) {
    int r = pl_ipc_close((uintptr_t)dptr);
    return r != PL_IPC_PASS ? r : REAL(PL_IPC_CLOSE_MEM_HANDLE, ipc_close_mem_handle_fn, dptr);
}
