/*
 * cuda_internal.h — the CUDA backend's own names, shared by its files and by
 * nothing else (the heap sees only backend.h).
 *
 * The backend is one record (cuda_backend) and one table of operations, split by
 * idea: cuda.c opens and closes the backend and holds what every operation needs
 * (the primary context made current around a call, errors named after the driver
 * call); vmm.c the virtual memory operations; events.c the fence, events and
 * capture queries; transfer.c memset and copy, staging, copy queues, zero-copy
 * registration and cuFile. The driver itself comes from loader.c (loader.h).
 */
#ifndef GPUHEAP_CUDA_INTERNAL_H
#define GPUHEAP_CUDA_INTERNAL_H

#include "backend/backend.h"
#include "backend/cuda/loader.h"

typedef struct cuda_backend {
    vmm_backend base; /* first, so a vmm_backend * is a cuda_backend * */
    vmm_ops ops;      /* cuda_ops less what this driver lacks (fence_record without cuCtxRecordEvent, fence_order without it or cuCtxWaitEvent) */
    const struct cuda_fns *f;
    CUdevice dev;
    CUcontext ctx; /* the device's primary context, retained while open */
    /* A non-blocking stream of our own, made at the first memset (transfer.c): a
     * memset there neither waits for nor joins a capture. */
    _Atomic(CUstream) quiet;
    CUresult (*ctx_record_event)(CUcontext, CUevent); /* cuCtxRecordEvent (CUDA 12.5+), or NULL */
    CUresult (*ctx_wait_event)(CUcontext, CUevent);   /* cuCtxWaitEvent (CUDA 12.5+), or NULL */
    /* requestedHandleTypes of every cuMemCreate: POSIX_FILE_DESCRIPTOR when the
     * memory is to be exportable (caps.exportable), else NONE. */
    CUmemAllocationHandleType handle_types;
    /* Events the heap gave back, kept for its next records (events.c): a record
     * re-records one of these instead of creating an event, and giving one back
     * makes no driver call. Guarded by spare_lock (a spinlock: a few loads and
     * stores are held under it). */
    _Atomic int spare_lock;
    unsigned nspare;
    CUevent spare[32];
} cuda_backend;

/* The CUDA backend behind a vmm_backend. */
static inline cuda_backend *cuda_of(vmm_backend *b) { return (cuda_backend *)b; }

/* cuda.c: what every operation needs. */
/* The gpu_error_t for a failed driver call with no more specific meaning. */
int cuda_code(CUresult r);
/* Writes "<call>(<args>): <driver error name>" as the thread's backend message (vmm_fail) and returns code. */
int cuda_fail(cuda_backend *cb, int code, CUresult r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Makes the primary context current for one operation (op names it in a
 * failure), in the relaxed capture mode. Pair with cuda_leave. */
int cuda_enter(cuda_backend *cb, const char *op);
/* Restores the caller's capture mode and context. */
void cuda_leave(cuda_backend *cb);

/* vmm.c: the virtual memory operations. */
/* The allocation properties of pinned memory on device dev, created with the
 * export handle types given (CU_MEM_HANDLE_TYPE_NONE: not exportable). */
CUmemAllocationProp cuda_prop(CUdevice dev, CUmemAllocationHandleType types);
int cuda_reserve(vmm_backend *b, size_t size, size_t align, uintptr_t *va);
int cuda_unreserve(vmm_backend *b, uintptr_t va, size_t size);
int cuda_create(vmm_backend *b, size_t size, vmm_handle *out);
int cuda_release(vmm_backend *b, vmm_handle h);
int cuda_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h);
int cuda_unmap(vmm_backend *b, uintptr_t va, size_t size);
int cuda_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot);
int cuda_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot);
int cuda_export_fd(vmm_backend *b, vmm_handle h, int *fd);
int cuda_import_fd(vmm_backend *b, int fd, size_t size, vmm_handle *out);
/* Decides once, at open, whether this backend's memory is exportable: on unless
 * cfg->ipc is 0, and only when the device takes POSIX_FILE_DESCRIPTOR handles
 * (a probe creates and releases one granule so, at every open). Fills handle_types, the caps'
 * exportable and ipc_note, and drops export_fd from the table when the driver
 * refuses. Primary context retained. */
void cuda_ipc_probe(cuda_backend *cb, const gpu_config_t *cfg);

/* known.c: what a process learns of a device once (its description), kept per
 * device ordinal for its later backends. */
/* Copies the kept device_name and granularity into caps; false when the device
 * was not described yet in this process. */
bool cuda_known_described(int ordinal, vmm_caps *caps);
void cuda_known_describe_keep(int ordinal, const vmm_caps *caps);

/* ordered.c: the program's non-blocking streams, whose captures fence_order must
 * not break. The list is locked across a fence_order's capture checks and its
 * record. */
void cuda_ordered_lock(void);
void cuda_ordered_unlock(void);
/* True when a listed stream is being captured (or cannot say). Lock held. */
bool cuda_ordered_capturing(const struct cuda_fns *f);

/* events.c: the fence, stream order and capture. */
int cuda_fence(vmm_backend *b);
int cuda_fence_record(vmm_backend *b, uintptr_t stream, vmm_event *out);
int cuda_fence_order(vmm_backend *b, uintptr_t stream, vmm_event *out);
int cuda_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out);
int cuda_event_query(vmm_backend *b, vmm_event ev);
int cuda_event_wait(vmm_backend *b, vmm_event ev);
void cuda_event_release(vmm_backend *b, vmm_event ev);
/* Destroys the spare events (closing; the primary context current). */
void cuda_events_drop_spares(cuda_backend *cb);
int cuda_capturing(vmm_backend *b, uintptr_t stream);

/* transfer.c: device memory operations and file-backed memory's transfers. */
int cuda_memset(vmm_backend *b, uintptr_t va, int byte, size_t size);
int cuda_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size);
int cuda_staging_alloc(vmm_backend *b, size_t size, void **out);
void cuda_staging_free(vmm_backend *b, void *p, size_t size);
int cuda_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out);
void cuda_queue_close(vmm_backend *b, vmm_queue *q);
int cuda_queue_upload(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size);
int cuda_queue_download(vmm_backend *b, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size);
int cuda_queue_wait(vmm_backend *b, vmm_queue *q, unsigned slot);
int cuda_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev);
int cuda_unregister(vmm_backend *b, void *host);
int cuda_direct_open(vmm_backend *b, int fd, vmm_direct **out);
int cuda_direct_read(vmm_backend *b, vmm_direct *d, uint64_t offset, size_t size, uintptr_t dst);
void cuda_direct_close(vmm_backend *b, vmm_direct *d);

#endif /* GPUHEAP_CUDA_INTERNAL_H */
