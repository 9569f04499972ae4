/*
 * cuda.c — the backend contract over the CUDA driver's virtual memory API: the
 * backend's record, its table of operations, opening and closing it, and what
 * every operation needs.
 *
 * The heap calls the backend from any thread, with or without a CUDA context
 * current, and must not disturb the caller's context. So every operation pushes
 * the device's primary context, makes its driver call and pops it again — a few
 * tens of nanoseconds, next to microseconds for the call — and does so in the
 * relaxed capture mode, so that a VMM call made while some thread captures a
 * stream leaves the capture valid. A failed call becomes a gpu_error_t and a
 * message naming the call and the driver's error name (cuda_fail).
 *
 * The operations themselves live by idea in vmm.c (address space, physical
 * memory, mappings, access), events.c (fence, events, capture) and transfer.c
 * (memset and copy, staging, queues, registration, cuFile); the driver comes from
 * loader.c. Opening retains the device's primary context for the backend's life,
 * checks that the device supports the virtual memory API, reads its
 * granularity into vmm_caps, and finds out whether its memory can be made
 * exportable to other processes (vmm.c, cuda_ipc_probe); the device's
 * description is read once per process (known.c).
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cuda/cuda_internal.h"
#include "common.h"

#define CUDA_MAX_RESERVE ((size_t)1 << 46) /* 64 TiB: granted on an H200; 2^48 was refused */

/* ---- what every operation needs ----------------------------------------------- */

/* The gpu_error_t for a failed driver call with no more specific meaning. */
int cuda_code(CUresult r) {
    switch (r) {
    case CUDA_ERROR_OUT_OF_MEMORY: return GPU_ERR_OUT_OF_MEMORY;
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_NOT_SUPPORTED: return GPU_ERR_INVALID; /* a broken driver rule, as the host backend reports it */
    default: return GPU_ERR_BACKEND;
    }
}

/* Writes "<call>(<args>): <driver error name>" as the thread's backend message (vmm_fail) and returns code. */
int cuda_fail(cuda_backend *cb, int code, CUresult r, const char *fmt, ...) {
    char call[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call, sizeof call, fmt, ap);
    va_end(ap);
    return vmm_fail(&cb->base, code, "%s: %s", call, cuda_loader_error_name(r));
}

/* The calling thread's capture mode before cuda_enter, restored by cuda_leave,
 * and whether cuda_enter pushed the context (cuda_leave then pops it). */
static _Thread_local CUstreamCaptureMode cuda_saved_mode;
static _Thread_local bool cuda_pushed;

/* Makes the primary context current for one operation, in the relaxed capture
 * mode: a VMM call made while some thread captures a stream then leaves the
 * capture valid (measured on an H200; a device sync does not, and the heap never
 * fences during a capture). A thread whose current context is the primary one
 * already (a CUDA runtime program's, usually) keeps it: asking is a thread-local
 * read in the driver, a push and a pop are two more calls around every cover
 * and map. Pair with cuda_leave. */
int cuda_enter(cuda_backend *cb, const char *op) {
    CUcontext cur = NULL;
    cuda_pushed = cb->f->CtxGetCurrent(&cur) != CUDA_SUCCESS || cur != cb->ctx;
    if (cuda_pushed) {
        CUresult r = cb->f->CtxPushCurrent(cb->ctx);
        if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuCtxPushCurrent(primary context, for %s)", op);
    }
    cuda_saved_mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    cb->f->ThreadExchangeStreamCaptureMode(&cuda_saved_mode);
    return GPU_OK;
}

/* Restores the caller's capture mode and context. */
void cuda_leave(cuda_backend *cb) {
    cb->f->ThreadExchangeStreamCaptureMode(&cuda_saved_mode);
    if (!cuda_pushed) return;
    CUcontext popped;
    cb->f->CtxPopCurrent(&popped);
}

/* ---- the device of the calling thread ---------------------------------------- */

/* How many devices the driver showed when a CUDA backend first opened (0 before):
 * with one device the current device needs no question at all. */
static _Atomic int cuda_device_count;

/* gpu_malloc asks this on every call, so it stays cheap: cuCtxGetCurrent is a
 * thread-local read in the driver, while cuCtxGetDevice without a current context
 * takes the driver's slow error path (~1.5 µs). The device of the last context
 * seen is cached per thread. */
int vmm_cuda_current_device(void) {
    if (atomic_load_explicit(&cuda_device_count, memory_order_relaxed) == 1) return 0;
    static _Thread_local CUcontext seen_ctx;
    static _Thread_local int seen_dev;
    const struct cuda_fns *f;
    CUcontext ctx = NULL;
    if (cuda_loader_get(&f) != GPU_OK || f->CtxGetCurrent(&ctx) != CUDA_SUCCESS || !ctx) return 0;
    if (ctx == seen_ctx) return seen_dev;
    CUdevice dev;
    if (f->CtxGetDevice(&dev) != CUDA_SUCCESS) return 0;
    seen_ctx = ctx;
    seen_dev = (int)dev;
    return seen_dev;
}

/* ---- the backend ------------------------------------------------------------------ */

/* Lets go of the primary context and frees the backend. The heap has already
 * unmapped, released and unreserved everything. */
static void cuda_close(vmm_backend *b) {
    cuda_backend *cb = cuda_of(b);
    if (!cb) return;
    if (cuda_enter(cb, "close") == GPU_OK) {
        cuda_events_drop_spares(cb);
        CUstream quiet = atomic_load(&cb->quiet);
        if (quiet) cb->f->StreamDestroy(quiet);
        cuda_leave(cb);
    }
    cb->f->DevicePrimaryCtxRelease(cb->dev);
    free(cb);
}

/* Every operation the backend has; an open backend's table may lack the optional
 * ones its driver does not offer (vmm_cuda_open). */
static const vmm_ops cuda_ops = {
    .reserve = cuda_reserve,
    .unreserve = cuda_unreserve,
    .create = cuda_create,
    .release = cuda_release,
    .map = cuda_map,
    .unmap = cuda_unmap,
    .set_access = cuda_set_access,
    .grant = cuda_grant,
    .fence = cuda_fence,
    .memset = cuda_memset,
    .copy = cuda_copy,
    .event_record = cuda_event_record,
    .event_query = cuda_event_query,
    .event_wait = cuda_event_wait,
    .event_release = cuda_event_release,
    .fence_record = cuda_fence_record,
    .fence_order = cuda_fence_order,
    .capturing = cuda_capturing,
    .staging_alloc = cuda_staging_alloc,
    .staging_free = cuda_staging_free,
    .queue_open = cuda_queue_open,
    .queue_close = cuda_queue_close,
    .queue_upload = cuda_queue_upload,
    .queue_download = cuda_queue_download,
    .queue_wait = cuda_queue_wait,
    .register_read_only = cuda_register_read_only,
    .unregister = cuda_unregister,
    .direct_open = cuda_direct_open,
    .direct_read = cuda_direct_read,
    .direct_close = cuda_direct_close,
    .export_fd = cuda_export_fd,
    .import_fd = cuda_import_fd,
    .close = cuda_close,
};

/* The open error for a failed cuInit: no device and no usable driver are told apart. */
static int cuda_init_code(CUresult r) {
    switch (r) {
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_INVALID_DEVICE: return GPU_ERR_NO_DEVICE;
    case CUDA_ERROR_STUB_LIBRARY:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: return GPU_ERR_NO_DRIVER;
    default: return GPU_ERR_BACKEND;
    }
}

/* Reads the device's VMM support, name and granularity into caps. */
static int cuda_describe(const struct cuda_fns *f, CUdevice dev, int ordinal, vmm_caps *caps) {
    CUresult r = f->DeviceGetName(caps->device_name, (int)sizeof caps->device_name, dev);
    if (r != CUDA_SUCCESS) snprintf(caps->device_name, sizeof caps->device_name, "CUDA device %d", ordinal);

    int vmm = 0;
    r = f->DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
    if (r != CUDA_SUCCESS)
        return vmm_fail(NULL, GPU_ERR_BACKEND, "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device=%d): %s",
                             ordinal, cuda_loader_error_name(r));
    if (!vmm)
        return vmm_fail(NULL, GPU_ERR_NO_DEVICE, "device %d (%s) does not support the CUDA virtual memory API (cuMemCreate/cuMemMap)",
                             ordinal, caps->device_name);

    CUmemAllocationProp prop = cuda_prop(dev, CU_MEM_HANDLE_TYPE_NONE);
    size_t min = 0, rec = 0;
    r = f->MemGetAllocationGranularity(&min, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r == CUDA_SUCCESS) r = f->MemGetAllocationGranularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (r != CUDA_SUCCESS)
        return vmm_fail(NULL, GPU_ERR_BACKEND, "cuMemGetAllocationGranularity(device=%d): %s", ordinal, cuda_loader_error_name(r));
    /* The heap needs a power of two; the recommended value must also be a multiple of the minimum. */
    bool min_ok = gh_is_pow2(min);
    bool rec_ok = gh_is_pow2(rec) && min_ok && rec % min == 0;
    if (!min_ok)
        return vmm_fail(NULL, GPU_ERR_BACKEND, "device %d: allocation granularity %zu (recommended %zu) is not a power of two",
                             ordinal, min, rec);
    caps->granularity = rec_ok ? rec : min;
    return GPU_OK;
}

int vmm_cuda_open(const gpu_config_t *cfg, vmm_backend **out) {
    if (!out) return vmm_fail(NULL, GPU_ERR_INVALID, "vmm_cuda_open: out is NULL");
    *out = NULL;
    const struct cuda_fns *f;
    int err = cuda_loader_get(&f);
    if (err) return vmm_fail(NULL, err, "%s", cuda_loader_error());

    int ordinal = cfg ? cfg->device : 0;
    CUresult r = f->Init(0);
    if (r != CUDA_SUCCESS) return vmm_fail(NULL, cuda_init_code(r), "cuInit: %s", cuda_loader_error_name(r));
    int count = 0;
    r = f->DeviceGetCount(&count);
    if (r != CUDA_SUCCESS) return vmm_fail(NULL, GPU_ERR_BACKEND, "cuDeviceGetCount: %s", cuda_loader_error_name(r));
    if (ordinal < 0 || ordinal >= count)
        return vmm_fail(NULL, GPU_ERR_NO_DEVICE, "CUDA device %d does not exist: the driver sees %d device(s)", ordinal, count);
    atomic_store_explicit(&cuda_device_count, count, memory_order_relaxed); /* fixed for the process's life */
    CUdevice dev;
    r = f->DeviceGet(&dev, ordinal);
    if (r != CUDA_SUCCESS) return vmm_fail(NULL, cuda_init_code(r), "cuDeviceGet(%d): %s", ordinal, cuda_loader_error_name(r));

    cuda_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return vmm_fail(NULL, GPU_ERR_OUT_OF_MEMORY, "CUDA backend: no host memory for the backend");
    cb->f = f;
    cb->dev = dev;
    cb->base.caps.name = "cuda";
    cb->base.caps.max_reserve = CUDA_MAX_RESERVE;
    cb->base.caps.device = ordinal;
    cb->base.caps.host_accessible = false;
    if (!cuda_known_described(ordinal, &cb->base.caps)) { /* a process's first backend on the device asks */
        err = cuda_describe(f, dev, ordinal, &cb->base.caps);
        if (err) {
            free(cb);
            return err;
        }
        cuda_known_describe_keep(ordinal, &cb->base.caps);
    }
    r = f->DevicePrimaryCtxRetain(&cb->ctx, dev);
    if (r != CUDA_SUCCESS) {
        free(cb);
        return vmm_fail(NULL, cuda_code(r), "cuDevicePrimaryCtxRetain(device=%d): %s", ordinal, cuda_loader_error_name(r));
    }
    /* Newer than the table's 12.0 ABI: asked at the driver's own version. */
    cb->ctx_record_event = (CUresult(*)(CUcontext, CUevent))cuda_loader_proc_newest("cuCtxRecordEvent");
    cb->ctx_wait_event = (CUresult(*)(CUcontext, CUevent))cuda_loader_proc_newest("cuCtxWaitEvent");
    /* The table says what this driver offers: the door tests an optional op's
     * entry, so an op the driver lacks is absent, never offered and then refused. */
    cb->ops = cuda_ops;
    if (!cb->ctx_record_event) cb->ops.fence_record = NULL;
    if (!cb->ctx_record_event || !cb->ctx_wait_event) cb->ops.fence_order = NULL;
    cb->base.ops = &cb->ops;
    cuda_ipc_probe(cb, cfg);
    *out = &cb->base;
    return GPU_OK;
}
