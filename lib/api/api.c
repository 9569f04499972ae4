/*
 * api.c — the public entry points: argument checks, finding the heap, errors.
 *
 * Every gpu_* call lands here, validates what it was given, finds its heap — an
 * explicit one, the default heap of the caller's current CUDA device (for an
 * allocation inside a region, its tag's heap: region.c), or for gpu_free the
 * heap whose reservation holds the pointer — and calls the thread cache or the heap core. Errors
 * follow one convention: a code (or NULL), the thread's last error and message,
 * and the process-wide handler, called only after every lock is released.
 *
 * The registry lists the live heaps, so a pointer finds its heap whatever device
 * is current, and a destroyed or made-up heap handle is refused instead of used.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "cache/tcache.h"
#include "core/heap.h"
#include "error.h"
#include "obs/stats.h"
#include "obs/trace.h"

/* ---- heaps --------------------------------------------------------------------- */

int gpu_heap_create(const gpu_config_t *cfg, gpu_heap_t **out) {
    if (!out) return gh_error(GPU_ERR_INVALID, "gpu_heap_create: out is NULL");
    gpu_config_t defaults;
    if (!cfg) {
        (void)gpu_config_init(&defaults); /* a malformed variable was reported and left at its default */
        cfg = &defaults;
    }
    if (cfg->backend != GPU_BACKEND_AUTO && cfg->backend != GPU_BACKEND_CUDA && cfg->backend != GPU_BACKEND_HOST)
        return gh_error(GPU_ERR_INVALID, "gpu_heap_create: unknown backend %d%s", (int)cfg->backend,
                        (int)cfg->backend == -1 ? " (GPUHEAP_BACKEND is not cuda, host or auto)" : "");
    if (cfg->device < 0) return gh_error(GPU_ERR_INVALID, "gpu_heap_create: device %d", cfg->device);
    gpu_heap_t *h;
    trace_env_init();
    stats_env_init();
    config_process_init();
    int rc = heap_open(cfg, &h);
    if (rc != GPU_OK) return gh_report(rc);
    rc = registry_add(h);
    if (rc != GPU_OK) {
        heap_close(h);
        return gh_report(rc);
    }
    *out = h;
    gh_ok();
    return GPU_OK;
}

int gh_heap_create_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out) {
    gpu_heap_t *h;
    trace_env_init();
    stats_env_init();
    config_process_init();
    int rc = heap_open_on(cfg, backend, &h);
    if (rc == GPU_OK && (rc = registry_add(h)) != GPU_OK) heap_close(h);
    if (rc != GPU_OK) return gh_report(rc);
    *out = h;
    gh_ok();
    return GPU_OK;
}

int gpu_heap_destroy(gpu_heap_t *heap) {
    if (!heap) return gh_error(GPU_ERR_INVALID, "gpu_heap_destroy: heap is NULL");
    if (!registry_has(heap)) return gh_error(GPU_ERR_DESTROYED, "gpu_heap_destroy: %p is not a live heap", (void *)heap);
    if (heap->is_default) return gh_error(GPU_ERR_INVALID, "gpu_heap_destroy: a default heap lives as long as the process");
    registry_remove(heap);
    stats_heap_closing(heap);
    heap_close(heap);
    gh_ok();
    return GPU_OK;
}

static gpu_heap_t *_Atomic default_heaps[GH_DEVICES];
static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;

/* The calling thread's current CUDA device, 0 when none is current. */
static int current_device(const gpu_config_t *cfg) {
#if GPUHEAP_HAVE_CUDA
    if (cfg->backend != GPU_BACKEND_HOST) return vmm_cuda_current_device();
#endif
    (void)cfg;
    return 0;
}

static gpu_config_t default_config;
static pthread_once_t default_config_once = PTHREAD_ONCE_INIT;
static _Atomic bool default_config_ready; /* set once default_config is loaded: the fast path's test */
static void default_config_load(void) {
    (void)gpu_config_init(&default_config);
    atomic_store_explicit(&default_config_ready, true, memory_order_release);
}

const gpu_config_t *gh_default_config(void) {
    pthread_once(&default_config_once, default_config_load);
    return &default_config;
}

int gh_current_device(void) {
    if (!atomic_load_explicit(&default_config_ready, memory_order_acquire))
        pthread_once(&default_config_once, default_config_load);
    return current_device(&default_config);
}

/* The default heap of the calling thread's current device: once it exists, two
 * loads and whatever current_device asks (nothing with one device or the host
 * backend; with several devices, the driver's thread-local current context). */
static inline gpu_heap_t *default_heap(void) {
    int dev = gh_current_device();
    gpu_heap_t *h = dev >= 0 && dev < GH_DEVICES ? atomic_load_explicit(&default_heaps[dev], memory_order_acquire) : NULL;
    return h ? h : gh_heap_default_of(dev);
}

gpu_heap_t *gpu_heap_default(void) { return default_heap(); }

gpu_heap_t *gh_heap_default_peek(int dev) {
    return dev >= 0 && dev < GH_DEVICES ? atomic_load_explicit(&default_heaps[dev], memory_order_acquire) : NULL;
}

int gh_heap_open_hidden(const gpu_config_t *cfg, gpu_heap_t **out) {
    trace_env_init();
    stats_env_init();
    config_process_init();
    gpu_heap_t *h;
    int rc = heap_open(cfg, &h);
    if (rc == GPU_OK) h->is_default = true; /* lives as long as the process: before the registry lists it */
    if (rc == GPU_OK && (rc = registry_add(h)) != GPU_OK) heap_close(h);
    if (rc != GPU_OK) return rc;
    *out = h;
    return GPU_OK;
}

gpu_heap_t *gh_heap_default_of(int dev) {
    pthread_once(&default_config_once, default_config_load);
    if (dev < 0 || dev >= GH_DEVICES) {
        gh_error(GPU_ERR_NO_DEVICE, "current device %d is out of range", dev);
        return NULL;
    }
    gpu_heap_t *h = atomic_load_explicit(&default_heaps[dev], memory_order_acquire);
    if (h) return h;
    pthread_mutex_lock(&default_lock);
    h = atomic_load(&default_heaps[dev]);
    int rc = GPU_OK;
    if (!h) {
        gpu_config_t cfg = default_config;
        cfg.device = dev;
        rc = gh_heap_open_hidden(&cfg, &h);
        if (rc == GPU_OK) atomic_store_explicit(&default_heaps[dev], h, memory_order_release);
    }
    pthread_mutex_unlock(&default_lock);
    if (rc != GPU_OK) {
        gh_report(rc);
        return NULL;
    }
    return h;
}

/* A heap a gpu_heap_* call names: live, or NULL with the error reported. */
static gpu_heap_t *resolve_named(gpu_heap_t *heap) {
    if (!registry_has(heap)) {
        gh_error(GPU_ERR_DESTROYED, "%p is not a live heap (destroyed, or never created)", (void *)heap);
        return NULL;
    }
    return heap;
}

/* The heap a gpu_heap_* call names: NULL is the default; anything else must be live. */
static inline gpu_heap_t *resolve(gpu_heap_t *heap) { return heap ? resolve_named(heap) : default_heap(); }

gpu_heap_t *api_heap(gpu_heap_t *heap) { return resolve(heap); }


/* A loaded gpu_map_file mapping is a live block, but only gpu_unmap_file ends it. */
/* ---- allocation -------------------------------------------------------------------- */

#if GPUHEAP_DEBUG_CHECKS
/* Debug builds check the whole heap after every call. */
static void debug_check(gpu_heap_t *h) {
    char msg[256];
    if (heap_check(h, msg, sizeof msg) != GPU_OK) gh_assert_fail("gpu_heap_check", msg, __FILE__, __LINE__);
}
#else
static inline void debug_check(gpu_heap_t *h) { (void)h; }
#endif

/* The end of every call that returns a pointer: the debug check, then the
 * pointer and a clear last error, or NULL with the error reported. */
static void *pointer_result(gpu_heap_t *h, int rc, void *p) {
    debug_check(h);
    if (rc != GPU_OK) {
        gh_report(rc);
        return NULL;
    }
    gh_ok();
    return p;
}

/* The same for calls that return a code. */
static int code_result(gpu_heap_t *h, int rc) {
    debug_check(h);
    return rc == GPU_OK ? gh_ok() : gh_report(rc);
}

/* The allocation path past the fast one: the thread's cache when it may serve
 * the request and was not asked yet, then the heap; traced when t0 is set. */
static __attribute__((noinline)) void *allocate_slow(gpu_heap_t *h, size_t size, size_t align, unsigned flags,
                                                     uint64_t t0, bool cache_asked) {
    void *p = NULL;
    int rc = GH_MISS;
    /* A paused heap's caches are not asked: the heap itself refuses (GPU_ERR_PAUSED). */
    bool cacheable = !cache_asked && !flags && align == GH_QUANTUM && heap_is_running(h);
    if (cacheable && size <= TC_MID_MAX_BYTES && (p = tcache_malloc(h, size)))
        rc = GPU_OK;
    else if (cacheable && size >= tc_big_min(h))
        rc = tcache_malloc_big(h, size, &p);
    if (rc == GH_MISS) {
        tcache_give_back_big(h); /* the heap's ladder sees the thread's kept large block from its first rung */
        rc = heap_malloc(h, size, align, flags, &p);
    }
    if (t0) trace_record(t0, &(trace_event){.op = TRACE_MALLOC, .heap = h->base, .size = size, .arg = align,
                                             .flags = (uint8_t)flags, .result = (uintptr_t)p, .rc = (int8_t)rc});
    return pointer_result(h, rc, p);
}

/* The one allocation path: every malloc form ends here, with its heap found and
 * its flags and alignment checked. A small plain block untraced is the fast
 * path: the thread's cache, nothing else; anything more is allocate_slow's. */
static inline void *allocate_on(gpu_heap_t *h, size_t size, size_t align, unsigned flags) {
    uint64_t t0 = trace_begin();
    if (t0 || flags || align != GH_QUANTUM || size > TC_MID_MAX_BYTES || !heap_is_running(h))
        return allocate_slow(h, size, align, flags, t0, false);
    void *p = tcache_malloc(h, size);
    if (!p) return allocate_slow(h, size, align, flags, 0, true);
    debug_check(h);
    gh_ok();
    return p;
}

/* The heap an allocation names: NULL is the innermost region's tag heap, or the
 * default heap outside regions (the common case: two loads, default_heap). */
static inline gpu_heap_t *alloc_heap(gpu_heap_t *heap) {
    if (heap) return resolve(heap);
    return gh_region_open() ? gh_heap_for_alloc(gh_current_device()) : default_heap();
}

static void *allocate(gpu_heap_t *heap, size_t size, size_t align, unsigned flags) {
    gpu_heap_t *h = alloc_heap(heap);
    if (!h) return NULL;
    if (flags & ~(unsigned)(GPU_ALLOC_OWNED | GPU_ALLOC_ZERO)) {
        gh_error(GPU_ERR_INVALID, "unknown allocation flags %#x", flags);
        return NULL;
    }
    if (align < GH_QUANTUM) align = GH_QUANTUM;
    if (!gh_is_pow2(align) || align > h->reserved / 2) {
        gh_error(GPU_ERR_INVALID, "alignment %zu is not a power of two within the reservation", align);
        return NULL;
    }
    return allocate_on(h, size, align, flags);
}

/* The plain forms need no flag or alignment check (every reservation holds
 * more than GH_QUANTUM twice). */
void *gpu_heap_malloc(gpu_heap_t *heap, size_t size) {
    gpu_heap_t *h = alloc_heap(heap);
    return h ? allocate_on(h, size, GH_QUANTUM, 0) : NULL;
}
void *gpu_malloc(size_t size) {
    gpu_heap_t *h = alloc_heap(NULL);
    return h ? allocate_on(h, size, GH_QUANTUM, 0) : NULL;
}

void *gpu_heap_calloc(gpu_heap_t *heap, size_t n, size_t size) {
    size_t total;
    if (gh_mul_overflow(n, size, &total)) {
        gh_error(GPU_ERR_INVALID, "gpu_calloc(%zu, %zu) overflows", n, size);
        return NULL;
    }
    return allocate(heap, total, GH_QUANTUM, GPU_ALLOC_ZERO);
}
void *gpu_calloc(size_t n, size_t size) { return gpu_heap_calloc(NULL, n, size); }

void *gpu_heap_malloc_aligned(gpu_heap_t *heap, size_t size, size_t align) {
    if (align && !gh_is_pow2(align)) {
        gh_error(GPU_ERR_INVALID, "alignment %zu is not a power of two", align);
        return NULL;
    }
    return allocate(heap, size, align, 0);
}
void *gpu_malloc_aligned(size_t size, size_t align) { return gpu_heap_malloc_aligned(NULL, size, align); }

void *gpu_heap_malloc_flags(gpu_heap_t *heap, size_t size, unsigned flags) {
    return allocate(heap, size, GH_QUANTUM, flags);
}
void *gpu_malloc_flags(size_t size, unsigned flags) { return allocate(NULL, size, GH_QUANTUM, flags); }

/* The heap that holds p: the one named, or the one whose reservation contains it. */
static gpu_heap_t *heap_of(gpu_heap_t *heap, const void *p, const char *call) {
    if (heap) {
        heap = resolve(heap);
        if (heap && !heap_owns(heap, (uintptr_t)p)) {
            gh_error(GPU_ERR_NOT_OWNED, "%s(%p): the pointer is not in this heap", call, p);
            return NULL;
        }
        return heap;
    }
    gpu_heap_t *h = registry_find_ptr((uintptr_t)p);
    if (!h) gh_error(GPU_ERR_NOT_OWNED, "%s(%p): the pointer is not in any gpuheap heap", call, p);
    return h;
}

/* The heap whose reservation holds p, for a free that names none: first the
 * default heap of device 0 (default heaps are never destroyed, so no registry
 * look is needed to trust it), then every live heap. */
static inline gpu_heap_t *heap_at(const void *p) {
    gpu_heap_t *h = atomic_load_explicit(&default_heaps[0], memory_order_acquire);
    return h && heap_owns(h, (uintptr_t)p) ? h : heap_of(NULL, p, "gpu_free");
}

/* A free the thread's cache did not take (or tracing is on): the heap's. */
static __attribute__((noinline)) int free_slow(gpu_heap_t *h, void *ptr, uint64_t t0, bool cache_asked) {
    int rc = !cache_asked && tcache_free(h, (uintptr_t)ptr) ? GPU_OK : heap_free(h, ptr);
    if (t0) trace_record(t0, &(trace_event){.op = TRACE_FREE, .heap = h->base, .addr = (uintptr_t)ptr, .rc = (int8_t)rc});
    return code_result(h, rc);
}

int gpu_heap_free(gpu_heap_t *heap, void *ptr) {
    if (!ptr) return gh_ok();
    gpu_heap_t *h = heap ? heap_of(heap, ptr, "gpu_free") : heap_at(ptr);
    if (!h) return gpu_last_error();
    uint64_t t0 = trace_begin();
    if (t0 || !tcache_free(h, (uintptr_t)ptr)) return free_slow(h, ptr, t0, !t0);
    debug_check(h);
    return gh_ok();
}
int gpu_free(void *ptr) { return gpu_heap_free(NULL, ptr); }

void *gpu_heap_realloc(gpu_heap_t *heap, void *ptr, size_t size) {
    if (!ptr) return allocate(heap, size, GH_QUANTUM, 0);
    gpu_heap_t *h = heap_of(heap, ptr, "gpu_realloc");
    if (!h) return NULL;
    if (!size) {
        gpu_heap_free(h, ptr);
        return NULL;
    }
    void *out = NULL;
    uint64_t t0 = trace_begin();
    int rc = heap_realloc(h, ptr, size, &out);
    if (t0) trace_record(t0, &(trace_event){.op = TRACE_REALLOC, .heap = h->base, .addr = (uintptr_t)ptr, .size = size,
                                             .result = (uintptr_t)out, .rc = (int8_t)rc});
    return pointer_result(h, rc, out);
}
void *gpu_realloc(void *ptr, size_t size) { return gpu_heap_realloc(NULL, ptr, size); }

/* ---- graph capture -------------------------------------------------------------------- */

int gpu_set_free_order(gpu_free_order_t order) {
    int rc = heap_set_free_order(order);
    return rc == GPU_OK ? gh_ok() : gh_report(gh_note_context(rc, "gpu_set_free_order"));
}
gpu_free_order_t gpu_free_order(void) { return heap_free_order(); }

void gpu_capture_begin(void) { vmm_capture_announce(+1); }
void gpu_capture_end(void) { vmm_capture_announce(-1); }

/* ---- sparse address spaces ------------------------------------------------------------ */

void *gpu_heap_reserve(gpu_heap_t *heap, size_t size) {
    gpu_heap_t *h = resolve(heap);
    if (!h) return NULL;
    void *p = NULL;
    int rc = heap_reserve(h, size, &p);
    return pointer_result(h, rc, p);
}
void *gpu_reserve(size_t size) { return gpu_heap_reserve(NULL, size); }

/* The one path of commit, decommit and release: find the heap, call, report. */
static int sparse_call(gpu_heap_t *heap, void *ptr, size_t len, const char *call,
                       int (*fn)(gpu_heap_t *, void *, size_t)) {
    if (!ptr) return gh_error(GPU_ERR_NOT_RESERVATION, "%s(NULL)", call);
    gpu_heap_t *h = heap_of(heap, ptr, call);
    if (!h) return gpu_last_error();
    int rc = fn(h, ptr, len);
    return code_result(h, rc);
}

static int release_fn(gpu_heap_t *h, void *ptr, size_t len) {
    (void)len;
    return heap_release_reservation(h, ptr);
}

int gpu_heap_commit(gpu_heap_t *heap, void *ptr, size_t len) { return sparse_call(heap, ptr, len, "gpu_commit", heap_commit); }
int gpu_commit(void *ptr, size_t len) { return gpu_heap_commit(NULL, ptr, len); }
int gpu_heap_decommit(gpu_heap_t *heap, void *ptr, size_t len) {
    return sparse_call(heap, ptr, len, "gpu_decommit", heap_decommit);
}
int gpu_decommit(void *ptr, size_t len) { return gpu_heap_decommit(NULL, ptr, len); }
int gpu_heap_release(gpu_heap_t *heap, void *ptr) { return sparse_call(heap, ptr, 0, "gpu_release", release_fn); }
int gpu_release(void *ptr) { return gpu_heap_release(NULL, ptr); }

/* ---- stream-ordered ------------------------------------------------------------------- */

void *gpu_heap_malloc_async(gpu_heap_t *heap, size_t size, void *stream) {
    gpu_heap_t *h = alloc_heap(heap);
    if (!h) return NULL;
    void *p = NULL;
    int rc = heap_malloc_async(h, size, (uintptr_t)stream, &p);
    return pointer_result(h, rc, p);
}
void *gpu_malloc_async(size_t size, void *stream) { return gpu_heap_malloc_async(NULL, size, stream); }

int gpu_heap_free_async(gpu_heap_t *heap, void *ptr, void *stream) {
    if (!ptr) return gh_ok();
    gpu_heap_t *h = heap_of(heap, ptr, "gpu_free_async");
    if (!h) return gpu_last_error();
    int rc = heap_free_async(h, ptr, (uintptr_t)stream);
    return code_result(h, rc);
}
int gpu_free_async(void *ptr, void *stream) { return gpu_heap_free_async(NULL, ptr, stream); }

size_t gpu_heap_malloc_usable_size(gpu_heap_t *heap, const void *ptr) {
    if (!ptr) {
        gh_error(GPU_ERR_INVALID, "gpu_malloc_usable_size(NULL)");
        return 0;
    }
    gpu_heap_t *h = heap_of(heap, ptr, "gpu_malloc_usable_size");
    size_t n = 0;
    if (!h) return 0;
    int rc = heap_usable_size(h, ptr, &n);
    if (rc != GPU_OK) {
        gh_report(rc);
        return 0;
    }
    gh_ok();
    return n;
}
size_t gpu_malloc_usable_size(const void *ptr) { return gpu_heap_malloc_usable_size(NULL, ptr); }

int gpu_heap_protect(gpu_heap_t *heap, void *ptr, size_t size, int prot) {
    if (!ptr || !size) return gh_error(GPU_ERR_INVALID, "gpu_protect(%p, %zu): NULL pointer or zero size", ptr, size);
    if (prot != GPU_PROT_NONE && prot != GPU_PROT_READ && prot != GPU_PROT_READ_WRITE)
        return gh_error(GPU_ERR_INVALID, "gpu_protect: unknown protection %d", prot);
    gpu_heap_t *h = heap_of(heap, ptr, "gpu_protect");
    if (!h) return gpu_last_error();
    uint64_t t0 = trace_begin();
    int rc = heap_protect(h, ptr, size, (gpu_prot_t)prot);
    if (t0) trace_record(t0, &(trace_event){.op = TRACE_PROTECT, .heap = h->base, .addr = (uintptr_t)ptr, .size = size,
                                             .arg = (uint64_t)prot, .rc = (int8_t)rc});
    return code_result(h, rc);
}
int gpu_protect(void *ptr, size_t size, int prot) { return gpu_heap_protect(NULL, ptr, size, prot); }

/* ---- statistics, trimming, checking ----------------------------------------------------- */

int gpu_heap_stats(gpu_heap_t *heap, gpu_stats_t *out) {
    if (!out) return gh_error(GPU_ERR_INVALID, "gpu_heap_stats: out is NULL");
    gpu_heap_t *h = resolve(heap);
    if (!h) return gpu_last_error();
    heap_stats(h, out);
    return gh_ok();
}

int gpu_heap_stats_json(gpu_heap_t *heap, char *buf, size_t len) {
    if (!buf && len) return gh_error(GPU_ERR_INVALID, "gpu_heap_stats_json: buf is NULL but len is %zu", len);
    gpu_heap_t *h = resolve(heap);
    if (!h) return gpu_last_error();
    gpu_stats_t s;
    heap_stats(h, &s);
    int n = stats_json(h, &s, buf, len);
    return n < 0 ? gh_error(n, "gpu_heap_stats_json: the text is longer than an int") : (gh_ok(), n);
}

int gpu_heap_trim(gpu_heap_t *heap, size_t keep_bytes) {
    gpu_heap_t *h = resolve(heap);
    if (!h) return gpu_last_error();
    uint64_t t0 = trace_begin();
    int rc = heap_trim(h, keep_bytes);
    if (t0) trace_record(t0, &(trace_event){.op = TRACE_TRIM, .heap = h->base, .size = keep_bytes, .rc = (int8_t)rc});
    return code_result(h, rc);
}

int gpu_heap_check(gpu_heap_t *heap, char *msg, size_t msg_len) {
    gpu_heap_t *h = resolve(heap);
    if (!h) return gpu_last_error();
    int rc = heap_check(h, msg, msg_len);
    if (rc != GPU_OK) return gh_error(rc, "%s", msg && msg_len ? msg : "heap check failed");
    return gh_ok();
}
