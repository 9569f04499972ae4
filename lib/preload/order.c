/*
 * order.c — the free order under the interposer: freed blocks handed out at once
 * while the program's GPU work is ordered by the legacy stream, and events from
 * the moment it may not be.
 *
 * An unchanged program calls cudaFree, which waits for the whole device; gpuheap
 * does not stop the CPU, so in event order (the library's default) a freed block
 * waits in the quarantine until an event shows that the GPU passed the free — and
 * a training loop's GPU runs tens of milliseconds behind, so the heap maps new
 * memory meanwhile (a CNN under gpuheap-run held twice its live peak). A program
 * whose GPU work runs in the device's primary context (PyTorch's, CuPy's, most
 * CUDA samples) needs no CPU wait at all: once the context waits for the work
 * issued before a free (cuCtxWaitEvent), every later kernel on any of its streams
 * runs after it. So the interposer starts the process in legacy free order
 * (gpu_set_free_order; GPUHEAP_FREE_ORDER=event keeps events) and watches the
 * streams: a non-blocking stream (cuStreamCreate/WithPriority with
 * CU_STREAM_NON_BLOCKING, which cudaStreamCreateWithFlags reaches, as does NCCL)
 * is listed with the backend, which asks it before each fence whether it is
 * being captured — the context-wide record would break its capture
 * (lib/backend/cuda/ordered.c); cuStreamDestroy takes it off. What the context
 * wait does not cover or the list cannot hold — a context of the program's own
 * (cuCtxCreate), a green context's stream, a 65th non-blocking stream — sends the
 * order back to events before the call reaches the driver, which fences the
 * heaps once: nothing issued before can overlap the new work. No process loses
 * its memory to this: a block is still reused only where the GPU's own ordering
 * keeps the old work first.
 *
 * Only where the interposer is the process's dlsym (LD_PRELOAD) does it see
 * every stream created; loaded later by dlopen (a framework's pluggable
 * allocator) it leaves the order alone.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "preload.h"

static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;
static bool order_left;         /* the program did something legacy order cannot cover */
static unsigned ordered_streams; /* non-blocking streams listed to wait as the legacy stream does */
static char order_why[96] = ""; /* what, for the exit report */

void pl_order_setup(void) {
    const char *v = getenv("GPUHEAP_FREE_ORDER");
    pthread_mutex_lock(&order_lock);
    if (v && *v && strcmp(v, "legacy") && strcmp(v, "event"))
        fprintf(stderr, "gpuheap-preload: GPUHEAP_FREE_ORDER=%s is not legacy or event: events are kept\n", v);
    if (!order_left && !(v && *v && strcmp(v, "legacy"))) {
        if (!pl_interposing())
            snprintf(order_why, sizeof order_why, "not preloaded: streams the program creates are not seen");
        else
            (void)gpu_set_free_order(GPU_FREE_ORDER_LEGACY);
    } else if (!order_left)
        snprintf(order_why, sizeof order_why, "GPUHEAP_FREE_ORDER=%s", v);
    pthread_mutex_unlock(&order_lock);
}

/* The program is about to do what legacy order cannot cover: events from now on. */
static void order_leave(const char *why) {
    pl_setup(); /* so that a later first setup does not set legacy order again */
    pthread_mutex_lock(&order_lock);
    if (!order_left) {
        order_left = true;
        if (gpu_free_order() == GPU_FREE_ORDER_LEGACY) {
            snprintf(order_why, sizeof order_why, "%s", why);
            int rc = gpu_set_free_order(GPU_FREE_ORDER_EVENT);
            if (gh_verbosity() >= 1)
                fprintf(stderr, "gpuheap-preload: %s: freed blocks wait for events from now on%s\n", why,
                        rc == GPU_OK ? "" : " (the fence waits for a capture to end)");
        }
    }
    pthread_mutex_unlock(&order_lock);
}

void pl_order_describe(char *buf, size_t len) {
    pthread_mutex_lock(&order_lock);
    if (gpu_free_order() == GPU_FREE_ORDER_LEGACY)
        snprintf(buf, len, "legacy (freed blocks handed out at once, the context made to wait; %u non-blocking streams listed)",
                 ordered_streams);
    else
        snprintf(buf, len, "events (%s)", order_why[0] ? order_why : "the library's default");
    pthread_mutex_unlock(&order_lock);
}

/* ---- the entry points that end legacy order --------------------------------------- */

enum { PL_CU_STREAM_NON_BLOCKING = 1 }; /* CU_STREAM_NON_BLOCKING (abi_check.c) */

#define REAL(e, type, ...) (pl_real(e) ? ((type)pl_real(e))(__VA_ARGS__) : PL_CU_ERROR_NOT_INITIALIZED)

/* A non-blocking stream just created: in legacy order it is listed, so that no
 * fence breaks its captures; where it cannot be, the order goes back to events.
 * Under the order lock, so that a switch and a listing never cross. */
static void order_stream_created(pl_cu_stream stream) {
    pthread_mutex_lock(&order_lock);
    bool legacy = gpu_free_order() == GPU_FREE_ORDER_LEGACY;
#if GPUHEAP_HAVE_CUDA
    int rc = legacy ? vmm_cuda_order_track((uintptr_t)stream) : GPU_OK;
#else
    int rc = GPU_ERR_NO_DRIVER;
#endif
    if (legacy && rc == GPU_OK) ordered_streams++;
    pthread_mutex_unlock(&order_lock);
    if (legacy && rc != GPU_OK)
        order_leave(rc == GPU_ERR_BUSY ? "a non-blocking stream could not be listed (64 listed)"
                                       : "a non-blocking stream could not be listed");
}

PL_EXPORT pl_cu_result cuStreamCreate(pl_cu_stream *stream, unsigned flags) {
    pl_setup(); /* the order is decided before the stream exists */
    pl_cu_result r = REAL(PL_STREAM_CREATE, pl_cu_result(*)(pl_cu_stream *, unsigned), stream, flags);
    if (r == PL_CU_SUCCESS && (flags & PL_CU_STREAM_NON_BLOCKING)) order_stream_created(*stream);
    return r;
}

PL_EXPORT pl_cu_result cuStreamCreateWithPriority(pl_cu_stream *stream, unsigned flags, int priority) {
    pl_setup();
    pl_cu_result r =
        REAL(PL_STREAM_CREATE_WITH_PRIORITY, pl_cu_result(*)(pl_cu_stream *, unsigned, int), stream, flags, priority);
    if (r == PL_CU_SUCCESS && (flags & PL_CU_STREAM_NON_BLOCKING)) order_stream_created(*stream);
    return r;
}

PL_EXPORT pl_cu_result cuStreamDestroy_v2(pl_cu_stream stream) {
#if GPUHEAP_HAVE_CUDA
    vmm_cuda_order_untrack((uintptr_t)stream); /* before the driver frees it: no wait may reach it after */
#endif
    return REAL(PL_STREAM_DESTROY, pl_cu_result(*)(pl_cu_stream), stream);
}

PL_EXPORT pl_cu_result cuCtxCreate_v2(pl_cu_ctx *ctx, unsigned flags, int dev) {
    order_leave("the program created a context of its own");
    return REAL(PL_CTX_CREATE_V2, pl_cu_result(*)(pl_cu_ctx *, unsigned, int), ctx, flags, dev);
}

PL_EXPORT pl_cu_result cuCtxCreate_v3(pl_cu_ctx *ctx, void *affinity, int n, unsigned flags, int dev) {
    order_leave("the program created a context of its own");
    return REAL(PL_CTX_CREATE_V3, pl_cu_result(*)(pl_cu_ctx *, void *, int, unsigned, int), ctx, affinity, n, flags, dev);
}

PL_EXPORT pl_cu_result cuCtxCreate_v4(pl_cu_ctx *ctx, void *params, unsigned flags, int dev) {
    order_leave("the program created a context of its own");
    return REAL(PL_CTX_CREATE_V4, pl_cu_result(*)(pl_cu_ctx *, void *, unsigned, int), ctx, params, flags, dev);
}

PL_EXPORT pl_cu_result cuCtxFromGreenCtx(pl_cu_ctx *ctx, void *green) {
    order_leave("the program made a context of a green context");
    return REAL(PL_CTX_FROM_GREEN_CTX, pl_cu_result(*)(pl_cu_ctx *, void *), ctx, green);
}

PL_EXPORT pl_cu_result cuGreenCtxStreamCreate(pl_cu_stream *stream, void *green, unsigned flags, int priority) {
    order_leave("a green context's stream was created");
    return REAL(PL_GREEN_CTX_STREAM_CREATE, pl_cu_result(*)(pl_cu_stream *, void *, unsigned, int), stream, green, flags,
                priority);
}
