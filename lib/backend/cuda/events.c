/*
 * events.c — the CUDA backend's view of GPU work in flight: the fence, events in
 * a stream's order, and whether a stream is being captured into a graph.
 *
 * The heap reuses freed memory only once the GPU work issued before the free is
 * done (DESIGN.md §4). The fence (cuCtxSynchronize) waits for all of it; an event
 * marks a point without waiting, either on one stream (cuEventRecord, for
 * stream-ordered frees) or after all the context's work (cuCtxRecordEvent, CUDA
 * 12.5+, which lets a quarantine be sealed without a fence). Events are created
 * per record, without timing, and destroyed when the heap gives them back.
 *
 * A fence or a sync during a graph capture can invalidate the capture, so the
 * heap asks first whether one is in progress; asking does not disturb it.
 */
#include <inttypes.h>

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

/* Records a new event after the work issued so far: on stream, or, with
 * whole_context, on every stream of the context (cuCtxRecordEvent). */
static int cuda_record(vmm_backend *b, bool whole_context, uintptr_t stream, vmm_event *out) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, whole_context ? "fence_record" : "event_record");
    if (err) return err;
    CUevent ev = NULL;
    CUresult r = cb->f->EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
    if (r == CUDA_SUCCESS) {
        r = whole_context ? cb->ctx_record_event(cb->ctx, ev) : cb->f->EventRecord(ev, (CUstream)stream);
        if (r != CUDA_SUCCESS) cb->f->EventDestroy(ev);
    }
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) {
        if (whole_context) return cuda_fail(cb, cuda_code(r), r, "cuCtxRecordEvent");
        return cuda_fail(cb, cuda_code(r), r, "cuEventRecord(stream=%#" PRIxPTR ")", stream);
    }
    *out = (vmm_event)(uintptr_t)ev;
    return GPU_OK;
}

/* An event after all work of the context: a fence that does not block. In the
 * table only where the driver has cuCtxRecordEvent (vmm_cuda_open). */
int cuda_fence_record(vmm_backend *b, vmm_event *out) {
    gh_assert(cuda_of(b)->ctx_record_event, "fence_record is offered only by a driver with cuCtxRecordEvent");
    return cuda_record(b, true, 0, out);
}

/* An event on stream after the work issued there so far. */
int cuda_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out) { return cuda_record(b, false, stream, out); }

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

void cuda_event_release(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    if (cuda_enter(cb, "event_release") != GPU_OK) return;
    cb->f->EventDestroy((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
}

/* Whether stream (0: any blocking stream, which the legacy stream reports as
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) is being captured. Querying does not
 * disturb a capture. */
int cuda_capturing(vmm_backend *b, uintptr_t stream) {
    cuda_backend *cb = cuda_of(b);
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r;
    if (stream) { /* a stream names its context: one call, on gpu_free_async's path */
        r = cb->f->StreamIsCapturing((CUstream)stream, &st);
    } else {
        if (cuda_enter(cb, "capturing") != GPU_OK) return 0;
        r = cb->f->StreamIsCapturing(CU_STREAM_LEGACY, &st);
        cuda_leave(cb);
    }
    if (r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) return 1;
    return r == CUDA_SUCCESS && st != CU_STREAM_CAPTURE_STATUS_NONE;
}
