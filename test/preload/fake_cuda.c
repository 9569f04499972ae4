/*
 * fake_cuda.c — a stand-in for libcuda.so.1 that records what reaches it
 * (test_passthrough symlinks it as libcuda.so.1 for its children).
 *
 * It has exactly what the interposer needs to find a driver (cuGetProcAddress_v2
 * and the context calls), the allocation calls a program makes and the IPC
 * calls (memory and event handles), and nothing of the virtual memory API: gpuheap's CUDA backend cannot open on it, so every
 * heap fails and the interposer must pass each call through unchanged. Each call
 * is counted and its arguments kept, so the test can tell that the call arrived
 * as the program made it and that the program got the driver's answer.
 *
 * Built with fake_cuda_vmm.c and -DFAKE_CUDA_VMM (libfake_cuda_vmm.so) it has the
 * virtual memory API too: a heap opens on it and the interposer serves.
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

/* IPC: a handle the fake makes is 64 bytes of 0x5a with the low byte of the
 * pointer first; an open of a handle whose second byte is 0xee is refused with
 * CUDA_ERROR_INVALID_VALUE, as a driver refuses a handle it did not make. */
typedef struct {
    unsigned char bytes[64];
} fake_handle;
static int ipc_calls[4]; /* get, open, close, event get */
static fake_handle last_handle;
static unsigned last_flags;
static CUdeviceptr last_ipc_ptr;

static CUresult fake_cuIpcGetMemHandle(fake_handle *h, CUdeviceptr p) {
    ipc_calls[0]++;
    last_ipc_ptr = p;
    memset(h->bytes, 0x5a, sizeof h->bytes);
    h->bytes[0] = (unsigned char)p;
    return 0;
}
static CUresult fake_cuIpcOpenMemHandle_v2(CUdeviceptr *p, fake_handle h, unsigned flags) {
    ipc_calls[1]++;
    last_handle = h;
    last_flags = flags;
    if (h.bytes[1] == 0xee) return 1;
    *p = FAKE_BASE + 0x70000000;
    return 0;
}
static CUresult fake_cuIpcCloseMemHandle(CUdeviceptr p) {
    ipc_calls[2]++;
    last_ipc_ptr = p;
    return 0;
}
static CUresult fake_cuIpcGetEventHandle(fake_handle *h, void *event) {
    ipc_calls[3]++;
    memset(h->bytes, 0xe7, sizeof h->bytes);
    return event ? 0 : 1;
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
    {"cuCtxPopCurrent", (void *)fake_cuCtxPopCurrent_v2},   {"cuIpcGetMemHandle", (void *)fake_cuIpcGetMemHandle},
    {"cuIpcOpenMemHandle", (void *)fake_cuIpcOpenMemHandle_v2}, {"cuIpcCloseMemHandle", (void *)fake_cuIpcCloseMemHandle},
    {"cuIpcGetEventHandle", (void *)fake_cuIpcGetEventHandle},
};

#ifdef FAKE_CUDA_VMM
void *fake_vmm_lookup(const char *name); /* fake_cuda_vmm.c */
#endif

static CUresult fake_cuGetProcAddress_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status) {
    (void)version, (void)flags;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (symbol && !strcmp(symbol, table[i].name)) {
            *pfn = table[i].fn;
            if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
            return 0;
        }
#ifdef FAKE_CUDA_VMM
    if (symbol && (*pfn = fake_vmm_lookup(symbol)) != NULL) {
        if (status) *status = 0;
        return 0;
    }
#endif
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
EXPORT __typeof__(fake_cuIpcGetMemHandle) cuIpcGetMemHandle __attribute__((alias("fake_cuIpcGetMemHandle")));
EXPORT __typeof__(fake_cuIpcOpenMemHandle_v2) cuIpcOpenMemHandle_v2 __attribute__((alias("fake_cuIpcOpenMemHandle_v2")));
EXPORT __typeof__(fake_cuIpcCloseMemHandle) cuIpcCloseMemHandle __attribute__((alias("fake_cuIpcCloseMemHandle")));
EXPORT __typeof__(fake_cuIpcGetEventHandle) cuIpcGetEventHandle __attribute__((alias("fake_cuIpcGetEventHandle")));

/* What reached the fake: the counts, the last size allocated, the last pointer freed. */
EXPORT void fake_cuda_seen(int *n_alloc, int *n_free, int *n_info, size_t *size, unsigned long long *freed) {
    *n_alloc = allocs, *n_free = frees, *n_info = infos, *size = last_size, *freed = last_freed;
}

/* What reached the IPC calls: counts (get, open, close, event get), the last
 * handle opened and its flags, the last pointer exported or closed. */
EXPORT void fake_cuda_ipc_seen(int counts[4], unsigned char handle[64], unsigned *flags, unsigned long long *ptr) {
    memcpy(counts, ipc_calls, sizeof ipc_calls);
    memcpy(handle, last_handle.bytes, sizeof last_handle.bytes);
    *flags = last_flags, *ptr = last_ipc_ptr;
}
