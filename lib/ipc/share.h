/*
 * share.h — heap blocks shared between processes (export.c, import.c), over the
 * transport of ipc.h: what the public gpu_ipc_* calls (lib/api/ipc.c) and the
 * interposer (lib/preload: cudaIpc*, cuIpc*) call.
 *
 * An exporter gives a live block an export token (core/export.c) and a handle
 * that names its process's transport server and the token; the server's lookup
 * (export.c) answers an importer of the same uid with an fd per extent behind
 * the block. An importer maps those extents at a fresh reservation of its own
 * backend, in the same layout, and hands out the block's address there. Opens of
 * one handle are counted: they share one mapping until the last close.
 *
 * Errors follow error.h: GPU_OK or a negative gpu_error_t with the reason noted
 * (gh_note); the public entry point reports it. Every call may be made from any
 * thread.
 */
#ifndef GPUHEAP_IPC_SHARE_H
#define GPUHEAP_IPC_SHARE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/heap.h"
#include "ipc/handle.h"

/* ---- export.c: the exporting side ---------------------------------------------- */

/* Makes the handle of the live block at ptr (its first byte) of heap h: the
 * block's export token (the same for every export of one live block), the
 * transport server of this process (started on first use), the block's size.
 * Errors: GPU_ERR_NOT_LIVE (not a live block's start: freed, interior),
 * GPU_ERR_INVALID (a gpu_reserve range; h's memory is not exportable, ipc = 0),
 * GPU_ERR_NO_DRIVER (the driver refused exportable memory), GPU_ERR_BUSY,
 * GPU_ERR_BACKEND (no server: socket, thread or random bits). */
int ipc_export(gpu_heap_t *h, void *ptr, unsigned char out[IPC_HANDLE_BYTES]);

/* ---- import.c: the importing side ---------------------------------------------- */

/* Opens the block a handle names, mapped through h's backend (the caller's
 * device's default heap), and sets *out to its address in this process. A
 * handle open already (same exporter, server and token) gives the same address
 * and counts one more open. Errors: GPU_ERR_INVALID (not a gpuheap handle,
 * another uid's, the exporter is gone or refused: the block was freed since,
 * the token is unknown; the extents do not fit this backend's granularity),
 * GPU_ERR_OUT_OF_VA, GPU_ERR_OUT_OF_MEMORY, GPU_ERR_BACKEND. */
int ipc_import_open(gpu_heap_t *h, const unsigned char handle[IPC_HANDLE_BYTES], void **out);

/* One close of an address ipc_import_open gave: the last one waits for the
 * device (a fence: no GPU work of this process may still use it), unmaps,
 * releases the imported handles and the reservation. Errors: GPU_ERR_INVALID
 * (not an open import's address); GPU_ERR_CAPTURING, or the backend's refusal
 * of the fence (the import stays open, as before the call); GPU_ERR_BACKEND when an unmap or
 * release is refused (the import is closed, what was refused is leaked). */
int ipc_import_close(void *ptr);

/* For the interposer: GPU_OK when p lies inside an open import, with the
 * exported block's bounds in this process (the address ipc_import_open gave and
 * the block's size); GPU_ERR_NOT_OWNED otherwise (nothing noted: a cheap
 * question, asked of any pointer). Takes no heap lock; answers at once when
 * nothing is open. */
int gh_ipc_range(uintptr_t p, uintptr_t *start, size_t *size);

/* For the interposer: true when the 64 bytes are a gpuheap handle (its magic
 * and checksum), so that any other cudaIpcMemHandle_t goes to the driver. */
bool gh_ipc_handle_is_ours(const void *bytes64);

#endif /* GPUHEAP_IPC_SHARE_H */
