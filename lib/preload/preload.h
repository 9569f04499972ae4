/*
 * preload.h — the parts of libgpuheap-preload.so, and the slice of the CUDA ABI
 * they speak.
 *
 * The interposer makes an unchanged CUDA program take its device memory from
 * gpuheap. It is loaded with LD_PRELOAD (tools/gpuheap-run) and meets the
 * program at two levels:
 *  - runtime.c defines cudaMalloc, cudaFree and their kin, which a program that
 *    links libcudart dynamically (PyTorch, CuPy) calls through the dynamic linker;
 *  - resolve.c wraps dlsym and cuGetProcAddress, through which the CUDA runtime —
 *    linked statically into nvcc's programs, or dynamically — finds the driver's
 *    entry points; for the handful gpuheap serves it hands back driver.c's
 *    wrappers (cuMemAlloc_v2, cuMemFree_v2, cuMemGetInfo_v2, the range queries,
 *    peer access, IPC), and the driver's own function for everything else.
 * serve.c decides what gpuheap serves: one default heap per device, on the CUDA
 * backend only; anything the heap does not own, or cannot serve, goes to the
 * real function untouched. ipc.c decides the same for IPC memory handles: heap
 * memory is exported, and gpuheap's handles opened, by libgpuheap's own IPC;
 * other pointers and the driver's handles go to the driver. plugin.c exports
 * entry points with the signatures of PyTorch's CUDAPluggableAllocator and
 * CuPy's CFunctionAllocator; symbols.c hands out the library's own API by name
 * (gpu_preload_symbol).
 *
 * No CUDA header is needed to build it (CI has none): the types below are the
 * ABI — every CUDA enum is a 4-byte int, every handle a pointer, CUdeviceptr an
 * unsigned 64-bit integer — and abi_check.c compares each constant with cuda.h
 * where the toolkit is installed.
 */
#ifndef GPUHEAP_PRELOAD_H
#define GPUHEAP_PRELOAD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/api.h"
#include "core/heap.h"
#include "error.h"

#define PL_EXPORT __attribute__((visibility("default")))

/* ---- the CUDA ABI, by hand ------------------------------------------------ */

typedef int pl_cu_result;              /* CUresult */
typedef unsigned long long pl_cu_ptr;  /* CUdeviceptr */
typedef void *pl_cu_ctx;               /* CUcontext */
typedef void *pl_cu_stream;            /* CUstream, cudaStream_t */
typedef int pl_cuda_error;             /* cudaError_t */

enum {
    PL_CU_SUCCESS = 0,                           /* CUDA_SUCCESS */
    PL_CU_ERROR_INVALID_VALUE = 1,               /* CUDA_ERROR_INVALID_VALUE */
    PL_CU_ERROR_OUT_OF_MEMORY = 2,               /* CUDA_ERROR_OUT_OF_MEMORY */
    PL_CU_ERROR_NOT_INITIALIZED = 3,             /* CUDA_ERROR_NOT_INITIALIZED */
    PL_CU_ERROR_NO_DEVICE = 100,                 /* CUDA_ERROR_NO_DEVICE */
    PL_CU_ERROR_MAP_FAILED = 205,                /* CUDA_ERROR_MAP_FAILED */
    PL_CU_ERROR_NOT_FOUND = 500,                 /* CUDA_ERROR_NOT_FOUND */
    PL_CU_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704, /* CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED */
    PL_CU_ERROR_NOT_SUPPORTED = 801,             /* CUDA_ERROR_NOT_SUPPORTED */
    PL_CU_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900, /* CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED */
    PL_CU_ERROR_UNKNOWN = 999,                   /* CUDA_ERROR_UNKNOWN */
};
enum {
    PL_CU_POINTER_ATTRIBUTE_RANGE_START_ADDR = 11, /* CU_POINTER_ATTRIBUTE_RANGE_START_ADDR */
    PL_CU_POINTER_ATTRIBUTE_RANGE_SIZE = 12,       /* CU_POINTER_ATTRIBUTE_RANGE_SIZE */
};
enum {
    PL_CU_GET_PROC_ADDRESS_LEGACY_STREAM = 1,             /* CU_GET_PROC_ADDRESS_LEGACY_STREAM */
    PL_CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 2, /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */
};
enum {
    PL_CUDA_SUCCESS = 0,                          /* cudaSuccess */
    PL_CUDA_ERROR_INVALID_VALUE = 1,              /* cudaErrorInvalidValue */
    PL_CUDA_ERROR_MEMORY_ALLOCATION = 2,          /* cudaErrorMemoryAllocation */
    PL_CUDA_ERROR_INITIALIZATION = 3,             /* cudaErrorInitializationError */
    PL_CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704, /* cudaErrorPeerAccessAlreadyEnabled */
    PL_CUDA_ERROR_NOT_SUPPORTED = 801,            /* cudaErrorNotSupported */
};
/* The IPC codes answer both levels: every CUresult ipc.c returns has the same
 * number as the cudaError_t a runtime caller expects for the same failure
 * (cudaErrorMemoryAllocation 2, cudaErrorNoDevice 100,
 * cudaErrorMapBufferObjectFailed 205, cudaErrorStreamCaptureUnsupported 900,
 * cudaErrorUnknown 999; abi_check.c holds them to it). */

/* CUipcMemHandle and cudaIpcMemHandle_t: 64 bytes, alignment 1, passed by value
 * to the open calls (abi_check.c). */
#define PL_IPC_HANDLE_SIZE 64
typedef struct pl_ipc_handle {
    unsigned char bytes[PL_IPC_HANDLE_SIZE];
} pl_ipc_handle;
_Static_assert(sizeof(pl_ipc_handle) == PL_IPC_HANDLE_SIZE && _Alignof(pl_ipc_handle) == 1,
               "pl_ipc_handle is passed by value as CUDA's handles are");
enum { PL_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1 }; /* CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, cudaIpcMemLazyEnablePeerAccess */

/* cuGetProcAddress as CUDA 12.0 and later export it (cuGetProcAddress_v2), and
 * before (no symbolStatus). */
typedef pl_cu_result (*pl_getproc_v2_fn)(const char *symbol, void **pfn, int version, uint64_t flags, int *status);
typedef pl_cu_result (*pl_getproc_v1_fn)(const char *symbol, void **pfn, int version, uint64_t flags);

/* ---- resolve.c: real functions and the wrappers handed out --------------------- */

/* The driver entry points gpuheap serves, each one ABI (one exported name). */
typedef enum pl_entry {
    PL_GET_PROC_ADDRESS_V2,  /* cuGetProcAddress_v2 */
    PL_GET_PROC_ADDRESS_V1,  /* cuGetProcAddress (before 12.0) */
    PL_MEM_ALLOC,            /* cuMemAlloc_v2 */
    PL_MEM_FREE,             /* cuMemFree_v2 */
    PL_MEM_FREE_ASYNC,       /* cuMemFreeAsync */
    PL_MEM_FREE_ASYNC_PTSZ,  /* cuMemFreeAsync_ptsz */
    PL_MEM_GET_INFO,         /* cuMemGetInfo_v2 */
    PL_MEM_GET_ADDRESS_RANGE, /* cuMemGetAddressRange_v2 */
    PL_POINTER_GET_ATTRIBUTE, /* cuPointerGetAttribute */
    PL_POINTER_GET_ATTRIBUTES, /* cuPointerGetAttributes */
    PL_CTX_ENABLE_PEER_ACCESS, /* cuCtxEnablePeerAccess */
    PL_CTX_DISABLE_PEER_ACCESS, /* cuCtxDisablePeerAccess */
    PL_IPC_GET_MEM_HANDLE,   /* cuIpcGetMemHandle */
    PL_IPC_OPEN_MEM_HANDLE,  /* cuIpcOpenMemHandle_v2 (CUDA 11.0 on) */
    PL_IPC_OPEN_MEM_HANDLE_V1, /* cuIpcOpenMemHandle (before 11.0; the same arguments) */
    PL_IPC_CLOSE_MEM_HANDLE, /* cuIpcCloseMemHandle */
    PL_STREAM_CREATE,        /* cuStreamCreate (order.c: a non-blocking stream ends legacy free order) */
    PL_STREAM_CREATE_WITH_PRIORITY, /* cuStreamCreateWithPriority */
    PL_STREAM_DESTROY,       /* cuStreamDestroy_v2 (a listed stream leaves the list) */
    PL_CTX_CREATE_V2,        /* cuCtxCreate_v2 (a context of the program's own ends it too) */
    PL_CTX_CREATE_V3,        /* cuCtxCreate_v3 (CUDA 11.4 on) */
    PL_CTX_CREATE_V4,        /* cuCtxCreate_v4 (CUDA 12.5 on) */
    PL_CTX_FROM_GREEN_CTX,   /* cuCtxFromGreenCtx */
    PL_GREEN_CTX_STREAM_CREATE, /* cuGreenCtxStreamCreate */
    PL_ENTRIES
} pl_entry;

/* glibc's dlsym (the interposer replaces the global one); never NULL once
 * pl_real_dlsym_get has run. */
void *(*pl_real_dlsym_get(void))(void *, const char *);
/* Loads the driver's side of the table once (thread-safe); false without a
 * driver, and then every wrapper passes through. */
bool pl_driver_ready(void);
/* The driver's own function for e (NULL without a driver or symbol). */
void *pl_real(pl_entry e);
/* The function to hand out for p, a driver function the caller resolved: the
 * wrapper when p is one gpuheap serves, else p. */
void *pl_wrap(void *p);
/* The real function name of the CUDA runtime that the program loaded
 * (libcudart.so.*), or NULL when none is loaded. */
void *pl_cudart(const char *name);
/* pl_cudart(name), cached in *slot once found (a static of the caller's). */
void *pl_cudart_cached(void *_Atomic *slot, const char *name);
/* True when this library's dlsym is the process's (LD_PRELOAD): every driver
 * entry point the program resolves passes through pl_wrap. */
bool pl_interposing(void);
/* The real current context and its device: false when no context is current. */
bool pl_current_device(int *dev);
/* The device of a context (peer access). */
bool pl_context_device(pl_cu_ctx ctx, int *dev);

/* The wrapped resolvers (resolve.c). */
pl_cu_result pl_get_proc_address_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status);
pl_cu_result pl_get_proc_address_v1(const char *symbol, void **pfn, int version, uint64_t flags);

/* ---- driver.c: the wrappers (exported under the driver's names too) ------------- */

pl_cu_result cuMemAlloc_v2(pl_cu_ptr *dptr, size_t size);
pl_cu_result cuMemFree_v2(pl_cu_ptr dptr);
pl_cu_result cuMemFreeAsync(pl_cu_ptr dptr, pl_cu_stream stream);
pl_cu_result cuMemFreeAsync_ptsz(pl_cu_ptr dptr, pl_cu_stream stream);
pl_cu_result cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes);
pl_cu_result cuMemGetAddressRange_v2(pl_cu_ptr *base, size_t *size, pl_cu_ptr dptr);
pl_cu_result cuPointerGetAttribute(void *data, int attribute, pl_cu_ptr ptr);
pl_cu_result cuPointerGetAttributes(unsigned n, int *attributes, void **data, pl_cu_ptr ptr);
pl_cu_result cuCtxEnablePeerAccess(pl_cu_ctx peer, unsigned flags);
pl_cu_result cuCtxDisablePeerAccess(pl_cu_ctx peer);
pl_cu_result cuIpcGetMemHandle(void *handle, pl_cu_ptr dptr);
pl_cu_result cuIpcOpenMemHandle_v2(pl_cu_ptr *pdptr, pl_ipc_handle handle, unsigned flags);
pl_cu_result cuIpcOpenMemHandle(pl_cu_ptr *pdptr, pl_ipc_handle handle, unsigned flags);
pl_cu_result cuIpcCloseMemHandle(pl_cu_ptr dptr);
/* Set by cuMemGetInfo_v2 when it counted idle heap memory as free on this
 * thread, so that cudaMemGetInfo, which may call it, does not count it twice. */
extern _Thread_local bool pl_info_adjusted;

/* ---- serve.c: what gpuheap serves ------------------------------------------------ */

/* Who asked, for the exit report. */
typedef enum pl_via { PL_VIA_RUNTIME, PL_VIA_DRIVER, PL_VIA_PLUGIN, PL_VIAS } pl_via;

/* The CUDA heap of device dev, or NULL when the interposer passes through
 * (no driver, no device, the host backend configured, or opening failed once). */
gpu_heap_t *pl_heap(int dev);
/* Where an allocation on dev goes: pl_heap(dev), or inside a region of the
 * calling thread its tag's heap on dev (gh_heap_for_alloc); NULL: pass through. */
gpu_heap_t *pl_heap_for_alloc(int dev);
/* size bytes from h at cudaMalloc's alignment; NULL on failure. The caller then
 * asks the real function, which reports the error the program expects — unless
 * *oom is set (oom may be NULL): under a cap (gpu_limit) the heap refused as out
 * of memory, and the caller answers out of memory itself, since the driver's
 * allocation would pass the cap. */
void *pl_alloc(gpu_heap_t *h, size_t size, pl_via via, bool *oom);
/* Counts an allocation passed on to the driver. */
void pl_count_forwarded_alloc(void);

typedef enum pl_free_result {
    PL_FREE_FOREIGN, /* not heap memory: the real free takes it */
    PL_FREE_DONE,    /* freed by gpuheap */
    PL_FREE_INVALID, /* inside a heap but not a live block (double free, interior pointer) */
} pl_free_result;
pl_free_result pl_free(uintptr_t p);

/* Bytes the heap of dev holds idle or in quarantine: free to the program. */
size_t pl_idle_bytes(int dev);
/* The driver's memory info as the program sees it: dev's idle heap bytes count
 * as free; under a cap, the total is at most the cap and free at most the room
 * left under it; free at most the total. total_bytes may be NULL. */
void pl_add_idle(int dev, size_t *free_bytes, size_t *total_bytes);
/* The heap that owns p, or NULL. */
gpu_heap_t *pl_owner(uintptr_t p);
/* Device accessor may now reach owner's memory (or no longer: future extents). */
void pl_peer_enable(int owner, int accessor);
void pl_peer_disable(int owner, int accessor);
/* The alignment cudaMalloc gives a block of size bytes. */
size_t pl_alignment_for(size_t size);
/* Reads the default heaps' configuration and installs the interposer's error
 * handler, once; every served call does it first. */
void pl_setup(void);

/* ---- order.c: the free order under the interposer -------------------------------- */

/* Sets legacy free order when preloaded, unless GPUHEAP_FREE_ORDER=event or the
 * program already did what ends it (pl_setup calls it once). */
void pl_order_setup(void);
/* The order now, and why, for the exit report. */
void pl_order_describe(char *buf, size_t len);
pl_cu_result cuStreamCreate(pl_cu_stream *stream, unsigned flags);
pl_cu_result cuStreamCreateWithPriority(pl_cu_stream *stream, unsigned flags, int priority);
pl_cu_result cuStreamDestroy_v2(pl_cu_stream stream);
pl_cu_result cuCtxCreate_v2(pl_cu_ctx *ctx, unsigned flags, int dev);
pl_cu_result cuCtxCreate_v3(pl_cu_ctx *ctx, void *affinity, int n, unsigned flags, int dev);
pl_cu_result cuCtxCreate_v4(pl_cu_ctx *ctx, void *params, unsigned flags, int dev);
pl_cu_result cuCtxFromGreenCtx(pl_cu_ctx *ctx, void *green);
pl_cu_result cuGreenCtxStreamCreate(pl_cu_stream *stream, void *green, unsigned flags, int priority);

/* ---- symbols.c: this copy's public API, by name ---------------------------------- */

/* The address of gpuheap's public function name (gpuheap.h) in this copy of
 * the library, or NULL for a name it does not have. Exported: the interposer
 * hides the API it links (so that it never interposes a program's own
 * libgpuheap.so), and a program that must reach the heap serving it — the
 * Python package under gpuheap-run, or beside gpu_torch_alloc — asks here. */
PL_EXPORT void *gpu_preload_symbol(const char *name);

/* ---- ipc.c: IPC memory handles ------------------------------------------------------ */

/* The three calls, for the counters. */
typedef enum pl_ipc_op { PL_IPC_GET, PL_IPC_OPEN, PL_IPC_CLOSE, PL_IPC_OPS } pl_ipc_op;
/* What an IPC call did: gpuheap served it (and it succeeded or failed), or the
 * driver took it. */
typedef struct pl_ipc_counts {
    uint64_t served[PL_IPC_OPS], failed[PL_IPC_OPS], passed[PL_IPC_OPS];
} pl_ipc_counts;

/* The answer of ipc.c's deciders when the call is not gpuheap's: the caller
 * calls the real function (the decider has counted it as passed on). */
#define PL_IPC_PASS (-1)
/* Each returns the code to answer — a CUresult, equal to the cudaError_t the
 * runtime would give — or PL_IPC_PASS for the real function. get: p anywhere
 * inside a live heap block exports that block (64 bytes into handle); open: a
 * handle gpuheap made, mapped at *out (out may be NULL: invalid value); close: a
 * pointer gpuheap imported. Memory this process imported through gpuheap is not
 * exported again (invalid value). `call` names the entry point in messages. */
int pl_ipc_get(void *handle, uintptr_t p, const char *call);
int pl_ipc_open(uintptr_t *out, const pl_ipc_handle *handle, unsigned flags, const char *call);
int pl_ipc_close(uintptr_t p);
/* Says (at GPUHEAP_VERBOSE=1) that the driver refused a handle that was not
 * gpuheap's, which is what a gpuheap handle that lost a byte on the way looks like. */
void pl_ipc_note_driver_refusal(int code, const char *call);
/* The bounds of the exported block when p lies inside one this process imported. */
bool pl_ipc_range(uintptr_t p, uintptr_t *start, size_t *size);
/* Set while a runtime hook hands an IPC call to the runtime: the driver wrapper
 * that the runtime calls then passes it on without deciding or counting again. */
extern _Thread_local bool pl_ipc_in_runtime;
void pl_ipc_counts_get(pl_ipc_counts *out);

#endif /* GPUHEAP_PRELOAD_H */
