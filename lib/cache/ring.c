/*
 * ring.c — the slow side of a thread cache's rings (tcache.c has the fast
 * side): how deep a class's ring is kept, refilling it from the heap under the
 * lock, the looks at the covers that let its freed blocks be reused, a mid
 * slot taken over by another size, and blocks given back to the heap.
 *
 * A ring is sized by bytes: a small class's holds about TC_CLASS_BYTES, a mid
 * slot's at most its budget (internal.h). It is kept at a depth — its capacity,
 * or for a mid slot a quarter of its budget at first (a wide size's: at least
 * TC_WIDE_RING_MIN blocks) — that refills keep it at,
 * and every half depth of frees the cache looks at the covers. A mid ring whose
 * head is still waiting on a cover recorded after its free when its turn comes
 * doubles its depth: with many threads a cover takes longer to be seen than a
 * shallow ring takes to come round (bench/RESULTS.md).
 */
#include <stdlib.h>

#include "cache/internal.h"
#include "core/internal.h"

#define TC_RING_MIN 16u
#define TC_RING_MAX 1024u
#define TC_REFILL_BYTES ((size_t)256 << 10) /* fresh blocks taken from the heap at once: this many bytes, */
#define TC_REFILL_MAX 64u                       /* or this many blocks */

/* ---- giving blocks back --------------------------------------------------------- */

void ring_give_back_locked(gpu_heap_t *h, tc_entry e) {
    blockmap_remove(&h->live, e.b->start);
    heap_retire_locked(h, e.b, quarantine_covered(h, e.tag));
}

/* The oldest n entries of q go back to the heap. Lock held. */
void ring_drop_oldest_locked(gpu_heap_t *h, tc_class *q, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        ring_give_back_locked(h, q->ring[q->head]);
        q->head = (q->head + 1) & (q->cap - 1);
        q->n--;
    }
    tc_count(q, -1, n);
}

/* Every block of the classes [from, to) goes back to the heap; true when any
 * did. Lock held. */
static bool give_back_range_locked(gpu_heap_t *h, tcache *c, unsigned from, unsigned to) {
    bool any = false;
    for (unsigned k = from; k < to; k++)
        if (c->cls[k].n) ring_drop_oldest_locked(h, &c->cls[k], c->cls[k].n), any = true;
    return any;
}

void tcache_give_back_locked(gpu_heap_t *h, tcache *c) {
    (void)give_back_range_locked(h, c, 0, TC_ALL);
    (void)big_give_back_locked(h, c);
}

/* The class whose refill is asking the heap on this thread, or NULL. */
static _Thread_local tc_class *refilling;

bool tcache_give_back_mid_locked(gpu_heap_t *h, tcache *c) {
    bool any = big_give_back_locked(h, c);
    for (unsigned k = TC_CLASSES; k < TC_ALL; k++) {
        tc_class *q = &c->cls[k];
        if (q->n && q != refilling) ring_drop_oldest_locked(h, q, q->n), any = true;
    }
    return any;
}

/* ---- a ring's depth, refills and covers ------------------------------------------ */

/* Ring lengths for blocks of q's size: the largest power of two whose blocks
 * fit in bytes, within [the kind's least, TC_RING_MAX]. */
static uint32_t ring_len(const tc_class *q, size_t bytes) {
    uint32_t len = TC_RING_MAX, least = q->wide ? TC_WIDE_RING_MIN : q->size > TC_MAX_BYTES ? TC_MID_RING_MIN : TC_RING_MIN;
    while (len > least && (size_t)len * q->size > bytes) len /= 2;
    return len;
}

/* The ring's capacity: a small class holds about TC_CLASS_BYTES, a mid slot of
 * exact sizes a share of its budget, a wide one the whole of it. */
static uint32_t ring_cap(const tc_class *q) {
    if (q->size <= TC_MAX_BYTES) return ring_len(q, TC_CLASS_BYTES);
    return ring_len(q, q->wide ? q->budget->limit : q->budget->limit / TC_MID_RING_SHARE);
}

/* The depth a new ring is kept at: its budget's starting bytes (a small class:
 * its capacity). */
static uint32_t ring_depth(const tc_class *q) {
    uint32_t d = ring_len(q, q->budget->start);
    return d < q->cap ? d : q->cap;
}

/* q's ring, made at its capacity and starting depth if it has none; false
 * when out of host memory. */
static bool ring_ready(tc_class *q) {
    if (q->ring) return true;
    uint32_t cap = ring_cap(q);
    q->ring = malloc(cap * sizeof *q->ring);
    if (!q->ring) return false;
    q->cap = cap;
    q->mask = cap - 1;
    q->depth = ring_depth(q);
    q->head = q->n = 0;
    return true;
}

/* True once the head of q is reusable: its free was covered. Asks for a cover
 * when none was recorded since that free (a seal), else looks whether one
 * completed (a query) — one thread at a time; the others watch cover_done for
 * a moment instead of taking new blocks. Lock held; dropped around driver calls
 * and while watching. */
static bool head_covered_locked(gpu_heap_t *h, tc_class *q) {
    uint64_t tag = q->ring[q->head].tag;
    for (int round = 0; round < 2; round++) {
        if (quarantine_covered(h, tag)) return true;
        if (!h->seal_busy) return quarantine_cover_locked(h, tag);
        heap_unlock(h); /* another thread is recording or querying: its answer serves all */
        for (int i = 0; i < 256 && !quarantine_covered(h, tag); i++) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        heap_lock(h);
    }
    return quarantine_covered(h, tag);
}

/* Blocks of q's size q's budget has room for. A mid slot short of room takes it
 * from the other mid slots, whole slots at a time: their sizes were asked for
 * less recently than the one asking now. Lock held. */
size_t ring_room_locked(gpu_heap_t *h, tcache *c, tc_class *q) {
    tc_budget *g = q->budget;
    for (unsigned k = TC_CLASSES; q->size > TC_MAX_BYTES && k < TC_ALL; k++) {
        if (tc_held(&g->bytes) + q->size <= g->limit) break;
        if (&c->cls[k] != q && c->cls[k].n) ring_drop_oldest_locked(h, &c->cls[k], c->cls[k].n);
    }
    size_t mine = tc_held(&g->bytes);
    return g->limit > mine ? (g->limit - mine) / q->size : 0;
}

/* Makes the head of q reusable: the oldest freed block once its cover
 * completed, else fresh blocks from the heap put in front. GH_MISS: the
 * cache cannot help (the caller asks the heap). */
int ring_refill(gpu_heap_t *h, tcache *c, tc_class *q) {
    if (!ring_ready(q)) return GH_MISS;
    size_t size = q->size;
    heap_lock(h);
    /* A ring shallower than half its depth also grows, so that the looks
     * every half depth (cover_tick) find its head covered in time. */
    /* a cover recorded since the head's free, before this refill asked for one */
    bool recorded = q->n && atomic_load_explicit(&h->cover_seq, memory_order_relaxed) > q->ring[q->head].tag;
    bool covered = q->n && head_covered_locked(h, q);
    if (covered && q->n >= q->depth / 2) {
        heap_unlock(h);
        return GPU_OK;
    }
    /* At half its depth or more, and the head still waits on a cover recorded
     * after its free: a ring's length of frees is shorter than a cover takes to
     * be seen complete, so the ring deepens (its looks spread out with it), as
     * far as its capacity. */
    if (!covered && recorded && q->n >= q->depth / 2 && q->depth < q->cap) q->depth *= 2;
    if (q->n == q->cap) ring_drop_oldest_locked(h, q, q->cap / 2); /* all waiting: the heap's quarantine takes the older half */
    size_t room = ring_room_locked(h, c, q);
    size_t want = size <= TC_MAX_BYTES ? TC_REFILL_BYTES / size : 1; /* a mid block: one at a time */
    if (want > TC_REFILL_MAX) want = TC_REFILL_MAX;
    if (want > q->cap - q->n) want = q->cap - q->n;
    if (want > room) want = room;
    if (!want) {
        heap_unlock(h);
        return q->n && quarantine_covered(h, q->ring[q->head].tag) ? GPU_OK : GH_MISS;
    }
    /* One run carved by the heap under this one hold of the lock, in address
     * order, handed out in that order. A shortfall is the heap's to report: the
     * caller then asks it for the exact size. The heap may empty the other mid
     * rings on the way (before it maps new memory). */
    block *fresh[TC_REFILL_MAX];
    refilling = q; /* its blocks wait for their cover: they could not serve this, and stay */
    size_t got = heap_alloc_run_locked(h, size, want, fresh);
    refilling = NULL;
    gh_assert(got <= q->cap - q->n, "a flush inside the heap only empties the ring");
    for (size_t i = got; i-- > 0;) {
        block *b = fresh[i];
        gh_assert(b->size == size, "the heap carves a block of exactly the size asked for");
        tc_set(b, TC_FREE);
        q->head = (q->head + q->cap - 1) & (q->cap - 1);
        q->ring[q->head] = (tc_entry){b, b->start, 0};
        q->n++;
    }
    tc_count(q, +1, got);
    heap_unlock(h);
    return q->n && quarantine_covered(h, q->ring[q->head].tag) ? GPU_OK : GH_MISS;
}

/* Gives mid slot q to blocks of need bytes: the blocks it holds of another size
 * go back to the heap, a ring of the new size's capacity replaces its ring.
 * Blocks handed out under the old size find the size changed when freed
 * (handout.h) and go to the heap. False when out of host memory. */
bool ring_slot_take(gpu_heap_t *h, tc_class *q, size_t need) {
    if (q->n) {
        heap_lock(h);
        ring_drop_oldest_locked(h, q, q->n);
        heap_unlock(h);
    }
    uint32_t old_cap = q->cap;
    q->size = need;
    q->wide = need >= h->gran;
    if (q->ring && ring_cap(q) != old_cap) {
        free(q->ring);
        q->ring = NULL;
    }
    q->frees = 0;
    if (q->ring) q->depth = ring_depth(q); /* a kept ring starts over at the new size's depth */
    if (ring_ready(q)) return true;
    q->size = 0;
    q->wide = false;
    return false;
}

/* Every half depth of frees a cache asks for covers ahead of need, so that by
 * the time its ring gets round to these blocks an event recorded after them has
 * completed and been seen: it queries what was sealed and, unless another
 * thread sealed since this cache last looked, seals what was freed since. With
 * many threads the seals of one serve all, so seals stay about as frequent as
 * with one. Never waits for the lock; counts, not clocks, decide, so that one
 * thread's calls always go the same way (trace replays rely on it). */
void ring_cover_tick(gpu_heap_t *h, tcache *c, uint64_t tag) {
    uint64_t seq = atomic_load_explicit(&h->cover_seq, memory_order_relaxed);
    bool sealed_since = seq > c->looked_at;
    c->looked_at = seq;
    if (!heap_trylock(h)) return;
    if (!h->seal_busy) {
        if (h->nsealed) (void)quarantine_reap_locked(h);
        if (!sealed_since) (void)quarantine_cover_locked(h, tag);
    }
    c->looked_at = atomic_load(&h->cover_seq);
    heap_unlock(h);
}
