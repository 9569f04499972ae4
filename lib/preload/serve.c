/*
 * serve.c — what the interposer takes from gpuheap, and what it leaves alone.
 *
 * One rule decides: an allocation is served by the default heap of the device
 * the caller means (the runtime's current device for cudaMalloc, the current
 * context's device for cuMemAlloc, the device argument for the framework entry
 * points), on the CUDA backend — or, inside a region (gpu_region_begin), by the
 * heap of the region's tag on that device, so that a program's allocations can
 * be paused and resumed by tag; a pointer is freed by gpuheap when a heap owns
 * it. Everything else — no driver, no device, a device without the virtual
 * memory API, GPUHEAP_BACKEND=host, a heap that failed to open, a failed
 * allocation, memory the heap does not own — goes to the real function, so the
 * program sees exactly what it would see without the interposer. One failed
 * allocation does not: under a cap (gpu_set_limit, GPUHEAP_LIMIT), the heap's
 * out of memory is the program's answer (cudaErrorMemoryAllocation,
 * CUDA_ERROR_OUT_OF_MEMORY), because the driver's allocation would hold memory
 * past the cap and a framework would never see its limit.
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
 * Memory info (cudaMemGetInfo, cuMemGetInfo) counts the heap's idle memory as
 * free, and under a cap (gpu_set_limit, GPUHEAP_LIMIT) reports the cap as the
 * total and the room left under it as free, so that a framework sizing its
 * pools from free memory stays inside the cap.
 *
 * Counters say what was served and what was passed on (allocations, frees, and
 * the IPC calls ipc.c counts); GPUHEAP_STATS=1 (or gpuheap-run --stats) prints
 * them at exit, beside the library's own summary.
 * When no heap could be opened the line says that every call went to the
 * driver, and why. Otherwise the interposer is silent, unless GPUHEAP_VERBOSE
 * asks.
 */
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

#define PL_MAX_DEVICES 64
#define PL_ALIGN_MIN ((size_t)512)
#define PL_ALIGN_MAX ((size_t)2 << 20)

/* ---- counters and the exit report -------------------------------------------- */

static _Atomic uint64_t served[PL_VIAS], forwarded_allocs, refused_capped, freed, freed_foreign, freed_invalid;
static _Atomic uint64_t peers_enabled;

void pl_count_forwarded_alloc(void) { atomic_fetch_add_explicit(&forwarded_allocs, 1, memory_order_relaxed); }

/* True when an environment variable is set to something other than "" or "0". */
static bool env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

/* Why the first default heap that failed to open failed (the library's own
 * message, caught by note_open_error while pl_heap opens it). */
static char open_error[256];
static _Atomic bool open_error_claimed, open_error_ready;
static _Thread_local bool opening;

static void note_open_error(int err, const char *msg, void *arg) {
    (void)arg;
    if (!opening || atomic_exchange(&open_error_claimed, true)) return;
    snprintf(open_error, sizeof open_error, "%s: %s", gpu_strerror(err), msg);
    atomic_store_explicit(&open_error_ready, true, memory_order_release);
}

/* dl_iterate_phdr callback: 1 at the first CUDA runtime or driver loaded. */
static int find_cuda_library(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size, (void)arg;
    const char *slash = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
    const char *base = slash ? slash + 1 : info->dlpi_name;
    return base && (!strncmp(base, "libcudart.so", 12) || !strncmp(base, "libcuda.so", 10));
}

/* The process gpuheap-run started: it exports GPUHEAP_RUN_PID=$$ and execs the
 * program, which keeps the pid. */
static bool started_by_gpuheap_run(void) {
    const char *v = getenv("GPUHEAP_RUN_PID");
    char *end;
    long pid = v && *v ? strtol(v, &end, 10) : -1;
    return v && *v && !*end && pid == (long)getpid();
}

/* Why no heap serves this process, at exit. */
static void no_heap_reason(char *why, size_t len) {
    const gpu_config_t *cfg = gh_default_config();
    const char *b = getenv("GPUHEAP_BACKEND");
    if (cfg->backend != GPU_BACKEND_AUTO && cfg->backend != GPU_BACKEND_CUDA && cfg->backend != GPU_BACKEND_HOST)
        snprintf(why, len, "GPUHEAP_BACKEND=%.100s is not cuda, host or auto", b ? b : "");
    else if (cfg->backend == GPU_BACKEND_HOST)
        snprintf(why, len, "GPUHEAP_BACKEND=host: device memory is served only from CUDA heaps");
    else if (!pl_driver_ready())
        snprintf(why, len, dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD)
                               ? "the CUDA driver lacks cuGetProcAddress or the context calls: too old"
                               : "no CUDA driver: libcuda.so.1 could not be loaded");
    else if (atomic_load_explicit(&open_error_ready, memory_order_acquire))
        snprintf(why, len, "%s", open_error);
    else
        snprintf(why, len, "no device allocation reached the interposer");
}

/* Says what the interposer did, if anything: a process that never touched
 * device memory (a shell, a tool the program runs) stays silent. When no heap
 * was opened, the program gpuheap-run started, and any process that loaded
 * CUDA, is told why everything went to the driver. Written at a normal exit
 * only (atexit; README.md, Interposer, says why not at a fatal signal). */
static void report_at_exit(void) {
    typedef unsigned long long ull;
    pl_ipc_counts ipc;
    pl_ipc_counts_get(&ipc);
    uint64_t ipc_ours = 0, ipc_passed = 0;
    for (int op = 0; op < PL_IPC_OPS; op++) ipc_ours += ipc.served[op] + ipc.failed[op], ipc_passed += ipc.passed[op];
    uint64_t total = served[PL_VIA_RUNTIME] + served[PL_VIA_DRIVER] + served[PL_VIA_PLUGIN];
    bool touched = total || forwarded_allocs || refused_capped || freed_foreign || freed_invalid || ipc_ours || ipc_passed;
    bool any_heap = total != 0 || ipc_ours != 0;
    for (int d = 0; d < PL_MAX_DEVICES && !any_heap; d++) any_heap = gh_heap_default_peek(d) != NULL;
    if (!any_heap) {
        if (!touched && !started_by_gpuheap_run() && !dl_iterate_phdr(find_cuda_library, NULL)) return;
        char why[320];
        no_heap_reason(why, sizeof why);
        fprintf(stderr,
                "gpuheap-preload: no heap opened (%s): every call was passed to the driver untouched (%llu "
                "allocations, %llu frees), IPC get/open/close %llu/%llu/%llu\n",
                why, (ull)forwarded_allocs, (ull)freed_foreign, (ull)ipc.passed[PL_IPC_GET],
                (ull)ipc.passed[PL_IPC_OPEN], (ull)ipc.passed[PL_IPC_CLOSE]);
        return;
    }
    fprintf(stderr,
            "gpuheap-preload: %llu allocations served by gpuheap (cudaMalloc %llu, cuMemAlloc %llu, framework entry points "
            "%llu), %llu refused as out of memory under the cap (GPUHEAP_LIMIT), %llu passed on (size 0, no device or "
            "context, or the heap failed); %llu frees by gpuheap, %llu passed "
            "on (not heap memory), %llu refused (not a live block); IPC get/open/close: %llu/%llu/%llu served by gpuheap, "
            "%llu/%llu/%llu failed there, %llu/%llu/%llu passed on (not heap memory, not a gpuheap handle); %llu "
            "peer-access enables applied\n",
            (ull)total, (ull)served[PL_VIA_RUNTIME], (ull)served[PL_VIA_DRIVER], (ull)served[PL_VIA_PLUGIN],
            (ull)refused_capped, (ull)forwarded_allocs, (ull)freed, (ull)freed_foreign, (ull)freed_invalid, (ull)ipc.served[PL_IPC_GET],
            (ull)ipc.served[PL_IPC_OPEN], (ull)ipc.served[PL_IPC_CLOSE], (ull)ipc.failed[PL_IPC_GET],
            (ull)ipc.failed[PL_IPC_OPEN], (ull)ipc.failed[PL_IPC_CLOSE], (ull)ipc.passed[PL_IPC_GET],
            (ull)ipc.passed[PL_IPC_OPEN], (ull)ipc.passed[PL_IPC_CLOSE], (ull)peers_enabled);
    char order[160];
    pl_order_describe(order, sizeof order);
    fprintf(stderr, "gpuheap-preload: free order: %s\n", order);
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
    gpu_set_error_handler(note_open_error, NULL); /* this copy of gpuheap's: the program's own is apart */
    const gpu_config_t *cfg = gh_default_config(); /* the default heaps' own, read once */
    host_configured = cfg->backend == GPU_BACKEND_HOST;
    pl_order_setup();
    if (host_configured && cfg->verbose)
        fprintf(stderr, "gpuheap-preload: GPUHEAP_BACKEND=host: device allocations pass through to the driver\n");
}

void pl_setup(void) { pthread_once(&setup_once, setup); }

/* dev's default heap if it exists and serves device memory (not a host-backend
 * heap); never creates one. */
static gpu_heap_t *served_heap(int dev) {
    if (dev < 0 || dev >= PL_MAX_DEVICES) return NULL;
    pl_setup();
    return host_configured ? NULL : gh_heap_default_peek(dev);
}

gpu_heap_t *pl_heap(int dev) {
    gpu_heap_t *h = served_heap(dev);
    if (h || dev < 0 || dev >= PL_MAX_DEVICES || atomic_load_explicit(&passing[dev], memory_order_relaxed)) return h;
    if (host_configured || !pl_driver_ready()) {
        atomic_store(&passing[dev], true);
        return NULL;
    }
    opening = true;
    h = gh_heap_default_of(dev); /* reports why when verbose */
    opening = false;
    if (!h) atomic_store(&passing[dev], true);
    return h;
}

gpu_heap_t *pl_heap_for_alloc(int dev) {
    gpu_heap_t *h = pl_heap(dev); /* the interposer serves dev at all */
    return h && gh_region_open() ? gh_heap_for_alloc(dev) : h;
}

size_t pl_alignment_for(size_t size) {
    if (size <= PL_ALIGN_MIN) return PL_ALIGN_MIN;
    if (size >= PL_ALIGN_MAX) return PL_ALIGN_MAX;
    size_t a = PL_ALIGN_MIN;
    while (a < size) a <<= 1;
    return a;
}

void *pl_alloc(gpu_heap_t *h, size_t size, pl_via via, bool *oom) {
    void *p = gpu_heap_malloc_aligned(h, size, pl_alignment_for(size));
    if (p) {
        atomic_fetch_add_explicit(&served[via], 1, memory_order_relaxed);
    } else if (oom && gpu_last_error() == GPU_ERR_OUT_OF_MEMORY && gpu_limit() != SIZE_MAX) {
        *oom = true;
        atomic_fetch_add_explicit(&refused_capped, 1, memory_order_relaxed);
    }
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

void pl_add_idle(int dev, size_t *free_bytes, size_t *total_bytes) {
    size_t idle = pl_idle_bytes(dev), cap = gpu_limit(); /* reads GPUHEAP_LIMIT if no heap did yet */
    *free_bytes += idle;
    if (cap != SIZE_MAX) { /* the room under the cap, idle memory included, never more than the driver's */
        size_t held = heap_cap_held(dev), room = (held < cap ? cap - held : 0) + idle;
        if (*free_bytes > room) *free_bytes = room;
        if (total_bytes && *total_bytes > cap) *total_bytes = cap;
    }
    if (total_bytes && *free_bytes > *total_bytes) *free_bytes = *total_bytes;
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
