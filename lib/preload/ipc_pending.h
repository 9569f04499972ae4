/*
 * ipc_pending.h — the IPC entry points of libgpuheap that branch `ipc` is
 * writing, declared here so that the interposer's hooks build before that branch
 * is merged. ipc_pending.c stands in for them (every handle foreign, every call
 * refused) until then; the merge removes both files, and the declarations come
 * from gpuheap.h and the library's own internal header.
 */
#ifndef GPUHEAP_PRELOAD_IPC_PENDING_H
#define GPUHEAP_PRELOAD_IPC_PENDING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gpu_ipc_mem_handle_t {
    unsigned char bytes[64];
} gpu_ipc_mem_handle_t;

/* ptr: the start of a live block. */
int gpu_ipc_get_mem_handle(gpu_ipc_mem_handle_t *handle, void *ptr);
/* flags 0 or 1 (lazy peer access). */
int gpu_ipc_open_mem_handle(void **ptr, gpu_ipc_mem_handle_t handle, unsigned flags);
int gpu_ipc_close_mem_handle(void *ptr);
/* GPU_OK when p is inside an imported block: the exported block's bounds here;
 * else GPU_ERR_NOT_OWNED. */
int gh_ipc_range(uintptr_t p, uintptr_t *start, size_t *size);
/* A gpuheap handle (magic and checksum). */
bool gh_ipc_handle_is_ours(const void *bytes64);

#endif /* GPUHEAP_PRELOAD_IPC_PENDING_H */
