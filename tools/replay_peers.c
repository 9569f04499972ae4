/*
 * replay_peers.c — the three allocators behind tr_allocator (see replay_peers.h).
 *
 * Every function is a thin call into the allocator; whatever the replay times is
 * the allocator's own cost plus one indirect call. gpuheap gets the alignment and
 * flags a trace recorded; the CUDA peers get plain allocations (cudaMalloc's
 * alignment already covers gpuheap's 256 bytes) and do realloc as the replay's
 * alloc + copy + free, with the copied bytes counted.
 */
#include "replay_peers.h"

#include <stdio.h>
#include <string.h>

#include "backend/backend.h"
#include "core/heap.h"
#include "cudart_util.h"

/* ---- gpuheap ------------------------------------------------------------------- */

/* The replayed call's time, on a host-backend heap with a lag (peer_set_lag). */
static void gh_clock(void *ctx, uint64_t t_ns) {
    peer *p = ctx;
    vmm_host_set_clock(p->heap->door.b, t_ns, p->lag_ns);
}

bool peer_set_lag(peer *p, uint64_t lag_ns) {
    if (p->kind != PEER_GPUHEAP || p->cfg.backend != GPU_BACKEND_HOST) return false;
    p->lag_ns = lag_ns;
    p->a.clock = lag_ns ? gh_clock : NULL;
    return true;
}

static void *gh_alloc(void *ctx, size_t size, size_t align, unsigned flags) {
    peer *p = ctx;
    if (flags) return gpu_heap_malloc_flags(p->heap, size, flags);
    if (align > GPU_MIN_ALIGNMENT) return gpu_heap_malloc_aligned(p->heap, size, align);
    return gpu_heap_malloc(p->heap, size);
}
static int gh_free(void *ctx, void *ptr) { return gpu_heap_free(((peer *)ctx)->heap, ptr); }
static void *gh_realloc(void *ctx, void *ptr, size_t old_size, size_t size) {
    (void)old_size;
    return gpu_heap_realloc(((peer *)ctx)->heap, ptr, size);
}
static int gh_trim(void *ctx, size_t keep) { return gpu_heap_trim(((peer *)ctx)->heap, keep); }
static void gh_halfway(void *ctx) {
    peer *p = ctx;
    p->half_seen = peer_driver_work(p, &p->half);
}
static int gh_protect(void *ctx, void *ptr, size_t size, int prot) {
    return gpu_heap_protect(((peer *)ctx)->heap, ptr, size, prot);
}

/* ---- cudaMalloc ------------------------------------------------------------------- */

static size_t device_used(void) {
    size_t free_b = 0, total = 0;
    if (cudart.cudaMemGetInfo(&free_b, &total) != CUDART_SUCCESS) return 0;
    return total - free_b;
}

static void *cm_alloc(void *ctx, size_t size, size_t align, unsigned flags) {
    (void)ctx, (void)align, (void)flags;
    void *ptr = NULL;
    return cudart.cudaMalloc(&ptr, size ? size : 1) == CUDART_SUCCESS ? ptr : NULL;
}
static int cm_free(void *ctx, void *ptr) {
    (void)ctx;
    return cudart.cudaFree(ptr) == CUDART_SUCCESS ? 0 : -1;
}
static int cm_copy(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    return cudart.cudaMemcpy(dst, src, n, CUDART_MEMCPY_DEVICE_TO_DEVICE) == CUDART_SUCCESS ? 0 : -1;
}
static void cm_sample(void *ctx) {
    peer *p = ctx;
    size_t used = device_used();
    uint64_t held = used > p->base_used ? used - p->base_used : 0;
    if (held > p->peak_seen) p->peak_seen = held;
}

/* ---- cudaMallocAsync ------------------------------------------------------------------ */

static void *cma_alloc(void *ctx, size_t size, size_t align, unsigned flags) {
    (void)align, (void)flags;
    void *ptr = NULL;
    return cudart.cudaMallocAsync(&ptr, size ? size : 1, ((peer *)ctx)->stream) == CUDART_SUCCESS ? ptr : NULL;
}
static int cma_free(void *ctx, void *ptr) {
    return cudart.cudaFreeAsync(ptr, ((peer *)ctx)->stream) == CUDART_SUCCESS ? 0 : -1;
}
static int cma_copy(void *ctx, void *dst, const void *src, size_t n) {
    return cudart.cudaMemcpyAsync(dst, src, n, CUDART_MEMCPY_DEVICE_TO_DEVICE, ((peer *)ctx)->stream) ==
                   CUDART_SUCCESS ? 0 : -1;
}
static int cma_finish(void *ctx) {
    return cudart.cudaStreamSynchronize(((peer *)ctx)->stream) == CUDART_SUCCESS ? 0 : -1;
}

/* ---- opening, measuring, closing -------------------------------------------------------- */

const char *peer_kind_name(int kind) {
    switch (kind) {
    case PEER_GPUHEAP: return "gpuheap";
    case PEER_CUDA_MALLOC: return "cudaMalloc";
    case PEER_CUDA_MALLOC_ASYNC: return "cudaMallocAsync";
    }
    return NULL;
}

int peer_open(peer *p, int kind, const gpu_config_t *cfg, char *err, size_t err_len) {
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->a.ctx = p;
    switch (kind) {
    case PEER_GPUHEAP: {
        if (cfg) p->cfg = *cfg;
        else gpu_config_init(&p->cfg);
        if (peer_reset(p, err, err_len) != 0) return -1;
        snprintf(p->name, sizeof p->name, "%s", peer_kind_name(PEER_GPUHEAP));
        p->a.alloc = gh_alloc;
        p->a.free = gh_free;
        p->a.realloc = gh_realloc;
        p->a.trim = gh_trim;
        p->a.protect = gh_protect;
        p->a.halfway = gh_halfway;
        break;
    }
    case PEER_CUDA_MALLOC:
        if (!cudart.cudaMalloc) return snprintf(err, err_len, "no CUDA runtime"), -1;
        snprintf(p->name, sizeof p->name, "%s", peer_kind_name(PEER_CUDA_MALLOC));
        p->a.alloc = cm_alloc;
        p->a.free = cm_free;
        p->a.copy = cm_copy;
        p->a.sample = cm_sample;
        (void)peer_reset(p, err, err_len);
        break;
    case PEER_CUDA_MALLOC_ASYNC: {
        if (!cudart.cudaMalloc) return snprintf(err, err_len, "no CUDA runtime"), -1;
        snprintf(p->name, sizeof p->name, "%s", peer_kind_name(PEER_CUDA_MALLOC_ASYNC));
        cudart_error e = cudart_keep_all_pool(&p->stream, &p->pool);
        if (e != CUDART_SUCCESS) return snprintf(err, err_len, "cudaMallocAsync setup: %s", cudart_strerror(e)), -1;
        p->a.alloc = cma_alloc;
        p->a.free = cma_free;
        p->a.copy = cma_copy;
        p->a.finish = cma_finish;
        if (peer_reset(p, err, err_len) != 0) return -1;
        break;
    }
    default:
        return snprintf(err, err_len, "unknown peer %d", kind), -1;
    }
    p->a.name = p->name;
    return 0;
}

bool peer_driver_work(const peer *p, peer_work *out) {
    gpu_stats_t s;
    if (p->kind != PEER_GPUHEAP || gpu_heap_stats(p->heap, &s) != GPU_OK) return false;
    *out = (peer_work){.maps = s.backend_map, .creates = s.backend_create, .unmaps = s.backend_unmap, .fences = s.fences, .seals = s.seal_events,
                       .releases = s.order_releases};
    return true;
}

bool peer_second_half(const peer *p, peer_work *out) {
    peer_work now;
    if (!p->half_seen || !peer_driver_work(p, &now)) return false;
    const peer_work *h = &p->half;
    *out = (peer_work){.maps = now.maps - h->maps, .creates = now.creates - h->creates, .unmaps = now.unmaps - h->unmaps,
                       .fences = now.fences - h->fences, .seals = now.seals - h->seals, .releases = now.releases - h->releases};
    return true;
}

void peer_work_json(FILE *f, const peer_work *w) {
    fprintf(f, "\"maps\": %llu, \"creates\": %llu, \"unmaps\": %llu, \"fences\": %llu, \"seals\": %llu, \"releases\": %llu",
            (unsigned long long)w->maps, (unsigned long long)w->creates, (unsigned long long)w->unmaps, (unsigned long long)w->fences,
            (unsigned long long)w->seals, (unsigned long long)w->releases);
}

int peer_reset(peer *p, char *err, size_t err_len) {
    switch (p->kind) {
    case PEER_GPUHEAP: {
        if (p->heap) gpu_heap_destroy(p->heap);
        p->heap = NULL;
        p->half_seen = false; /* the counters start again with the new heap */
        int rc = gpu_heap_create(&p->cfg, &p->heap);
        if (rc != GPU_OK) return snprintf(err, err_len, "gpu_heap_create: %s", gpu_strerror(rc)), -1;
        return 0;
    }
    case PEER_CUDA_MALLOC:
        cudart.cudaDeviceSynchronize();
        p->base_used = device_used();
        p->peak_seen = 0;
        return 0;
    case PEER_CUDA_MALLOC_ASYNC: {
        uint64_t zero = 0;
        cudart_error e = cudart.cudaStreamSynchronize(p->stream);
        if (e == CUDART_SUCCESS) e = cudart.cudaMemPoolTrimTo(p->pool, 0);
        if (e == CUDART_SUCCESS) e = cudart.cudaMemPoolSetAttribute(p->pool, CUDART_MEMPOOL_RESERVED_MEM_HIGH, &zero);
        if (e != CUDART_SUCCESS) return snprintf(err, err_len, "resetting the pool: %s", cudart_strerror(e)), -1;
        return 0;
    }
    }
    return -1;
}

uint64_t peer_peak_physical(peer *p) {
    switch (p->kind) {
    case PEER_GPUHEAP: {
        gpu_stats_t s;
        return gpu_heap_stats(p->heap, &s) == GPU_OK ? s.peak_mapped_bytes : 0;
    }
    case PEER_CUDA_MALLOC:
        cm_sample(p);
        return p->peak_seen;
    case PEER_CUDA_MALLOC_ASYNC: {
        uint64_t high = 0;
        cudart.cudaStreamSynchronize(p->stream);
        cudart.cudaMemPoolGetAttribute(p->pool, CUDART_MEMPOOL_RESERVED_MEM_HIGH, &high);
        return high;
    }
    }
    return 0;
}

void peer_close(peer *p) {
    if (p->kind == PEER_GPUHEAP && p->heap) gpu_heap_destroy(p->heap);
    if (p->kind == PEER_CUDA_MALLOC_ASYNC && p->pool) {
        cudart.cudaStreamSynchronize(p->stream);
        cudart.cudaMemPoolTrimTo(p->pool, 0);
    }
    memset(p, 0, sizeof *p);
}
