/*
 * alloc.c — the allocation path: gpu_malloc and gpu_malloc_async down to a block.
 *
 * A request looks for idle memory first (fit.c). On a miss it climbs down a
 * ladder of dearer ways to find memory, in a fixed order — reap completed
 * events, in legacy free order release the quarantine without a wait, seal the
 * quarantine, past the physical budget take any idle block, fence the
 * quarantine, trade idle extents for new ones, extend an idle tail, map new
 * memory, and
 * out of memory give everything idle back — each a small function tried at most
 * once per request (before it maps, the thread caches above give back what
 * they keep for reuse: the room hook); a rung that made memory idle sends the
 * request back to the idle search. The ladder is one table (below), so the order of decisions can
 * be read, and changed, in one place. The policy numbers that choose between
 * reusing, waiting and mapping (the quarantine's budget, the physical budget)
 * are here with the measurements behind them.
 */
#include <stdio.h>

#include "core/internal.h"

/* The size of a new shared extent: it grows with the heap (an eighth of what is
 * mapped, 2 to 32 granules... within [gran, 32 MiB]) so that small blocks cost
 * few mappings, and is never less than the block needs. */
static size_t shared_extent_size(const gpu_heap_t *h, size_t need) {
    if (h->page) return gh_align_up(need, h->page); /* in pages: paged.c */
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

/* The quarantine (sealed batches included), with a request of need bytes, is past
 * its budget in bytes or blocks: where event order fences, legacy order releases. */
static bool quarantine_over(const gpu_heap_t *h, size_t need) {
    return h->quarantine_bytes + need > quarantine_budget(h) || h->quarantine_blocks >= QUARANTINE_MAX_BLOCKS;
}

/* Physical memory the heap lets itself hold before it reuses idle memory that
 * fits badly, waits for its quarantine or gives idle extents back for new ones:
 * the live peak (or the live bytes with this request, when more), a sixteenth
 * more (an eighth for a request of BUDGET_BIG_NEED or more), and PHYSICAL_SLACK
 * — room for a few freed blocks to wait on their event while new ones are
 * mapped, so that a loop freeing and allocating large blocks does not query an
 * event at every turn. The peak, not the live bytes of the
 * moment: a program that frees most of its memory between peaks (a training
 * step) is not short of memory in between, and on RMM's random workload the
 * moment's live bytes cut large blocks out of idle extents that later requests
 * needed whole (4 GiB cases 1.74x their live peak in physical memory, 1.57x
 * with the peak). A sixteenth took the recorded PyTorch trace from 1.155x its
 * live peak to 1.092x with no more mappings; for requests of 256 MiB and more
 * it made RMM's random workload worse (1 GiB and 4 GiB cases 1.32-1.66x, not
 * 1.25-1.57x): past the budget such a block is cut from an idle extent larger
 * than it, and the rest of that extent is pinned — now only the chunks of it
 * the cut touches, from 512 MiB (vacant.c). (Refusing those cuts and backing
 * only the blocks mapped past the budget in 128 MiB chunks held those cases to
 * 1.07-1.19x, but each of their calls then cost 180-840 us on an H200, not
 * 17-24: the extents traded at each turn. Not kept; bench/RESULTS.md has the
 * run.) */
#define PHYSICAL_SLACK ((size_t)64 << 20)
/* A paged heap's budget is the live peak and a few pages: an idle page can go to
 * wherever the next block needs one, so memory need not run ahead of the live
 * bytes (host replay, 2 MiB pages: 16 MiB of slack or 64 placed the CNN, GPT and
 * fixed-shape traces alike, within 0.01x of their live peak). */
#define PAGED_SLACK_PAGES 8
#define BUDGET_BIG_NEED_GRANULES 128 /* 256 MiB at the GPU's 2 MiB granule; in granules, so that test heaps of small granules take these paths too */
#define BUDGET_BIG_NEED(h) (BUDGET_BIG_NEED_GRANULES * (h)->gran)

/* Within the budget a large block still does not raise the heap's physical
 * high-water mark while idle memory could go back instead: a request of
 * BUDGET_BIG_NEED or more whose new extent would take mapped memory past its
 * peak, with at least a quarter of that extent's size idle, first trades idle
 * extents for it (the recycle rung; nothing is cut, so nothing is pinned). The
 * budget's eighth is slack for the moments memory is short, not leave to grow:
 * in RMM's random workload the 1 GiB and 4 GiB cases set their high-water
 * marks with idle extents beside them, and with this rule the host replay held
 * 1.064-1.070x their live peak instead of 1.129-1.139x (1.4-2.0x the mappings).
 * The quarter: with any idle memory at all, the CNN trace with the GPU 40 ms
 * behind went 1.316 -> 1.439x — the idle memory given back was what its
 * smaller blocks lived on while the quarantine held theirs. Smaller requests
 * keep the rule out: from a granule on, the GPT trace went 1.121 -> 1.055x but
 * mapped ten times as often and, in legacy order, fenced 34 times instead of 3
 * (bench/RESULTS.md). Nor does the rule fence: after a release in legacy order
 * idle memory goes back only past a fence (trim.c), and holding the peak is
 * not worth making the device wait. */
static bool raises_peak(const gpu_heap_t *h, size_t need, size_t size) {
    return need >= BUDGET_BIG_NEED(h) && h->mapped_bytes + size > h->peak_mapped_bytes && h->idle.bytes >= size / 4 &&
           !heap_order_owed(h);
}

static size_t physical_budget(const gpu_heap_t *h, size_t need) {
    size_t want = h->live_bytes + need;
    if (want < h->peak_live_bytes) want = h->peak_live_bytes;
    if (h->page) return want + PAGED_SLACK_PAGES * h->page; /* paged.c */
    return want + (need >= BUDGET_BIG_NEED(h) ? want / 8 : want / 16) + PHYSICAL_SLACK;
}

/* Blocks in a just-sealed batch that make a miss query its event at once. */
#define LOOK_BATCH 32

/* ---- the ladder -------------------------------------------------------------- */

/* The rungs of the ladder (the table below), top to bottom. */
enum { ON_IDLE, ON_REAP, ON_WEIGH, ON_ORDER, ON_SEAL, ON_ROOM, ON_ANY_IDLE, ON_DRAIN, ON_RECYCLE, ON_EXTEND, ON_MAP, ON_RECLAIM, RUNGS };

/* One request on its way down the ladder. */
typedef struct alloc_req {
    gpu_heap_t *h;
    size_t need, align;
    uintptr_t stream; /* the caller's (0: none), for the capture checks of a seal or a fence */
    bool owned;       /* GPU_ALLOC_OWNED: whole extents of its own */
    bool fitted;      /* two granules or more: idle memory only where it fills whole extents */
    bool own;         /* new memory is an extent of its own (else a shared one) */
    size_t size;      /* weighed each round: the new extent's size */
    bool past_budget; /* weighed each round: mapping the new extent passes the physical budget */
    bool tight;       /* the same, for a block of extents of its own (past_budget && own) */
    bool at_peak;     /* weighed each round: a large block's new extent would raise the physical peak */
    unsigned tried;   /* the once-only rungs already tried, one bit each */
    block *b;         /* the block found */
    spare_set *spares; /* handles the recycle kept for the mapping that follows (spare.c) */
    int rc;           /* how the request ends (or how mapping failed) */
} alloc_req;

/* What a rung did. */
typedef enum rung_result {
    RUNG_SKIP,  /* not for this request now: a later round may try it */
    RUNG_MISS,  /* tried without result: on down the ladder */
    RUNG_RETRY, /* memory became idle: back to the top */
    RUNG_DONE,  /* the request ends with rc: GPU_OK and the block, or an error */
} rung_result;

static rung_result done(alloc_req *r, int rc) {
    r->rc = rc;
    return RUNG_DONE;
}

/* Idle memory that fits (fit.c): a warm allocation goes no further. */
static rung_result try_idle(alloc_req *r) {
    gpu_heap_t *h = r->h;
    r->b = r->owned ? fit_take_owned(h, r->need, r->align)
         : r->fitted ? fit_take_whole(h, r->need, r->align)
         : h->page   ? fit_take_best(h, r->need, r->align)
                     : fit_take_any(h, r->need, r->align);
    return r->b ? done(r, GPU_OK) : RUNG_MISS;
}

/* In legacy free order (gpu_set_free_order) quarantined blocks wait for no one:
 * one driver entry makes the context wait for the work issued before their
 * frees, and they are idle at once (quarantine.c). A GPU running behind the CPU
 * then holds no freed memory back; under a training loop's lag the event order
 * mapped new memory meanwhile (bench/RESULTS.md). The release waits for the
 * moment a fence would come in event order — past the physical budget, or the
 * quarantine past its own — so that one driver entry serves a batch: released at
 * every miss, a warm 16 MiB pair paid a release each (1.5 us on an H200, against
 * 142 ns in event order); batched, the GPT trace held 1.145x its live peak under
 * any lag instead of 1.158x, the CNN's unchanged. */
static rung_result try_order(alloc_req *r) {
    if (!quarantine_legacy()) return RUNG_SKIP;
    gpu_heap_t *h = r->h;
    if (!r->tight && !quarantine_over(h, r->need)) return RUNG_MISS; /* a batch builds up first, as for a fence */
    return quarantine_order_locked(h, r->stream, false) ? RUNG_RETRY : RUNG_MISS;
}

/* Blocks whose events completed — freed on streams, or sealed in the quarantine
 * — cost a query. */
static rung_result try_reap(alloc_req *r) {
    gpu_heap_t *h = r->h;
    if (!h->npools && !h->nsealed) return RUNG_SKIP;
    bool any = h->npools && stream_reap_locked(h, false);
    if (h->nsealed) any |= quarantine_reap_locked(h);
    return any ? RUNG_RETRY : RUNG_MISS;
}

/* What new memory would cost, weighed afresh each round (the rungs above may
 * have dropped the lock). Not a try: it always goes on. */
static rung_result weigh(alloc_req *r) {
    gpu_heap_t *h = r->h;
    r->size = r->own ? gh_align_up(r->need, h->gran) : shared_extent_size(h, r->need);
    r->past_budget = h->mapped_bytes + r->size > physical_budget(h, r->need);
    r->tight = (r->own || h->page) && r->past_budget;
    r->at_peak = r->own && raises_peak(h, r->need, r->size);
    return RUNG_MISS;
}

/* Hang the quarantine on one context-wide event for a later miss to find
 * complete — no one waits. Past the physical budget, or with a batch of
 * LOOK_BATCH blocks waiting, look at once too: an idle device has finished it
 * before a mapping would. (Looking at every miss keeps a warm loop's pool at the
 * one block freed since the last look, and seals at every turn.) */
static rung_result try_seal(alloc_req *r) {
    gpu_heap_t *h = r->h;
    if (!h->quarantine) return RUNG_SKIP;
    unsigned before = h->nsealed;
    bool look = quarantine_seal_locked(h, r->stream) == GPU_OK && h->nsealed > before &&
                (r->tight || h->sealed[h->nsealed - 1].q.blocks >= LOOK_BATCH);
    return look && quarantine_reap_locked(h) ? RUNG_RETRY : RUNG_MISS;
}

/* Blocks the layers above keep for reuse (the thread caches' mid slots) come back
 * before anything dearer, as if freed to the heap just now: a block this thread
 * keeps free must never make the heap map. (Before the seal instead, or with the
 * seal tried again after it, placement on RMM's random workload came out worse:
 * 4 MiB 100k 1.109 -> 1.119x its live peak, 1 MiB 1k 1.100 -> 1.236x.) Other
 * threads' caches are asked for theirs only when the mapping would pass the
 * physical budget: asked at every mapping, each thread that mapped emptied the
 * others' rings, which refilled under the lock (16 threads of warm 64 KiB pairs
 * on an H100: 95 -> 107-123 M pairs/s; 1 MiB pairs are held back by their
 * covers instead, bench/RESULTS.md). */
static rung_result try_room(alloc_req *r) { return hooks_room_locked(r->h, r->past_budget) ? RUNG_RETRY : RUNG_MISS; }

/* Over the physical budget, a large block takes any idle block that holds it
 * rather than new memory. */
static rung_result try_any_idle(alloc_req *r) {
    if (!r->tight || !r->fitted) return RUNG_SKIP;
    r->b = fit_take_any(r->h, r->need, r->align);
    return r->b ? done(r, GPU_OK) : RUNG_MISS;
}

/* Quarantined memory is reused after one fence (a device sync); new memory
 * costs a driver call. Fence once the quarantine outgrows its budget — a large
 * block only when new memory would pass the physical budget too. Blocks freed
 * on streams do not count: their events release them without anyone waiting (a
 * device sync here would make one stream wait for another's kernels), and out
 * of memory waits for them (try_reclaim). */
static rung_result try_drain(alloc_req *r) {
    gpu_heap_t *h = r->h;
    if (h->quarantine_bytes < r->need || (r->fitted && !r->tight) || !quarantine_over(h, r->need)) return RUNG_SKIP;
    int rc = heap_drain_locked(h, r->stream);
    if (rc == GPU_OK) return RUNG_RETRY;
    return rc == GPU_ERR_CAPTURING ? RUNG_MISS : done(r, rc); /* capturing: map new memory instead */
}

/* Past the physical budget — or for a large block about to raise the physical
 * peak (raises_peak) — idle memory that could not serve this request is
 * traded for it: as much as it needs, in whole extents, or all of it when less
 * sits idle (it would otherwise add to the peak beside the new mapping). With
 * large blocks backed in chunks (vacant.c) that is most of a freed large
 * block's memory: a CNN whose batch size changes every step 1.228 -> 1.104x its
 * live peak on the host backend; giving back only when enough sat idle, the
 * chunks alone made it worse (1.377x), the trade alone changed nothing there. */
static rung_result try_recycle(alloc_req *r) {
    if (r->h->page || (!r->tight && !r->at_peak)) return RUNG_SKIP; /* a paged heap trades page by page as it maps */
    (void)heap_recycle_locked(r->h, r->size, r->spares, RECYCLE_FENCE);
    return RUNG_MISS;
}

/* New memory just mapped for r becomes r's block; with cut, what it holds beyond
 * the need goes back idle (records are reserved afresh: the lock was dropped for
 * the driver call; without them b keeps the rest until freed). */
static rung_result take_new(alloc_req *r, block *b, bool cut) {
    gpu_heap_t *h = r->h;
    if (cut && b->size > r->need && heap_reserve_records(h) == GPU_OK)
        block_release_free(h, block_split(h, b, r->need), BLOCK_IDLE);
    heap_make_live_locked(h, b);
    b->owned = r->owned;
    r->b = b;
    return done(r, GPU_OK);
}

/* Past the physical budget, a large block that no idle block holds may start
 * with an idle tail — what is left at the end of a larger extent after smaller
 * blocks were cut from its front, which cannot go back while they live — and
 * map only the rest, right after it (vacant.c). After the recycle rung, which
 * gives back the whole idle extents first. Host placement: a CNN with a
 * changing batch size recorded under gpuheap-run 1.479x -> 1.228x its live
 * peak, RMM's random workload 1-4 GiB cases 1.288-1.571x -> 1.277-1.429x, at
 * the price of more mappings there (bench/RESULTS.md). */
static rung_result try_extend(alloc_req *r) {
    gpu_heap_t *h = r->h;
    block *b;
    if (h->page) { /* paged: a run of idle blocks and unmapped holes, whichever maps least (paged.c) */
        if (r->owned || heap_run_locked(h, r->need, r->align, r->spares, &b) != GPU_OK) return RUNG_MISS;
        r->b = b;
        return done(r, GPU_OK);
    }
    if (!r->tight || !r->fitted) return RUNG_SKIP;
    if (heap_extend_tail_locked(h, r->need, r->align, 2 * h->gran, r->spares, &b) != GPU_OK)
        return RUNG_MISS; /* none, or its mapping refused: the block is mapped whole below (or reclaimed) */
    return take_new(r, b, true);
}

/* A plain block that would fill less than three quarters of its new extent —
 * more than a granule, less than one and a half — leaves the rest idle for other
 * blocks: a 2.1 MiB block held 4 MiB while it lived. It then owns no extent
 * (gpu_protect refuses it) and has no headroom (the rest lies after it: realloc
 * grows it over the rest while that is idle). Host placement (bench/RESULTS.md):
 * RMM's random 4 MiB cases 1.095-1.117 -> 1.061-1.078x their live peak, every
 * other case and the recorded traces unchanged. Cutting the rest of every
 * block of one to two granules placed those cases at 1.040-1.057x but made the
 * recorded PyTorch trace (its 3 MiB blocks) map at a phase change in its second
 * half; cutting it for every size took RMM's 64 and 256 MiB cases from 1.139 and
 * 1.213 to 1.164 and 1.287x. Aligned requests (the interposer's, from 2 MiB) and
 * GPU_ALLOC_OWNED keep their extents whole. */
static bool leaves_rest_idle(const alloc_req *r) {
    size_t g = r->h->gran;
    return !r->owned && r->align < g && r->need > g && r->need < g + g / 2;
}

/* New memory (vacant.c): an extent of the block's own, with headroom, or an
 * extent whose rest beyond the block stays idle (a shared one, or one that a
 * block of one to one and a half granules leaves to others). */
static rung_result try_map(alloc_req *r) {
    gpu_heap_t *h = r->h;
    block *b;
    bool whole = r->own && !leaves_rest_idle(r); /* the block keeps its rounding up, room to grow after it */
    r->rc = heap_back_locked(h, r->size, r->align, whole ? heap_headroom_for(h, r->size) : 0, r->spares, &b);
    if (r->rc != GPU_OK) return RUNG_MISS;
    return take_new(r, b, !whole);
}

/* Out of memory or VA: wait for everything freed and give every idle extent
 * back, then try once more. Any other failure to map ends the request. */
static rung_result try_reclaim(alloc_req *r) {
    if (r->rc != GPU_ERR_OUT_OF_MEMORY && r->rc != GPU_ERR_OUT_OF_VA) return RUNG_DONE;
    r->tried |= 1u << ON_DRAIN; /* reclaiming drains: no fence of its own after it */
    char why[256];
    snprintf(why, sizeof why, "%s", vmm_error());
    if (heap_reclaim_locked(r->h)) return RUNG_RETRY;
    return done(r, gh_note(r->rc, "%s", why));
}

/* The ladder, top to bottom. A request climbs down it until a rung ends it; a
 * rung that made memory idle sends it back to the top. A once-only rung is
 * tried at most once per request: a skipped one stays open for a later round. */
static const struct rung {
    rung_result (*try)(alloc_req *r);
    bool once;
} ladder[RUNGS] = {
    [ON_IDLE] = {try_idle, false},         /* idle memory that fits */
    [ON_REAP] = {try_reap, true},          /* completed events make blocks idle */
    [ON_WEIGH] = {weigh, false},           /* what new memory would cost */
    [ON_ORDER] = {try_order, true},        /* legacy free order: the context waits, blocks idle */
    [ON_SEAL] = {try_seal, true},          /* seal the quarantine; look at once when it pays */
    [ON_ROOM] = {try_room, true},          /* blocks the thread caches keep come back */
    [ON_ANY_IDLE] = {try_any_idle, true},  /* past the budget: any idle block that holds it */
    [ON_DRAIN] = {try_drain, true},        /* fence a quarantine past its budget */
    [ON_RECYCLE] = {try_recycle, true},    /* past the budget, or at the peak: idle extents traded for new */
    [ON_EXTEND] = {try_extend, true},      /* past the budget: an idle tail extended */
    [ON_MAP] = {try_map, false},           /* new memory */
    [ON_RECLAIM] = {try_reclaim, true},    /* out of memory: wait for all, give idle back */
};
_Static_assert(RUNGS <= 32, "one bit of alloc_req.tried per rung");

int heap_alloc_locked(gpu_heap_t *h, size_t need, size_t align, unsigned flags, uintptr_t stream, block **out) {
    bool owned = flags & GPU_ALLOC_OWNED;
    /* Beside the request, not in it: its initializer would clear the whole set
     * (a kilobyte) at every call, a warm 16 MiB pair's included (host: 125 ->
     * 163 ns). A handle is written before it is read. */
    spare_set spares;
    spares.n = 0;
    alloc_req r = {
        .h = h, .need = need, .align = align, .stream = stream, .owned = owned,
        .fitted = !owned && !h->page && need >= 2 * h->gran && align <= h->gran,
        .own = owned || (!h->page && need >= h->gran), .spares = &spares,
    };
    /* Past the last rung (reclaim tried already), the request ends with the
     * mapping's failure. */
    for (unsigned i = 0; i < RUNGS;) {
        if (!heap_is_running(h)) { /* paused, or a pause began while a rung had the lock dropped */
            r.rc = heap_refusal(h);
            break;
        }
        if (r.tried & 1u << i) {
            i++;
            continue;
        }
        rung_result s = ladder[i].try(&r);
        if (s != RUNG_SKIP && ladder[i].once) r.tried |= 1u << i;
        if (s == RUNG_DONE) break;
        i = s == RUNG_RETRY ? 0 : i + 1;
    }
    spare_release_locked(h, &spares, 0); /* kept handles no mapping took */
    if (r.rc == GPU_OK) *out = r.b;
    return r.rc;
}

int heap_malloc(gpu_heap_t *h, size_t size, size_t align, unsigned flags, void **out) {
    if (!size) size = 1;
    size_t need = gh_align_up(size, (flags & GPU_ALLOC_OWNED) ? h->gran : GH_QUANTUM);
    if (flags & GPU_ALLOC_OWNED && align < h->gran) align = h->gran;
    if (!need || need > h->reserved)
        return gh_note(GPU_ERR_INVALID, "size %zu is larger than the heap's reservation (%zu bytes)", size, h->reserved);
    heap_lock(h);
    int rc = heap_is_running(h) ? heap_reserve_records(h) : heap_refusal(h); /* paused idle memory is unmapped */
    block *b = NULL;
    /* The ladder's first rung without the ladder: a warm request ends there. */
    if (rc == GPU_OK && !(flags & GPU_ALLOC_OWNED) && (need < 2 * h->gran || h->page))
        b = h->page ? fit_take_best(h, need, align) : fit_take_any(h, need, align);
    if (rc == GPU_OK && !b) rc = heap_alloc_locked(h, need, align, flags, 0, &b);
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
    int rc = heap_is_running(h) ? heap_reserve_records(h) : heap_refusal(h);
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

/* ---- a run of small blocks (the thread caches' refill) ----------------------- */

/* One idle block carved front to back into pieces of need bytes gives exactly the
 * blocks, in the same order, that asking heap_alloc_locked n times would when need
 * is a size class of its own (at most 16 quanta): the index finds the remainder
 * of the last cut again as long as it holds need bytes. The run spares each piece
 * the ladder and the index's search; a miss (and any larger need, whole granules
 * among them) goes down the ladder for one block. */
size_t heap_alloc_run_locked(gpu_heap_t *h, size_t need, size_t n, block **out) {
    gh_assert(need % GH_QUANTUM == 0, "a run is of blocks of whole quanta");
    bool exact = need <= TLSF_SL_COUNT * GH_QUANTUM;
    size_t got = 0;
    while (got < n && heap_reserve_records(h) == GPU_OK) {
        block *b = exact ? tlsf_find(&h->idle, need) : NULL;
        if (!b) {
            if (heap_alloc_locked(h, need, GH_QUANTUM, 0, 0, &out[got]) != GPU_OK) break;
            got++;
            continue;
        }
        tlsf_remove(&h->idle, b);
        for (;;) {
            bool more = b->size >= 2 * need;
            block *piece = block_carve(h, b, b->start, need, &h->idle); /* the rest goes back to the index */
            heap_make_live_locked(h, piece);
            out[got++] = piece;
            if (!more || got == n || heap_reserve_records(h) != GPU_OK) break;
            b = piece->next_phys; /* the rest, taken back out for the next cut */
            tlsf_remove(&h->idle, b);
        }
    }
    return got;
}
