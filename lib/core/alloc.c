/*
 * alloc.c — the allocation path: gpu_malloc and gpu_malloc_async down to a block.
 *
 * A request looks for idle memory first (fit.c). On a miss it tries dearer ways
 * to find memory — reaping completed events, sealing the quarantine, fencing it,
 * trading idle memory for new, mapping new memory, and out of memory giving
 * everything idle back — and after a way that made memory idle, looks again. The
 * policy numbers that choose between reusing, waiting and mapping (the
 * quarantine's budget, the physical budget) are here with the measurements
 * behind them.
 */
#include <stdio.h>

#include "core/internal.h"

/* The size of a new shared extent: it grows with the heap (an eighth of what is
 * mapped, 2 to 32 granules... within [gran, 32 MiB]) so that small blocks cost
 * few mappings, and is never less than the block needs. */
static size_t shared_extent_size(const gpu_heap_t *h, size_t need) {
    size_t s = h->gran;
    while (s < (32u << 20) && s < h->mapped_bytes / 8) s *= 2;
    size_t n = gh_align_up(need, h->gran);
    return n > s ? n : s;
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

int heap_alloc_locked(gpu_heap_t *h, size_t need, size_t align, unsigned flags, uintptr_t stream, block **out) {
    bool owned = flags & GPU_ALLOC_OWNED, drained = false, reclaimed = false, reaped = false, recycled = false;
    bool sealed = false, carved = false;
    bool fitted = !owned && need >= 2 * h->gran && align <= h->gran;
    for (;;) {
        block *b = owned ? fit_take_owned(h, need, align) : fitted ? fit_take_whole(h, need, align) : fit_take_any(h, need, align);
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
            b = fit_take_any(h, need, align);
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
