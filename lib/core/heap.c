/*
 * heap.c — one heap: a VA reservation carved into blocks, backed on demand;
 * opening and closing it, and its lock.
 *
 * The reservation is tiled by blocks (block.c). Free blocks that are mapped are
 * IDLE and sit in one segregated-fit index; free address space with nothing
 * behind it is VACANT and sits in another. Physical memory comes in extents, one
 * handle mapped whole, found through the granule map (extent.c). Each of the
 * heap's other ideas has a file of its own:
 *   alloc.c    the allocation path: idle memory first, then a ladder of dearer ways;
 *   fit.c      which idle memory a request takes;
 *   vacant.c   new memory: vacant VA carved out and one new extent mapped over it;
 *   account.c  live and mapped bytes, and a freed block's way to the quarantine;
 *   fence.c    waiting for the GPU, so that freed memory becomes idle;
 *   free.c     gpu_free and gpu_free_async; lookup.c finds live blocks.
 *
 * One lock guards the heap's books. It is never held across a backend call: the
 * thread that needs the driver marks the range it works on BUSY, drops the lock,
 * calls, and retakes it. An operation first reserves every record it may need
 * (heap_reserve_records), so that no split fails halfway through a change.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

/* Records one operation may need; taken before any change so splits cannot fail. */
#define RECORDS_PER_OP 8

void heap_lock_wait(gpu_heap_t *h) {
    for (unsigned spins = 0;; spins++) {
        if (!atomic_load_explicit(&h->lock, memory_order_relaxed) &&
            !atomic_exchange_explicit(&h->lock, 1, memory_order_acquire))
            return;
        if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else
            sched_yield(); /* the holder may have been preempted: let it run */
    }
}

int heap_reserve_records(gpu_heap_t *h) {
    if (h->block_pool.nfree >= RECORDS_PER_OP && h->extent_pool.nfree >= 2 && (h->live.used + 2) * 2 <= h->live.cap)
        return GPU_OK; /* the usual case, without three calls */
    if (!pool_reserve(&h->block_pool, RECORDS_PER_OP) || !pool_reserve(&h->extent_pool, 2) ||
        blockmap_reserve(&h->live, 2) != GPU_OK)
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for heap records");
    return GPU_OK;
}

/* ---- opening and closing ------------------------------------------------- */

/* A heap of the default size starts below this (SIZE_MAX: as large as the
 * backend allows): the size the last one was granted, or a smaller size the
 * backend refused since. The CUDA driver takes 2.4-4.5 ms to refuse a
 * reservation on an H200, and its VA space held 64 TiB, then 32 beside it, then
 * 16: asking each later heap's size from the top, or from the last refusal,
 * cost a refusal at every heap or every other one (bench/RESULTS.md). Halving
 * from the last grant asks no size twice and ends with the sizes the refusals
 * would have left; a heap's close lets twice its size be asked again (its own
 * size fits where it was). Shared by every backend: the host backend's heaps
 * of the default size halve alike (1 TiB of host VA, then 512 GiB...), which
 * costs them address space they would rarely fill. */
static _Atomic size_t start_below = SIZE_MAX;

/* Moves start_below to size, only downwards (up false) or only upwards (up
 * true): racing heaps leave the lowest, or the highest, of their answers. */
static void start_move(size_t size, bool up) {
    for (size_t seen = atomic_load(&start_below); up ? size > seen : size < seen;)
        if (atomic_compare_exchange_weak(&start_below, &seen, size)) break;
}

/* Reserves the heap's VA: the size asked for, or as much as granted up to the
 * backend's maximum and below start_below, halving on refusal. */
static int reserve_va(gpu_heap_t *h) {
    const vmm_caps *caps = &h->door.b->caps;
    bool exact = h->cfg.reserve_bytes != 0;
    size_t size = exact ? gh_align_up(h->cfg.reserve_bytes, h->gran) : caps->max_reserve;
    if (!size) return gh_note(GPU_ERR_INVALID, "reserve_bytes %zu is too large", h->cfg.reserve_bytes);
    size_t below = atomic_load_explicit(&start_below, memory_order_relaxed);
    while (!exact && size >= below && size / 2 >= 64 * h->gran) size /= 2;
    for (;;) {
        int rc = vmm_call_reserve(&h->door, size, heap_grid(h), &h->base);
        if (rc == GPU_OK) {
            h->reserved = size;
            h->door.trace_heap = h->base;
            if (!exact) start_move(size, false); /* the next heap asks half: what is left beside it is no more */
            return GPU_OK;
        }
        if (rc != GPU_ERR_OUT_OF_VA || exact || size / 2 < 64 * h->gran)
            return gh_note(rc, "reserving %zu bytes of VA: %s", size, vmm_error());
        start_move(size, false);
        size /= 2;
    }
}

/* Gives the heap's VA back: a reservation of its size fits again (where it
 * was), so later heaps may start there once more. */
static void unreserve_va(gpu_heap_t *h) {
    (void)vmm_call_unreserve(&h->door, h->base, h->reserved);
    start_move(h->reserved > SIZE_MAX / 2 ? SIZE_MAX : 2 * h->reserved, true);
}

int heap_open(const gpu_config_t *cfg, gpu_heap_t **out) {
    vmm_backend *b;
    int rc = vmm_open(cfg, &b);
    if (rc != GPU_OK) return gh_note(rc, "%s", vmm_error());
    return heap_open_on(cfg, b, out);
}

int heap_open_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out) {
    gpu_heap_t *h = aligned_alloc(_Alignof(gpu_heap_t), gh_align_up(sizeof *h, _Alignof(gpu_heap_t)));
    if (h) memset(h, 0, sizeof *h);
    if (!h) {
        vmm_call_close(&(vmm_door){.b = backend});
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for a heap");
    }
    static _Atomic uint64_t serials;
    h->cfg = *cfg;
    atomic_init(&h->lock, 0);
    h->serial = atomic_fetch_add(&serials, 1) + 1;
    atomic_init(&h->cover_seq, 1);
    atomic_init(&h->cover_done, 1); /* tag 0 (blocks fresh from the heap) is always covered */
    pool_init(&h->block_pool, sizeof(block));
    pool_init(&h->extent_pool, sizeof(extent));
    tlsf_init(&h->idle);
    tlsf_init(&h->vacant);
    h->door.b = backend;
    int rc;
    h->door.verbose = cfg->verbose;
    h->gran = h->door.b->caps.granularity;
    gh_assert(gh_is_pow2(h->gran) && h->gran % GH_QUANTUM == 0, "granularity is a power of two and a quantum multiple");
    h->page = cfg->page_size;
    if (h->page && (!gh_is_pow2(h->page) || h->page < h->gran)) {
        rc = gh_note(GPU_ERR_INVALID, "page size %zu: 0, or a power of two of at least the granularity (%zu bytes)", h->page,
                     h->gran);
        goto fail_backend;
    }
    rc = reserve_va(h);
    if (rc != GPU_OK) goto fail_backend;
    rc = gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for the heap's maps");
    if (blockmap_init(&h->live) != GPU_OK) goto fail_va;
    if (extmap_init(&h->extents, h->base, h->reserved, h->gran) != GPU_OK) goto fail_map;
    h->first = block_new(h, h->base, h->reserved, BLOCK_VACANT);
    if (!h->first) goto fail_ext;
    tlsf_insert(&h->vacant, h->first);
    h->magic = GH_HEAP_MAGIC;
    *out = h;
    return GPU_OK;
fail_ext:
    extmap_free(&h->extents);
fail_map:
    blockmap_free(&h->live);
fail_va:
    unreserve_va(h);
fail_backend:
    vmm_call_close(&h->door);
    pool_destroy(&h->block_pool);
    pool_destroy(&h->extent_pool);
    free(h);
    return rc;
}

void heap_close(gpu_heap_t *h) {
    hooks_closing(h); /* thread caches, gpu_map_file's mappings and staging: while the backend is open */
    (void)vmm_call_fence(&h->door); /* no extent goes while GPU work may touch it */
    heap_pause_close(h);            /* a paused heap's backup */
    stream_pools_close(h);
    quarantine_close(h);
    linger_close(h); /* old mappings of moved pages, before their handles go */
    extents_give_back_all(h);
    unreserve_va(h);
    vmm_call_close(&h->door);
    extmap_free(&h->extents);
    blockmap_free(&h->live);
    pool_destroy(&h->block_pool);
    pool_destroy(&h->extent_pool);
    h->magic = 0;
    free(h);
}
