/*
 * heap.c — one heap: a VA reservation carved into blocks, backed on demand.
 *
 * The reservation is tiled by blocks (block.c). Free blocks that are mapped are
 * IDLE and sit in one segregated-fit index; free address space with nothing behind
 * it is VACANT and sits in another. gpu_malloc first looks for an idle block — a
 * hit costs a few bit scans and no driver call — and only on a miss maps new
 * physical memory:
 *   - a block of at least one granule gets an extent of its own, sized to it
 *     (the driver charges per mapping, not per byte: DESIGN.md §2), with unmapped
 *     headroom after it so that realloc can usually grow it in place;
 *   - smaller blocks share extents whose size grows with the heap.
 * A block of two granules or more takes idle memory only where it fills whole
 * extents, unless the heap holds more than its physical budget (take_idle_fit).
 *
 * Freed blocks go to a quarantine, not back to the index: GPU work issued before
 * the free may still use them (cudaFree syncs the device; gpuheap does not sync per
 * free). A miss seals the quarantine on a context-wide event (quarantine.c); past
 * the quarantine's budget, one device fence releases the whole batch. No extent
 * is ever unmapped while quarantined.
 *
 * One mutex guards the heap's books. It is never held across a backend call: the
 * thread that needs the driver marks the range it works on BUSY, drops the lock,
 * calls, and retakes it.
 */
#include <sched.h>
#include <stdio.h>
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

/* Reserves the heap's VA: the size asked for, or as much as granted up to the
 * backend's maximum, halving on refusal. */
static int reserve_va(gpu_heap_t *h) {
    /* A backend's largest reservation refused once in this process (the CUDA
     * driver refuses 64 TiB and takes ~2.5 ms to say so on an H200): later
     * heaps start at half of it. Only that first size is remembered — a
     * refusal further down may be a passing shortage. */
    static _Atomic size_t refused_at = SIZE_MAX;
    const vmm_caps *caps = &h->door.b->caps;
    bool exact = h->cfg.reserve_bytes != 0;
    size_t size = exact ? gh_align_up(h->cfg.reserve_bytes, h->gran) : caps->max_reserve;
    if (!size) return gh_note(GPU_ERR_INVALID, "reserve_bytes %zu is too large", h->cfg.reserve_bytes);
    size_t hint = atomic_load_explicit(&refused_at, memory_order_relaxed);
    if (!exact && size == hint && size / 2 >= 64 * h->gran) size /= 2; /* the same backend's largest */
    for (;;) {
        int rc = vmm_call_reserve(&h->door, size, &h->base);
        if (rc == GPU_OK) {
            h->reserved = size;
            h->door.trace_heap = h->base;
            return GPU_OK;
        }
        if (rc != GPU_ERR_OUT_OF_VA || exact || size / 2 < 64 * h->gran)
            return gh_note(rc, "reserving %zu bytes of VA: %s", size, vmm_error());
        if (size == caps->max_reserve) atomic_store(&refused_at, size);
        size /= 2;
    }
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
    /* Cached blocks are idle memory kept mapped: a release threshold bounds them too. */
    h->tcache_bytes = cfg->thread_cache < cfg->release_threshold ? cfg->thread_cache : cfg->release_threshold;
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
    /* Only blocks smaller than a granule are cached: they never own an extent,
     * so gpu_protect refuses them and a cached free never hides a protection. */
    h->tcache_max = !h->tcache_bytes ? 0 : TC_MAX_BYTES < h->gran ? TC_MAX_BYTES : h->gran - GH_QUANTUM;
    gh_assert(gh_is_pow2(h->gran) && h->gran % GH_QUANTUM == 0, "granularity is a power of two and a quantum multiple");
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
    (void)vmm_call_unreserve(&h->door, h->base, h->reserved);
fail_backend:
    vmm_call_close(&h->door);
    pool_destroy(&h->block_pool);
    pool_destroy(&h->extent_pool);
    free(h);
    return rc;
}

/* heap_close: gives one extent back (the map is freed after the walk). */
static bool unback_one(extent *e, void *arg) {
    gpu_heap_t *h = arg;
    (void)vmm_call_unback(&h->door, e->va, e->size, e->handle);
    return true;
}

void heap_close(gpu_heap_t *h) {
    hooks_closing(h); /* thread caches, gpu_map_file's mappings and staging: while the backend is open */
    (void)vmm_call_fence(&h->door); /* no extent goes while GPU work may touch it */
    stream_pools_close(h);
    quarantine_close(h);
    extmap_walk(&h->extents, unback_one, h);
    (void)vmm_call_unreserve(&h->door, h->base, h->reserved);
    vmm_call_close(&h->door);
    extmap_free(&h->extents);
    blockmap_free(&h->live);
    pool_destroy(&h->block_pool);
    pool_destroy(&h->extent_pool);
    h->magic = 0;
    free(h);
}

/* ---- accounting ------------------------------------------------------------- */

void heap_mapped_add(gpu_heap_t *h, size_t bytes) {
    h->mapped_bytes += bytes;
    if (h->mapped_bytes > h->peak_mapped_bytes) h->peak_mapped_bytes = h->mapped_bytes;
}

extent *heap_extent_new_locked(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle handle) {
    extent *e = pool_get(&h->extent_pool);
    gh_assert(e, "reserve_records made an extent record available");
    memset(e, 0, sizeof *e);
    e->va = va;
    e->size = size;
    e->handle = handle;
    e->prot = GPU_PROT_READ_WRITE;
    if (extmap_set(&h->extents, e) != GPU_OK) {
        pool_put(&h->extent_pool, e);
        return NULL;
    }
    heap_mapped_add(h, size);
    h->nextents++;
    return e;
}

void heap_extent_drop_locked(gpu_heap_t *h, extent *e) {
    extmap_clear(&h->extents, e);
    h->mapped_bytes -= e->size;
    h->nextents--;
    if (e->prot != GPU_PROT_READ_WRITE) h->protected_extents--;
    pool_put(&h->extent_pool, e);
}

void heap_make_live_locked(gpu_heap_t *h, block *b) {
    b->state = BLOCK_LIVE;
    blockmap_insert(&h->live, b);
    h->live_bytes += b->size;
    h->live_blocks++;
    if (h->live_bytes > h->peak_live_bytes) h->peak_live_bytes = h->live_bytes;
    block_claim_extents(h, b);
}

/* Gives the headroom after b back to the vacant index. */
void heap_headroom_release_locked(gpu_heap_t *h, block *b) {
    block *n = b->next_phys;
    if (n && n->state == BLOCK_HEADROOM) block_release_free(h, n, BLOCK_VACANT);
}

void heap_unlive_locked(gpu_heap_t *h, block *b) {
    h->live_bytes -= b->size;
    h->live_blocks--;
    block_unclaim_extents(h, b);
    heap_headroom_release_locked(h, b);
    b->owned = 0;
    tc_set(b, TC_NONE);
}

void heap_quarantine_locked(gpu_heap_t *h, block *b) {
    heap_unlive_locked(h, b);
    b->state = BLOCK_QUARANTINE;
    b->prev_free = NULL;
    b->next_free = h->quarantine;
    h->quarantine = b;
    h->quarantine_bytes += b->size;
    h->quarantine_blocks++;
}

void heap_retire_locked(gpu_heap_t *h, block *b, bool safe) {
    if (!safe) {
        heap_quarantine_locked(h, b);
        return;
    }
    heap_unlive_locked(h, b);
    block_release_free(h, b, BLOCK_IDLE);
}

/* ---- the quarantine --------------------------------------------------------- */

/* Bytes freed on streams and not yet idle. */
static size_t stream_bytes(const gpu_heap_t *h) {
    size_t n = 0;
    for (size_t i = 0; i < h->npools; i++) n += h->pools[i]->free.bytes;
    return n;
}

int heap_fence_locked(gpu_heap_t *h, uintptr_t stream) {
    quarantine_batch q = quarantine_take_locked(h);
    uint32_t epochs[STREAM_POOLS_MAX];
    size_t npools = stream_fence_begin_locked(h, epochs);
    uint64_t seq = atomic_fetch_add(&h->cover_seq, 1); /* the fence covers every block freed before this */
    heap_unlock(h);
    bool capturing = vmm_call_capturing(&h->door, stream);
    int rc = capturing ? GPU_ERR_CAPTURING : vmm_call_fence(&h->door);
    heap_lock(h);
    quarantine_untake_locked(h, &q, rc != GPU_OK); /* failed: nothing is released, the batch goes back */
    if (rc != GPU_OK)
        return capturing ? gh_note(rc, "a stream capture is in progress: the device fence waits for it to end")
                         : gh_note(rc, "device fence failed: %s", vmm_error());
    h->fences++;
    quarantine_free_locked(h, &q);
    stream_fence_end_locked(h, epochs, npools);
    quarantine_release_sealed_locked(h, seq);
    quarantine_cover_done(h, seq + 1);
    return GPU_OK;
}

int heap_drain_locked(gpu_heap_t *h, uintptr_t stream) {
    if (!h->quarantine && !stream_bytes(h) && !h->nsealed) return GPU_OK;
    return heap_fence_locked(h, stream);
}

/* ---- backing new memory ----------------------------------------------------- */

/* Carves [start, start+size) out of vacant VA at the given alignment, with
 * headroom kept free after it when there is room. The range comes back BUSY. */
int heap_carve_vacant_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out) {
    size_t slack = align > h->gran ? align - h->gran : 0, want = size + slack;
    if (want < size) return gh_note(GPU_ERR_INVALID, "size %zu overflows with alignment %zu", size, align);
    block *v = NULL;
    if (headroom && want + headroom > want) v = tlsf_find(&h->vacant, want + headroom);
    if (!v) {
        headroom = 0;
        v = tlsf_find(&h->vacant, want);
    }
    if (!v) return gh_note(GPU_ERR_OUT_OF_VA, "no free range of %zu bytes left in the heap's %zu-byte reservation", want, h->reserved);
    tlsf_remove(&h->vacant, v);
    uintptr_t start = gh_align_up(v->start, align < h->gran ? h->gran : align);
    size_t room = block_end(v) - start - size; /* free VA after the range */
    if (headroom > room) headroom = room;
    block *b = block_carve(h, v, start, size + headroom, &h->vacant);
    if (headroom) block_split(h, b, size)->state = BLOCK_HEADROOM;
    b->state = BLOCK_BUSY;
    *out = b;
    return GPU_OK;
}

int heap_back_at_locked(gpu_heap_t *h, block *range) {
    gh_assert(range->state == BLOCK_BUSY, "a range is marked BUSY before it is mapped");
    vmm_handle handle;
    uint64_t peers = heap_peers(h); /* read under the lock: peer.c explains the race this closes */
    heap_unlock(h);
    int rc = vmm_call_back(&h->door, range->start, range->size, &handle);
    heap_lock(h);
    if (rc != GPU_OK) return gh_note(rc, "backing %zu bytes: %s", range->size, vmm_error());
    if (!heap_extent_new_locked(h, range->start, range->size, handle)) {
        heap_unlock(h);
        (void)vmm_call_unback(&h->door, range->start, range->size, handle);
        heap_lock(h);
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for the extent map");
    }
    heap_peer_catch_up_locked(h, range->start, range->size, peers);
    return GPU_OK;
}

int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out) {
    block *b;
    int rc = heap_carve_vacant_locked(h, size, align, headroom, &b);
    if (rc != GPU_OK) return rc;
    rc = heap_back_at_locked(h, b);
    if (rc != GPU_OK) {
        heap_headroom_release_locked(h, b);
        block_release_free(h, b, BLOCK_VACANT);
        return rc;
    }
    *out = b;
    return GPU_OK;
}

/* The size of a new shared extent: it grows with the heap (an eighth of what is
 * mapped, 2 to 32 granules... within [gran, 32 MiB]) so that small blocks cost
 * few mappings, and is never less than the block needs. */
static size_t shared_extent_size(const gpu_heap_t *h, size_t need) {
    size_t s = h->gran;
    while (s < (32u << 20) && s < h->mapped_bytes / 8) s *= 2;
    size_t n = gh_align_up(need, h->gran);
    return n > s ? n : s;
}

/* Headroom left unmapped after a block with its own extent: as much again, up to
 * 1/64 of the reservation. */
size_t heap_headroom_for(const gpu_heap_t *h, size_t size) {
    size_t cap = h->reserved / 64;
    return size < cap ? size : cap;
}

/* How many bytes may wait in quarantine while new memory is mapped instead of
 * fencing: a quarter of the live bytes, at least QUARANTINE_MIN_BUDGET. A fence
 * then releases a batch of many blocks, so a warm malloc/free loop of small and
 * medium blocks fences rarely; a block larger than the budget is fenced for at
 * once. The budget follows live memory, not mapped memory: tied to what is
 * mapped, every new mapping raised it and physical memory fed on itself (1.9x
 * the live peak under PyTorch). Out of memory always fences first (trim
 * drains), so the budget never makes an allocation fail. */
#define QUARANTINE_MIN_BUDGET ((size_t)64 << 20)
#define QUARANTINE_MAX_BLOCKS 1024 /* and at most this many blocks, so small blocks fence every ~1000 frees */

static size_t quarantine_budget(const gpu_heap_t *h) {
    size_t b = h->live_bytes / 4;
    return b > QUARANTINE_MIN_BUDGET ? b : QUARANTINE_MIN_BUDGET;
}

/* Physical memory the heap lets itself hold before it reuses idle memory that
 * fits badly, waits for its quarantine or gives idle extents back for new ones:
 * the live peak (or the live bytes with this request, when more), an eighth
 * more, and PHYSICAL_SLACK — room for a few freed blocks to wait on their event
 * while new ones are mapped, so that a loop freeing and allocating large blocks
 * does not query an event at every turn. The peak, not the live bytes of the
 * moment: a program that frees most of its memory between peaks (a training
 * step) is not short of memory in between, and on RMM's random workload the
 * moment's live bytes cut large blocks out of idle extents that later requests
 * needed whole (4 GiB cases 1.74x their live peak in physical memory, 1.57x
 * with the peak). */
#define PHYSICAL_SLACK ((size_t)64 << 20)

static size_t physical_budget(const gpu_heap_t *h, size_t need) {
    size_t want = h->live_bytes + need;
    if (want < h->peak_live_bytes) want = h->peak_live_bytes;
    return want + want / 8 + PHYSICAL_SLACK;
}

/* Blocks in a just-sealed batch that make a miss query its event at once. */
#define LOOK_BATCH 32

/* ---- taking idle memory ----------------------------------------------------- */

/* Makes [at, at+size) of the idle block b LIVE; what is left before and after
 * it stays idle (its other neighbours are not idle: no merge). */
static block *claim_idle(gpu_heap_t *h, block *b, uintptr_t at, size_t size) {
    tlsf_remove(&h->idle, b);
    b = block_carve(h, b, at, size, &h->idle);
    heap_make_live_locked(h, b);
    return b;
}

/* An idle block of need bytes at the given alignment, made LIVE; NULL on a miss. */
static block *take_idle(gpu_heap_t *h, size_t need, size_t align) {
    size_t want = align > GH_QUANTUM ? need + align - GH_QUANTUM : need;
    block *b = tlsf_find(&h->idle, want);
    return b ? claim_idle(h, b, gh_align_up(b->start, align), need) : NULL;
}

/* Blocks of two granules and more take idle memory only where they fill whole
 * extents, to within a granule or an eighth of their size: a block cut from the
 * middle of a larger idle extent would pin the rest of it, since an extent goes
 * back to the driver only whole. Candidates are looked for from the size's class
 * upward, a bounded number of idle blocks. A miss maps an extent of the block's
 * own while the heap is within its physical budget; past it, heap_alloc_locked
 * cuts the block from any idle block, or trades idle extents for new memory. */
#define FIT_SCAN 64        /* idle blocks looked at */
#define FIT_STEPS 1024     /* and extents stepped over, in all */

typedef struct fit_search {
    gpu_heap_t *h;
    size_t need, slack, align;
    unsigned seen, steps;
    block *b;
    uintptr_t at;
} fit_search;

/* The next extent boundary after va inside the idle block ending at end, or 0
 * where the extent there runs past the block (it is not wholly idle). */
static uintptr_t fit_step(fit_search *f, uintptr_t va, uintptr_t end) {
    f->steps++;
    extent *e = extmap_whole_at(&f->h->extents, va, end);
    return e ? e->va + e->size : 0;
}

/* Slides a window of whole extents [s, x) along the block: x is the first
 * boundary at least need past s, so each extent is stepped over at most twice. */
static bool fit_one(block *b, void *arg) {
    fit_search *f = arg;
    if (++f->seen > FIT_SCAN || f->steps > FIT_STEPS) return false;
    if (b->size < f->need) return true;
    uintptr_t end = block_end(b);
    uintptr_t s = extmap_boundary(&f->h->extents, b->start), x = s;
    while (s < end && end - s >= f->need && f->steps <= FIT_STEPS) {
        while (x - s < f->need) {
            x = fit_step(f, x, end);
            if (!x) return true; /* the block ends inside an extent: no later start fits */
        }
        if (x - s - f->need <= f->slack && s % f->align == 0) {
            f->b = b;
            f->at = s;
            return false;
        }
        s = fit_step(f, s, end);
        if (!s) return true;
    }
    return true;
}

static block *take_idle_fit(gpu_heap_t *h, size_t need, size_t align) {
    fit_search f = {.h = h, .need = need, .slack = need / 8 > h->gran ? need / 8 : h->gran, .align = align};
    tlsf_walk_from(&h->idle, need, fit_one, &f);
    return f.b ? claim_idle(h, f.b, f.at, need) : NULL;
}

/* An idle run of whole extents of at least need bytes, starting at an extent
 * boundary aligned to align; NULL on a miss. The block owns its extents. */
static block *take_idle_owned(gpu_heap_t *h, size_t need, size_t align) {
    block *b = tlsf_find(&h->idle, need + align);
    if (!b) b = tlsf_find(&h->idle, need);
    if (!b) return NULL;
    uintptr_t end = block_end(b);
    extent *e = extmap_first_whole(&h->extents, b->start, end);
    while (e && e->va % align) e = extmap_next_whole(&h->extents, e, end);
    if (!e) return NULL;
    uintptr_t s = e->va; /* the run starts here and ends with e */
    while (e && e->va + e->size - s < need) e = extmap_next_whole(&h->extents, e, end);
    if (!e) return NULL;
    b = claim_idle(h, b, s, e->va + e->size - s);
    b->owned = 1;
    return b;
}

int heap_alloc_locked(gpu_heap_t *h, size_t need, size_t align, unsigned flags, uintptr_t stream, block **out) {
    bool owned = flags & GPU_ALLOC_OWNED, drained = false, reclaimed = false, reaped = false, recycled = false;
    bool sealed = false, carved = false;
    bool fitted = !owned && need >= 2 * h->gran && align <= h->gran;
    for (;;) {
        block *b = owned ? take_idle_owned(h, need, align) : fitted ? take_idle_fit(h, need, align) : take_idle(h, need, align);
        if (b) {
            *out = b;
            return GPU_OK;
        }
        /* A miss. Blocks whose events completed — freed on streams, or sealed in
         * the quarantine — cost a query. */
        if (!reaped && (h->npools || h->nsealed)) {
            reaped = true;
            bool any = h->npools && stream_reap_locked(h, false);
            if (h->nsealed) any |= quarantine_reap_locked(h);
            if (any) continue;
        }
        bool own = owned || need >= h->gran;
        size_t size = own ? gh_align_up(need, h->gran) : shared_extent_size(h, need);
        bool tight = own && h->mapped_bytes + size > physical_budget(h, need);
        /* Hang the quarantine on one context-wide event for a later miss to
         * find complete — no one waits. Past the physical budget, or with a
         * batch of LOOK_BATCH blocks waiting, look at once too: an idle device
         * has finished it before a mapping would. (Looking at every miss keeps
         * a warm loop's pool at the one block freed since the last look, and
         * seals at every turn.) */
        if (!sealed && h->quarantine) {
            sealed = true;
            unsigned before = h->nsealed;
            bool look = quarantine_seal_locked(h, stream) == GPU_OK && h->nsealed > before &&
                        (tight || h->sealed[h->nsealed - 1].q.blocks >= LOOK_BATCH);
            if (look && quarantine_reap_locked(h)) continue;
        }
        /* Over the physical budget, a large block takes any idle block that holds
         * it rather than new memory. */
        if (tight && fitted && !carved) {
            carved = true;
            b = take_idle(h, need, align);
            if (b) {
                *out = b;
                return GPU_OK;
            }
        }
        /* Quarantined memory is reused after one fence (a device sync); new memory
         * costs a driver call. Fence once the quarantine outgrows its budget — a
         * large block only when new memory would pass the physical budget too.
         * Blocks freed on streams do not count: their events release them without
         * anyone waiting (a device sync here would make one stream wait for
         * another's kernels), and out of memory waits for them below. */
        size_t waiting = h->quarantine_bytes; /* sealed batches included */
        if (!drained && waiting >= need && (tight || !fitted) &&
            (waiting + need > quarantine_budget(h) || h->quarantine_blocks >= QUARANTINE_MAX_BLOCKS)) {
            drained = true;
            int rc = heap_drain_locked(h, stream);
            if (rc == GPU_OK) continue;
            if (rc != GPU_ERR_CAPTURING) return rc; /* capturing: map new memory instead */
        }
        if (tight && !recycled) { /* idle memory that could not serve this request is traded for it */
            recycled = true;
            (void)heap_recycle_locked(h, size);
        }
        int rc = heap_back_locked(h, size, align, own ? heap_headroom_for(h, size) : 0, &b);
        if (rc == GPU_OK) {
            if (!own && b->size > need) block_release_free(h, block_split(h, b, need), BLOCK_IDLE);
            heap_make_live_locked(h, b);
            b->owned = owned;
            *out = b;
            return GPU_OK;
        }
        if ((rc == GPU_ERR_OUT_OF_MEMORY || rc == GPU_ERR_OUT_OF_VA) && !reclaimed) {
            reclaimed = drained = true;
            char why[256];
            snprintf(why, sizeof why, "%s", vmm_error());
            if (heap_reclaim_locked(h)) continue;
            return gh_note(rc, "%s", why);
        }
        return rc;
    }
}

bool heap_reclaim_locked(gpu_heap_t *h) {
    if (h->npools) (void)stream_reap_locked(h, true);
    int rc = heap_trim_locked(h, 0);
    return rc == GPU_OK || rc == GPU_ERR_CAPTURING;
}

/* ---- the calls ---------------------------------------------------------------- */

int heap_malloc(gpu_heap_t *h, size_t size, size_t align, unsigned flags, void **out) {
    if (!size) size = 1;
    size_t need = gh_align_up(size, (flags & GPU_ALLOC_OWNED) ? h->gran : GH_QUANTUM);
    if (flags & GPU_ALLOC_OWNED && align < h->gran) align = h->gran;
    if (!need || need > h->reserved)
        return gh_note(GPU_ERR_INVALID, "size %zu is larger than the heap's reservation (%zu bytes)", size, h->reserved);
    heap_lock(h);
    int rc = heap_reserve_records(h);
    block *b = NULL;
    if (rc == GPU_OK) rc = heap_alloc_locked(h, need, align, flags, 0, &b);
    uintptr_t p = rc == GPU_OK ? b->start : 0;
    heap_unlock(h);
    if (rc != GPU_OK) return rc;
    if (flags & GPU_ALLOC_ZERO) {
        rc = vmm_call_memset(&h->door, p, 0, need);
        if (rc != GPU_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", vmm_error());
            (void)heap_free(h, (void *)p);
            return gh_note(rc, "zeroing %zu bytes: %s", need, why);
        }
    }
    *out = (void *)p;
    return GPU_OK;
}

/* Sets every non-read-write extent of b back to read-write before the memory can
 * be reused. Called with b BUSY and the lock dropped. */
int heap_restore_access(gpu_heap_t *h, block *b) {
    int rc = GPU_OK;
    for (uintptr_t va = b->start; va < block_end(b);) {
        heap_lock(h);
        extent *e = extmap_find(&h->extents, va);
        bool owned = e && e->owner == b;
        uintptr_t eva = e ? e->va : 0;
        size_t esize = e ? e->size : h->gran;
        bool protected_ = owned && e->prot != GPU_PROT_READ_WRITE;
        heap_unlock(h);
        if (protected_) {
            int r = vmm_call_set_access(&h->door, eva, esize, GPU_PROT_READ_WRITE);
            heap_lock(h);
            if (r == GPU_OK) {
                e->prot = GPU_PROT_READ_WRITE;
                h->protected_extents--;
            } else {
                rc = r;
            }
            heap_unlock(h);
        }
        va = e ? eva + esize : gh_align_down(va, h->gran) + h->gran;
    }
    return rc;
}

block *heap_find_live(gpu_heap_t *h, uintptr_t p, bool take) {
    block *b = blockmap_find(&h->live, p);
    if (!b || b->state != BLOCK_LIVE) return b;
    uint64_t w = atomic_load_explicit(&b->tc, memory_order_acquire);
    while (tc_state(w) != TC_NONE) {
        if (tc_state(w) == TC_FREE) return NULL; /* a thread cache holds it free */
        if (!take) return b;
        if (atomic_compare_exchange_weak_explicit(&b->tc, &w, tc_with(w, TC_NONE), memory_order_acq_rel, memory_order_acquire))
            return b;
    }
    return b;
}

/* Takes the live block at ptr out of the address map, with read-write access
 * restored, ready to be freed. Lock held on entry and exit. */
static int unmap_live(gpu_heap_t *h, void *ptr, block **out) {
    uintptr_t p = (uintptr_t)ptr;
    block *b = heap_find_live(h, p, true);
    if (!b) return gh_note(GPU_ERR_NOT_LIVE, "%p is not a live block of this heap (double free or interior pointer)", ptr);
    if (b->state == BLOCK_SPARSE)
        return gh_note(GPU_ERR_INVALID, "%p is a gpu_reserve range: give it back with gpu_release", ptr);
    if (b->state == BLOCK_BUSY) return gh_note(GPU_ERR_BUSY, "%p is being changed by another thread", ptr);
    if (b->file) return gh_note(GPU_ERR_INVALID, "%p is a gpu_map_file mapping; end it with gpu_unmap_file", ptr);
    if (h->protected_extents && b->size >= h->gran) {
        b->state = BLOCK_BUSY;
        heap_unlock(h);
        int rc = heap_restore_access(h, b);
        heap_lock(h);
        b->state = BLOCK_LIVE;
        if (rc != GPU_OK) return gh_note(rc, "restoring read-write access before freeing %p: %s", ptr, vmm_error());
    }
    blockmap_remove(&h->live, p);
    *out = b;
    return GPU_OK;
}

int heap_free(gpu_heap_t *h, void *ptr) {
    heap_lock(h);
    block *b;
    int rc = unmap_live(h, ptr, &b);
    if (rc == GPU_OK) {
        heap_quarantine_locked(h, b);
        if (h->cfg.release_threshold != SIZE_MAX && h->idle.bytes + h->quarantine_bytes > h->cfg.release_threshold)
            (void)heap_trim_locked(h, h->cfg.release_threshold); /* the free succeeded; a failed trim is retried at the next one */
    }
    heap_unlock(h);
    return rc;
}

int heap_free_async(gpu_heap_t *h, void *ptr, uintptr_t stream) {
    /* A free inside a capture would let a later allocation reuse memory that the
     * graph's replays write. Asked before the lock: it is a driver query. */
    if (vmm_call_stream_capturing(&h->door, stream))
        return gh_note(GPU_ERR_CAPTURING, "gpu_free_async(%p): stream %#lx is being captured; free after the graph's last launch",
                       ptr, (unsigned long)stream);
    heap_lock(h);
    block *b;
    int rc = unmap_live(h, ptr, &b);
    if (rc == GPU_OK) {
        stream_pool *pool = stream_pool_of(h, stream, true);
        if (pool) {
            stream_put(h, pool, b);
            stream_cover_locked(h, pool);
        } else
            heap_quarantine_locked(h, b); /* too many streams: the device fence keeps it safe */
    }
    heap_unlock(h);
    return rc;
}

int heap_malloc_async(gpu_heap_t *h, size_t size, uintptr_t stream, void **out) {
    size_t need = gh_align_up(size ? size : 1, GH_QUANTUM);
    if (!need || need > h->reserved)
        return gh_note(GPU_ERR_INVALID, "size %zu is larger than the heap's reservation (%zu bytes)", size, h->reserved);
    heap_lock(h);
    int rc = heap_reserve_records(h);
    block *b = NULL;
    if (rc == GPU_OK) {
        stream_pool *pool = h->npools ? stream_pool_of(h, stream, false) : NULL;
        b = pool ? stream_take(h, pool, need) : NULL;
        if (!b) rc = heap_alloc_locked(h, need, GH_QUANTUM, 0, stream, &b);
    }
    if (rc == GPU_OK) *out = (void *)b->start;
    heap_unlock(h);
    return rc;
}

int heap_mark_file(gpu_heap_t *h, void *ptr, bool on) {
    heap_lock(h);
    block *b = heap_find_live(h, (uintptr_t)ptr, true);
    if (b) b->file = on;
    heap_unlock(h);
    return b ? GPU_OK : gh_note(GPU_ERR_NOT_LIVE, "%p is not a live block of this heap", ptr);
}

int heap_usable_size(gpu_heap_t *h, const void *ptr, size_t *out) {
    heap_lock(h);
    block *b = heap_find_live(h, (uintptr_t)ptr, false);
    size_t size = b ? b->size : 0;
    bool sparse = b && b->state == BLOCK_SPARSE;
    heap_unlock(h);
    if (!b) return gh_note(GPU_ERR_NOT_LIVE, "%p is not a live block of this heap", ptr);
    if (sparse) return gh_note(GPU_ERR_INVALID, "%p is a gpu_reserve range, not a block", ptr);
    *out = size;
    return GPU_OK;
}
