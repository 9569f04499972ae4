/*
 * home.c — the per-heap side of the thread caches: which caches a heap has, and
 * what the heap's hooks do with them.
 *
 * The caches sit in front of the heap, so the heap keeps none of their state
 * (STYLE.md, "Layers and doors"). This layer keeps a record per heap instead, a
 * home, in a table of its own keyed by the heap's serial (unique per heap opened
 * in the process, so a new heap at a destroyed heap's address is never taken for
 * it). The fast paths never look there: they reach everything through the
 * thread's cache. The hooks do, and a trim hook runs at every free that passes
 * a release threshold, so the table is read without a lock: it is a list that
 * only grows, and a closing heap's home is not unlinked but marked free
 * (serial 0) for the next heap to take, so a reader never meets a freed record.
 * Making and closing homes take the table's lock. A home's list of caches is
 * guarded by the heap's lock, as are the blocks they hold.
 */
#include <pthread.h>
#include <stdlib.h>

#include "cache/internal.h"

struct tc_home {
    _Atomic uint64_t serial; /* the heap's; 0: free for the next heap */
    tcache *caches;          /* under the heap's lock */
    struct tc_home *next;    /* set before the home is published, never changed */
};

static pthread_mutex_t homes_lock = PTHREAD_MUTEX_INITIALIZER; /* makers and closers */
static tc_home *_Atomic homes;

/* The home whose serial is s (0: a free one), or NULL. Takes no lock. */
static tc_home *home_with(uint64_t s) {
    for (tc_home *x = atomic_load_explicit(&homes, memory_order_acquire); x; x = x->next)
        if (atomic_load_explicit(&x->serial, memory_order_acquire) == s) return x;
    return NULL;
}

/* h's home, or NULL when no thread made a cache of h. */
static tc_home *home_find(const gpu_heap_t *h) { return home_with(h->serial); }

void home_add_locked(tcache *c) {
    tc_home *home = c->home;
    c->prev = NULL;
    c->next = home->caches;
    if (home->caches) home->caches->prev = c;
    home->caches = c;
}

void home_remove_locked(tcache *c) {
    if (c->prev) c->prev->next = c->next; else c->home->caches = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

/* ---- the hooks ---------------------------------------------------------------------- */

/* h is closing (lock not held): its home and caches go (their blocks go with the
 * heap). The threads that own them find them no more: their lists key on h's
 * serial too, and give back only through registry_call, which h no longer passes. */
static void home_closing(gpu_heap_t *h) {
    pthread_mutex_lock(&homes_lock);
    tc_home *home = home_find(h);
    tcache *caches = home ? home->caches : NULL;
    if (home) {
        home->caches = NULL;
        atomic_store_explicit(&home->serial, 0, memory_order_release);
    }
    pthread_mutex_unlock(&homes_lock);
    for (tcache *c = caches, *next; c; c = next) {
        next = c->next;
        tcache_destroy(c);
    }
}

/* What h's caches hold free, in bytes and blocks (lock held: the list is
 * steady; a racing owner may move its counts meanwhile). */
static size_t held_by_caches(gpu_heap_t *h, size_t *blocks_out) {
    tc_home *home = home_find(h);
    size_t bytes = 0, blocks = 0;
    for (tcache *c = home ? home->caches : NULL; c; c = c->next) {
        bytes += tc_held(&c->small.bytes) + tc_held(&c->mid.bytes) + tc_held(&c->big_held.bytes);
        blocks += tc_held(&c->small.blocks) + tc_held(&c->mid.blocks) + tc_held(&c->big_held.blocks);
    }
    if (blocks_out) *blocks_out = blocks;
    return bytes;
}

static size_t home_held_locked(gpu_heap_t *h) { return held_by_caches(h, NULL); }

/* gpu_heap_stats (lock held): blocks held free by h's caches are counted as
 * cached, not live. */
static void home_stats_locked(gpu_heap_t *h, gpu_stats_t *s) {
    size_t blocks, bytes = held_by_caches(h, &blocks);
    s->cached_bytes = bytes;
    s->cached_blocks = blocks;
    s->live_bytes -= bytes < s->live_bytes ? bytes : s->live_bytes;
    s->live_blocks -= blocks < s->live_blocks ? blocks : s->live_blocks;
}

/* gpu_heap_trim and out of memory (lock held): this thread's cache of h gives
 * its blocks back now; the others are asked to at their next allocation. */
static void home_flush_locked(gpu_heap_t *h) {
    tc_home *home = home_find(h);
    if (!home) return;
    tcache *mine = tcache_mine(h);
    for (tcache *c = home->caches; c; c = c->next) {
        if (c != mine) {
            atomic_fetch_or_explicit(&c->flush_asked, TC_FLUSH_ALL, memory_order_relaxed);
            continue;
        }
        tcache_give_back_locked(h, c);
        atomic_store_explicit(&c->flush_asked, 0, memory_order_relaxed);
    }
}

/* The heap is about to map new memory (lock held): this thread's mid slots and
 * its large block (big.c) give their blocks back first, so that blocks kept for
 * reuse never make the heap grow, and — where the mapping would pass the heap's
 * physical budget — the other threads' caches that hold mid blocks or a large
 * one are asked to give them back at their next
 * allocation (a framework frees on one thread what its other threads allocate:
 * their kept blocks pin shared extents too; below the budget the heap may map
 * anyway). The small classes keep theirs (a granule's worth at most per class,
 * refilled in runs the heap carves). */
static bool home_room_locked(gpu_heap_t *h, bool past_budget) {
    tc_home *home = home_find(h);
    tcache *mine = tcache_mine(h);
    for (tcache *c = past_budget && home ? home->caches : NULL; c; c = c->next)
        if (c != mine && (atomic_load_explicit(&c->mid.blocks, memory_order_relaxed) ||
                          atomic_load_explicit(&c->big_held.blocks, memory_order_relaxed)))
            atomic_fetch_or_explicit(&c->flush_asked, TC_FLUSH_MID, memory_order_relaxed);
    return mine && tcache_give_back_mid_locked(h, mine);
}

static const heap_hooks home_hooks = {
    .closing = home_closing,
    .stats_locked = home_stats_locked,
    .flush_locked = home_flush_locked,
    .room_locked = home_room_locked,
    .held_locked = home_held_locked,
};

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
static bool hooks_ok;

static void hooks_register(void) { hooks_ok = heap_hooks_add(&home_hooks) == GPU_OK; }

tc_home *home_get(gpu_heap_t *h) {
    pthread_once(&hooks_once, hooks_register); /* before the first home: the heap must hear of it */
    if (!hooks_ok) return NULL;
    pthread_mutex_lock(&homes_lock);
    tc_home *home = home_find(h);
    if (!home && (home = home_with(0)) == NULL && (home = calloc(1, sizeof *home)) != NULL) {
        home->next = atomic_load_explicit(&homes, memory_order_relaxed);
        atomic_store_explicit(&homes, home, memory_order_release);
    }
    if (home) atomic_store_explicit(&home->serial, h->serial, memory_order_release);
    pthread_mutex_unlock(&homes_lock);
    return home;
}
