/*
 * cudart_util.h — the CUDA runtime, loaded at run time, for the benchmarks.
 *
 * The demo compares gpuheap with cudaMalloc and cudaMallocAsync as a program
 * would call them, through libcudart. It must still build and run where no CUDA
 * is installed, so libcudart is opened with dlopen and its functions found with
 * dlsym; nothing here needs CUDA's headers. The few runtime types used are
 * declared below with the runtime's ABI (an enum is an int, handles are
 * pointers); cudart_util.c checks them against cuda_runtime_api.h where that
 * header is on the include path.
 */
#ifndef GPUHEAP_BENCH_CUDART_UTIL_H
#define GPUHEAP_BENCH_CUDART_UTIL_H

#include <stddef.h>

typedef int cudart_error;        /* cudaError_t */
typedef void *cudart_stream;     /* cudaStream_t */
typedef void *cudart_mempool;    /* cudaMemPool_t */

#define CUDART_SUCCESS 0                      /* cudaSuccess */
#define CUDART_MEMPOOL_RELEASE_THRESHOLD 4    /* cudaMemPoolAttrReleaseThreshold (value: uint64_t) */
#define CUDART_MEMPOOL_RESERVED_MEM_HIGH 6    /* cudaMemPoolAttrReservedMemHigh (uint64_t; set 0 to reset) */
#define CUDART_MEMCPY_DEVICE_TO_DEVICE 3      /* cudaMemcpyDeviceToDevice */
#define CUDART_IPC_LAZY_ENABLE_PEER_ACCESS 1  /* cudaIpcMemLazyEnablePeerAccess */

/* cudaMemPoolProps, for cudaMemPoolCreate (cudart_util.c checks its layout). */
#define CUDART_MEM_ALLOCATION_TYPE_PINNED 1 /* cudaMemAllocationTypePinned */
#define CUDART_MEM_LOCATION_TYPE_DEVICE 1   /* cudaMemLocationTypeDevice */
typedef struct cudart_mempool_props {
    int alloc_type;   /* allocType */
    int handle_types; /* handleTypes (0: none) */
    struct {
        int type, id;
    } location;
    void *win32_security_attributes;
    size_t max_size;
    unsigned short usage;
    unsigned char reserved[54];
} cudart_mempool_props;

/* cudaIpcMemHandle_t: 64 bytes, passed by value to cudaIpcOpenMemHandle. */
typedef struct cudart_ipc_handle {
    unsigned char bytes[64];
} cudart_ipc_handle;

/* The runtime functions the benchmarks call; members carry the runtime's names. */
typedef struct cudart_fns {
    cudart_error (*cudaMalloc)(void **ptr, size_t size);
    cudart_error (*cudaFree)(void *ptr);
    cudart_error (*cudaMallocAsync)(void **ptr, size_t size, cudart_stream stream);
    cudart_error (*cudaFreeAsync)(void *ptr, cudart_stream stream);
    cudart_error (*cudaStreamCreate)(cudart_stream *stream);
    cudart_error (*cudaStreamSynchronize)(cudart_stream stream);
    cudart_error (*cudaDeviceGetDefaultMemPool)(cudart_mempool *pool, int device);
    cudart_error (*cudaMemPoolSetAttribute)(cudart_mempool pool, int attr, void *value);
    cudart_error (*cudaDeviceSynchronize)(void);
    cudart_error (*cudaSetDevice)(int device);
    const char *(*cudaGetErrorString)(cudart_error err);
    cudart_error (*cudaRuntimeGetVersion)(int *version);
    cudart_error (*cudaDriverGetVersion)(int *version);
    /* Used by the replay peers and gpuheap-bench (bytes held, copies, pool trim). */
    cudart_error (*cudaMemGetInfo)(size_t *free_bytes, size_t *total_bytes);
    cudart_error (*cudaMemcpy)(void *dst, const void *src, size_t n, int kind);
    cudart_error (*cudaMemcpyAsync)(void *dst, const void *src, size_t n, int kind, cudart_stream stream);
    cudart_error (*cudaMemPoolGetAttribute)(cudart_mempool pool, int attr, void *value);
    cudart_error (*cudaMemPoolTrimTo)(cudart_mempool pool, size_t keep);
    cudart_error (*cudaStreamDestroy)(cudart_stream stream);
    /* Pools of their own, the peer of gpu_heap_create (heaps.c). */
    cudart_error (*cudaMemPoolCreate)(cudart_mempool *pool, const cudart_mempool_props *props);
    cudart_error (*cudaMemPoolDestroy)(cudart_mempool pool);
    cudart_error (*cudaMallocFromPoolAsync)(void **ptr, size_t size, cudart_mempool pool, cudart_stream stream);
    /* Legacy IPC, the peer of gpu_ipc_* (ipc_bench). */
    cudart_error (*cudaIpcGetMemHandle)(cudart_ipc_handle *handle, void *ptr);
    cudart_error (*cudaIpcOpenMemHandle)(void **ptr, cudart_ipc_handle handle, unsigned flags);
    cudart_error (*cudaIpcCloseMemHandle)(void *ptr);
} cudart_fns;

/* Filled by cudart_load; all NULL before and after a failed load. */
extern cudart_fns cudart;

/* Opens libcudart (libcudart.so.13, .so.12, .so, then
 * /usr/local/cuda/lib64/libcudart.so) and resolves cudart. Returns 0, or -1 with
 * the reason written to why. Call once, from one thread. */
int cudart_load(char *why, size_t why_len);

/* The name of a device ("NVIDIA H100 80GB HBM3"), asked of the driver that
 * libcudart loaded; call after cudaSetDevice worked. Returns 0, or -1 and writes
 * "CUDA device N". */
int cudart_device_name(int device, char *buf, size_t len);

/* What every cudaMallocAsync peer here runs on: a new stream (when stream is not
 * NULL) and device 0's default pool with its release threshold at its maximum,
 * so that the pool keeps all it has (the comparison the issues ask for). Returns
 * CUDART_SUCCESS or the first error. */
cudart_error cudart_keep_all_pool(cudart_stream *stream, cudart_mempool *pool);

/* A message for a runtime error code, safe before a successful load. */
const char *cudart_strerror(cudart_error err);

#endif /* GPUHEAP_BENCH_CUDART_UTIL_H */
