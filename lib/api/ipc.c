/*
 * ipc.c — the public entry points for sharing blocks between processes
 * (gpu_ipc_*, include/gpuheap.h): argument checks, the heap, errors.
 *
 * An export finds its heap from the pointer, as gpu_free does, whatever device
 * is current; an import maps through the backend of the calling thread's
 * current device's default heap, as cudaIpcOpenMemHandle maps into the current
 * context. The work is lib/ipc's (share.h); this file only checks, finds and
 * reports, once every lock is released.
 */
#include <string.h>

#include "api/api.h"
#include "error.h"
#include "ipc/share.h"
#include "obs/trace.h"

_Static_assert(sizeof(gpu_ipc_mem_handle_t) == IPC_HANDLE_BYTES, "a public handle holds the wire image");

/* The lazy-peer-access flag of cudaIpcOpenMemHandle: accepted, with no effect. */
#define IPC_FLAG_LAZY_PEER 1u

int gpu_ipc_get_mem_handle(gpu_ipc_mem_handle_t *handle, void *ptr) {
    if (!handle || !ptr) return gh_error(GPU_ERR_INVALID, "gpu_ipc_get_mem_handle(%p, %p): NULL argument", (void *)handle, ptr);
    gpu_heap_t *h = registry_find_ptr((uintptr_t)ptr);
    if (!h) {
        uintptr_t start;
        bool imported = gh_ipc_range((uintptr_t)ptr, &start, NULL) == GPU_OK;
        return gh_error(GPU_ERR_NOT_OWNED, "gpu_ipc_get_mem_handle(%p): %s", ptr,
                        imported ? "an imported block: only the process that allocated it can export it"
                                 : "the pointer is not in any gpuheap heap");
    }
    unsigned char bytes[IPC_HANDLE_BYTES];
    int rc = ipc_export(h, ptr, bytes);
    if (rc != GPU_OK) return gh_report(gh_note_context(rc, "gpu_ipc_get_mem_handle(%p)", ptr));
    memcpy(handle->bytes, bytes, sizeof bytes);
    return gh_ok();
}

int gpu_ipc_open_mem_handle(void **ptr, gpu_ipc_mem_handle_t handle, unsigned flags) {
    if (!ptr) return gh_error(GPU_ERR_INVALID, "gpu_ipc_open_mem_handle: ptr is NULL");
    if (flags & ~IPC_FLAG_LAZY_PEER)
        return gh_error(GPU_ERR_INVALID, "gpu_ipc_open_mem_handle: unknown flags %#x (0 or 1)", flags);
    gpu_heap_t *h = gpu_heap_default();
    if (!h) return gpu_last_error();
    void *p = NULL;
    uint64_t t0 = trace_begin();
    int rc = ipc_import_open(h, handle.bytes, &p);
    if (t0) {
        size_t size = 0;
        if (rc == GPU_OK) (void)gh_ipc_range((uintptr_t)p, NULL, &size);
        trace_record(t0, &(trace_event){.op = TRACE_IPC_OPEN, .heap = h->base, .size = size, .result = (uintptr_t)p,
                                         .rc = (int8_t)rc});
    }
    if (rc != GPU_OK) return gh_report(gh_note_context(rc, "gpu_ipc_open_mem_handle"));
    *ptr = p;
    return gh_ok();
}

int gpu_ipc_close_mem_handle(void *ptr) {
    if (!ptr) return gh_error(GPU_ERR_INVALID, "gpu_ipc_close_mem_handle(NULL)");
    uint64_t t0 = trace_begin();
    int rc = ipc_import_close(ptr);
    if (t0) trace_record(t0, &(trace_event){.op = TRACE_IPC_CLOSE, .addr = (uintptr_t)ptr, .rc = (int8_t)rc});
    if (rc != GPU_OK) return gh_report(gh_note_context(rc, "gpu_ipc_close_mem_handle"));
    return gh_ok();
}
