/*
 * paged.c — paged placement: memory mapped in pages that blocks of every size
 * share, and idle pages moved to where the next block needs one.
 *
 * By default a block of a granule and more gets extents of its own, and an
 * extent goes back to the driver only whole, so idle memory inside an extent
 * that a live block still touches is held until that block goes. Under a
 * training loop whose shapes change every step that is what the heap holds
 * beyond the live peak (bench/RESULTS.md). A heap created with a page size
 * (gpu_config_t.page_size, GPUHEAP_PAGE_SIZE) maps every range in extents of
 * that size instead, and places blocks of every size like small ones, cut from
 * idle memory wherever it holds them. Three rules make the rest:
 *  - a request no idle block holds looks for a run of idle blocks and unmapped
 *    holes next to each other that holds it (heap_run_locked): it maps only the
 *    holes' pages under it, so the address space is reused as one, mapped or
 *    not. Of the runs, it takes the one that maps fewest bytes, then the
 *    shortest; none better than a range of its own: the allocation path maps one;
 *  - before a range is mapped beyond the heap's physical peak, idle pages are
 *    given back with their handles kept, and the range maps those (spare.c):
 *    memory moves rather than grows (vacant.c, which maps ranges of up to 1,022
 *    pages in pages, and trades for a long range a handle set's worth at a time);
 *  - the physical budget is the live peak and a few pages (alloc.c).
 * What it costs: a page moved is an unmap, a map and an access grant (~50 µs on
 * an H200 at any page size), and in legacy free order a fence first when a
 * release may still be running. The H200 measurements beside PyTorch's
 * allocators are in bench/RESULTS.md ("Paged placement").
 */
#include "core/internal.h"

#define RUN_LOOK_STEPS 4096 /* blocks a request steps over in all, looking for a run */

/* ---- runs of idle blocks and holes -------------------------------------------- */

static inline bool run_free(const block *b) { return b && (b->state == BLOCK_IDLE || b->state == BLOCK_VACANT); }

/* Where mapping the hole b stops for a block ending at e: the page after e, or
 * the hole's own end. */
static inline uintptr_t hole_map_end(const gpu_heap_t *h, const block *b, uintptr_t e) {
    uintptr_t page_end = gh_align_up(e, h->page);
    return page_end < block_end(b) ? page_end : block_end(b);
}

typedef struct run_pick {
    gpu_heap_t *h;
    size_t need, align;
    unsigned steps;
    const block *last_first; /* the run weighed last: a run with several holes is met once per hole */
    block *in;               /* the best place so far: the block it starts in, */
    uintptr_t at;            /* its address, */
    size_t fresh, span;      /* the bytes it maps and its run's length */
    bool found;
} run_pick;

/* The bytes [s, s+need) would map in the run that goes on from b: the holes'
 * pages under it (a hole is mapped from its start, to the page after the end);
 * SIZE_MAX when the run ends first or the look ran out of steps. */
static size_t run_fresh(run_pick *p, const block *b, uintptr_t s) {
    size_t fresh = 0;
    uintptr_t e = s + p->need;
    for (; run_free(b); b = b->next_phys) {
        if (++p->steps > RUN_LOOK_STEPS) return SIZE_MAX;
        if (b->state == BLOCK_VACANT) fresh += hole_map_end(p->h, b, e) - (b->start > s ? b->start : s);
        if (block_end(b) >= e) return fresh;
    }
    return SIZE_MAX;
}

/* Weighs the block at s in the run that starts with first and ends at run_end,
 * starting in piece b: the best place so far when it maps fewer bytes, or as
 * many in a shorter run. */
static void weigh_at(run_pick *p, const block *first, uintptr_t run_end, block *b, uintptr_t s) {
    if (s < b->start || s >= block_end(b) || s % p->align || s + p->need > run_end) return;
    if (b->state == BLOCK_VACANT && s % p->h->page) return; /* a hole maps from the page grid */
    size_t fresh = run_fresh(p, b, s), span = run_end - first->start;
    if (fresh == SIZE_MAX) return;
    if (!p->found || fresh < p->fresh || (fresh == p->fresh && span < p->span)) {
        p->in = b, p->at = s, p->fresh = fresh, p->span = span;
        p->found = true;
    }
}

/* tlsf_walk's callback over the holes: weighs the places in v's run where the
 * block may start — each piece's start (at the alignment; in a hole, on the
 * page grid), and in a hole also as late as lets the block reach the idle
 * memory after it. A hole alone, or the run of the unmapped VA at the top with
 * no idle block before it, is what a range of its own is: skipped. */
static bool look_run(block *v, void *arg) {
    run_pick *p = arg;
    block *first = v;
    while (run_free(first->prev_phys) && p->steps++ < RUN_LOOK_STEPS) first = first->prev_phys;
    if (first == p->last_first || (first->state == BLOCK_VACANT && !run_free(first->next_phys)))
        return p->steps < RUN_LOOK_STEPS;
    p->last_first = first;
    uintptr_t run_end = first->start;
    for (const block *b = first; run_free(b) && p->steps++ < RUN_LOOK_STEPS; b = b->next_phys) run_end = block_end(b);
    size_t grid = p->align > p->h->page ? p->align : p->h->page;
    for (block *b = first; run_free(b) && b->start < run_end && p->steps < RUN_LOOK_STEPS; b = b->next_phys) {
        weigh_at(p, first, run_end, b, gh_align_up(b->start, b->state == BLOCK_VACANT ? grid : p->align));
        if (b->state == BLOCK_VACANT && block_end(b) < run_end && run_end - p->need >= b->start) {
            uintptr_t late = gh_align_down(run_end - p->need < block_end(b) ? run_end - p->need : block_end(b) - 1, grid);
            weigh_at(p, first, run_end, b, late);
        }
    }
    return p->steps < RUN_LOOK_STEPS;
}

/* Cuts [at, end) out of the run that b starts it in: each piece BUSY and out of
 * its index (a hole's marked still to map), the rest of each block back in its
 * own. The first piece; records reserved by the caller. */
static block *take_pieces(gpu_heap_t *h, block *b, uintptr_t at, uintptr_t end) {
    block *first = NULL;
    for (; b && b->start < end; b = b->next_phys) {
        gh_assert(run_free(b), "a run holds only idle blocks and unmapped holes");
        bool hole = b->state == BLOCK_VACANT;
        tlsf_index *t = hole ? &h->vacant : &h->idle;
        tlsf_remove(t, b);
        uintptr_t lo = b->start > at ? b->start : at, hi = block_end(b) < end ? block_end(b) : end;
        b = block_carve(h, b, lo, hi - lo, t);
        b->state = BLOCK_BUSY;
        b->busy = hole;
        if (!first) first = b;
    }
    return first;
}

int heap_run_locked(gpu_heap_t *h, size_t need, size_t align, spare_set *spares, block **out) {
    gh_assert(h->page, "runs are a paged heap's");
    run_pick p = {.h = h, .need = need, .align = align < GH_QUANTUM ? GH_QUANTUM : align};
    tlsf_walk(&h->vacant, look_run, &p);
    if (!p.found || p.fresh >= gh_align_up(need, h->page)) return GH_MISS; /* no better than a range of its own */
    uintptr_t end = p.at + need;
    size_t pieces = 0;
    for (block *b = p.in;; b = b->next_phys) {
        pieces++;
        if (block_end(b) < end) continue;
        if (b->state == BLOCK_VACANT) end = hole_map_end(h, b, end); /* the last hole: mapped to a page's end */
        break;
    }
    if (!pool_reserve(&h->block_pool, 2 * pieces + 1)) return GH_MISS;
    block *first = take_pieces(h, p.in, p.at, end);
    int rc = GPU_OK;
    for (block *b = first; rc == GPU_OK; b = b->next_phys) {
        if (b->busy) {
            rc = heap_back_at_locked(h, b, spares); /* drops the lock: the pieces stay BUSY meanwhile */
            if (rc == GPU_OK) b->busy = 0;
        }
        if (block_end(b) >= end) break; /* the last piece (it may be the heap's last block) */
    }
    if (rc != GPU_OK) { /* each piece back as it is now: mapped ones idle, holes unmapped */
        for (block *b = first, *n;; b = n) {
            bool hole = b->busy, last = block_end(b) >= end;
            n = b->next_phys; /* the next piece is BUSY: no release merges it away (the block after the last may) */
            b->busy = 0;
            block_release_free(h, b, hole ? BLOCK_VACANT : BLOCK_IDLE);
            if (last) break;
        }
        return rc;
    }
    while (block_end(first) < end) block_absorb_next(h, first);
    if (first->size > need && heap_reserve_records(h) == GPU_OK) /* afresh: the lock was dropped */
        block_release_free(h, block_split(h, first, need), BLOCK_IDLE);
    heap_make_live_locked(h, first);
    *out = first;
    return GPU_OK;
}
