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

typedef struct tc_entry {
    block *b;
    uintptr_t start; /* b->start, kept here so that a hand-out touches only the line of b's tc word */
    uint64_t tag;    /* cover number when freed; 0: fresh from the heap */
} tc_entry;

/* A ring of free blocks of one class, oldest first: fresh blocks go in front,
 * freed ones at the back, so tags rise from head to tail. */
typedef struct tc_class {
    tc_entry *ring;
    uint32_t cap, mask, head, n; /* mask: cap - 1 (cap is a power of two) */
    uint32_t frees; /* frees taken, for the looks at the covers (cover_tick) */
} tc_class;

typedef struct tc_home tc_home;

/* One thread's cache of one heap. The owner alone touches it, but for the
 * fields marked otherwise. */
typedef struct tcache {
    gpu_heap_t *heap;
    tc_home *home;
    size_t limit;               /* bytes the rings may hold (tc_limit_bytes) */
    size_t max;                 /* the largest need taken (tc_limit_need) */
    unsigned classes;           /* classes below max / GH_QUANTUM: the fast path's bound */
    uint64_t looked_at;         /* cover_seq after this cache's last look (cover_tick) */
    _Atomic bool flush_asked;   /* set by another thread's trim (lock held): give everything back */
    _Atomic size_t bytes, blocks; /* held in the rings: the owner writes, gpu_heap_stats reads */
    struct tcache *next, *prev; /* the home's list, under the heap's lock */
    handout_map out;            /* the blocks handed out and not yet back */
    tc_class cls[TC_CLASSES];
} tcache;

/* ---- tcache.c ------------------------------------------------------------------ */

/* The calling thread's cache of h if it has one; never creates. */
tcache *tcache_mine(gpu_heap_t *h);
/* Every block c's rings hold goes back to h. Lock held. */
void tcache_give_back_locked(gpu_heap_t *h, tcache *c);
/* Frees c's memory (its blocks are given back, or go with a closing heap). */
void tcache_destroy(tcache *c);

/* ---- home.c -------------------------------------------------------------------- */

/* What a thread's cache of h may hold: bytes in all (0: caching is off for h)
 * and the largest need it takes. Cached blocks are idle memory kept mapped, so a
 * release threshold bounds them too; only blocks smaller than a granule are
 * cached: they never own an extent, so gpu_protect refuses them and a cached
 * free never hides a protection. */
static inline size_t tc_limit_bytes(const gpu_heap_t *h) {
    return h->cfg.thread_cache < h->cfg.release_threshold ? h->cfg.thread_cache : h->cfg.release_threshold;
}
static inline size_t tc_limit_need(const gpu_heap_t *h) {
    return TC_MAX_BYTES < h->gran ? TC_MAX_BYTES : h->gran - GH_QUANTUM;
}

/* h's home (made on first use, with the hooks registered), or NULL when out of
 * host memory. Takes the home table's lock; call it without the heap's. */
tc_home *home_get(gpu_heap_t *h);
/* Lists c in its home (c->home set) / takes it off. Heap lock held. */
void home_add_locked(tcache *c);
void home_remove_locked(tcache *c);

#endif /* GPUHEAP_CACHE_INTERNAL_H */
