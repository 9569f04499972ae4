/*
 * fake_cuda.c — a stand-in for libcuda.so.1 that records what reaches it
 * (test_passthrough symlinks it as libcuda.so.1 for its children).
 *
 * It has exactly what the interposer needs to find a driver (cuGetProcAddress_v2
 * and the context calls) and the allocation calls a program makes, and nothing
 * of the virtual memory API: gpuheap's CUDA backend cannot open on it, so every
 * heap fails and the interposer must pass each call through unchanged. Each call
 * is counted and its arguments kept, so the test can tell that the call arrived
 * as the program made it and that the program got the driver's answer.
 *
 * The functions are static and exported under the driver's names as aliases:
 * cuGetProcAddress_v2 hands out the static ones, because the exported names
 * resolve to the interposer's wrappers, which come first in the process.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define FAKE_BASE 0xfa4e00000000ull

typedef int CUresult; /* CUDA_SUCCESS 0, CUDA_ERROR_NOT_FOUND 500 */
typedef unsigned long long CUdeviceptr;

static int allocs, frees, infos;
static size_t last_size;
static CUdeviceptr last_freed;
static int ctx_token;

static CUresult fake_cuInit(unsigned flags) { return flags ? 1 : 0; }
static CUresult fake_cuMemAlloc_v2(CUdeviceptr *p, size_t size) {
    allocs++;
    last_size = size;
    *p = FAKE_BASE + (CUdeviceptr)allocs * 0x100000;
    return 0;
}
static CUresult fake_cuMemFree_v2(CUdeviceptr p) {
    frees++;
    last_freed = p;
    return 0;
}
static CUresult fake_cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    infos++;
    *free_bytes = (size_t)3 << 30;
    *total_bytes = (size_t)4 << 30;
    return 0;
}
static CUresult fake_cuCtxGetCurrent(void **ctx) {
    *ctx = &ctx_token;
    return 0;
}
static CUresult fake_cuCtxGetDevice(int *dev) {
    *dev = 0;
    return 0;
}
static CUresult fake_cuCtxPushCurrent_v2(void *ctx) { return ctx ? 0 : 1; }
static CUresult fake_cuCtxPopCurrent_v2(void **ctx) {
    *ctx = &ctx_token;
    return 0;
}

static CUresult fake_cuGetProcAddress_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status);

static const struct {
    const char *name;
    void *fn;
} table[] = {
    {"cuGetProcAddress", (void *)fake_cuGetProcAddress_v2}, {"cuInit", (void *)fake_cuInit},
    {"cuMemAlloc", (void *)fake_cuMemAlloc_v2},             {"cuMemFree", (void *)fake_cuMemFree_v2},
    {"cuMemGetInfo", (void *)fake_cuMemGetInfo_v2},         {"cuCtxGetCurrent", (void *)fake_cuCtxGetCurrent},
    {"cuCtxGetDevice", (void *)fake_cuCtxGetDevice},        {"cuCtxPushCurrent", (void *)fake_cuCtxPushCurrent_v2},
    {"cuCtxPopCurrent", (void *)fake_cuCtxPopCurrent_v2},
};

static CUresult fake_cuGetProcAddress_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status) {
    (void)version, (void)flags;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (symbol && !strcmp(symbol, table[i].name)) {
            *pfn = table[i].fn;
            if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
            return 0;
        }
    *pfn = NULL;
    if (status) *status = 1; /* CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND */
    return 500;
}

/* The driver's names. */
EXPORT __typeof__(fake_cuInit) cuInit __attribute__((alias("fake_cuInit")));
EXPORT __typeof__(fake_cuMemAlloc_v2) cuMemAlloc_v2 __attribute__((alias("fake_cuMemAlloc_v2")));
EXPORT __typeof__(fake_cuMemFree_v2) cuMemFree_v2 __attribute__((alias("fake_cuMemFree_v2")));
EXPORT __typeof__(fake_cuMemGetInfo_v2) cuMemGetInfo_v2 __attribute__((alias("fake_cuMemGetInfo_v2")));
EXPORT __typeof__(fake_cuCtxGetCurrent) cuCtxGetCurrent __attribute__((alias("fake_cuCtxGetCurrent")));
EXPORT __typeof__(fake_cuCtxGetDevice) cuCtxGetDevice __attribute__((alias("fake_cuCtxGetDevice")));
EXPORT __typeof__(fake_cuCtxPushCurrent_v2) cuCtxPushCurrent_v2 __attribute__((alias("fake_cuCtxPushCurrent_v2")));
EXPORT __typeof__(fake_cuCtxPopCurrent_v2) cuCtxPopCurrent_v2 __attribute__((alias("fake_cuCtxPopCurrent_v2")));
EXPORT __typeof__(fake_cuGetProcAddress_v2) cuGetProcAddress_v2 __attribute__((alias("fake_cuGetProcAddress_v2")));

/* What reached the fake: the counts, the last size allocated, the last pointer freed. */
EXPORT void fake_cuda_seen(int *n_alloc, int *n_free, int *n_info, size_t *size, unsigned long long *freed) {
    *n_alloc = allocs, *n_free = frees, *n_info = infos, *size = last_size, *freed = last_freed;
}
