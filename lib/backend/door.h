/*
 * door.h — the one door between the heap and its backend (door.c).
 *
 * Every backend call goes through a vmm_call_* wrapper: it asserts the driver's
 * preconditions, counts the call for the statistics, traces it, and tests
 * whether an optional operation is offered, so that no caller ever touches the
 * backend's table. A door is a member of its heap; its owner fills b, verbose
 * and trace_heap. Nothing here takes the heap's lock or knows the heap.
 */
#ifndef GPUHEAP_BACKEND_DOOR_H
#define GPUHEAP_BACKEND_DOOR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

typedef enum vmm_op {
    VMM_OP_RESERVE, VMM_OP_UNRESERVE, VMM_OP_CREATE, VMM_OP_RELEASE, VMM_OP_MAP,
    VMM_OP_UNMAP, VMM_OP_SET_ACCESS, VMM_OP_FENCE, VMM_OP_MEMSET, VMM_OP_COPY,
    VMM_OP_EVENT_RECORD, VMM_OP_EVENT_QUERY, VMM_OP_EVENT_WAIT,
    VMM_OP_STAGING, VMM_OP_TRANSFER, VMM_OP_REGISTER, VMM_OP_DIRECT, /* lib/file */
    VMM_OP_GRANT, /* peer access (core/peer.c) */
    VMM_OP_EXPORT, VMM_OP_IMPORT, /* memory shared between processes (lib/ipc) */
    VMM_OP_COUNT
} vmm_op;

typedef struct vmm_counts {
    _Atomic uint64_t calls[VMM_OP_COUNT];
    _Atomic uint64_t errors;
    _Atomic uint64_t copy_bytes; /* bytes moved by successful copy calls (statistics, trace) */
} vmm_counts;

#define GH_MAX_PEERS 64 /* device ordinals a door can grant access to (one bit each) */

typedef struct vmm_door {
    vmm_backend *b;
    vmm_counts counts;
    int verbose;
    uintptr_t trace_heap;   /* the heap's name in trace records (its reservation), 0 before it has one */
    /* Other devices granted access to every extent, one bit per ordinal: changed
     * only with the owning heap's lock held (core/peer.c), read here without it. */
    _Atomic uint64_t peers;
    /* The fds kept for exported handles (caps.cache_exports): made on the first
     * export, NULL before. door.c's own. */
    struct vmm_export_cache *_Atomic exports;
} vmm_door;

#define VMM_EXPORT_CACHE 32 /* exported handles whose fd a door keeps: each an open fd of the process, per heap */

/* Opens the backend a configuration names (GPU_BACKEND_AUTO is CUDA, never a
 * silent fallback to host memory); the message of a refusal is vmm_error(). */
int vmm_open(const gpu_config_t *cfg, vmm_backend **out);
/* Closes the door's backend: every handle released, every range unreserved,
 * every kept export fd closed. */
void vmm_call_close(vmm_door *d);
/* gpu_capture_begin / gpu_capture_end: +1 or -1 on the process-wide count of
 * captures announced by the caller (never below 0). vmm_call_capturing answers
 * true while any is announced. */
void vmm_capture_announce(int delta);

int vmm_call_reserve(vmm_door *d, size_t size, size_t align, uintptr_t *va);
int vmm_call_unreserve(vmm_door *d, uintptr_t va, size_t size);
int vmm_call_create(vmm_door *d, size_t size, vmm_handle *out);
int vmm_call_release(vmm_door *d, vmm_handle h);
int vmm_call_map(vmm_door *d, uintptr_t va, size_t size, vmm_handle h);
int vmm_call_unmap(vmm_door *d, uintptr_t va, size_t size);
/* An unmap that undoes a mapping the caller just made, asked twice: nothing can
 * stand in for it when it is refused (the mapping would stay under addresses the
 * heap then calls vacant). */
int vmm_call_unmap_undo(vmm_door *d, uintptr_t va, size_t size);
/* Maps a handle back where the caller had just unmapped it, with its access:
 * each call asked twice, for the same reason (the books say "mapped" there). On
 * failure nothing stays mapped. */
int vmm_call_remap_undo(vmm_door *d, uintptr_t va, size_t size, vmm_handle h, gpu_prot_t prot);
int vmm_call_set_access(vmm_door *d, uintptr_t va, size_t size, gpu_prot_t prot);
int vmm_call_fence(vmm_door *d);
int vmm_call_memset(vmm_door *d, uintptr_t va, int byte, size_t size);
int vmm_call_copy(vmm_door *d, uintptr_t dst, uintptr_t src, size_t size);
int vmm_call_event_record(vmm_door *d, uintptr_t stream, vmm_event *out);
int vmm_call_event_query(vmm_door *d, vmm_event ev); /* GH_PENDING: not yet, and not an error */
int vmm_call_event_wait(vmm_door *d, vmm_event ev);
/* An event after all work issued so far on the device's context (the backend's
 * fence_record); GPU_ERR_CAPTURING, recording nothing, while vmm_call_capturing
 * would say true for stream; GPU_ERR_BACKEND when the backend has none. */
int vmm_call_fence_record(vmm_door *d, uintptr_t stream, vmm_event *out);
/* The context made to wait for all work issued so far on it (the backend's
 * fence_order): later work on any of its streams runs after it. With out, the
 * event recorded (for the caller to query and release). Refused as
 * vmm_call_fence_record is; counted as an event record. */
int vmm_call_fence_order(vmm_door *d, uintptr_t stream, vmm_event *out);
void vmm_call_event_release(vmm_door *d, vmm_event ev);
/* True when a capture is in progress that a fence would break: stream's (if not
 * 0), a blocking stream's, or one announced with gpu_capture_begin. */
bool vmm_call_capturing(vmm_door *d, uintptr_t stream);
/* True when stream itself (0: a blocking stream) is being captured. */
bool vmm_call_stream_capturing(vmm_door *d, uintptr_t stream);
/* True when the backend can record an event after all work of the device's
 * context (fence_record), so that a quarantine can be sealed without a fence. */
bool vmm_call_has_fence_record(const vmm_door *d);
/* True when the backend offers fence_order (free order GPU_FREE_ORDER_LEGACY). */
bool vmm_call_has_fence_order(const vmm_door *d);
/* Sets device's (not the owner's) access to a range of whole mappings. A
 * backend without a grant op refuses with GPU_ERR_NO_DRIVER. vmm_call_set_access
 * grants every peer in d->peers the owner's protection after the owner's own. */
int vmm_call_grant(vmm_door *d, uintptr_t va, size_t size, int device, gpu_prot_t prot);
int vmm_call_grant_peers(vmm_door *d, uintptr_t va, size_t size, uint64_t devices, gpu_prot_t prot);
/* File-backed memory (lib/file): staging memory, the copy queue, zero-copy
 * registration, direct reads. An op the backend does not offer (a NULL entry) is
 * refused with GPU_ERR_NO_DRIVER, never called. */
int vmm_call_staging_alloc(vmm_door *d, size_t size, void **out);
void vmm_call_staging_free(vmm_door *d, void *p, size_t size);
int vmm_call_queue_open(vmm_door *d, unsigned slots, vmm_queue **out);
void vmm_call_queue_close(vmm_door *d, vmm_queue *q);
int vmm_call_queue_upload(vmm_door *d, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size);
int vmm_call_queue_download(vmm_door *d, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size);
int vmm_call_queue_wait(vmm_door *d, vmm_queue *q, unsigned slot);
int vmm_call_register_read_only(vmm_door *d, void *host, size_t size, uintptr_t *dev);
int vmm_call_unregister(vmm_door *d, void *host);
bool vmm_call_has_direct(const vmm_door *d);
int vmm_call_direct_open(vmm_door *d, int fd, vmm_direct **out);
int vmm_call_direct_read(vmm_door *d, vmm_direct *dd, uint64_t offset, size_t size, uintptr_t dst);
void vmm_call_direct_close(vmm_door *d, vmm_direct *dd);
/* Memory shared between processes (lib/ipc): the backend's export_fd and
 * import_fd (backend.h has their contracts). vmm_call_exportable answers
 * GPU_OK when the backend offers export_fd and its caps say its memory is
 * exportable, else the refusal with caps.ipc_note as the backend's message
 * (vmm_error): GPU_ERR_NO_DRIVER where the driver refused exportable memory,
 * GPU_ERR_INVALID where the heap was opened with ipc = 0. An export is refused
 * so (counted as an error, never called); an import the backend does not offer
 * is refused with GPU_ERR_NO_DRIVER. */
int vmm_call_exportable(vmm_door *d);
/* An fd of handle h for another process, the caller's to close. Where the
 * backend's caps.cache_exports says so, the door keeps one fd per handle (at
 * most VMM_EXPORT_CACHE; a new one closes the oldest) and answers a later export
 * of the handle with a dup of it, no backend call: vmm_call_release and
 * vmm_call_close close the kept fd before the handle goes, so a handle number
 * the backend gives out again never finds the fd of the memory it named before. */
int vmm_call_export_fd(vmm_door *d, vmm_handle h, int *fd);
/* The fds d keeps for exported handles (for tests that count fds). */
unsigned vmm_call_exports_kept(vmm_door *d);
int vmm_call_import_fd(vmm_door *d, int fd, size_t size, vmm_handle *out);

#endif /* GPUHEAP_BACKEND_DOOR_H */
