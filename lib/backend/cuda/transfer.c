/*
 * transfer.c — the CUDA backend's byte moving: memset and copy for the heap
 * (calloc, realloc), and for file-backed memory (lib/file) pinned staging memory,
 * copy queues between host and device, zero-copy registration of a file mapping,
 * and cuFile reads straight into device memory.
 *
 * memset runs on the backend's own non-blocking stream and copy on the legacy
 * default stream; both wait, so they are done when the call returns.
 *
 * A queue is a non-blocking stream of the primary context with one event per
 * slot; a copy is cuMemcpyHtoDAsync/DtoHAsync on it followed by a record of the
 * slot's event, and waiting is cuEventSynchronize. The events block (they do not
 * spin) because several loader threads wait at once while others read the file.
 * A blocking wait, though, wakes on the device's interrupt, tens of microseconds
 * or more after the copy ended (more in a virtual machine), and a load's last
 * wait adds that to every load; so a wait polls the event first, for up to
 * GPUHEAP_QUEUE_SPIN_US microseconds (default 200, 0: block at once), and only
 * then blocks.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cufile.h"
#include "common.h"

/* The backend's own non-blocking stream, made at the first memset rather than
 * when the backend opens (14-26 us of a heap's creation on an H200, for a heap
 * that may never zero memory). Two threads' first memsets may both make one:
 * the one that comes second destroys its own. Context entered (cuda_enter). */
static CUstream quiet_stream(cuda_backend *cb, CUresult *r) {
    CUstream s = atomic_load_explicit(&cb->quiet, memory_order_acquire);
    if (s) return s;
    CUstream mine = NULL;
    *r = cb->f->StreamCreate(&mine, CU_STREAM_NON_BLOCKING);
    if (*r != CUDA_SUCCESS) return NULL;
    if (atomic_compare_exchange_strong_explicit(&cb->quiet, &s, mine, memory_order_acq_rel, memory_order_acquire))
        return mine;
    cb->f->StreamDestroy(mine);
    return s;
}

/* Fills device memory and waits for it, on the backend's own non-blocking
 * stream: the heap zeroes only memory no GPU work uses any more (idle blocks), so
 * it needs no order with other streams, and a capture in progress on any other
 * stream is left alone. */
int cuda_memset(vmm_backend *b, uintptr_t va, int byte, size_t size) {
    cuda_backend *cb = cuda_of(b);
    if (size == 0) return GPU_OK;
    int err = cuda_enter(cb, "memset");
    if (err) return err;
    CUresult r = CUDA_SUCCESS;
    CUstream quiet = quiet_stream(cb, &r);
    if (!quiet) {
        cuda_leave(cb);
        return cuda_fail(cb, cuda_code(r), r, "cuStreamCreate(non-blocking, for a memset of %zu bytes)", size);
    }
    r = cb->f->MemsetD8Async((CUdeviceptr)va, (unsigned char)byte, size, quiet);
    if (r != CUDA_SUCCESS) {
        cuda_leave(cb);
        return cuda_fail(cb, cuda_code(r), r, "cuMemsetD8Async(va=%#" PRIxPTR ", byte=%d, size=%zu)", va, byte, size);
    }
    r = cb->f->StreamSynchronize(quiet);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuStreamSynchronize(0) after cuMemsetD8(va=%#" PRIxPTR ", size=%zu)", va, size);
    return GPU_OK;
}

/* Copies device memory on the legacy stream and waits for it. */
int cuda_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size) {
    cuda_backend *cb = cuda_of(b);
    if (size == 0) return GPU_OK;
    int err = cuda_enter(cb, "copy");
    if (err) return err;
    CUresult r = cb->f->MemcpyDtoD((CUdeviceptr)dst, (CUdeviceptr)src, size);
    if (r != CUDA_SUCCESS) {
        cuda_leave(cb);
        return cuda_fail(cb, cuda_code(r), r, "cuMemcpyDtoD(dst=%#" PRIxPTR ", src=%#" PRIxPTR ", size=%zu)", dst, src, size);
    }
    r = cb->f->StreamSynchronize(NULL);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuStreamSynchronize(0) after cuMemcpyDtoD(size=%zu)", size);
    return GPU_OK;
}

/* A copy queue: its stream and one completion event per slot. */
typedef struct cuda_queue {
    CUstream stream;
    unsigned slots;
    CUevent ev[]; /* one per slot */
} cuda_queue;

int cuda_staging_alloc(vmm_backend *b, size_t size, void **out) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "staging_alloc");
    if (err) return err;
    void *p = NULL;
    CUresult r = cb->f->MemHostAlloc(&p, size, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemHostAlloc(size=%zu)", size);
    *out = p;
    return GPU_OK;
}

void cuda_staging_free(vmm_backend *b, void *p, size_t size) {
    cuda_backend *cb = cuda_of(b);
    (void)size;
    if (cuda_enter(cb, "staging_free") != GPU_OK) return;
    cb->f->MemFreeHost(p);
    cuda_leave(cb);
}

/* Destroys what a queue holds (events created so far, the stream); context current. */
static void cuda_queue_destroy(cuda_backend *cb, cuda_queue *q) {
    for (unsigned i = 0; i < q->slots; i++)
        if (q->ev[i]) cb->f->EventDestroy(q->ev[i]);
    if (q->stream) cb->f->StreamDestroy(q->stream);
    free(q);
}

int cuda_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = calloc(1, sizeof *q + slots * sizeof q->ev[0]);
    if (!q) return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "queue_open: out of host memory");
    int err = cuda_enter(cb, "queue_open");
    if (err) {
        free(q);
        return err;
    }
    CUresult r = cb->f->StreamCreate(&q->stream, CU_STREAM_NON_BLOCKING);
    for (unsigned i = 0; r == CUDA_SUCCESS && i < slots; i++) {
        r = cb->f->EventCreate(&q->ev[i], CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC);
        q->slots = i + (r == CUDA_SUCCESS);
    }
    if (r != CUDA_SUCCESS) {
        cuda_queue_destroy(cb, q);
        cuda_leave(cb);
        return cuda_fail(cb, cuda_code(r), r, "queue_open: cuStreamCreate/cuEventCreate (%u slots)", slots);
    }
    cuda_leave(cb);
    *out = (vmm_queue *)q;
    return GPU_OK;
}

void cuda_queue_close(vmm_backend *b, vmm_queue *vq) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = (cuda_queue *)vq;
    if (cuda_enter(cb, "queue_close") != GPU_OK) return;
    cb->f->StreamSynchronize(q->stream);
    cuda_queue_destroy(cb, q);
    cuda_leave(cb);
}

/* The queue behind a vmm_queue, or NULL (with the message written) when slot is
 * not one of its slots. */
static cuda_queue *cuda_queue_slot(vmm_backend *b, vmm_queue *vq, unsigned slot, const char *op) {
    cuda_queue *q = (cuda_queue *)vq;
    if (slot < q->slots) return q;
    (void)vmm_fail(b, GPU_ERR_INVALID, "%s: slot %u of %u", op, slot, q->slots);
    return NULL;
}

/* Enqueues one copy between host and device memory on q (host to device when
 * upload) and marks slot after it. */
static int cuda_queue_copy(vmm_backend *b, vmm_queue *vq, unsigned slot, bool upload, uintptr_t dst, uintptr_t src,
                           size_t size) {
    cuda_backend *cb = cuda_of(b);
    const char *op = upload ? "queue_upload" : "queue_download";
    cuda_queue *q = cuda_queue_slot(b, vq, slot, op);
    if (!q) return GPU_ERR_INVALID;
    int err = cuda_enter(cb, op);
    if (err) return err;
    CUresult r = upload ? cb->f->MemcpyHtoDAsync((CUdeviceptr)dst, (const void *)src, size, q->stream)
                        : cb->f->MemcpyDtoHAsync((void *)dst, (CUdeviceptr)src, size, q->stream);
    if (r == CUDA_SUCCESS) r = cb->f->EventRecord(q->ev[slot], q->stream);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "%s(%s=%#" PRIxPTR ", size=%zu)", upload ? "cuMemcpyHtoDAsync" : "cuMemcpyDtoHAsync",
                         upload ? "dst" : "src", upload ? dst : src, size);
    return GPU_OK;
}

int cuda_queue_upload(vmm_backend *b, vmm_queue *vq, unsigned slot, uintptr_t dst, const void *src, size_t size) {
    return cuda_queue_copy(b, vq, slot, true, dst, (uintptr_t)src, size);
}

int cuda_queue_download(vmm_backend *b, vmm_queue *vq, unsigned slot, void *dst, uintptr_t src, size_t size) {
    return cuda_queue_copy(b, vq, slot, false, (uintptr_t)dst, src, size);
}

/* GPUHEAP_QUEUE_SPIN_US, read once: how long a queue wait polls before it blocks. */
static uint64_t cuda_queue_spin_ns(void) {
    static _Atomic int64_t spin = -1;
    int64_t v = atomic_load_explicit(&spin, memory_order_relaxed);
    if (v < 0) {
        v = 200;
        const char *s = getenv("GPUHEAP_QUEUE_SPIN_US");
        if (s && *s) {
            char *end = NULL;
            long long x = strtoll(s, &end, 10);
            if (end && !*end && x >= 0 && x <= 1000000) v = x;
        }
        v *= 1000;
        atomic_store_explicit(&spin, v, memory_order_relaxed);
    }
    return (uint64_t)v;
}

int cuda_queue_wait(vmm_backend *b, vmm_queue *vq, unsigned slot) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = cuda_queue_slot(b, vq, slot, "queue_wait");
    if (!q) return GPU_ERR_INVALID;
    int err = cuda_enter(cb, "queue_wait");
    if (err) return err;
    uint64_t spin = cuda_queue_spin_ns();
    CUresult r = spin ? cb->f->EventQuery(q->ev[slot]) : CUDA_ERROR_NOT_READY;
    if (r == CUDA_ERROR_NOT_READY && spin) {
        uint64_t until = gh_mono_ns() + spin;
        do {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            r = cb->f->EventQuery(q->ev[slot]);
        } while (r == CUDA_ERROR_NOT_READY && gh_mono_ns() < until);
    }
    if (r == CUDA_ERROR_NOT_READY) r = cb->f->EventSynchronize(q->ev[slot]);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuEventSynchronize (copy queue slot %u)", slot);
    return GPU_OK;
}

/* cuMemHostRegister read-only, then the device's address of the range (the
 * same as host's where the device has unified addressing). */
int cuda_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "register_read_only");
    if (err) return err;
    CUresult r = cb->f->MemHostRegister(host, size, CU_MEMHOSTREGISTER_READ_ONLY | CU_MEMHOSTREGISTER_DEVICEMAP);
    if (r != CUDA_SUCCESS) {
        cuda_leave(cb);
        int code = r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED ? GPU_ERR_INVALID : cuda_code(r);
        return cuda_fail(cb, code, r, "cuMemHostRegister(%p, size=%zu, READ_ONLY)", host, size);
    }
    CUdeviceptr d = 0;
    r = cb->f->MemHostGetDevicePointer(&d, host, 0);
    if (r != CUDA_SUCCESS) cb->f->MemHostUnregister(host);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuMemHostGetDevicePointer(%p)", host);
    *dev = (uintptr_t)d;
    return GPU_OK;
}

int cuda_unregister(vmm_backend *b, void *host) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "unregister");
    if (err) return err;
    CUresult r = cb->f->MemHostUnregister(host);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemHostUnregister(%p)", host);
    return GPU_OK;
}

/* cuFile (cufile.c) with the primary context current. */
int cuda_direct_open(vmm_backend *b, int fd, vmm_direct **out) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "direct_open");
    if (err) return err;
    void *h = NULL;
    char why[256] = "";
    err = cufile_open(fd, &h, why, sizeof why);
    if (err != GPU_OK) (void)vmm_fail(b, err, "%s", why);
    cuda_leave(cb);
    if (err == GPU_OK) *out = (vmm_direct *)h;
    return err;
}

int cuda_direct_read(vmm_backend *b, vmm_direct *d, uint64_t offset, size_t size, uintptr_t dst) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "direct_read");
    if (err) return err;
    char why[256] = "";
    err = cufile_read(d, dst, size, offset, why, sizeof why);
    if (err != GPU_OK) (void)vmm_fail(b, err, "%s", why);
    cuda_leave(cb);
    return err;
}

void cuda_direct_close(vmm_backend *b, vmm_direct *d) {
    cuda_backend *cb = cuda_of(b);
    if (cuda_enter(cb, "direct_close") != GPU_OK) return;
    cufile_close(d);
    cuda_leave(cb);
}
