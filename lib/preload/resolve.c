/*
 * resolve.c — how the program finds the driver, and how gpuheap steps in.
 *
 * The CUDA runtime, linked statically into every nvcc program by default and
 * dynamically into PyTorch, never calls cuMemAlloc through the dynamic linker:
 * it dlopens libcuda.so.1, looks up cuGetProcAddress with dlsym, and asks it for
 * some 440 entry points (DESIGN.md §3). So the interposer replaces dlsym and
 * cuGetProcAddress (both ABIs, and cudaGetDriverEntryPoint*, which resolve
 * through it), lets the real ones answer, and swaps the answer for a wrapper
 * when it is one of the few functions gpuheap serves (driver.c).
 *
 * The wrapper is chosen from what the driver returned, never from the name
 * asked for: "cuMemAlloc" is the 32-bit cuMemAlloc at version 3010 and
 * cuMemAlloc_v2 from 3020 on; "cuMemFreeAsync" with the per-thread flag is
 * cuMemFreeAsync_ptsz. At start-up each served ABI's real function is found both
 * by its exported name (dlsym on libcuda) and through cuGetProcAddress at a
 * version and flag that select it; an answer equal to either gets that ABI's
 * wrapper, any other answer goes back untouched. Asked for cuGetProcAddress
 * itself, the driver's resolver comes back as the wrapped resolver, so a
 * runtime that re-resolves through it stays covered.
 *
 * Two subtleties of replacing dlsym:
 *  - dlsym(RTLD_NEXT, …) and dlsym(RTLD_DEFAULT, …) look up relative to their
 *    caller, found from the return address. The wrapper therefore reaches glibc's
 *    dlsym by a tail call (a jump: the caller's return address stays on the
 *    stack) for every name it does not serve, RTLD_NEXT always; the meson file
 *    builds this directory with optimization so that the compiler emits it, and
 *    test/preload checks RTLD_NEXT from a library. Only driver names ("cu" and a
 *    capital) are looked at, and those through RTLD_DEFAULT are looked up from
 *    the interposer's scope, which sees what the program's global scope sees.
 *  - gpuheap's own driver loader (cuda_loader.h) must get the real functions,
 *    never these wrappers: it is handed glibc's dlsym before anything loads the
 *    driver.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

/* ---- glibc's dlsym ------------------------------------------------------------ */

typedef void *(*dlsym_fn)(void *, const char *);

/* This file's dlsym under a name that binds here, whoever else defines dlsym. */
extern __typeof__(dlsym) pl_dlsym_self __attribute__((alias("dlsym"), copy(dlsym), visibility("hidden")));

static _Atomic(dlsym_fn) real_dlsym;

dlsym_fn pl_real_dlsym_get(void) {
    dlsym_fn f = atomic_load_explicit(&real_dlsym, memory_order_acquire);
    if (f) return f;
    /* dlvsym is not replaced, so it finds the next dlsym after this object:
     * glibc's, under the version it has on this platform. Loaded with dlopen
     * (a framework's allocator) rather than preloaded, the same lookup through
     * libc's (or, before glibc 2.34, libdl's) own handle is the sure one. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    static const char *const libs[] = {"libc.so.6", "libdl.so.2"};
    void *p = NULL;
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !p; i++) p = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    for (size_t l = 0; l < sizeof libs / sizeof libs[0] && !p; l++) {
        void *h = dlopen(libs[l], RTLD_LAZY | RTLD_NOLOAD);
        for (size_t i = 0; h && i < sizeof versions / sizeof versions[0] && !p; i++) p = dlvsym(h, "dlsym", versions[i]);
    }
    if (p == (void *)pl_dlsym_self) p = NULL; /* never ourselves */
    if (!p) {
        static const char msg[] = "gpuheap-preload: glibc's dlsym not found; this C library is not supported\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(127);
    }
    memcpy(&f, &p, sizeof p);
    atomic_store_explicit(&real_dlsym, f, memory_order_release);
    return f;
}

/* True for a driver entry point's name: "cu" and a capital (not "cuda…"). */
static inline bool driver_name(const char *name) {
    return name && name[0] == 'c' && name[1] == 'u' && name[2] >= 'A' && name[2] <= 'Z';
}

/* A driver name looked up through a handle: the answer, or its wrapper. */
static __attribute__((noinline)) void *dlsym_driver(dlsym_fn real, void *handle, const char *name) {
    void *p = real(handle, name);
    return p && pl_driver_ready() ? pl_wrap(p) : p;
}

bool pl_interposing(void) { return pl_real_dlsym_get()(RTLD_DEFAULT, "dlsym") == (void *)pl_dlsym_self; }

PL_EXPORT void *dlsym(void *handle, const char *name) {
    dlsym_fn real = pl_real_dlsym_get();
    if (handle != RTLD_NEXT && driver_name(name)) return dlsym_driver(real, handle, name);
    return real(handle, name); /* a tail call: glibc sees the caller's return address */
}

/* ---- the served entry points ---------------------------------------------------- */

typedef struct entry_def {
    const char *exported; /* the driver's exported name for this ABI */
    const char *base;     /* the name cuGetProcAddress takes */
    int version;          /* a version at which base resolves to this ABI */
    uint64_t flags;
    void *wrapper;
} entry_def;

/* Filled by table_load (once); read-only afterwards. */
static entry_def defs[PL_ENTRIES];
static void *real_export[PL_ENTRIES], *real_proc[PL_ENTRIES];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static bool table_ready;

/* Helpers the wrappers need from the driver (resolved at CUDA 12.0, legacy stream). */
static pl_cu_result (*ctx_get_current)(pl_cu_ctx *);
static pl_cu_result (*ctx_get_device)(int *);
static pl_cu_result (*ctx_push)(pl_cu_ctx);
static pl_cu_result (*ctx_pop)(pl_cu_ctx *);

#define DEF(e, exp, base, ver, fl, fn) defs[e] = (entry_def){exp, base, ver, fl, (void *)(fn)}

static void defs_fill(void) {
    DEF(PL_GET_PROC_ADDRESS_V2, "cuGetProcAddress_v2", "cuGetProcAddress", 12000, 0, pl_get_proc_address_v2);
    DEF(PL_GET_PROC_ADDRESS_V1, "cuGetProcAddress", "cuGetProcAddress", 11030, 0, pl_get_proc_address_v1);
    DEF(PL_MEM_ALLOC, "cuMemAlloc_v2", "cuMemAlloc", 12000, 0, cuMemAlloc_v2);
    DEF(PL_MEM_FREE, "cuMemFree_v2", "cuMemFree", 12000, 0, cuMemFree_v2);
    DEF(PL_MEM_FREE_ASYNC, "cuMemFreeAsync", "cuMemFreeAsync", 12000, PL_CU_GET_PROC_ADDRESS_LEGACY_STREAM, cuMemFreeAsync);
    DEF(PL_MEM_FREE_ASYNC_PTSZ, "cuMemFreeAsync_ptsz", "cuMemFreeAsync", 12000,
        PL_CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, cuMemFreeAsync_ptsz);
    DEF(PL_MEM_GET_INFO, "cuMemGetInfo_v2", "cuMemGetInfo", 12000, 0, cuMemGetInfo_v2);
    DEF(PL_MEM_GET_ADDRESS_RANGE, "cuMemGetAddressRange_v2", "cuMemGetAddressRange", 12000, 0, cuMemGetAddressRange_v2);
    DEF(PL_POINTER_GET_ATTRIBUTE, "cuPointerGetAttribute", "cuPointerGetAttribute", 12000, 0, cuPointerGetAttribute);
    DEF(PL_POINTER_GET_ATTRIBUTES, "cuPointerGetAttributes", "cuPointerGetAttributes", 12000, 0, cuPointerGetAttributes);
    DEF(PL_CTX_ENABLE_PEER_ACCESS, "cuCtxEnablePeerAccess", "cuCtxEnablePeerAccess", 12000, 0, cuCtxEnablePeerAccess);
    DEF(PL_CTX_DISABLE_PEER_ACCESS, "cuCtxDisablePeerAccess", "cuCtxDisablePeerAccess", 12000, 0, cuCtxDisablePeerAccess);
    DEF(PL_IPC_GET_MEM_HANDLE, "cuIpcGetMemHandle", "cuIpcGetMemHandle", 12000, 0, cuIpcGetMemHandle);
    DEF(PL_IPC_OPEN_MEM_HANDLE, "cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle", 12000, 0, cuIpcOpenMemHandle_v2);
    DEF(PL_IPC_OPEN_MEM_HANDLE_V1, "cuIpcOpenMemHandle", "cuIpcOpenMemHandle", 4010, 0, cuIpcOpenMemHandle);
    DEF(PL_IPC_CLOSE_MEM_HANDLE, "cuIpcCloseMemHandle", "cuIpcCloseMemHandle", 12000, 0, cuIpcCloseMemHandle);
    DEF(PL_STREAM_CREATE, "cuStreamCreate", "cuStreamCreate", 12000, 0, cuStreamCreate);
    DEF(PL_STREAM_CREATE_WITH_PRIORITY, "cuStreamCreateWithPriority", "cuStreamCreateWithPriority", 12000, 0,
        cuStreamCreateWithPriority);
    DEF(PL_STREAM_DESTROY, "cuStreamDestroy_v2", "cuStreamDestroy", 12000, 0, cuStreamDestroy_v2);
    DEF(PL_CTX_CREATE_V2, "cuCtxCreate_v2", "cuCtxCreate", 3020, 0, cuCtxCreate_v2);
    DEF(PL_CTX_CREATE_V3, "cuCtxCreate_v3", "cuCtxCreate", 11040, 0, cuCtxCreate_v3);
    DEF(PL_CTX_CREATE_V4, "cuCtxCreate_v4", "cuCtxCreate", 12050, 0, cuCtxCreate_v4);
    DEF(PL_CTX_FROM_GREEN_CTX, "cuCtxFromGreenCtx", "cuCtxFromGreenCtx", 12040, 0, cuCtxFromGreenCtx);
    DEF(PL_GREEN_CTX_STREAM_CREATE, "cuGreenCtxStreamCreate", "cuGreenCtxStreamCreate", 12040, 0, cuGreenCtxStreamCreate);
}
#undef DEF

/* The driver's function for e, as far as the table knows it. */
static void *real_of(pl_entry e) { return real_proc[e] ? real_proc[e] : real_export[e]; }

/* Resolves base at version/flags through the real resolver; NULL if absent. */
static void *proc_lookup(const char *base, int version, uint64_t flags) {
    void *p = NULL;
    pl_getproc_v2_fn gp2 = (pl_getproc_v2_fn)real_export[PL_GET_PROC_ADDRESS_V2];
    pl_getproc_v1_fn gp1 = (pl_getproc_v1_fn)real_export[PL_GET_PROC_ADDRESS_V1];
    if (gp2) {
        int status = -1;
        if (gp2(base, &p, version, flags, &status) != PL_CU_SUCCESS || status != 0) p = NULL;
    } else if (gp1) {
        if (gp1(base, &p, version, flags) != PL_CU_SUCCESS) p = NULL;
    }
    return p;
}

/* Finds every served ABI's real function, and the helpers; runs once. */
static void table_load(void) {
    defs_fill();
    dlsym_fn find = pl_real_dlsym_get();
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return; /* no driver: everything passes through */
    for (int e = 0; e < PL_ENTRIES; e++) real_export[e] = find(lib, defs[e].exported);
    for (int e = 0; e < PL_ENTRIES; e++) real_proc[e] = proc_lookup(defs[e].base, defs[e].version, defs[e].flags);
    ctx_get_current = (pl_cu_result(*)(pl_cu_ctx *))proc_lookup("cuCtxGetCurrent", 12000, PL_CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    ctx_get_device = (pl_cu_result(*)(int *))proc_lookup("cuCtxGetDevice", 12000, PL_CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    ctx_push = (pl_cu_result(*)(pl_cu_ctx))proc_lookup("cuCtxPushCurrent", 12000, PL_CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    ctx_pop = (pl_cu_result(*)(pl_cu_ctx *))proc_lookup("cuCtxPopCurrent", 12000, PL_CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    table_ready = real_of(PL_GET_PROC_ADDRESS_V2) || real_of(PL_GET_PROC_ADDRESS_V1);
    table_ready = table_ready && ctx_get_current && ctx_get_device && ctx_push && ctx_pop;
}

/* Set while this thread fills the table: a driver (or stub) whose resolver
 * calls dlsym must not wait for the table it is filling. */
static _Thread_local bool loading;

static void table_load_once(void) {
    loading = true;
    table_load();
    loading = false;
}

bool pl_driver_ready(void) {
    if (loading) return false;
    pthread_once(&table_once, table_load_once);
    return table_ready;
}

void *pl_real(pl_entry e) {
    if (!loading) pthread_once(&table_once, table_load_once);
    return real_of(e);
}

void *pl_wrap(void *p) {
    if (!p || !pl_driver_ready()) return p;
    for (int e = 0; e < PL_ENTRIES; e++)
        if (p == real_export[e] || p == real_proc[e]) return defs[e].wrapper;
    return p;
}

bool pl_current_device(int *dev) {
    static _Thread_local pl_cu_ctx seen_ctx;
    static _Thread_local int seen_dev;
    pl_cu_ctx ctx = NULL;
    if (!pl_driver_ready() || ctx_get_current(&ctx) != PL_CU_SUCCESS || !ctx) return false;
    if (ctx != seen_ctx) {
        int d;
        if (ctx_get_device(&d) != PL_CU_SUCCESS) return false;
        seen_ctx = ctx;
        seen_dev = d;
    }
    *dev = seen_dev;
    return true;
}

bool pl_context_device(pl_cu_ctx ctx, int *dev) {
    if (!pl_driver_ready() || !ctx || ctx_push(ctx) != PL_CU_SUCCESS) return false;
    bool ok = ctx_get_device(dev) == PL_CU_SUCCESS;
    pl_cu_ctx popped;
    (void)ctx_pop(&popped);
    return ok;
}

/* ---- cuGetProcAddress, both ABIs ------------------------------------------------------ */

pl_cu_result pl_get_proc_address_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status) {
    pl_getproc_v2_fn real = (pl_getproc_v2_fn)pl_real(PL_GET_PROC_ADDRESS_V2);
    if (!real) return PL_CU_ERROR_NOT_INITIALIZED;
    pl_cu_result r = real(symbol, pfn, version, flags, status);
    if (r == PL_CU_SUCCESS && pfn) *pfn = pl_wrap(*pfn);
    return r;
}

pl_cu_result pl_get_proc_address_v1(const char *symbol, void **pfn, int version, uint64_t flags) {
    pl_getproc_v1_fn real = (pl_getproc_v1_fn)pl_real(PL_GET_PROC_ADDRESS_V1);
    if (!real) return PL_CU_ERROR_NOT_INITIALIZED;
    pl_cu_result r = real(symbol, pfn, version, flags);
    if (r == PL_CU_SUCCESS && pfn) *pfn = pl_wrap(*pfn);
    return r;
}

/* Programs linked with -lcuda call these through the dynamic linker. */
PL_EXPORT pl_cu_result cuGetProcAddress_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status) {
    return pl_get_proc_address_v2(symbol, pfn, version, flags, status);
}
PL_EXPORT pl_cu_result cuGetProcAddress(const char *symbol, void **pfn, int version, uint64_t flags) {
    return pl_get_proc_address_v1(symbol, pfn, version, flags);
}

/* ---- the CUDA runtime the program loaded ----------------------------------------------- */

/* dl_iterate_phdr callback: the path of the first libcudart.so.* loaded. */
static int find_cudart(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    const char *slash = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
    const char *base = slash ? slash + 1 : info->dlpi_name;
    if (!base || strncmp(base, "libcudart.so", 12) != 0) return 0;
    snprintf(arg, 4096, "%s", info->dlpi_name);
    return 1;
}

void *pl_cudart(const char *name) {
    dlsym_fn real = pl_real_dlsym_get();
    /* The next definition after the interposer in the global scope: libcudart
     * linked into the program, or another interposer. */
    void *p = real(RTLD_NEXT, name);
    if (p) return p;
    /* Python extensions (PyTorch) load libcudart into a local scope, which
     * RTLD_NEXT does not search: find it among the loaded objects. */
    static void *_Atomic handle;
    void *h = atomic_load(&handle);
    if (!h) {
        char path[4096] = "";
        if (dl_iterate_phdr(find_cudart, path) && path[0]) h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
        if (!h) return NULL; /* not loaded (yet): ask again next time */
        atomic_store(&handle, h);
    }
    return real(h, name);
}

/* ---- cudaGetDriverEntryPoint* (runtime hooks that resolve driver functions) ------------ */

typedef pl_cuda_error (*entry_point_fn)(const char *, void **, unsigned long long, int *);
typedef pl_cuda_error (*entry_point_by_version_fn)(const char *, void **, unsigned, unsigned long long, int *);

void *pl_cudart_cached(void *_Atomic *slot, const char *name) {
    void *p = atomic_load_explicit(slot, memory_order_acquire);
    if (!p && (p = pl_cudart(name)) != NULL) atomic_store_explicit(slot, p, memory_order_release);
    return p;
}

#define ENTRY_POINT_HOOK(fname)                                                                         \
    PL_EXPORT pl_cuda_error fname(const char *symbol, void **fn, unsigned long long flags, int *status) { \
        static void *_Atomic slot;                                                                      \
        entry_point_fn real = (entry_point_fn)pl_cudart_cached(&slot, #fname);                             \
        if (!real) return PL_CUDA_ERROR_INITIALIZATION;                                                 \
        pl_cuda_error r = real(symbol, fn, flags, status);                                              \
        if (r == PL_CUDA_SUCCESS && fn) *fn = pl_wrap(*fn);                                             \
        return r;                                                                                       \
    }

#define ENTRY_POINT_BY_VERSION_HOOK(fname)                                                               \
    PL_EXPORT pl_cuda_error fname(const char *symbol, void **fn, unsigned version, unsigned long long flags, \
                                  int *status) {                                                         \
        static void *_Atomic slot;                                                                       \
        entry_point_by_version_fn real = (entry_point_by_version_fn)pl_cudart_cached(&slot, #fname);        \
        if (!real) return PL_CUDA_ERROR_INITIALIZATION;                                                  \
        pl_cuda_error r = real(symbol, fn, version, flags, status);                                      \
        if (r == PL_CUDA_SUCCESS && fn) *fn = pl_wrap(*fn);                                              \
        return r;                                                                                        \
    }

ENTRY_POINT_HOOK(cudaGetDriverEntryPoint)
ENTRY_POINT_HOOK(cudaGetDriverEntryPoint_ptsz)
ENTRY_POINT_BY_VERSION_HOOK(cudaGetDriverEntryPointByVersion)
ENTRY_POINT_BY_VERSION_HOOK(cudaGetDriverEntryPointByVersion_ptsz)

/* ---- start-up --------------------------------------------------------------------------- */

/* Finds glibc's dlsym before the program runs, and hands it to gpuheap's own
 * driver loader (which serve.c also does before the first heap, in case a
 * constructor allocates before this one runs). */
__attribute__((constructor)) static void resolve_start(void) {
    dlsym_fn real = pl_real_dlsym_get();
#if GPUHEAP_HAVE_CUDA
    cuda_loader_use_dlsym(real);
#else
    (void)real;
#endif
}
