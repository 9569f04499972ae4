/*
 * ordered.c — the program's non-blocking streams, which legacy free order makes
 * wait as it makes the legacy stream wait.
 *
 * In legacy free order (gpu_set_free_order) a freed block is handed out again
 * once the legacy stream waits for the work issued before the free; a blocking
 * stream waits for the legacy stream, a non-blocking one does not. So the
 * interposer, which sees every stream a program creates (lib/preload/order.c),
 * lists the non-blocking ones here: fence_order makes each wait for its event
 * too (events.c), and a stream listed late first waits for all work issued on
 * the current context so far, for blocks released before it existed. A stream
 * being captured into a graph must not get such a wait (it would become a node
 * of the user's graph): while one is, fence_order records nothing and the heap
 * keeps to events. PyTorch creates such a stream even in a program that never
 * asks for one; without this list that alone sent it back to events.
 *
 * One mutex guards the list across a fence_order's waits and across a removal,
 * so that no wait is ever enqueued on a stream being destroyed. Process-wide:
 * the streams are the program's, of whatever device.
 */
#include <pthread.h>

#include "backend/cuda/cuda_internal.h"

#define ORDERED_MAX 64

static pthread_mutex_t ordered_lock = PTHREAD_MUTEX_INITIALIZER;
static CUstream ordered[ORDERED_MAX];
static unsigned nordered;

void cuda_ordered_lock(void) { pthread_mutex_lock(&ordered_lock); }
void cuda_ordered_unlock(void) { pthread_mutex_unlock(&ordered_lock); }

bool cuda_ordered_capturing(const struct cuda_fns *f) {
    for (unsigned i = 0; i < nordered; i++) {
        CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
        if (f->StreamIsCapturing(ordered[i], &st) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE) return true;
    }
    return false;
}

CUresult cuda_ordered_wait(const struct cuda_fns *f, CUevent ev) {
    CUresult r = CUDA_SUCCESS;
    for (unsigned i = 0; i < nordered && r == CUDA_SUCCESS; i++) r = f->StreamWaitEvent(ordered[i], ev, 0);
    return r;
}

int vmm_cuda_order_track(uintptr_t stream) {
    const struct cuda_fns *f;
    int rc = cuda_loader_get(&f);
    if (rc != GPU_OK) return rc;
    CUresult (*record)(CUcontext, CUevent) = (CUresult(*)(CUcontext, CUevent))cuda_loader_proc_newest("cuCtxRecordEvent");
    CUcontext ctx = NULL;
    if (!record || f->CtxGetCurrent(&ctx) != CUDA_SUCCESS || !ctx)
        return vmm_fail(NULL, GPU_ERR_BACKEND, "ordering a new stream: no cuCtxRecordEvent or no current context");
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = f->StreamIsCapturing(CU_STREAM_LEGACY, &st);
    if (r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT || (r == CUDA_SUCCESS && st != CU_STREAM_CAPTURE_STATUS_NONE))
        return GPU_ERR_CAPTURING; /* a context-wide record would break it */
    cuda_ordered_lock();
    if (nordered == ORDERED_MAX || cuda_ordered_capturing(f)) {
        cuda_ordered_unlock();
        return vmm_fail(NULL, GPU_ERR_BUSY, "ordering a new stream: %u streams listed already, or one is being captured",
                        nordered);
    }
    CUevent ev = NULL;
    r = f->EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
    if (r == CUDA_SUCCESS) r = record(ctx, ev);
    if (r == CUDA_SUCCESS) r = f->StreamWaitEvent((CUstream)stream, ev, 0);
    if (ev) f->EventDestroy(ev);
    if (r == CUDA_SUCCESS) ordered[nordered++] = (CUstream)stream;
    cuda_ordered_unlock();
    return r == CUDA_SUCCESS ? GPU_OK : vmm_fail(NULL, GPU_ERR_BACKEND, "ordering a new stream: %s", cuda_loader_error_name(r));
}

void vmm_cuda_order_untrack(uintptr_t stream) {
    cuda_ordered_lock();
    for (unsigned i = 0; i < nordered; i++)
        if (ordered[i] == (CUstream)stream) {
            ordered[i] = ordered[--nordered];
            break;
        }
    cuda_ordered_unlock();
}
