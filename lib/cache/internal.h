/*
 * internal.h — the thread caches' own names, shared by the files of lib/cache and
 * used by nothing outside it: what a thread's cache of one heap is made of
 * (tcache.c) and the per-heap side that lists them (home.c).
 *
 * The heap core keeps no cache state: a heap's caches, their limits and the
 * requests to empty them live here, in a record per heap (a home) that the cache
 * layer keeps in its own table, keyed by the heap's serial. The core reaches them
 * only through the hooks home.c registers (closing, statistics, flush).
 */
#ifndef GPUHEAP_CACHE_INTERNAL_H
#define GPUHEAP_CACHE_INTERNAL_H

#include "cache/handout.h"
#include "cache/tcache.h"
#include "core/heap.h"

#define TC_CLASSES (TC_MAX_BYTES / GH_QUANTUM) /* 256 B..4 KiB, one per quantum: nothing is rounded up */
#define TC_MID_SLOTS 16u                         /* classes for exact sizes above 4 KiB, by a hash of the size */
#define TC_ALL (TC_CLASSES + TC_MID_SLOTS)       /* a class index: small classes first, then the mid slots */
#define TC_BIG TC_ALL                            /* the class a handed-out large block is known by (big.c) */
#define TC_MID_RING_MIN 8u /* a mid size is cached only when its budget holds a ring this deep */
#define TC_WIDE_RING_MIN 32u /* a wide size (whole granules) only when the whole mid budget holds a ring this deep */
enum { TC_FLUSH_ALL = 1, TC_FLUSH_MID = 2 }; /* what another thread asked a cache to give back */

typedef struct tc_entry {
    block *b;
    uintptr_t start; /* b->start, kept here so that a hand-out touches only the line of b's tc word */
    uint64_t tag;    /* cover number when freed; 0: fresh from the heap */
} tc_entry;

/* What one kind of class (small, mid) may hold, and holds. The owner alone
 * writes the counts (a load and a store); gpu_heap_stats reads them. */
typedef struct tc_budget {
    _Atomic size_t bytes, blocks;
    size_t limit;
    size_t start; /* a ring's first depth holds about this many bytes (ring_depth) */
} tc_budget;

/* A ring of free blocks of one class, oldest first: fresh blocks go in front,
 * freed ones at the back, so tags rise from head to tail. */
typedef struct tc_class {
    tc_entry *ring;
    uint32_t cap, mask, head, n; /* mask: cap - 1 (cap is a power of two) */
    uint32_t depth;    /* the depth refills keep the ring at (a power of two, at most cap): it
                        * doubles while the head still waits for its cover (tcache.c, refill) */
    uint32_t frees;    /* frees taken, for the looks at the covers (cover_tick): every depth / 2 */
    size_t size;       /* the blocks' exact size (a mid slot: 0 while unassigned) */
    bool wide;         /* a mid slot's size is whole granules (tc_wide_limit_need) */
    tc_budget *budget; /* the cache's small or mid budget */
} tc_class;

typedef struct tc_home tc_home;

/* One thread's cache of one heap. The owner alone touches it, but for the
 * fields marked otherwise. */
typedef struct tcache {
    gpu_heap_t *heap;
    tc_home *home;
    unsigned classes;           /* small classes: needs up to classes quanta (tc_limit_need) */
    unsigned mid_quanta;        /* mid slots take needs above that up to this many quanta (0: none) */
    unsigned wide_quanta;       /* and needs of whole granules up to this many quanta (0: none) */
    unsigned gran_mask;         /* quanta in a granule, less one: a need of whole granules has none of these bits */
    uint64_t looked_at;         /* cover_seq after this cache's last look (cover_tick) */
    _Atomic unsigned flush_asked; /* set by another thread (lock held): TC_FLUSH_ALL (a trim: give
                                   * everything back) or TC_FLUSH_MID (it maps: the mid slots' blocks) */
    tc_budget small, mid;       /* what the rings of each kind hold, and may */
    tc_entry big;               /* the large block kept since its free (big.c; b NULL: none) */
    tc_budget big_held;         /* what big holds (counts only: gpu_heap_stats reads them) */
    struct tcache *next, *prev; /* the home's list, under the heap's lock */
    handout_map out;            /* the blocks handed out and not yet back */
    tc_class cls[TC_ALL];
} tcache;

#define TC_CLASS_BYTES ((size_t)16 << 20) /* a small class's ring holds about this many bytes */

/* A count the owner alone writes (a load and a store, no read-modify-write). */
static inline size_t tc_held(const _Atomic size_t *v) { return atomic_load_explicit(v, memory_order_relaxed); }

/* n blocks of q's size came into (+1) or left (-1) q's rings' budget. */
static inline void tc_count(tc_class *q, int sign, size_t n) {
    tc_budget *g = q->budget;
    atomic_store_explicit(&g->bytes, tc_held(&g->bytes) + (size_t)sign * n * q->size, memory_order_relaxed);
    atomic_store_explicit(&g->blocks, tc_held(&g->blocks) + (size_t)sign * n, memory_order_relaxed);
}

/* The tc word a block is handed out with: its generation moved on, TC_USER. */
static inline uint64_t tc_handout_word(block *b) {
    return ((atomic_load_explicit(&b->tc, memory_order_relaxed) >> 2) + 1) << 2 | TC_USER;
}

/* ---- tcache.c ------------------------------------------------------------------ */

/* The calling thread's cache of h if it has one; never creates. */
tcache *tcache_mine(gpu_heap_t *h);
/* The calling thread's cache of h, created on first use; NULL when caching is
 * off for h or out of host memory. Call it without the heap's lock. */
tcache *tcache_of(gpu_heap_t *h);
/* Gives back what another thread asked c to (a trim, out of memory: all; a
 * mapping past the budget: the mid slots and the large block). Takes the lock. */
void tcache_flush_asked(gpu_heap_t *h, tcache *c);
/* Frees c's memory (its blocks are given back, or go with a closing heap). */
void tcache_destroy(tcache *c);

/* ---- ring.c: the rings' slow side ------------------------------------------------ */

/* One cached block goes back to the heap: idle when its free is covered (or it
 * was never handed out), else into the quarantine. Lock held. */
void ring_give_back_locked(gpu_heap_t *h, tc_entry e);
/* Every block c holds goes back to h. Lock held. */
void tcache_give_back_locked(gpu_heap_t *h, tcache *c);
/* Every block c's mid slots hold (but the one refilling on this thread) and its
 * large block go back to h; true when any did. Lock held. */
bool tcache_give_back_mid_locked(gpu_heap_t *h, tcache *c);
/* The oldest n entries of q go back to the heap. Lock held. */
void ring_drop_oldest_locked(gpu_heap_t *h, tc_class *q, uint32_t n);
/* Blocks of q's size q's budget has room for (a mid slot short of room takes it
 * from the other mid slots). Lock held. */
size_t ring_room_locked(gpu_heap_t *h, tcache *c, tc_class *q);
/* Makes the head of q reusable (its cover completed, or fresh blocks in front);
 * GH_MISS when the cache cannot help. Takes the lock. */
int ring_refill(gpu_heap_t *h, tcache *c, tc_class *q);
/* Gives mid slot q to blocks of need bytes; false when out of host memory. */
bool ring_slot_take(gpu_heap_t *h, tc_class *q, size_t need);
/* The look at the covers every half depth of frees (tag: the last free's). */
void ring_cover_tick(gpu_heap_t *h, tcache *c, uint64_t tag);

/* ---- big.c: one large block kept per thread ------------------------------------- */

/* The block c keeps, if any, goes back to the heap; true when one did. Lock held. */
bool big_give_back_locked(gpu_heap_t *h, tcache *c);
/* gpu_free of b (at start, handed out by c with tc word w as a large block of
 * size bytes): c keeps it; false when it moved on meanwhile (the heap takes it). */
bool big_free(gpu_heap_t *h, tcache *c, block *b, uintptr_t start, uint64_t w, size_t size);

/* ---- home.c -------------------------------------------------------------------- */

/* What a thread's cache of h may hold: bytes in all (0: caching is off for h)
 * and the largest need it takes. Cached blocks are idle memory kept mapped, so a
 * release threshold bounds them too. Blocks of wide sizes (below) and the one
 * large block a cache keeps (big.c) own their extents: gpu_protect takes a block
 * a cache handed out back from the caches first, so its free goes to the heap,
 * which restores access — a cached free never hides a protection. */
static inline size_t tc_limit_bytes(const gpu_heap_t *h) {
    return h->cfg.thread_cache < h->cfg.release_threshold ? h->cfg.thread_cache : h->cfg.release_threshold;
}
static inline size_t tc_limit_need(const gpu_heap_t *h) {
    return TC_MAX_BYTES < h->gran ? TC_MAX_BYTES : h->gran - GH_QUANTUM;
}
/* The mid slots' budget: sixteen times the small classes' (512 MiB by default),
 * bounded by the release threshold. A ring of exact sizes below a granule
 * starts at a depth that holds 64 MiB (tc_mid_start_bytes, what the heap's
 * quarantine lets wait anyway) and deepens toward half the budget
 * (TC_MID_RING_SHARE: 256 MiB) only while
 * its oldest block is still waiting for its cover when its turn comes: a block
 * is reused a ring's length of frees after it was freed, and that must be
 * longer than a cover takes to record and be seen complete — 0.34 us for one
 * thread on an H200, 4.7 us (median) to 20 us (p90) with 16 threads recording
 * at once. At 64 deep, 16 threads of 1 MiB pairs made 2x the throughput of one;
 * at 256, 14-16x (bench/RESULTS.md). The largest need the slots take below a
 * granule: small enough for a ring of TC_MID_RING_MIN blocks within the
 * starting depth's bytes. */
#define TC_MID_BUDGET_SCALE 16u
#define TC_MID_START_SCALE 2u
#define TC_MID_RING_SHARE 2u /* a ring of exact sizes may hold this part of the mid budget at most */
static inline size_t tc_scaled(const gpu_heap_t *h, size_t scale) {
    size_t b = h->cfg.thread_cache <= SIZE_MAX / scale ? scale * h->cfg.thread_cache : SIZE_MAX;
    return b < h->cfg.release_threshold ? b : h->cfg.release_threshold;
}
static inline size_t tc_mid_limit_bytes(const gpu_heap_t *h) { return tc_scaled(h, TC_MID_BUDGET_SCALE); }
static inline size_t tc_mid_start_bytes(const gpu_heap_t *h) { return tc_scaled(h, TC_MID_START_SCALE); }
static inline size_t tc_mid_limit_need(const gpu_heap_t *h) {
    size_t n = tc_mid_start_bytes(h) / TC_MID_RING_MIN / GH_QUANTUM * GH_QUANTUM;
    if (n > h->gran - GH_QUANTUM) n = h->gran - GH_QUANTUM;
    if (n > TC_MID_MAX_BYTES) n = TC_MID_MAX_BYTES;
    return n > tc_limit_need(h) ? n : 0;
}
/* Wide sizes: the mid slots also take needs of whole granules, from a granule
 * up to what the whole mid budget holds a ring of TC_WIDE_RING_MIN of (16 MiB by
 * default), below the large block a cache keeps (big.c); a wide ring may hold
 * the whole budget. Through the heap such
 * a pair quarantines, seals, reaps (merging the batch back), searches whole
 * extents and cuts — about 1,500 instructions on the host backend against
 * 410-480 for a ring's pair — and its covers come with the quarantine's batches
 * (a 16 MiB pair: a record and a query every 5 pairs); a
 * ring's come with its looks, a record and a query (about 360 ns on an H200)
 * every half depth of frees, so a ring of these is never shallower than
 * TC_WIDE_RING_MIN: a look every 16 frees. On an H200 a 16 MiB pair took
 * 211-223 ns 4 deep, 87-95 ns 16 deep (a look every 8 frees) and 61-62 ns 32
 * deep, against cudaMallocAsync's 620-650 (bench/RESULTS.md). The price is the
 * memory a tight loop keeps turning: 32 freed blocks wait for their covers,
 * 512 MiB of 16 MiB blocks for one live block; like every cached block they
 * come back to the heap before it maps past its physical budget, at a trim and
 * when memory runs out. Whole granules only: the heap hands such a need
 * out exactly (an idle cut or an extent of its own), where a rounded-up size
 * would waste the rest (RMM's random 4 MiB cases 1.117 -> 1.281x their live
 * peak). Not in a paged heap, whose placement moves pages (paged.c). These
 * blocks own their extents, as the kept large block does. */
static inline size_t tc_wide_limit_need(const gpu_heap_t *h) {
    if (h->page || !tc_mid_limit_need(h)) return 0;
    size_t n = tc_mid_limit_bytes(h) / TC_WIDE_RING_MIN / h->gran * h->gran;
    if (n >= tc_big_min(h)) n = tc_big_min(h) - h->gran;
    if (n > TC_MID_MAX_BYTES) n = TC_MID_MAX_BYTES / h->gran * h->gran;
    return n >= h->gran ? n : 0;
}

/* h's home (made on first use, with the hooks registered), or NULL when out of
 * host memory. Takes the home table's lock; call it without the heap's. */
tc_home *home_get(gpu_heap_t *h);
/* Lists c in its home (c->home set) / takes it off. Heap lock held. */
void home_add_locked(tcache *c);
void home_remove_locked(tcache *c);

#endif /* GPUHEAP_CACHE_INTERNAL_H */
