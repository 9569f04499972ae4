/*
 * tcache.c — per-thread caches of small blocks: gpu_malloc and gpu_free without
 * the heap lock.
 *
 * One heap lock serializes every call; with many threads it is the whole cost.
 * So each thread keeps, per heap, rings of free blocks by size class (256 B to
 * 4 KiB, one class per quantum), filled from the heap in batches under the lock
 * and emptied back to it the same way. A warm malloc pops a ring and a warm free
 * pushes one; neither touches a line another thread writes (glibc's tcache and
 * mimalloc's thread-local pages are the models).
 *
 * Sizes above 4 KiB and under a granule, and whole granules up to 16 MiB (wide
 * sizes, internal.h), go to mid slots: 16 rings, each for one exact size at a
 * time (a slot is found by a hash of the size; a size that finds its slot taken
 * gives the other size's blocks back and takes it over), with a budget of
 * their own. Freed blocks kept away from coalescing cost placement
 * (caching 4-64 KiB blocks took a recorded PyTorch trace from 1.32x to 1.42x its
 * live peak), so the mid rings give their blocks back whenever the heap is about
 * to map new memory (the heap's room hook): a cached block never makes the heap
 * grow.
 *
 * A cached block stays LIVE in the heap's books the whole time — in the address
 * map, counted live — and its record's tc word says where it stands: TC_FREE
 * while a cache holds it, TC_USER once a cache handed it out. The heap changes a
 * live block only while it is TC_NONE and takes a TC_USER block back with one
 * compare-and-swap (heap_find_live), so a block freed by another thread, resized
 * or protected simply leaves the caches. A cache remembers every block it handed
 * out, however many (handout.h: address, record, tc word); gpu_free finds its
 * block there and claims it with a compare-and-swap of that word, whose
 * generation changes at every hand-out, so a stale entry can never claim a block
 * that moved on. A block another thread's cache handed out goes to the heap,
 * which finds every block.
 *
 * Freed blocks keep gpu_free's promise: they are not reused before GPU work
 * issued before the free has finished. Each is tagged with the heap's cover
 * number when it was freed and becomes reusable once a seal event or fence
 * numbered at least that has completed (quarantine.c) — a lock-free comparison.
 * Every half ring of frees a cache looks at the covers ahead of need (queries
 * the sealed events, seals what was freed since); one whose oldest block is
 * still waiting asks again and meanwhile takes fresh blocks from the heap. A
 * mid ring whose head keeps waiting deepens (internal.h, tc_mid_limit_bytes):
 * with many threads a cover takes longer to be seen than a shallow ring takes
 * to come round. This file is the fast side and the caches' lives; ring.c the
 * rings' slow side (depth, refills, the looks, giving blocks back); big.c the one
 * block of 64 MiB or more a cache keeps from its free to the next pair.
 *
 * What a cache holds is bounded (cfg.thread_cache bytes per thread and heap;
 * GPUHEAP_THREAD_CACHE=0 turns caching off). gpu_heap_trim and out-of-memory
 * empty the calling thread's cache and ask the others to empty theirs at their
 * next allocation (home.c); a thread's caches go back to their heaps when it
 * exits.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "cache/tcache.h"
#include "core/internal.h"

#define TC_HEAPS 4                     /* heaps a thread keeps a cache for at once */

static _Thread_local struct {
    gpu_heap_t *h;
    uint64_t serial;
    tcache *c;
} mine[TC_HEAPS];

/* ---- size classes ------------------------------------------------------------ */

/* One small class per quantum: a class's blocks are exactly the size asked for.
 * A mid size's slot: a multiplicative hash of its quanta, top bits. */
static inline unsigned mid_slot(size_t quanta) {
    return TC_CLASSES + (unsigned)((quanta * 0x9E3779B97F4A7C15ull) >> 60);
}
_Static_assert(TC_MID_SLOTS == 16, "mid_slot takes the hash's top four bits");

/* In legacy free order (gpu_set_free_order) wide sizes are the heap's: there a
 * ring's look at the covers is an ordered release, a context wait (1.5-13 us on
 * an H200), which the heap makes once for a batch past its budgets. Looking per
 * ring, the recorded PyTorch trace made 1,323-1,342 releases where the heap made
 * 805, and took 16.0 ms of calls on an H200 instead of 9.0; releasing only for
 * half a ring's worth, it held 1.107x its live peak instead of 1.092x. */
static inline bool wide_off(void) { return quarantine_legacy(); }

/* A need of quanta that no class takes: above the small and mid classes and not
 * a wide size (whole granules, at most wide_quanta, in event order). */
static inline bool no_class(const tcache *c, size_t quanta) {
    return quanta > c->classes && quanta > c->mid_quanta &&
           (quanta > c->wide_quanta || (quanta & c->gran_mask) || wide_off());
}

/* Where the calling thread keeps its cache of h in mine[], or -1. */
static int mine_index(const gpu_heap_t *h) {
    for (int i = 0; i < TC_HEAPS; i++)
        if (mine[i].h == h && mine[i].serial == h->serial) return i;
    return -1;
}

tcache *tcache_mine(gpu_heap_t *h) {
    int i = mine_index(h);
    return i < 0 ? NULL : mine[i].c;
}

void tcache_destroy(tcache *c) {
    for (unsigned k = 0; k < TC_ALL; k++) free(c->cls[k].ring);
    handout_free(&c->out);
    free(c);
}

/* registry_call's callback: c's blocks go back to its heap, which is alive and
 * cannot go meanwhile, and c is dropped. */
static void drop_cache_cb(gpu_heap_t *h, void *arg) {
    tcache *c = arg;
    heap_lock(h);
    tcache_give_back_locked(h, c);
    home_remove_locked(c);
    heap_unlock(h);
    tcache_destroy(c);
}

/* Thread exit: every cache goes back to its heap, if the heap still lives (a
 * destroyed heap freed its caches itself). */
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static bool exit_armed_ok;

static void at_thread_exit(void *unused) {
    (void)unused;
    for (int i = 0; i < TC_HEAPS; i++) {
        if (mine[i].c) (void)registry_call(mine[i].h, mine[i].serial, drop_cache_cb, mine[i].c);
        mine[i].h = NULL;
        mine[i].c = NULL;
    }
}

/* Once per process, before the first cache: the thread-exit key. */
static void exit_key_make(void) { exit_armed_ok = pthread_key_create(&exit_key, at_thread_exit) == 0; }

/* ---- finding the thread's cache -------------------------------------------------- */

tcache *tcache_of(gpu_heap_t *h) {
    int i = mine_index(h);
    if (i > 0) { /* to the front: the next lookup is one compare */
        tcache *c = mine[i].c;
        mine[i] = mine[0];
        mine[0].h = h, mine[0].serial = h->serial, mine[0].c = c;
    }
    if (i >= 0) return mine[0].c;
    size_t limit = tc_limit_bytes(h);
    if (!limit) return NULL;
    pthread_once(&exit_once, exit_key_make);
    if (!exit_armed_ok || pthread_setspecific(exit_key, (void *)1) != 0) return NULL; /* no way to give it back at exit */
    tc_home *home = home_get(h);
    tcache *c = home ? calloc(1, sizeof *c) : NULL;
    if (!c) return NULL;
    c->heap = h;
    c->home = home;
    c->small.limit = limit;
    c->mid.limit = tc_mid_limit_bytes(h);
    c->small.start = TC_CLASS_BYTES;
    c->mid.start = tc_mid_start_bytes(h);
    c->classes = (unsigned)(tc_limit_need(h) / GH_QUANTUM);
    c->mid_quanta = (unsigned)(tc_mid_limit_need(h) / GH_QUANTUM);
    c->wide_quanta = (unsigned)(tc_wide_limit_need(h) / GH_QUANTUM);
    c->gran_mask = (unsigned)(h->gran / GH_QUANTUM - 1);
    for (unsigned k = 0; k < TC_ALL; k++) {
        c->cls[k].size = k < TC_CLASSES ? (size_t)(k + 1) * GH_QUANTUM : 0; /* a mid slot: none yet */
        c->cls[k].budget = k < TC_CLASSES ? &c->small : &c->mid;
    }
    c->out.base = h->base;
    /* The last slot makes room: its cache goes back to its heap if that lives. */
    if (mine[TC_HEAPS - 1].c)
        (void)registry_call(mine[TC_HEAPS - 1].h, mine[TC_HEAPS - 1].serial, drop_cache_cb, mine[TC_HEAPS - 1].c);
    memmove(&mine[1], &mine[0], (TC_HEAPS - 1) * sizeof mine[0]);
    mine[0].h = h, mine[0].serial = h->serial, mine[0].c = c;
    heap_lock(h);
    home_add_locked(c);
    heap_unlock(h);
    return c;
}

/* ---- the fast paths ---------------------------------------------------------------- */

/* The calling thread's cache of h when it is the one used last, else NULL: the
 * fast paths' one TLS read. Serials are unique and never 0, and h is live (the
 * caller found it), so its serial alone names it. */
static inline tcache *front(const gpu_heap_t *h) { return mine[0].serial == h->serial ? mine[0].c : NULL; }

/* Hands out the head of q (reusable: its cover was checked). */
static inline __attribute__((always_inline)) void *pop(tcache *c, tc_class *q) {
    uint32_t head = q->head;
    block *b = q->ring[head].b;
    uintptr_t start = q->ring[head].start;
    q->head = (head + 1) & q->mask;
    q->n--;
    tc_count(q, -1, 1);
    uint64_t w = tc_handout_word(b);
    atomic_store_explicit(&b->tc, w, memory_order_release);
    /* out of host memory: its free goes to the heap */
    (void)handout_put(&c->out, start, (unsigned)(q - c->cls), q->size, b, w);
    return (void *)start;
}

void tcache_flush_asked(gpu_heap_t *h, tcache *c) {
    heap_lock(h); /* someone trimmed or ran out of memory (all), or mapped (the mid slots, the large block) */
    if (atomic_exchange_explicit(&c->flush_asked, 0, memory_order_relaxed) & TC_FLUSH_ALL)
        tcache_give_back_locked(h, c);
    else
        (void)tcache_give_back_mid_locked(h, c);
    heap_unlock(h);
}

/* Everything the fast path leaves out: a cache not at the front of mine[] (or
 * not made yet), a flush asked for, a class whose head is missing or still
 * waiting for its cover (refill). */
static __attribute__((noinline)) void *malloc_slow(gpu_heap_t *h, size_t size) {
    size_t need = gh_align_up(size ? size : 1, GH_QUANTUM);
    if (!need || need > TC_MID_MAX_BYTES) return NULL;
    tcache *c = tcache_of(h);
    size_t quanta = need / GH_QUANTUM;
    if (!c || no_class(c, quanta)) return NULL;
    if (atomic_load_explicit(&c->flush_asked, memory_order_relaxed)) tcache_flush_asked(h, c);
    tc_class *q = quanta <= c->classes ? &c->cls[quanta - 1] : &c->cls[mid_slot(quanta)];
    if (q->size != need && !ring_slot_take(h, q, need)) return NULL;
    if ((!q->n || !quarantine_covered(h, q->ring[q->head].tag)) && ring_refill(h, c, q) != GPU_OK) return NULL;
    return pop(c, q);
}

void *tcache_malloc(gpu_heap_t *h, size_t size) {
    tcache *c = front(h);
    size_t quanta = size ? (size - 1) / GH_QUANTUM + 1 : 1;
    if (__builtin_expect(!c || atomic_load_explicit(&c->flush_asked, memory_order_relaxed), 0))
        return malloc_slow(h, size);
    if (__builtin_expect(no_class(c, quanta), 0))
        return NULL; /* a size no class takes (past a granule, not whole granules): straight to the heap */
    tc_class *q = quanta <= c->classes ? &c->cls[quanta - 1] : &c->cls[mid_slot(quanta)];
    if (__builtin_expect(q->size != quanta * GH_QUANTUM || !q->n || !quarantine_covered(h, q->ring[q->head].tag), 0))
        return malloc_slow(h, size);
    return pop(c, q);
}

size_t tcache_handout_slots(gpu_heap_t *h) {
    tcache *c = tcache_mine(h);
    return c && c->out.slot ? (size_t)c->out.mask + 1 : 0;
}

/* A free whose ring or budget is full: the older half of the class goes back
 * to the heap (a mid slot's budget takes room from the other slots too), then
 * the free goes on as the fast path's would; false when the block still does
 * not fit under the limit (the heap takes it). */
static __attribute__((noinline)) bool free_full(gpu_heap_t *h, tcache *c, tc_class *q, block *b, uintptr_t start,
                                                uint64_t w);
/* The rare ends of a free: a table left nearly empty shrinks, and every half ring
 * of frees looks at the covers (cover_tick). */
static __attribute__((noinline)) bool free_after(gpu_heap_t *h, tcache *c, tc_class *q, uint64_t tag);

/* A free the cache does not take after all: the table shrinks if due, the heap
 * takes the block. */
static __attribute__((noinline)) bool free_missed(tcache *c) {
    if (c->out.n < c->out.shrink_at) handout_shrink(&c->out);
    return false;
}

/* Claims b (at start, handed out with tc word w) back into q's ring; the
 * caller made room. */
static inline bool put_back(gpu_heap_t *h, tcache *c, tc_class *q, block *b, uintptr_t start, uint64_t w) {
    if (!atomic_compare_exchange_strong_explicit(&b->tc, &w, tc_with(w, TC_FREE), memory_order_acq_rel,
                                                 memory_order_relaxed))
        return free_missed(c); /* the heap took it back, or it moved on: the heap decides */
    uint64_t tag = atomic_load(&h->cover_seq);
    q->ring[(q->head + q->n) & q->mask] = (tc_entry){b, start, tag};
    q->n++;
    tc_count(q, +1, 1);
    /* every depth / 2 frees (depth is a power of two: a mask, not a division) */
    if (__builtin_expect((++q->frees & ((q->depth >> 1) - 1)) == 0 || c->out.n < c->out.shrink_at, 0))
        return free_after(h, c, q, tag);
    return true;
}

static bool free_full(gpu_heap_t *h, tcache *c, tc_class *q, block *b, uintptr_t start, uint64_t w) {
    if (q->n == q->cap || tc_held(&q->budget->bytes) + q->size > q->budget->limit) {
        heap_lock(h);
        ring_drop_oldest_locked(h, q, q->n - q->n / 2);
        size_t room = ring_room_locked(h, c, q);
        heap_unlock(h);
        if (!room) return free_missed(c);
    }
    return put_back(h, c, q, b, start, w);
}

static bool free_after(gpu_heap_t *h, tcache *c, tc_class *q, uint64_t tag) {
    if (c->out.n < c->out.shrink_at) handout_shrink(&c->out);
    if ((q->frees & ((q->depth >> 1) - 1)) == 0) ring_cover_tick(h, c, tag); /* sealed, then seen, before the ring comes round */
    return true;
}

bool tcache_free(gpu_heap_t *h, uintptr_t p) {
    tcache *c = front(h);
    if (__builtin_expect(!c, 0) && (!mine[0].c || !(c = tcache_mine(h)))) return false; /* mine[] fills from the front */
    handout *e = handout_find(&c->out, p);
    if (!e) return false; /* not handed out by this thread's cache: the heap finds it */
    block *b = e->b;
    uint64_t w = e->w;
    size_t size = e->size;
    unsigned k = (unsigned)(e->key & HANDOUT_CLASS_MASK);
    handout_take(&c->out, e); /* shrinking, when due, waits for the end */
    if (__builtin_expect(k == TC_BIG, 0)) return big_free(h, c, b, p, w, size) || free_missed(c);
    tc_class *q = &c->cls[k];
    if (__builtin_expect(q->size != size, 0)) return free_missed(c); /* its mid slot took another size meanwhile */
    if (__builtin_expect(q->wide, 0) && wide_off()) return free_missed(c); /* handed out before the order changed */
    if (__builtin_expect(q->n == q->cap || tc_held(&q->budget->bytes) + size > q->budget->limit, 0))
        return free_full(h, c, q, b, p, w);
    return put_back(h, c, q, b, p, w);
}
