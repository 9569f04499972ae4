/*
 * big.c — one large block per thread, kept from its free to the next
 * allocation it fits: a plain pair of 64 MiB and more for one event record and
 * one query, without the heap's bookkeeping in between.
 *
 * Through the heap, such a pair is a free that quarantines the block and records
 * its cover early (quarantine.c), then a miss that seals, queries, makes the
 * batch idle (merging it with its neighbours, into the index), and finds the
 * block again in whole extents to cut it out: about 2,200 instructions on the
 * host backend beside the two driver calls (an H200: record 190 ns, query 170;
 * the query right after a record on an idle GPU found it complete every time in
 * 20,000 tries), which made a 256 MiB pair 0.78x cudaMallocAsync's speed. Here
 * the free keeps the block, still live in the heap's books and TC_FREE like any
 * cached block (tcache.c), and records its cover at once (in event order); the
 * next allocation of a size the block fits queries (one driver call) and hands
 * it out again. In legacy free order the allocation's ordered release covers it
 * instead (quarantine.c), as a heap miss would. Plain requests only: the
 * interposer's, aligned as cudaMalloc's, stay the heap's (tcache.h says why).
 *
 * What the heap would do, it still does: a block whose cover has not completed
 * by then goes back into the quarantine, and the request goes down the heap's
 * ladder (seals, looks, fences, its budget); a request the block does not fit,
 * and any allocation of the thread that goes to the heap (gpu_calloc, an
 * alignment, flags, a miss of the small caches), gives it back first, so that
 * the heap's ladder sees it from its first rung (in legacy order, an ordered
 * release makes it that request's; given back only before a mapping, the ladder
 * had passed that rung and mapped anew). One block per thread, and only while the release
 * threshold allows idle memory of its size; it goes back before the heap maps
 * anything for this thread, and when another thread's mapping passes the
 * physical budget, a trim, out of memory, the thread's exit (ring.c, home.c).
 * A block the cache handed out that gpu_protect, gpu_realloc or another thread
 * touches is the heap's again, and its free goes to the heap.
 */
#include "cache/internal.h"
#include "core/internal.h"

/* Blocks this thread's caches keep (a hint: a cache that its heap's closing
 * dropped leaves it high), so that an allocation going to the heap looks for
 * one only when there may be one. */
static _Thread_local unsigned kept;

/* A block of size bytes serves a need of as many granules. (Allowing the slack
 * the heap's own search for large blocks allows, an eighth, held RMM's random
 * workload at 1.140x its live peak in the 1 GiB case, 1.138x at 4 GiB; the same
 * granules: 1.130x and 1.129x, as without the kept block.) */
static bool big_fits(const gpu_heap_t *h, size_t size, size_t need) {
    return gh_align_up(need, h->gran) == gh_align_up(size, h->gran);
}

static void big_count(tcache *c, size_t bytes, size_t blocks) {
    atomic_store_explicit(&c->big_held.bytes, bytes, memory_order_relaxed);
    atomic_store_explicit(&c->big_held.blocks, blocks, memory_order_relaxed);
}

bool big_give_back_locked(gpu_heap_t *h, tcache *c) {
    if (!c->big.b) return false;
    /* With the batch sealed after its free when its cover is still running (its
     * free recorded that seal): in the unsealed quarantine it would wait for
     * another. A CNN replayed with its GPU 40 ms behind held 1.445x its live
     * peak that way, 1.335x with the batch (1.316x without a kept block). (The
     * rings' blocks keep going to the quarantine: with the batch, RMM's random
     * 1 MiB case held 1.236x, not 1.100x.) */
    blockmap_remove(&h->live, c->big.start);
    quarantine_retire_locked(h, c->big.b, c->big.tag);
    c->big.b = NULL;
    big_count(c, 0, 0);
    kept -= kept > 0; /* the owner's thread, or a closing heap's (then a hint off by one) */
    return true;
}

/* Before the kept block goes back unasked for: in event order its cover was
 * recorded at the free, and a look now lets it go back idle (else it would wait
 * in the quarantine for another seal); in legacy order the heap's ladder decides
 * when to release it. Lock held; dropped around the driver call. */
static void big_look_locked(gpu_heap_t *h, tcache *c) {
    if (!quarantine_legacy()) (void)quarantine_cover_locked(h, c->big.tag);
}

/* The kept block, if it serves need and its cover completed (asked once: a query,
 * or in legacy order an ordered release); else it goes back — idle when its cover
 * completed, so that the heap's search finds it — and NULL. */
static block *big_reuse(gpu_heap_t *h, tcache *c, size_t need) {
    tc_entry e = c->big;
    if (!e.b) return NULL;
    bool fits = big_fits(h, e.b->size, need);
    if (!fits || !quarantine_covered(h, e.tag)) {
        heap_lock(h);
        bool take = fits && quarantine_cover_locked(h, e.tag);
        if (!take) {
            if (!fits) big_look_locked(h, c);
            big_give_back_locked(h, c);
        }
        heap_unlock(h);
        if (!take) return NULL;
    }
    c->big.b = NULL;
    big_count(c, 0, 0);
    kept -= kept > 0;
    return e.b;
}

int tcache_malloc_big(gpu_heap_t *h, size_t size, void **out) {
    size_t need = gh_align_up(size, GH_QUANTUM);
    if (need < tc_big_min(h) || need > h->reserved || need > h->cfg.release_threshold) return GH_MISS;
    tcache *c = tcache_of(h);
    if (!c) return GH_MISS;
    if (atomic_load_explicit(&c->flush_asked, memory_order_relaxed)) tcache_flush_asked(h, c);
    block *b = big_reuse(h, c, need);
    if (!b) { /* from the heap, which reports any failure; its free comes back here */
        heap_lock(h);
        int rc = heap_is_running(h) ? heap_reserve_records(h) : heap_refusal(h);
        if (rc == GPU_OK) rc = heap_alloc_locked(h, need, GH_QUANTUM, 0, 0, &b);
        heap_unlock(h);
        if (rc != GPU_OK) return rc;
    }
    uint64_t w = tc_handout_word(b);
    atomic_store_explicit(&b->tc, w, memory_order_release);
    (void)handout_put(&c->out, b->start, TC_BIG, b->size, b, w); /* out of host memory: its free goes to the heap */
    *out = (void *)b->start;
    return GPU_OK;
}

bool big_free(gpu_heap_t *h, tcache *c, block *b, uintptr_t start, uint64_t w, size_t size) {
    if (!atomic_compare_exchange_strong_explicit(&b->tc, &w, tc_with(w, TC_FREE), memory_order_acq_rel,
                                                 memory_order_relaxed))
        return false; /* the heap took it back, or it moved on: the heap decides */
    uint64_t tag = atomic_load(&h->cover_seq);
    heap_lock(h);
    heap_note_free_locked(h, size); /* freed, as far as the heap's backing is concerned (vacant.c) */
    /* The cover now, so that the GPU is past it when the block is wanted again
     * (in legacy order the allocation's ordered release covers it); the look it
     * takes at older covers first may let an older kept block go back idle. Not
     * while half the seal slots wait already: a GPU that far behind will not
     * pass it by the next allocation, and the heap's own misses need the slots
     * (the PyTorch trace replayed with its GPU 40 ms behind held 1.274x its live
     * peak sealing at every free, 1.250x so; 1.238x without kept blocks). */
    if (!quarantine_legacy() && h->nsealed < SEALED_MAX / 2) (void)quarantine_cover_locked(h, tag);
    (void)big_give_back_locked(h, c); /* one block kept at a time: the older goes back */
    c->big = (tc_entry){b, start, tag};
    big_count(c, size, 1);
    kept++;
    heap_unlock(h);
    return true;
}

void tcache_give_back_big(gpu_heap_t *h) {
    if (!kept) return;
    tcache *c = tcache_mine(h);
    if (!c || !c->big.b) return;
    heap_lock(h);
    big_look_locked(h, c);
    (void)big_give_back_locked(h, c);
    heap_unlock(h);
}
