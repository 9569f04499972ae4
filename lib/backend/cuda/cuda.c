/*
 * backend_cuda.c — the backend contract over the CUDA driver's virtual memory API,
 * and the run-time loader of the driver itself.
 *
 * Every contract operation is one driver call, or two: reserve is
 * cuMemAddressReserve, create is cuMemCreate (pinned device memory, no export
 * handle), map is cuMemMap of the whole handle at offset 0, set_access is
 * cuMemSetAccess for the owning device, fence is cuCtxSynchronize, and memset and
 * copy run on the legacy default stream and wait for it, so they are done when the
 * call returns. The driver enforces the rules of DESIGN.md §3 itself; this file
 * only turns its results into gpu_error_t codes and messages that name the call
 * and the driver's error name.
 *
 * The heap calls the backend from any thread, with or without a CUDA context
 * current, and must not disturb the caller's context. So every operation pushes
 * the device's primary context, makes its driver call and pops it again — a few
 * tens of nanoseconds, next to microseconds for the call.
 *
 * libcuda is never linked: the library has to load where there is no driver.
 * The first user dlopens libcuda.so.1, finds cuGetProcAddress and resolves the
 * rest of the table in cuda_loader.h through it. That happens once per process
 * (pthread_once); the table is then shared, read-only, by every backend, the
 * interposer and the GPU tests. The library is never dlclosed, since function
 * pointers into it live as long as the process.
 */
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cuda/cufile.h"
#include "backend/cuda/loader.h"

#define CUDA_MAX_RESERVE ((size_t)1 << 46) /* 64 TiB: granted on an H200; 2^48 was refused */

/* ---- the loader ---------------------------------------------------------------- */

/* cuGetProcAddress before CUDA 12.0 had no symbolStatus argument; cuda.h no
 * longer declares that form. */
typedef CUresult (*cuda_getproc_v1_fn)(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static struct cuda_fns cuda_table;
static int cuda_status = GPU_ERR_NO_DRIVER;
static char cuda_message[256];
/* The driver's cuGetProcAddress in whichever form it exports (one is set); written
 * by cuda_load, read-only once the load has succeeded. */
static __typeof__(cuGetProcAddress_v2) *cuda_getproc2;
static cuda_getproc_v1_fn cuda_getproc1;

/* Every entry of struct cuda_fns with the driver name it is resolved by. */
#define CUDA_ENTRY(field) {"cu" #field, offsetof(struct cuda_fns, field)}
static const struct {
    const char *name;
    size_t offset;
} cuda_entries[] = {
    CUDA_ENTRY(GetErrorName), CUDA_ENTRY(Init), CUDA_ENTRY(DeviceGetCount), CUDA_ENTRY(DeviceGet),
    CUDA_ENTRY(DeviceGetName), CUDA_ENTRY(DeviceGetAttribute), CUDA_ENTRY(DeviceTotalMem),
    CUDA_ENTRY(DevicePrimaryCtxRetain), CUDA_ENTRY(DevicePrimaryCtxRelease), CUDA_ENTRY(CtxPushCurrent),
    CUDA_ENTRY(CtxPopCurrent), CUDA_ENTRY(CtxGetCurrent), CUDA_ENTRY(CtxGetDevice), CUDA_ENTRY(CtxSynchronize),
    CUDA_ENTRY(MemGetAllocationGranularity), CUDA_ENTRY(MemAddressReserve), CUDA_ENTRY(MemAddressFree),
    CUDA_ENTRY(MemCreate), CUDA_ENTRY(MemRelease), CUDA_ENTRY(MemMap), CUDA_ENTRY(MemUnmap),
    CUDA_ENTRY(MemSetAccess), CUDA_ENTRY(MemGetInfo), CUDA_ENTRY(MemsetD8), CUDA_ENTRY(MemcpyDtoD),
    CUDA_ENTRY(MemcpyDtoH), CUDA_ENTRY(MemcpyHtoD), CUDA_ENTRY(StreamCreate), CUDA_ENTRY(StreamDestroy),
    CUDA_ENTRY(StreamSynchronize), CUDA_ENTRY(EventCreate), CUDA_ENTRY(EventRecord), CUDA_ENTRY(EventQuery),
    CUDA_ENTRY(EventSynchronize), CUDA_ENTRY(EventDestroy), CUDA_ENTRY(StreamIsCapturing), CUDA_ENTRY(MemsetD8Async),
    CUDA_ENTRY(ThreadExchangeStreamCaptureMode), CUDA_ENTRY(ModuleLoadData),
    CUDA_ENTRY(MemcpyHtoDAsync), CUDA_ENTRY(MemcpyDtoHAsync), CUDA_ENTRY(MemHostAlloc), CUDA_ENTRY(MemFreeHost),
    CUDA_ENTRY(MemHostRegister), CUDA_ENTRY(MemHostUnregister), CUDA_ENTRY(MemHostGetDevicePointer),
    CUDA_ENTRY(ModuleGetFunction), CUDA_ENTRY(LaunchKernel),
};
#undef CUDA_ENTRY

_Static_assert(sizeof cuda_entries / sizeof cuda_entries[0] == sizeof(struct cuda_fns) / sizeof(void (*)(void)),
               "every member of struct cuda_fns needs an entry in cuda_entries");
_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "function pointers are stored through void *");

/* Records why the load failed. */
static void cuda_load_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void cuda_load_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cuda_message, sizeof cuda_message, fmt, ap);
    va_end(ap);
    cuda_status = GPU_ERR_NO_DRIVER;
}

/* Resolves one entry point by its base name ("cuMemcpyDtoD") at
 * CUDA_LOADER_VERSION, legacy default stream. Returns it, or NULL with *res saying
 * what the driver answered. Needs cuda_getproc2 or cuda_getproc1 set. */
static void *cuda_resolve_at(const char *name, int version, CUresult *res) {
    void *p = NULL;
    CUresult r;
    /* LEGACY_STREAM: the stream-0 calls (memset, copy, stream sync) must use
     * the legacy default stream, which is ordered after the device's other
     * blocking streams. */
    if (cuda_getproc2) {
        CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        r = cuda_getproc2(name, &p, version, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &found);
        if (found != CU_GET_PROC_ADDRESS_SUCCESS) p = NULL;
    } else {
        r = cuda_getproc1(name, &p, version, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    }
    if (res) *res = r;
    return r == CUDA_SUCCESS ? p : NULL;
}

/* The table's entries, at the ABI they were written for. */
static void *cuda_resolve(const char *name, CUresult *res) { return cuda_resolve_at(name, CUDA_LOADER_VERSION, res); }

/* The dlsym that finds libcuda's resolver: dlsym itself, or the real one that an
 * interposer which replaces dlsym hands over (cuda_loader_use_dlsym), so that the
 * table holds the driver's own entry points, never the interposer's wrappers. */
static void *(*_Atomic cuda_dlsym)(void *, const char *);

void cuda_loader_use_dlsym(void *(*real_dlsym)(void *handle, const char *name)) { atomic_store(&cuda_dlsym, real_dlsym); }

/* Opens libcuda.so.1 and fills cuda_table; runs once per process. */
static void cuda_load(void) {
    void *(*find)(void *, const char *) = atomic_load(&cuda_dlsym);
    if (!find) find = dlsym;
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        cuda_load_fail("libcuda.so.1 not found: no NVIDIA driver on this machine (%s)", why ? why : "dlopen failed");
        return;
    }
    /* The _v2 lookup (CUDA 12.0+) reports whether the symbol was found; the older
     * one does not, but serves drivers from 11.3 on. */
    void *sym = find(lib, "cuGetProcAddress_v2");
    if (sym) {
        memcpy(&cuda_getproc2, &sym, sizeof sym);
    } else if ((sym = find(lib, "cuGetProcAddress")) != NULL) {
        memcpy(&cuda_getproc1, &sym, sizeof sym);
    } else {
        cuda_load_fail("libcuda.so.1 has no cuGetProcAddress: the NVIDIA driver is too old (CUDA 11.3 or newer is needed)");
        dlclose(lib);
        return;
    }

    struct cuda_fns t;
    for (size_t i = 0; i < sizeof cuda_entries / sizeof cuda_entries[0]; i++) {
        CUresult r;
        void *p = cuda_resolve(cuda_entries[i].name, &r);
        if (!p) {
            cuda_load_fail("libcuda.so.1 lacks %s (CUresult %d): the NVIDIA driver is too old for gpuheap",
                           cuda_entries[i].name, (int)r);
            cuda_getproc2 = NULL;
            cuda_getproc1 = NULL;
            dlclose(lib);
            return;
        }
        memcpy((char *)&t + cuda_entries[i].offset, &p, sizeof p);
    }
    cuda_table = t;
    cuda_message[0] = '\0';
    cuda_status = GPU_OK;
}

int cuda_loader_get(const struct cuda_fns **out) {
    pthread_once(&cuda_once, cuda_load);
    if (cuda_status != GPU_OK) return cuda_status;
    if (out) *out = &cuda_table;
    return GPU_OK;
}

/* gpu_malloc asks this on every call, so it stays cheap: cuCtxGetCurrent is a
 * thread-local read in the driver, while cuCtxGetDevice without a current context
 * takes the driver's slow error path (~1.5 µs). The device of the last context
 * seen is cached per thread. */
/* How many devices the driver showed when a CUDA backend first opened (0 before):
 * with one device the current device needs no question at all. */
static _Atomic int cuda_device_count;

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

void *cuda_loader_proc(const char *symbol) {
    pthread_once(&cuda_once, cuda_load);
    if (cuda_status != GPU_OK || !symbol) return NULL;
    return cuda_resolve(symbol, NULL);
}

void *cuda_loader_proc_newest(const char *symbol) {
    pthread_once(&cuda_once, cuda_load);
    if (cuda_status != GPU_OK || !symbol) return NULL;
    int version = 0;
    CUresult (*get)(int *) = (CUresult(*)(int *))cuda_resolve("cuDriverGetVersion", NULL);
    if (!get || get(&version) != CUDA_SUCCESS) return NULL;
    return cuda_resolve_at(symbol, version, NULL);
}

const char *cuda_loader_error(void) {
    pthread_once(&cuda_once, cuda_load);
    return cuda_message;
}

const char *cuda_loader_error_name(CUresult res) {
    const char *name = NULL;
    if (cuda_loader_get(NULL) != GPU_OK || cuda_table.GetErrorName(res, &name) != CUDA_SUCCESS || !name)
        return "unrecognised CUDA error";
    return name;
}

/* ---- the backend ------------------------------------------------------------------ */

typedef struct cuda_backend {
    vmm_backend base; /* first, so a vmm_backend * is a cuda_backend * */
    const struct cuda_fns *f;
    CUdevice dev;
    CUcontext ctx; /* the device's primary context, retained while open */
    CUstream quiet; /* a non-blocking stream of our own: a memset there neither waits for nor joins a capture */
    CUresult (*ctx_record_event)(CUcontext, CUevent); /* cuCtxRecordEvent (CUDA 12.5+), or NULL */
} cuda_backend;

/* The CUDA backend behind a vmm_backend. */
static inline cuda_backend *cuda_of(vmm_backend *b) { return (cuda_backend *)b; }

/* The gpu_error_t for a failed driver call with no more specific meaning. */
static int cuda_code(CUresult r) {
    switch (r) {
    case CUDA_ERROR_OUT_OF_MEMORY: return GPU_ERR_OUT_OF_MEMORY;
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_NOT_SUPPORTED: return GPU_ERR_INVALID; /* a broken driver rule, as the host backend reports it */
    default: return GPU_ERR_BACKEND;
    }
}

/* Writes "<call>(<args>): <driver error name>" as the thread's backend message (vmm_fail) and returns code. */
static int cuda_fail(cuda_backend *cb, int code, CUresult r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int cuda_fail(cuda_backend *cb, int code, CUresult r, const char *fmt, ...) {
    char call[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call, sizeof call, fmt, ap);
    va_end(ap);
    return vmm_fail(&cb->base, code, "%s: %s", call, cuda_loader_error_name(r));
}

/* The calling thread's capture mode before cuda_enter, restored by cuda_leave. */
static _Thread_local CUstreamCaptureMode cuda_saved_mode;

/* Makes the primary context current for one operation, in the relaxed capture
 * mode: a VMM call made while some thread captures a stream then leaves the
 * capture valid (measured on an H200; a device sync does not, and the heap never
 * fences during a capture). Pair with cuda_leave. */
static int cuda_enter(cuda_backend *cb, const char *op) {
    CUresult r = cb->f->CtxPushCurrent(cb->ctx);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuCtxPushCurrent(primary context, for %s)", op);
    cuda_saved_mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    cb->f->ThreadExchangeStreamCaptureMode(&cuda_saved_mode);
    return GPU_OK;
}

/* Restores the caller's capture mode and context. */
static void cuda_leave(cuda_backend *cb) {
    cb->f->ThreadExchangeStreamCaptureMode(&cuda_saved_mode);
    CUcontext popped;
    cb->f->CtxPopCurrent(&popped);
}

/* Reserves size bytes of VA, aligned to the granularity. Refusals are OUT_OF_VA:
 * the heap halves the size and asks again. */
static int cuda_reserve(vmm_backend *b, size_t size, uintptr_t *va) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "reserve");
    if (err) return err;
    CUdeviceptr p = 0;
    CUresult r = cb->f->MemAddressReserve(&p, size, b->caps.granularity, 0, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) {
        int code = r == CUDA_ERROR_OUT_OF_MEMORY || r == CUDA_ERROR_INVALID_VALUE ? GPU_ERR_OUT_OF_VA : cuda_code(r);
        return cuda_fail(cb, code, r, "cuMemAddressReserve(size=%zu, alignment=%zu)", size, b->caps.granularity);
    }
    *va = (uintptr_t)p;
    return GPU_OK;
}

/* Gives a reservation back. */
static int cuda_unreserve(vmm_backend *b, uintptr_t va, size_t size) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "unreserve");
    if (err) return err;
    CUresult r = cb->f->MemAddressFree((CUdeviceptr)va, size);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemAddressFree(va=%#" PRIxPTR ", size=%zu)", va, size);
    return GPU_OK;
}

/* The allocation properties of pinned memory on this backend's device. */
static CUmemAllocationProp cuda_prop(CUdevice dev) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = (int)dev;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
    return prop;
}

/* Creates size bytes of device memory. */
static int cuda_create(vmm_backend *b, size_t size, vmm_handle *out) {
    cuda_backend *cb = cuda_of(b);
    CUmemAllocationProp prop = cuda_prop(cb->dev);
    int err = cuda_enter(cb, "create");
    if (err) return err;
    CUmemGenericAllocationHandle h = 0;
    CUresult r = cb->f->MemCreate(&h, size, &prop, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemCreate(size=%zu, device=%d)", size, (int)cb->dev);
    *out = (vmm_handle)h;
    return GPU_OK;
}

/* Releases a handle. */
static int cuda_release(vmm_backend *b, vmm_handle h) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "release");
    if (err) return err;
    CUresult r = cb->f->MemRelease((CUmemGenericAllocationHandle)h);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemRelease(handle=%#" PRIx64 ")", h);
    return GPU_OK;
}

/* Maps the whole handle at va. */
static int cuda_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "map");
    if (err) return err;
    CUresult r = cb->f->MemMap((CUdeviceptr)va, size, 0, (CUmemGenericAllocationHandle)h, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemMap(va=%#" PRIxPTR ", size=%zu, handle=%#" PRIx64 ")", va, size, h);
    return GPU_OK;
}

/* Unmaps a range of whole mappings. */
static int cuda_unmap(vmm_backend *b, uintptr_t va, size_t size) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "unmap");
    if (err) return err;
    CUresult r = cb->f->MemUnmap((CUdeviceptr)va, size);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemUnmap(va=%#" PRIxPTR ", size=%zu)", va, size);
    return GPU_OK;
}

/* Sets the device's access to a range of whole mappings. */
static int cuda_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot) {
    cuda_backend *cb = cuda_of(b);
    CUmemAccessDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = (int)cb->dev;
    switch (prot) {
    case GPU_PROT_NONE: desc.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE; break;
    case GPU_PROT_READ: desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READ; break;
    case GPU_PROT_READ_WRITE: desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; break;
    default:
        return vmm_fail(b, GPU_ERR_INVALID, "cuMemSetAccess(va=%#" PRIxPTR ", size=%zu): unknown protection %d", va, size, (int)prot);
    }
    int err = cuda_enter(cb, "set_access");
    if (err) return err;
    CUresult r = cb->f->MemSetAccess((CUdeviceptr)va, size, &desc, 1);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemSetAccess(va=%#" PRIxPTR ", size=%zu, prot=%d)", va, size, (int)prot);
    return GPU_OK;
}

/* Sets another device's access to a range of whole mappings (peer access). The
 * driver refuses a device that cannot reach this one (no P2P path). */
static int cuda_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot) {
    cuda_backend *cb = cuda_of(b);
    CUmemAccessDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = device;
    desc.flags = prot == GPU_PROT_READ_WRITE ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                 : prot == GPU_PROT_READ     ? CU_MEM_ACCESS_FLAGS_PROT_READ
                                             : CU_MEM_ACCESS_FLAGS_PROT_NONE;
    int err = cuda_enter(cb, "grant");
    if (err) return err;
    CUresult r = cb->f->MemSetAccess((CUdeviceptr)va, size, &desc, 1);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemSetAccess(va=%#" PRIxPTR ", size=%zu, peer device=%d, prot=%d)", va, size,
                         device, (int)prot);
    return GPU_OK;
}

/* Waits for all work issued on the device's primary context. */
static int cuda_fence(vmm_backend *b) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "fence");
    if (err) return err;
    CUresult r = cb->f->CtxSynchronize();
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuCtxSynchronize");
    return GPU_OK;
}

/* Fills device memory and waits for it, on the backend's own non-blocking
 * stream: the heap zeroes only memory no GPU work uses any more (idle blocks), so
 * it needs no order with other streams, and a capture in progress on any other
 * stream is left alone. */
static int cuda_memset(vmm_backend *b, uintptr_t va, int byte, size_t size) {
    cuda_backend *cb = cuda_of(b);
    if (size == 0) return GPU_OK;
    int err = cuda_enter(cb, "memset");
    if (err) return err;
    CUresult r = cb->f->MemsetD8Async((CUdeviceptr)va, (unsigned char)byte, size, cb->quiet);
    if (r != CUDA_SUCCESS) {
        cuda_leave(cb);
        return cuda_fail(cb, cuda_code(r), r, "cuMemsetD8Async(va=%#" PRIxPTR ", byte=%d, size=%zu)", va, byte, size);
    }
    r = cb->f->StreamSynchronize(cb->quiet);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuStreamSynchronize(0) after cuMemsetD8(va=%#" PRIxPTR ", size=%zu)", va, size);
    return GPU_OK;
}

/* Copies device memory on the legacy stream and waits for it. */
static int cuda_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size) {
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

/* ---- stream order ------------------------------------------------------------ */

/* Records a new event on stream after the work issued there so far. */
/* An event after all work of the context (cuCtxRecordEvent): a fence that does
 * not block. */
static int cuda_fence_record(vmm_backend *b, vmm_event *out) {
    cuda_backend *cb = cuda_of(b);
    if (!cb->ctx_record_event) return vmm_fail(b, GPU_ERR_BACKEND, "cuCtxRecordEvent: not in this driver");
    int err = cuda_enter(cb, "fence_record");
    if (err) return err;
    CUevent ev = NULL;
    CUresult r = cb->f->EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
    if (r == CUDA_SUCCESS) {
        r = cb->ctx_record_event(cb->ctx, ev);
        if (r != CUDA_SUCCESS) cb->f->EventDestroy(ev);
    }
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuCtxRecordEvent");
    *out = (vmm_event)(uintptr_t)ev;
    return GPU_OK;
}

static int cuda_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "event_record");
    if (err) return err;
    CUevent ev = NULL;
    CUresult r = cb->f->EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
    if (r == CUDA_SUCCESS) {
        r = cb->f->EventRecord(ev, (CUstream)stream);
        if (r != CUDA_SUCCESS) cb->f->EventDestroy(ev);
    }
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuEventRecord(stream=%#" PRIxPTR ")", stream);
    *out = (vmm_event)(uintptr_t)ev;
    return GPU_OK;
}

/* GPU_OK when done, GH_PENDING when not yet. */
static int cuda_event_query(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "event_query");
    if (err) return err;
    CUresult r = cb->f->EventQuery((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
    if (r == CUDA_SUCCESS) return GPU_OK;
    if (r == CUDA_ERROR_NOT_READY) return GH_PENDING;
    return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuEventQuery");
}

static int cuda_event_wait(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "event_wait");
    if (err) return err;
    CUresult r = cb->f->EventSynchronize((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
    return r == CUDA_SUCCESS ? GPU_OK : cuda_fail(cb, GPU_ERR_BACKEND, r, "cuEventSynchronize");
}

static void cuda_event_release(vmm_backend *b, vmm_event ev) {
    cuda_backend *cb = cuda_of(b);
    if (cuda_enter(cb, "event_release") != GPU_OK) return;
    cb->f->EventDestroy((CUevent)(uintptr_t)ev);
    cuda_leave(cb);
}

/* Whether stream (0: any blocking stream, which the legacy stream reports as
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) is being captured. Querying does not
 * disturb a capture. */
static int cuda_capturing(vmm_backend *b, uintptr_t stream) {
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

/* ---- transfers, zero-copy and cuFile (file-backed memory, file.c) --------------
 *
 * A queue is a non-blocking stream of the primary context with one event per
 * slot; a copy is cuMemcpyHtoDAsync/DtoHAsync on it followed by a record of the
 * slot's event, and waiting is cuEventSynchronize. The events block (they do not
 * spin) because several loader threads wait at once while others read the file.
 * A blocking wait, though, wakes on the device's interrupt, tens of microseconds
 * or more after the copy ended (more in a virtual machine), and a load's last
 * wait adds that to every load; so a wait polls the event first, for up to
 * GPUHEAP_QUEUE_SPIN_US microseconds (default 200, 0: block at once), and only
 * then blocks. */

typedef struct cuda_queue {
    CUstream stream;
    unsigned slots;
    CUevent ev[]; /* one per slot */
} cuda_queue;

static int cuda_staging_alloc(vmm_backend *b, size_t size, void **out) {
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

static void cuda_staging_free(vmm_backend *b, void *p, size_t size) {
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

static int cuda_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out) {
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

static void cuda_queue_close(vmm_backend *b, vmm_queue *vq) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = (cuda_queue *)vq;
    if (cuda_enter(cb, "queue_close") != GPU_OK) return;
    cb->f->StreamSynchronize(q->stream);
    cuda_queue_destroy(cb, q);
    cuda_leave(cb);
}

static int cuda_queue_upload(vmm_backend *b, vmm_queue *vq, unsigned slot, uintptr_t dst, const void *src, size_t size) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = (cuda_queue *)vq;
    if (slot >= q->slots) return vmm_fail(b, GPU_ERR_INVALID, "queue_upload: slot %u of %u", slot, q->slots);
    int err = cuda_enter(cb, "queue_upload");
    if (err) return err;
    CUresult r = cb->f->MemcpyHtoDAsync((CUdeviceptr)dst, src, size, q->stream);
    if (r == CUDA_SUCCESS) r = cb->f->EventRecord(q->ev[slot], q->stream);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemcpyHtoDAsync(dst=%#" PRIxPTR ", size=%zu)", dst, size);
    return GPU_OK;
}

static int cuda_queue_download(vmm_backend *b, vmm_queue *vq, unsigned slot, void *dst, uintptr_t src, size_t size) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = (cuda_queue *)vq;
    if (slot >= q->slots) return vmm_fail(b, GPU_ERR_INVALID, "queue_download: slot %u of %u", slot, q->slots);
    int err = cuda_enter(cb, "queue_download");
    if (err) return err;
    CUresult r = cb->f->MemcpyDtoHAsync(dst, (CUdeviceptr)src, size, q->stream);
    if (r == CUDA_SUCCESS) r = cb->f->EventRecord(q->ev[slot], q->stream);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemcpyDtoHAsync(src=%#" PRIxPTR ", size=%zu)", src, size);
    return GPU_OK;
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

static uint64_t cuda_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cuda_queue_wait(vmm_backend *b, vmm_queue *vq, unsigned slot) {
    cuda_backend *cb = cuda_of(b);
    cuda_queue *q = (cuda_queue *)vq;
    if (slot >= q->slots) return vmm_fail(b, GPU_ERR_INVALID, "queue_wait: slot %u of %u", slot, q->slots);
    int err = cuda_enter(cb, "queue_wait");
    if (err) return err;
    uint64_t spin = cuda_queue_spin_ns();
    CUresult r = spin ? cb->f->EventQuery(q->ev[slot]) : CUDA_ERROR_NOT_READY;
    if (r == CUDA_ERROR_NOT_READY && spin) {
        uint64_t until = cuda_now_ns() + spin;
        do {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            r = cb->f->EventQuery(q->ev[slot]);
        } while (r == CUDA_ERROR_NOT_READY && cuda_now_ns() < until);
    }
    if (r == CUDA_ERROR_NOT_READY) r = cb->f->EventSynchronize(q->ev[slot]);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, GPU_ERR_BACKEND, r, "cuEventSynchronize (copy queue slot %u)", slot);
    return GPU_OK;
}

/* cuMemHostRegister read-only, then the device's address of the range (the
 * same as host's where the device has unified addressing). */
static int cuda_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev) {
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

static int cuda_unregister(vmm_backend *b, void *host) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "unregister");
    if (err) return err;
    CUresult r = cb->f->MemHostUnregister(host);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemHostUnregister(%p)", host);
    return GPU_OK;
}

/* cuFile (cufile.c) with the primary context current. */
static int cuda_direct_open(vmm_backend *b, int fd, vmm_direct **out) {
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

static int cuda_direct_read(vmm_backend *b, vmm_direct *d, uint64_t offset, size_t size, uintptr_t dst) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "direct_read");
    if (err) return err;
    char why[256] = "";
    err = cufile_read(d, dst, size, offset, why, sizeof why);
    if (err != GPU_OK) (void)vmm_fail(b, err, "%s", why);
    cuda_leave(cb);
    return err;
}

static void cuda_direct_close(vmm_backend *b, vmm_direct *d) {
    cuda_backend *cb = cuda_of(b);
    if (cuda_enter(cb, "direct_close") != GPU_OK) return;
    cufile_close(d);
    cuda_leave(cb);
}

/* Lets go of the primary context and frees the backend. The heap has already
 * unmapped, released and unreserved everything. */
static void cuda_close(vmm_backend *b) {
    cuda_backend *cb = cuda_of(b);
    if (!cb) return;
    if (cuda_enter(cb, "close") == GPU_OK) {
        cb->f->StreamDestroy(cb->quiet);
        cuda_leave(cb);
    }
    cb->f->DevicePrimaryCtxRelease(cb->dev);
    free(cb);
}

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

    CUmemAllocationProp prop = cuda_prop(dev);
    size_t min = 0, rec = 0;
    r = f->MemGetAllocationGranularity(&min, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r == CUDA_SUCCESS) r = f->MemGetAllocationGranularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (r != CUDA_SUCCESS)
        return vmm_fail(NULL, GPU_ERR_BACKEND, "cuMemGetAllocationGranularity(device=%d): %s", ordinal, cuda_loader_error_name(r));
    /* The heap needs a power of two; the recommended value must also be a multiple of the minimum. */
    bool min_ok = min && !(min & (min - 1));
    bool rec_ok = rec && !(rec & (rec - 1)) && min_ok && rec % min == 0;
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
    cb->base.ops = &cuda_ops;
    cb->base.caps.name = "cuda";
    cb->base.caps.max_reserve = CUDA_MAX_RESERVE;
    cb->base.caps.device = ordinal;
    cb->base.caps.host_accessible = false;
    err = cuda_describe(f, dev, ordinal, &cb->base.caps);
    if (err) {
        free(cb);
        return err;
    }
    r = f->DevicePrimaryCtxRetain(&cb->ctx, dev);
    if (r != CUDA_SUCCESS) {
        free(cb);
        return vmm_fail(NULL, cuda_code(r), "cuDevicePrimaryCtxRetain(device=%d): %s", ordinal, cuda_loader_error_name(r));
    }
    /* Newer than the table's 12.0 ABI: asked at the driver's own version. */
    cb->ctx_record_event = (CUresult(*)(CUcontext, CUevent))cuda_loader_proc_newest("cuCtxRecordEvent");
    if (cuda_enter(cb, "open") == GPU_OK) {
        r = f->StreamCreate(&cb->quiet, CU_STREAM_NON_BLOCKING);
        cuda_leave(cb);
    }
    if (!cb->quiet) {
        f->DevicePrimaryCtxRelease(dev);
        free(cb);
        return vmm_fail(NULL, GPU_ERR_BACKEND, "cuStreamCreate(device=%d): %s", ordinal, cuda_loader_error_name(r));
    }
    *out = &cb->base;
    return GPU_OK;
}
