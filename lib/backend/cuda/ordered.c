/*
 * ordered.c — the program's non-blocking streams, whose captures legacy free
 * order must see before it fences.
 *
 * In legacy free order (gpu_set_free_order) a freed block is handed out again
 * once the context waits for the work issued before the free: fence_order
 * records an event after all of the context's work and makes all work submitted
 * to the context from then on wait for it (cuCtxRecordEvent, cuCtxWaitEvent:
 * every stream, blocking or not, and streams created later; events.c). Either
 * call breaks a stream capture in progress anywhere in the context, so a fence
 * first asks: the legacy stream answers for the blocking streams, and the
 * non-blocking ones the interposer sees created (lib/preload/order.c) are listed
 * here to be asked one by one. While one is captured, fence_order records
 * nothing and the heap keeps to events. PyTorch creates such a stream even in a
 * program that never asks for one.
 *
 * One mutex guards the list across a fence_order's questions and record and
 * across a removal, so that no question reaches a stream being destroyed.
 * Process-wide: the streams are the program's, of whatever device.
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

int vmm_cuda_order_track(uintptr_t stream) {
    cuda_ordered_lock();
    bool room = nordered < ORDERED_MAX;
    if (room) ordered[nordered++] = (CUstream)stream;
    cuda_ordered_unlock();
    return room ? GPU_OK : vmm_fail(NULL, GPU_ERR_BUSY, "listing a new stream: %u streams listed already", nordered);
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
