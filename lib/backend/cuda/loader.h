/*
 * loader.h — the CUDA driver, loaded at run time, as one table of entry points.
 *
 * gpuheap never links libcuda: the library must load, and its host backend work,
 * on machines with no GPU and no driver. loader.c opens libcuda.so.1 with
 * dlopen the first time anyone asks, finds cuGetProcAddress, and resolves every
 * other entry point through it at the CUDA 12.0 ABI, legacy default stream (so
 * "cuMemcpyDtoD" comes back as the _v2 entry the header's macros would pick, and
 * stream 0 means the legacy stream). The table is process-wide,
 * filled once, and read-only afterwards; the CUDA backend, the interposer and the
 * GPU tests all call the driver through it. Entry points outside the table (the
 * tests' cuMemAlloc, cuMemsetD8Async and the like) come from cuda_loader_proc, by
 * the same lookup.
 *
 * Members are named after the driver functions without their "cu" prefix, because
 * cuda.h #defines several of the full names to versioned ones (cuMemcpyDtoD is
 * cuMemcpyDtoD_v2), which would rename struct members too. Types come from the
 * header's own prototypes; where cuda.h renames a function the _v2 prototype is
 * used, which is the one a 12.0 lookup returns.
 *
 * The loader does not call cuInit: whoever uses the table calls Init(0) first
 * (it is cheap to call again).
 */
#ifndef GPUHEAP_CUDA_LOADER_H
#define GPUHEAP_CUDA_LOADER_H

#include <cuda.h>

#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "loader.h resolves the legacy-stream entry points; do not define CUDA_API_PER_THREAD_DEFAULT_STREAM"
#endif

/* The ABI version asked of cuGetProcAddress: what every entry below was written for. */
#define CUDA_LOADER_VERSION 12000

struct cuda_fns {
    /* errors, driver, devices */
    __typeof__(cuGetErrorName) *GetErrorName;
    __typeof__(cuInit) *Init;
    __typeof__(cuDeviceGetCount) *DeviceGetCount;
    __typeof__(cuDeviceGet) *DeviceGet;
    __typeof__(cuDeviceGetName) *DeviceGetName;
    __typeof__(cuDeviceGetAttribute) *DeviceGetAttribute;
    __typeof__(cuDeviceTotalMem_v2) *DeviceTotalMem;

    /* contexts */
    __typeof__(cuDevicePrimaryCtxRetain) *DevicePrimaryCtxRetain;
    __typeof__(cuDevicePrimaryCtxRelease_v2) *DevicePrimaryCtxRelease;
    __typeof__(cuCtxPushCurrent_v2) *CtxPushCurrent;
    __typeof__(cuCtxPopCurrent_v2) *CtxPopCurrent;
    __typeof__(cuCtxGetCurrent) *CtxGetCurrent;
    __typeof__(cuCtxGetDevice) *CtxGetDevice;
    __typeof__(cuCtxSynchronize) *CtxSynchronize;

    /* the virtual memory API */
    __typeof__(cuMemGetAllocationGranularity) *MemGetAllocationGranularity;
    __typeof__(cuMemAddressReserve) *MemAddressReserve;
    __typeof__(cuMemAddressFree) *MemAddressFree;
    __typeof__(cuMemCreate) *MemCreate;
    __typeof__(cuMemRelease) *MemRelease;
    __typeof__(cuMemMap) *MemMap;
    __typeof__(cuMemUnmap) *MemUnmap;
    __typeof__(cuMemSetAccess) *MemSetAccess;
    __typeof__(cuMemGetInfo_v2) *MemGetInfo;
    __typeof__(cuMemExportToShareableHandle) *MemExportToShareableHandle; /* memory shared between processes */
    __typeof__(cuMemImportFromShareableHandle) *MemImportFromShareableHandle;

    /* memory operations (legacy default stream) */
    __typeof__(cuMemsetD8_v2) *MemsetD8;
    __typeof__(cuMemcpyDtoD_v2) *MemcpyDtoD;
    __typeof__(cuMemcpyDtoH_v2) *MemcpyDtoH;
    __typeof__(cuMemcpyHtoD_v2) *MemcpyHtoD;

    /* streams and events */
    __typeof__(cuStreamCreate) *StreamCreate;
    __typeof__(cuStreamDestroy_v2) *StreamDestroy;
    __typeof__(cuStreamSynchronize) *StreamSynchronize;
    __typeof__(cuEventCreate) *EventCreate;
    __typeof__(cuEventRecord) *EventRecord;
    __typeof__(cuEventQuery) *EventQuery;
    __typeof__(cuEventSynchronize) *EventSynchronize;
    __typeof__(cuEventDestroy_v2) *EventDestroy;
    __typeof__(cuStreamIsCapturing) *StreamIsCapturing;
    __typeof__(cuStreamWaitEvent) *StreamWaitEvent;
    __typeof__(cuMemsetD8Async) *MemsetD8Async;
    __typeof__(cuThreadExchangeStreamCaptureMode) *ThreadExchangeStreamCaptureMode;

    /* host memory and host <-> device transfers (file-backed memory, lib/file) */
    __typeof__(cuMemcpyHtoDAsync_v2) *MemcpyHtoDAsync;
    __typeof__(cuMemcpyDtoHAsync_v2) *MemcpyDtoHAsync;
    __typeof__(cuMemHostAlloc) *MemHostAlloc;
    __typeof__(cuMemFreeHost) *MemFreeHost;
    __typeof__(cuMemHostRegister_v2) *MemHostRegister;
    __typeof__(cuMemHostUnregister) *MemHostUnregister;
    __typeof__(cuMemHostGetDevicePointer_v2) *MemHostGetDevicePointer;

    /* modules and kernels (tests) */
    __typeof__(cuModuleLoadData) *ModuleLoadData;
    __typeof__(cuModuleGetFunction) *ModuleGetFunction;
    __typeof__(cuLaunchKernel) *LaunchKernel;
};

/* Loads the driver on first use (thread-safe, once per process) and sets *out to
 * the table. Returns GPU_OK, or GPU_ERR_NO_DRIVER when libcuda.so.1 is missing or
 * lacks an entry point; cuda_loader_error says which. A failed load is not retried. */
int cuda_loader_get(const struct cuda_fns **out);

/* Any other driver entry point, by its base name ("cuMemsetD8Async"), resolved the
 * way the table is: through the same cuGetProcAddress, at CUDA_LOADER_VERSION,
 * legacy default stream. Loads the driver on first use like cuda_loader_get.
 * Returns NULL when the load failed (cuda_loader_error says why) or the driver
 * lacks the symbol. Thread-safe. The caller casts the result to the prototype
 * cuda.h gives for that version (the _v2 one where cuda.h renames the name). */
void *cuda_loader_proc(const char *symbol);

/* cuda_loader_proc for an entry point newer than the table's ABI, asked at the
 * driver's own version (cuDriverGetVersion); NULL when this driver lacks it. */
void *cuda_loader_proc_newest(const char *symbol);

/* Why the load failed ("" when it did not). */
const char *cuda_loader_error(void);

/* The driver's name for a result ("CUDA_ERROR_OUT_OF_MEMORY"), or
 * "unrecognised CUDA error" when the driver is not loaded or does not know it;
 * never NULL. */
const char *cuda_loader_error_name(CUresult res);

#endif /* GPUHEAP_CUDA_LOADER_H */
