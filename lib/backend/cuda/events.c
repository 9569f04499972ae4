/*
 * events.c — the CUDA backend's view of GPU work in flight: the fence, events in
 * a stream's order, and whether a stream is being captured into a graph.
 *
 * The heap reuses freed memory only once the GPU work issued before the free is
 * done (DESIGN.md §4). The fence (cuCtxSynchronize) waits for all of it; an event
 * marks a point without waiting, either on one stream (cuEventRecord, for
 * stream-ordered frees) or after all the context's work (cuCtxRecordEvent, CUDA
 * 12.5+, which lets a quarantine be sealed without a fence). Events are created
 * without timing; one the heap gives back is kept (up to the spare table's size)
 * and re-recorded by a later record, which the driver allows (a record
 * overwrites the event's state): a cover then costs its record and its query,
 * not also a create and a destroy, each with the context pushed and popped.
 *
 * A fence or a sync during a graph capture can invalidate the capture, so the
 * heap asks first whether one is in progress; asking does not disturb it.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "backend/cuda/cuda_internal.h"
#include "common.h"

/* Waits for all work issued on the device's primary context. */
int cuda_fence(vmm_backend *b) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "fence");
    if (err) return err;
    CUresult r = cb->f->CtxSynchronize();
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuCtxSynchronize");
    return GPU_OK;
}

/* The spare events (cuda_backend): a spinlock around a small stack. */
static void spare_lock(cuda_backend *cb) {
    while (atomic_exchange_explicit(&cb->spare_lock, 1, memory_order_acquire)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}
static void spare_unlock(cuda_backend *cb) { atomic_store_explicit(&cb->spare_lock, 0, memory_order_release); }

/* A spare event, or NULL. */
static CUevent spare_take(cuda_backend *cb) {
    spare_lock(cb);
    CUevent ev = cb->nspare ? cb->spare[--cb->nspare] : NULL;
    spare_unlock(cb);
    return ev;
}

/* Keeps ev for a later record; false when the table is full. */
static bool spare_put(cuda_backend *cb, CUevent ev) {
    spare_lock(cb);
    bool kept = cb->nspare < sizeof cb->spare / sizeof cb->spare[0];
    if (kept) cb->spare[cb->nspare++] = ev;
    spare_unlock(cb);
    return kept;
}

void cuda_events_drop_spares(cuda_backend *cb) {
    for (CUevent ev; (ev = spare_take(cb));) cb->f->EventDestroy(ev);
}

/* Whether stream (0: any blocking stream, which the legacy stream reports as
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) is being captured. Querying does not
 * disturb a capture. The caller entered the context, or passed a stream. */
static bool stream_capturing(cuda_backend *cb, uintptr_t stream) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = cb->f->StreamIsCapturing(stream ? (CUstream)stream : CU_STREAM_LEGACY, &st);
    if (r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) return true;
    return r == CUDA_SUCCESS && st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* What a record covers: one stream's work, the whole context's, or the whole
 * context's with all work submitted to the context later made to wait for it. */
typedef enum record_kind { ON_STREAM, ON_CONTEXT, ON_CONTEXT_ORDERED } record_kind;

/* Records an event after the work issued so far — a spare one, else a new one:
 * on stream, or on every stream of the context (cuCtxRecordEvent) unless that
 * would break a capture of stream or of a blocking stream (asked in the same
 * entry: a cover costs one). A wait enqueued on an event follows the record
 * made before it, so a spare event re-recorded later leaves it alone. */
static int cuda_record(vmm_backend *b, record_kind kind, uintptr_t stream, vmm_event *out) {
    static const char *const what[] = {"event_record", "fence_record", "fence_order"};
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, what[kind]);
    if (err) return err;
    if (kind == ON_CONTEXT_ORDERED) cuda_ordered_lock();
    if (kind != ON_STREAM && ((stream && stream_capturing(cb, stream)) || stream_capturing(cb, 0) ||
                              (kind == ON_CONTEXT_ORDERED && cuda_ordered_capturing(cb->f)))) {
        if (kind == ON_CONTEXT_ORDERED) cuda_ordered_unlock();
        cuda_leave(cb);
        return GPU_ERR_CAPTURING;
    }
    CUevent ev = spare_take(cb);
    CUresult r = ev ? CUDA_SUCCESS : cb->f->EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
    const char *call = "cuEventCreate";
    if (r == CUDA_SUCCESS) {
        call = kind == ON_STREAM ? "cuEventRecord" : "cuCtxRecordEvent";
        r = kind == ON_STREAM ? cb->f->EventRecord(ev, (CUstream)stream) : cb->ctx_record_event(cb->ctx, ev);
        if (r == CUDA_SUCCESS && kind == ON_CONTEXT_ORDERED) call = "cuCtxWaitEvent", r = cb->ctx_wait_event(cb->ctx, ev);
        if (r != CUDA_SUCCESS) cb->f->EventDestroy(ev);
    }
    if (kind == ON_CONTEXT_ORDERED) cuda_ordered_unlock();
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "%s (%s, stream=%#" PRIxPTR ")", call, what[kind], stream);
    *out = (vmm_event)(uintptr_t)ev;
    return GPU_OK;
}

/* An event after all work of the context: a fence that does not block. In the
 * table only where the driver has cuCtxRecordEvent (vmm_cuda_open). */
int cuda_fence_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    gh_assert(cuda_of(b)->ctx_record_event, "fence_record is offered only by a driver with cuCtxRecordEvent");
    return cuda_record(b, ON_CONTEXT, stream, out);
}

/* The same, and all work submitted to the context from now on — on any stream,
 * the backend's own memset stream included, and on streams created later —
 * waits for it (cuCtxWaitEvent, measured on an H200 for a non-blocking stream
 * made before and after: ~0.25 us, whatever the number of streams). A block
 * freed before it can be handed out at once. The event is the caller's with
 * out (its completion says the work before it is done), else it goes back
 * among the spares: the wait keeps the record it saw. */
int cuda_fence_order(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    gh_assert(cuda_of(b)->ctx_record_event && cuda_of(b)->ctx_wait_event,
              "fence_order is offered only by a driver with cuCtxRecordEvent and cuCtxWaitEvent");
    vmm_event ev;
    int rc = cuda_record(b, ON_CONTEXT_ORDERED, stream, &ev);
    if (rc == GPU_OK && out) *out = ev;
    else if (rc == GPU_OK) cuda_event_release(b, ev);
    return rc;
}

/* An event on stream after the work issued so far. */
int cuda_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out) { return cuda_record(b, ON_STREAM, stream, out); }

/* GPU_OK when done, GH_PENDING when not yet. */
int cuda_event_query(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "event_query");
    if (err) return err;
    CUresult r = cb->f->EventQuery((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
    if (r == CUDA_SUCCESS) return GPU_OK;
    if (r == CUDA_ERROR_NOT_READY) return GH_PENDING;
    return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuEventQuery");
}

int cuda_event_wait(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "event_wait");
    if (err) return err;
    CUresult r = cb->f->EventSynchronize((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
    return r == CUDA_SUCCESS ? GPU_OK : cuda_fail(cb, GPU_ERR_BACKEND, r, "cuEventSynchronize");
}

/* Keeps the event for a later record (no driver call), or destroys it. */
void cuda_event_release(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    if (spare_put(cb, (CUevent)(uintptr_t)ev)) return;
    if (cuda_enter(cb, "event_release") != GPU_OK) return;
    cb->f->EventDestroy((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
}

/* Whether stream (0: any blocking stream, which the legacy stream reports as
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) is being captured. Querying does not
 * disturb a capture. */
int cuda_capturing(vmm_backend *b, uintptr_t stream) {
    cuda_backend *cb = cuda_of(b);
    if (stream) return stream_capturing(cb, stream); /* a stream names its context: one call, on gpu_free_async's path */
    if (cuda_enter(cb, "capturing") != GPU_OK) return 0;
    bool on = stream_capturing(cb, 0);
    cuda_leave(cb);
    return on;
}
