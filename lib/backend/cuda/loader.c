/*
 * loader.c — the CUDA driver, opened at run time: dlopen of libcuda.so.1, the
 * driver's own cuGetProcAddress, and the table of entry points (loader.h).
 *
 * libcuda is never linked, because the library has to load where there is no
 * driver. The first user dlopens libcuda.so.1, finds cuGetProcAddress and
 * resolves the rest of the table through it, at one ABI version and with the
 * legacy default stream, so every user sees the same entry points the header's
 * macros would pick. That happens once per process (pthread_once); the table is
 * then shared, read-only, by every CUDA backend, the interposer and the GPU tests.
 * The library is never dlclosed, since function pointers into it live as long as
 * the process. A failed load is remembered with its reason and not retried.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cuda/loader.h"

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
    CUDA_ENTRY(MemSetAccess), CUDA_ENTRY(MemGetInfo), CUDA_ENTRY(MemExportToShareableHandle),
    CUDA_ENTRY(MemImportFromShareableHandle), CUDA_ENTRY(MemsetD8), CUDA_ENTRY(MemcpyDtoD),
    CUDA_ENTRY(MemcpyDtoH), CUDA_ENTRY(MemcpyHtoD), CUDA_ENTRY(StreamCreate), CUDA_ENTRY(StreamDestroy),
    CUDA_ENTRY(StreamSynchronize), CUDA_ENTRY(EventCreate), CUDA_ENTRY(EventRecord), CUDA_ENTRY(EventQuery),
    CUDA_ENTRY(EventSynchronize), CUDA_ENTRY(EventDestroy), CUDA_ENTRY(StreamIsCapturing), CUDA_ENTRY(StreamWaitEvent),
    CUDA_ENTRY(MemsetD8Async),
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

/* True once the driver is loaded; loads it on the first call. */
static bool cuda_loaded(void) {
    pthread_once(&cuda_once, cuda_load);
    return cuda_status == GPU_OK;
}

int cuda_loader_get(const struct cuda_fns **out) {
    if (!cuda_loaded()) return cuda_status;
    if (out) *out = &cuda_table;
    return GPU_OK;
}

void *cuda_loader_proc(const char *symbol) {
    if (!cuda_loaded() || !symbol) return NULL;
    return cuda_resolve(symbol, NULL);
}

/* The driver's version, asked once (a backend's open resolves two entry points
 * at it: asked each time, 14-19 us of a heap's creation on an H200). 0: unknown. */
static int driver_version(void) {
    static _Atomic int known;
    int version = atomic_load_explicit(&known, memory_order_relaxed);
    if (version) return version;
    CUresult (*get)(int *) = (CUresult(*)(int *))cuda_resolve("cuDriverGetVersion", NULL);
    if (!get || get(&version) != CUDA_SUCCESS) return 0;
    atomic_store_explicit(&known, version, memory_order_relaxed);
    return version;
}

void *cuda_loader_proc_newest(const char *symbol) {
    if (!cuda_loaded() || !symbol) return NULL;
    int version = driver_version();
    return version ? cuda_resolve_at(symbol, version, NULL) : NULL;
}

const char *cuda_loader_error(void) {
    (void)cuda_loaded();
    return cuda_message;
}

const char *cuda_loader_error_name(CUresult res) {
    const char *name = NULL;
    if (cuda_loader_get(NULL) != GPU_OK || cuda_table.GetErrorName(res, &name) != CUDA_SUCCESS || !name)
        return "unrecognised CUDA error";
    return name;
}
