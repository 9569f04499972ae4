/*
 * fake_cuda_vmm.c — the rest of a driver for fake_cuda.c: every entry point
 * gpuheap's CUDA backend loads (lib/backend/cuda/loader.c's table), so that a
 * heap opens on it and the interposer serves allocations (built with fake_cuda.c
 * and -DFAKE_CUDA_VMM as libfake_cuda_vmm.so; test_served.c uses it).
 *
 * Nothing is ever touched through the addresses it hands out: a reservation is
 * a number from a counter far above user space, a physical allocation is a
 * number and a size counted against a device of FAKE_DEVICE_BYTES (cuMemCreate
 * answers CUDA_ERROR_OUT_OF_MEMORY past it, as a full GPU does), and mapping,
 * access, copies, events (context-wide ones and stream waits too) and syncs
 * succeed at once. The device is one, device 0, with the virtual memory API and
 * no exportable memory.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FAKE_DEVICE_BYTES ((size_t)1 << 30) /* what cuMemCreate can hand out in all */
#define FAKE_GRANULARITY ((size_t)2 << 20)
#define FAKE_HANDLES 4096

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

static size_t created;                 /* bytes of live handles */
static size_t handle_size[FAKE_HANDLES]; /* handle i's size (0: free) */
static CUdeviceptr next_va = (CUdeviceptr)1 << 52;
static int tokens[4]; /* what contexts, streams and events point at */

static CUresult fake_ok(void) { return 0; }
static CUresult fake_error_name(CUresult r, const char **name) {
    *name = r == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : "CUDA_ERROR_FAKE";
    return 0;
}
static CUresult fake_device_count(int *n) {
    *n = 1;
    return 0;
}
static CUresult fake_device_get(int *dev, int ordinal) {
    *dev = ordinal;
    return ordinal == 0 ? 0 : 101; /* CUDA_ERROR_INVALID_DEVICE */
}
static CUresult fake_device_name(char *name, int len, int dev) {
    (void)dev;
    strncpy(name, "fake VMM device", (size_t)len - 1);
    name[len - 1] = '\0';
    return 0;
}
static CUresult fake_device_attribute(int *v, int attr, int dev) {
    (void)dev;
    *v = attr == 102; /* CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED; no exportable handles */
    return 0;
}
static CUresult fake_total_mem(size_t *bytes, int dev) {
    (void)dev;
    *bytes = FAKE_DEVICE_BYTES;
    return 0;
}
static CUresult fake_ctx_retain(void **ctx, int dev) {
    (void)dev;
    *ctx = &tokens[0];
    return 0;
}
static CUresult fake_granularity(size_t *g, const void *prop, int option) {
    (void)prop, (void)option;
    *g = FAKE_GRANULARITY;
    return 0;
}
static CUresult fake_reserve(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr, unsigned long long flags) {
    (void)align, (void)addr, (void)flags;
    *p = next_va;
    next_va += (size + FAKE_GRANULARITY - 1) / FAKE_GRANULARITY * FAKE_GRANULARITY;
    return 0;
}
static CUresult fake_create(unsigned long long *h, size_t size, const void *prop, unsigned long long flags) {
    (void)prop, (void)flags;
    if (size > FAKE_DEVICE_BYTES - created) return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    for (size_t i = 1; i < FAKE_HANDLES; i++)
        if (!handle_size[i]) {
            handle_size[i] = size;
            created += size;
            *h = i;
            return 0;
        }
    return 2;
}
static CUresult fake_release(unsigned long long h) {
    if (!h || h >= FAKE_HANDLES || !handle_size[h]) return 1; /* CUDA_ERROR_INVALID_VALUE */
    created -= handle_size[h];
    handle_size[h] = 0;
    return 0;
}
static CUresult fake_stream_create(void **s, unsigned flags) {
    (void)flags;
    *s = &tokens[1];
    return 0;
}
static CUresult fake_event_create(void **e, unsigned flags) {
    (void)flags;
    *e = &tokens[2];
    return 0;
}
static CUresult fake_is_capturing(void *stream, int *status) {
    (void)stream;
    *status = 0; /* CU_STREAM_CAPTURE_STATUS_NONE */
    return 0;
}
static CUresult fake_driver_version(int *v) {
    *v = 13000;
    return 0;
}
static CUresult fake_host_alloc(void **p, size_t size, unsigned flags) {
    (void)p, (void)size, (void)flags;
    return 2; /* nothing here needs pinned memory */
}

/* The entry points the backend's table names (loader.c), by cuGetProcAddress's
 * base name; those fake_cuda.c has (cuInit, contexts, cuMemGetInfo) come from it. */
static const struct {
    const char *name;
    void *fn;
} vmm_table[] = {
    {"cuGetErrorName", (void *)fake_error_name},
    {"cuDeviceGetCount", (void *)fake_device_count},
    {"cuDeviceGet", (void *)fake_device_get},
    {"cuDeviceGetName", (void *)fake_device_name},
    {"cuDeviceGetAttribute", (void *)fake_device_attribute},
    {"cuDeviceTotalMem", (void *)fake_total_mem},
    {"cuDevicePrimaryCtxRetain", (void *)fake_ctx_retain},
    {"cuDevicePrimaryCtxRelease", (void *)fake_ok},
    {"cuCtxSynchronize", (void *)fake_ok},
    {"cuMemGetAllocationGranularity", (void *)fake_granularity},
    {"cuMemAddressReserve", (void *)fake_reserve},
    {"cuMemAddressFree", (void *)fake_ok},
    {"cuMemCreate", (void *)fake_create},
    {"cuMemRelease", (void *)fake_release},
    {"cuMemMap", (void *)fake_ok},
    {"cuMemUnmap", (void *)fake_ok},
    {"cuMemSetAccess", (void *)fake_ok},
    {"cuMemExportToShareableHandle", (void *)fake_ok},
    {"cuMemImportFromShareableHandle", (void *)fake_ok},
    {"cuMemsetD8", (void *)fake_ok},
    {"cuMemcpyDtoD", (void *)fake_ok},
    {"cuMemcpyDtoH", (void *)fake_ok},
    {"cuMemcpyHtoD", (void *)fake_ok},
    {"cuStreamCreate", (void *)fake_stream_create},
    {"cuStreamDestroy", (void *)fake_ok},
    {"cuStreamSynchronize", (void *)fake_ok},
    {"cuEventCreate", (void *)fake_event_create},
    {"cuEventRecord", (void *)fake_ok},
    {"cuEventQuery", (void *)fake_ok},
    {"cuEventSynchronize", (void *)fake_ok},
    {"cuEventDestroy", (void *)fake_ok},
    {"cuStreamIsCapturing", (void *)fake_is_capturing},
    {"cuStreamWaitEvent", (void *)fake_ok},
    {"cuDriverGetVersion", (void *)fake_driver_version}, /* so that cuCtxRecordEvent is asked for */
    {"cuCtxRecordEvent", (void *)fake_ok},
    {"cuMemsetD8Async", (void *)fake_ok},
    {"cuThreadExchangeStreamCaptureMode", (void *)fake_ok},
    {"cuModuleLoadData", (void *)fake_ok},
    {"cuMemcpyHtoDAsync", (void *)fake_ok},
    {"cuMemcpyDtoHAsync", (void *)fake_ok},
    {"cuMemHostAlloc", (void *)fake_host_alloc},
    {"cuMemFreeHost", (void *)fake_ok},
    {"cuMemHostRegister", (void *)fake_ok},
    {"cuMemHostUnregister", (void *)fake_ok},
    {"cuMemHostGetDevicePointer", (void *)fake_ok},
    {"cuModuleGetFunction", (void *)fake_ok},
    {"cuLaunchKernel", (void *)fake_ok},
};

/* fake_cuda.c's cuGetProcAddress asks here for what it lacks. */
void *fake_vmm_lookup(const char *name) {
    for (size_t i = 0; i < sizeof vmm_table / sizeof vmm_table[0]; i++)
        if (!strcmp(name, vmm_table[i].name)) return vmm_table[i].fn;
    return NULL;
}

/* Bytes of live physical allocations (cuMemCreate less cuMemRelease). */
__attribute__((visibility("default"))) size_t fake_cuda_created(void) { return created; }
