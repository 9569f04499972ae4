/*
 * fake_cudart.c — a stand-in for libcudart.so.13's IPC calls and cudaMalloc
 * (test_ipc_hooks and test_served symlink it as libcudart.so.13 and load it the
 * way Python extensions load the runtime: dlopen, into a local scope).
 *
 * Like the real runtime, it reaches the driver only through the driver's
 * resolver: it dlopens libcuda.so.1, asks dlsym for cuGetProcAddress_v2 (the
 * interposer's dlsym answers) and calls whatever that resolves. So a call the
 * interposer's runtime hook passes on arrives at the interposer's driver wrapper
 * a second time, as with the real runtime, and the test can tell that it is
 * decided and counted once and reaches the (fake) driver untouched.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))

typedef struct {
    unsigned char bytes[64];
} handle64;
typedef int (*getproc_fn)(const char *, void **, int, uint64_t, int *);

/* The driver's function `name` as the runtime resolves it, or NULL. */
static void *driver(const char *name) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    getproc_fn getproc = lib ? (getproc_fn)dlsym(lib, "cuGetProcAddress_v2") : NULL;
    void *fn = NULL;
    int status;
    if (!getproc || getproc(name, &fn, 12000, 0, &status) != 0) return NULL;
    return fn;
}

/* Allocation, for the interposer's cudaMalloc: the runtime's current device is
 * 0, and an allocation that reaches the runtime is counted and answered with a
 * pointer of its own (test_served.c checks what was passed on). */
static int mallocs;
EXPORT int cudaGetDevice(int *dev) {
    *dev = 0;
    return 0;
}
EXPORT int cudaMalloc(void **ptr, size_t size) {
    (void)size;
    mallocs++;
    *ptr = (void *)(uintptr_t)0xca0000000000ull;
    return 0;
}
EXPORT int fake_cudart_mallocs(void) { return mallocs; }

/* cudaErrorInitializationError when the driver lacks the call. */
EXPORT int cudaIpcGetMemHandle(handle64 *handle, void *ptr) {
    int (*get)(handle64 *, unsigned long long) = (int (*)(handle64 *, unsigned long long))driver("cuIpcGetMemHandle");
    return get ? get(handle, (unsigned long long)(uintptr_t)ptr) : 3;
}

EXPORT int cudaIpcOpenMemHandle(void **ptr, handle64 handle, unsigned flags) {
    int (*open)(unsigned long long *, handle64, unsigned) =
        (int (*)(unsigned long long *, handle64, unsigned))driver("cuIpcOpenMemHandle");
    unsigned long long p = 0;
    int r = open ? open(&p, handle, flags) : 3;
    if (r == 0) *ptr = (void *)(uintptr_t)p;
    return r;
}

EXPORT int cudaIpcCloseMemHandle(void *ptr) {
    int (*close)(unsigned long long) = (int (*)(unsigned long long))driver("cuIpcCloseMemHandle");
    return close ? close((unsigned long long)(uintptr_t)ptr) : 3;
}
