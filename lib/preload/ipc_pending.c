/*
 * ipc_pending.c — stand-ins for libgpuheap's IPC entry points (ipc_pending.h)
 * until branch `ipc` is merged: no handle is gpuheap's, no pointer is imported,
 * and an export is refused, so the interposer's hooks pass everything on to the
 * driver except the export of heap memory. Removed by the merge.
 */
#include "preload/ipc_pending.h"
#include "error.h"

int gpu_ipc_get_mem_handle(gpu_ipc_mem_handle_t *handle, void *ptr) {
    (void)handle;
    return gh_error(GPU_ERR_INVALID, "gpu_ipc_get_mem_handle(%p): IPC is not in this build yet", ptr);
}

int gpu_ipc_open_mem_handle(void **ptr, gpu_ipc_mem_handle_t handle, unsigned flags) {
    (void)ptr, (void)handle, (void)flags;
    return gh_error(GPU_ERR_INVALID, "gpu_ipc_open_mem_handle: IPC is not in this build yet");
}

int gpu_ipc_close_mem_handle(void *ptr) {
    return gh_error(GPU_ERR_INVALID, "gpu_ipc_close_mem_handle(%p): IPC is not in this build yet", ptr);
}

int gh_ipc_range(uintptr_t p, uintptr_t *start, size_t *size) {
    (void)p, (void)start, (void)size;
    return GPU_ERR_NOT_OWNED;
}

bool gh_ipc_handle_is_ours(const void *bytes64) {
    (void)bytes64;
    return false;
}
