/*
 * serve.c — what the interposer takes from gpuheap, and what it leaves alone.
 *
 * One rule decides: an allocation is served by the default heap of the device
 * the caller means (the runtime's current device for cudaMalloc, the current
 * context's device for cuMemAlloc, the device argument for the framework entry
 * points), on the CUDA backend; a pointer is freed by gpuheap when a heap owns
 * it. Everything else — no driver, no device, a device without the virtual
 * memory API, GPUHEAP_BACKEND=host, a heap that failed to open, a failed
 * allocation, memory the heap does not own — goes to the real function, so the
 * program sees exactly what it would see without the interposer.
 *
 * Alignment. cudaMalloc returns 512-byte-aligned memory for small sizes and
 * naturally aligned memory (the size rounded up to a power of two) up to 2 MiB
 * (DESIGN.md §2). Libraries pick kernels by pointer alignment (cuBLAS does), so
 * a heap block that is less aligned than cudaMalloc's could run another kernel
 * and change the last bits of a result. The interposer asks the heap for exactly
 * cudaMalloc's alignment, so a program's results under it match its results
 * without it bit for bit: from 2 MiB up the heap is asked for 2 MiB alignment
 * (what cudaMalloc gives there), and for smaller blocks the cost is a split of
 * idle memory, no driver call.
 *
 * Counters say what was served and what was passed on; GPUHEAP_STATS=1 (or
 * gpuheap-run --stats) prints them at exit, beside the library's own summary.
 * Otherwise the interposer is silent, unless GPUHEAP_VERBOSE asks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"

#define PL_MAX_DEVICES 64
#define PL_ALIGN_MIN ((size_t)512)
#define PL_ALIGN_MAX ((size_t)2 << 20)

/* ---- counters and the exit report -------------------------------------------- */

static _Atomic uint64_t served[PL_VIAS], forwarded_allocs, freed, freed_foreign, freed_invalid, ipc_refused;
static _Atomic uint64_t peers_enabled;

void pl_count_forwarded_alloc(void) { atomic_fetch_add_explicit(&forwarded_allocs, 1, memory_order_relaxed); }

/* True when an environment variable is set to something other than "" or "0". */
static bool env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

/* Says what the interposer did, if anything: a process that never touched
 * device memory (a shell, a tool the program runs) stays silent. */
static void report_at_exit(void) {
    uint64_t total = served[PL_VIA_RUNTIME] + served[PL_VIA_DRIVER] + served[PL_VIA_PLUGIN];
    if (!total && !forwarded_allocs && !freed_foreign && !freed_invalid && !ipc_refused) return;
    fprintf(stderr,
            "gpuheap-preload: %llu allocations served by gpuheap (cudaMalloc %llu, cuMemAlloc %llu, framework entry points "
            "%llu), %llu passed on (size 0, no device or context, or the heap failed); %llu frees by gpuheap, %llu passed "
            "on (not heap memory), %llu refused (not a live block); %llu IPC exports refused; %llu peer-access "
            "enables applied\n",
            (unsigned long long)total, (unsigned long long)served[PL_VIA_RUNTIME],
            (unsigned long long)served[PL_VIA_DRIVER], (unsigned long long)served[PL_VIA_PLUGIN],
            (unsigned long long)forwarded_allocs, (unsigned long long)freed, (unsigned long long)freed_foreign,
            (unsigned long long)freed_invalid, (unsigned long long)ipc_refused, (unsigned long long)peers_enabled);
}

__attribute__((constructor)) static void serve_start(void) {
    if (env_on("GPUHEAP_STATS") || gh_verbosity() >= 1) atexit(report_at_exit);
}

/* ---- heaps ----------------------------------------------------------------------- */

static _Atomic bool passing[PL_MAX_DEVICES]; /* opening failed once: this device passes through */
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
static bool host_configured;

/* Reads the configuration the default heaps will use, once. */
static void setup(void) {
#if GPUHEAP_HAVE_CUDA
    cuda_loader_use_dlsym(pl_real_dlsym_get());
#endif
    const gpu_config_t *cfg = gh_default_config(); /* the default heaps' own, read once */
    host_configured = cfg->backend == GPU_BACKEND_HOST;
    if (host_configured && cfg->verbose)
        fprintf(stderr, "gpuheap-preload: GPUHEAP_BACKEND=host: device allocations pass through to the driver\n");
}

/* dev's default heap if it exists and serves device memory (not a host-backend
 * heap); never creates one. */
static gpu_heap_t *served_heap(int dev) {
    if (dev < 0 || dev >= PL_MAX_DEVICES) return NULL;
    pthread_once(&setup_once, setup);
    return host_configured ? NULL : gh_heap_default_peek(dev);
}

gpu_heap_t *pl_heap(int dev) {
    gpu_heap_t *h = served_heap(dev);
    if (h || dev < 0 || dev >= PL_MAX_DEVICES || atomic_load_explicit(&passing[dev], memory_order_relaxed)) return h;
    if (host_configured || !pl_driver_ready() || !(h = gh_heap_default_of(dev))) /* reports why when verbose */
        atomic_store(&passing[dev], true);
    return h;
}

size_t pl_alignment_for(size_t size) {
    if (size <= PL_ALIGN_MIN) return PL_ALIGN_MIN;
    if (size >= PL_ALIGN_MAX) return PL_ALIGN_MAX;
    size_t a = PL_ALIGN_MIN;
    while (a < size) a <<= 1;
    return a;
}

void *pl_alloc(gpu_heap_t *h, size_t size, pl_via via) {
    void *p = gpu_heap_malloc_aligned(h, size, pl_alignment_for(size));
    if (p) atomic_fetch_add_explicit(&served[via], 1, memory_order_relaxed);
    return p;
}

gpu_heap_t *pl_owner(uintptr_t p) { return p ? registry_find_ptr(p) : NULL; }

pl_free_result pl_free(uintptr_t p) {
    gpu_heap_t *h = pl_owner(p);
    if (!h) {
        atomic_fetch_add_explicit(&freed_foreign, 1, memory_order_relaxed);
        return PL_FREE_FOREIGN;
    }
    if (gpu_heap_free(h, (void *)p) != GPU_OK) {
        atomic_fetch_add_explicit(&freed_invalid, 1, memory_order_relaxed);
        return PL_FREE_INVALID;
    }
    atomic_fetch_add_explicit(&freed, 1, memory_order_relaxed);
    return PL_FREE_DONE;
}

size_t pl_idle_bytes(int dev) {
    gpu_heap_t *h = served_heap(dev);
    gpu_stats_t s;
    if (!h || gpu_heap_stats(h, &s) != GPU_OK) return 0;
    return (size_t)(s.idle_bytes + s.quarantine_bytes + s.cached_bytes);
}

void pl_add_idle(int dev, size_t *free_bytes, const size_t *total_bytes) {
    *free_bytes += pl_idle_bytes(dev);
    if (total_bytes && *free_bytes > *total_bytes) *free_bytes = *total_bytes;
}

bool pl_ipc_refused(uintptr_t p) {
    if (!pl_owner(p)) return false;
    atomic_fetch_add_explicit(&ipc_refused, 1, memory_order_relaxed);
    gh_error(GPU_ERR_INVALID,
             "cudaIpcGetMemHandle(%#lx): gpuheap memory cannot be exported through legacy CUDA IPC (README.md, "
             "Interposer); run without the interposer, or allocate that buffer with cudaMallocAsync or cuMemCreate",
             (unsigned long)p);
    return true;
}

void pl_peer_enable(int owner, int accessor) {
    gpu_heap_t *h = pl_heap(owner);
    if (!h) return;
    int rc = heap_peer_add(h, accessor);
    if (rc != GPU_OK)
        gh_report(rc);
    else
        atomic_fetch_add_explicit(&peers_enabled, 1, memory_order_relaxed);
}

void pl_peer_disable(int owner, int accessor) {
    gpu_heap_t *h = served_heap(owner);
    if (h) (void)heap_peer_remove(h, accessor);
}
