/*
 * cudart_util.c — opens libcudart at run time for the benchmarks.
 *
 * The shared runtime is what frameworks link (PyTorch imports cudaMalloc from
 * libcudart.so.13), so calling through it measures what they see. The device
 * name is asked of libcuda.so.1, which the runtime has loaded by the time a
 * device is set: cuDeviceGetName has had one prototype since CUDA 1.0, and the
 * runtime's own route to a name (cudaGetDeviceProperties) passes a struct whose
 * layout changes between releases.
 */
#include "cudart_util.h"

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Where the toolkit headers are on the include path, pin the ABI facts the header
 * declares by hand to the runtime's own definitions. */
#if defined(__has_include)
#if __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
_Static_assert(CUDART_SUCCESS == (int)cudaSuccess, "cudaSuccess");
_Static_assert(CUDART_MEMPOOL_RELEASE_THRESHOLD == (int)cudaMemPoolAttrReleaseThreshold,
               "cudaMemPoolAttrReleaseThreshold");
_Static_assert(CUDART_MEMPOOL_RESERVED_MEM_HIGH == (int)cudaMemPoolAttrReservedMemHigh, "cudaMemPoolAttrReservedMemHigh");
_Static_assert(CUDART_MEMCPY_DEVICE_TO_DEVICE == (int)cudaMemcpyDeviceToDevice, "cudaMemcpyDeviceToDevice");
_Static_assert(sizeof(cudaError_t) == sizeof(cudart_error), "cudaError_t is an int-sized enum");
_Static_assert(sizeof(cudaStream_t) == sizeof(cudart_stream), "cudaStream_t is a pointer");
_Static_assert(sizeof(cudaMemPool_t) == sizeof(cudart_mempool), "cudaMemPool_t is a pointer");
_Static_assert(CUDART_IPC_LAZY_ENABLE_PEER_ACCESS == cudaIpcMemLazyEnablePeerAccess, "cudaIpcMemLazyEnablePeerAccess");
_Static_assert(CUDART_MEM_ALLOCATION_TYPE_PINNED == (int)cudaMemAllocationTypePinned, "cudaMemAllocationTypePinned");
_Static_assert(CUDART_MEM_LOCATION_TYPE_DEVICE == (int)cudaMemLocationTypeDevice, "cudaMemLocationTypeDevice");
_Static_assert(sizeof(struct cudaMemPoolProps) == sizeof(cudart_mempool_props) &&
                   offsetof(struct cudaMemPoolProps, location) == offsetof(cudart_mempool_props, location) &&
                   offsetof(struct cudaMemPoolProps, maxSize) == offsetof(cudart_mempool_props, max_size) &&
                   offsetof(struct cudaMemPoolProps, usage) == offsetof(cudart_mempool_props, usage),
               "cudaMemPoolProps");
_Static_assert(sizeof(cudaIpcMemHandle_t) == sizeof(cudart_ipc_handle) && _Alignof(cudaIpcMemHandle_t) == 1,
               "cudaIpcMemHandle_t is 64 bytes, byte-aligned, as cudart_ipc_handle");
#endif
#endif

cudart_fns cudart;

static void *cudart_lib;

int cudart_load(char *why, size_t why_len) {
    static const char *const names[] = {
        "libcudart.so.13", "libcudart.so.12", "libcudart.so", "/usr/local/cuda/lib64/libcudart.so",
    };
    const char *last = "not found";
    for (size_t i = 0; i < sizeof names / sizeof names[0] && cudart_lib == NULL; i++) {
        cudart_lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (cudart_lib == NULL) {
            const char *e = dlerror();
            if (e != NULL) last = e;
        }
    }
    if (cudart_lib == NULL) {
        snprintf(why, why_len, "cannot load libcudart (last try: %s)", last);
        return -1;
    }

#define CUDART_RESOLVE(name)                                                             \
    do {                                                                                 \
        *(void **)&cudart.name = dlsym(cudart_lib, #name);                              \
        if (cudart.name == NULL) {                                                       \
            snprintf(why, why_len, "libcudart lacks %s (too old for cudaMallocAsync?)", #name); \
            memset(&cudart, 0, sizeof cudart);                                           \
            return -1;                                                                   \
        }                                                                                \
    } while (0)
    CUDART_RESOLVE(cudaMalloc);
    CUDART_RESOLVE(cudaFree);
    CUDART_RESOLVE(cudaMallocAsync);
    CUDART_RESOLVE(cudaFreeAsync);
    CUDART_RESOLVE(cudaStreamCreate);
    CUDART_RESOLVE(cudaStreamSynchronize);
    CUDART_RESOLVE(cudaDeviceGetDefaultMemPool);
    CUDART_RESOLVE(cudaMemPoolSetAttribute);
    CUDART_RESOLVE(cudaDeviceSynchronize);
    CUDART_RESOLVE(cudaSetDevice);
    CUDART_RESOLVE(cudaGetErrorString);
    CUDART_RESOLVE(cudaRuntimeGetVersion);
    CUDART_RESOLVE(cudaDriverGetVersion);
    CUDART_RESOLVE(cudaMemGetInfo);
    CUDART_RESOLVE(cudaMemcpy);
    CUDART_RESOLVE(cudaMemcpyAsync);
    CUDART_RESOLVE(cudaMemPoolGetAttribute);
    CUDART_RESOLVE(cudaMemPoolTrimTo);
    CUDART_RESOLVE(cudaStreamDestroy);
    CUDART_RESOLVE(cudaMemPoolCreate);
    CUDART_RESOLVE(cudaMemPoolDestroy);
    CUDART_RESOLVE(cudaMallocFromPoolAsync);
    CUDART_RESOLVE(cudaIpcGetMemHandle);
    CUDART_RESOLVE(cudaIpcOpenMemHandle);
    CUDART_RESOLVE(cudaIpcCloseMemHandle);
#undef CUDART_RESOLVE
    return 0;
}

const char *cudart_strerror(cudart_error err) {
    const char *s = cudart.cudaGetErrorString ? cudart.cudaGetErrorString(err) : NULL;
    return s ? s : "unknown CUDA runtime error";
}

cudart_error cudart_keep_all_pool(cudart_stream *stream, cudart_mempool *pool) {
    uint64_t keep_all = UINT64_MAX;
    cudart_error e = stream ? cudart.cudaStreamCreate(stream) : CUDART_SUCCESS;
    if (e == CUDART_SUCCESS) e = cudart.cudaDeviceGetDefaultMemPool(pool, 0);
    if (e == CUDART_SUCCESS) e = cudart.cudaMemPoolSetAttribute(*pool, CUDART_MEMPOOL_RELEASE_THRESHOLD, &keep_all);
    return e;
}

int cudart_device_name(int device, char *buf, size_t len) {
    typedef int (*get_dev_fn)(int *dev, int ordinal);           /* cuDeviceGet */
    typedef int (*get_name_fn)(char *name, int len, int dev);   /* cuDeviceGetName */
    snprintf(buf, len, "CUDA device %d", device);
    /* Only a driver that is already loaded: this must not be what loads it. */
    void *drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (drv == NULL) return -1;
    get_dev_fn get_dev;
    get_name_fn get_name;
    *(void **)&get_dev = dlsym(drv, "cuDeviceGet");
    *(void **)&get_name = dlsym(drv, "cuDeviceGetName");
    char name[256];
    int dev = 0, rc = -1;
    /* cudaSetDevice(device) made the runtime initialize the driver, and both
     * number devices the same way (after CUDA_VISIBLE_DEVICES). */
    if (get_dev != NULL && get_name != NULL && get_dev(&dev, device) == 0 &&
        get_name(name, (int)sizeof name, dev) == 0) {
        snprintf(buf, len, "%s", name);
        rc = 0;
    }
    dlclose(drv);
    return rc;
}
