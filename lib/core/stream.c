/*
 * stream.c — stream-ordered allocation: blocks freed on a stream.
 *
 * gpu_free_async(ptr, S) promises that the block's last use is ordered before the
 * free on S. So S itself may reuse the block at once — anything S runs later runs
 * after that use — while every other stream, and gpu_malloc, must wait until S has
 * actually reached the free. Each stream gets a pool: its own segregated-fit index
 * of the blocks freed on it, merged with each other as usual.
 *
 * Waiting is done with events, one per batch of frees. Blocks freed on S carry
 * S's current epoch. A free on S that finds no event of S in flight records one:
 * it covers every block freed on S so far, and S's epoch moves on. Events are
 * recorded only inside gpu_free_async, while the caller vouches that S is alive
 * (a program may destroy a stream right after freeing on it; recording on it later
 * would touch a dead handle). A miss elsewhere queries the events (never blocks)
 * and moves the blocks of completed ones to the idle index, where anyone can take
 * them; the next free on S then records the next event. So a stream that
 * allocates and frees on itself records one event and then touches the driver no
 * more, and the cost of an event is shared by a whole batch of frees. Blocks that
 * no event covers yet wait for the heap's device fence, like gpu_free's; out of
 * memory also waits for the pending events before the heap gives up. Recording
 * and reaping are events.c's, shared with the quarantine's sealed batches; a
 * pool's events carry the epoch they cover.
 */
#include <stdlib.h>

#include "core/internal.h"

stream_pool *stream_pool_of(gpu_heap_t *h, uintptr_t stream, bool create) {
    for (size_t i = 0; i < h->npools; i++)
        if (h->pools[i]->stream == stream) return h->pools[i];
    if (!create || h->npools == STREAM_POOLS_MAX) return NULL;
    stream_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->stream = stream;
    tlsf_init(&p->free);
    h->pools[h->npools++] = p;
    return p;
}

block *stream_take(gpu_heap_t *h, stream_pool *pool, size_t need) {
    block *b = tlsf_find(&pool->free, need);
    if (!b) return NULL;
    tlsf_remove(&pool->free, b);
    b = block_carve(h, b, b->start, need, &pool->free); /* the rest keeps pool and epoch */
    b->pool = NULL;
    heap_make_live_locked(h, b);
    return b;
}

void stream_put(gpu_heap_t *h, stream_pool *pool, block *b) {
    heap_unlive_locked(h, b);
    b->pool = pool;
    b->epoch = pool->epoch;
    block_release_free(h, b, BLOCK_STREAM);
}

/* Moves the blocks of pool whose epoch is at most upto to the idle index. */
typedef struct release_ctx {
    gpu_heap_t *h;
    uint32_t upto;
    bool any;
} release_ctx;

static bool release_one(block *b, void *arg) {
    release_ctx *c = arg;
    if (b->epoch <= c->upto) {
        tlsf_remove(&b->pool->free, b);
        block_release_free(c->h, b, BLOCK_IDLE);
        c->any = true;
    }
    return true;
}

/* Releases pool's blocks up to epoch upto; true when any moved. One walk: a
 * released block merges only with idle neighbours, never with the pool's. */
static bool release_upto(gpu_heap_t *h, stream_pool *pool, uint32_t upto) {
    release_ctx c = {.h = h, .upto = upto};
    tlsf_walk(&pool->free, release_one, &c);
    return c.any;
}

size_t stream_fence_begin_locked(gpu_heap_t *h, uint32_t *epochs) {
    for (size_t i = 0; i < h->npools; i++) epochs[i] = h->pools[i]->epoch++; /* later frees: a later epoch */
    return h->npools;
}

void stream_fence_end_locked(gpu_heap_t *h, const uint32_t *epochs, size_t n) {
    for (size_t i = 0; i < n; i++) (void)release_upto(h, h->pools[i], epochs[i]);
}

/* The pending events of pool as events.c sees them. */
static inline event_queue pending(stream_pool *pool) {
    return (event_queue){.e = pool->pending, .n = &pool->npending, .busy = &pool->busy, .cap = STREAM_PENDING_MAX};
}

/* events_reap_locked's answer for a completed event of pool (arg): the blocks
 * freed up to its epoch become idle. */
static bool epoch_done(gpu_heap_t *h, const event_entry *e, void *arg) {
    return release_upto(h, arg, (uint32_t)e->tag);
}

void stream_cover_locked(gpu_heap_t *h, stream_pool *pool) {
    if (pool->busy || pool->npending || !pool->free.blocks) return;
    uint32_t epoch = pool->epoch++;
    int rc = events_record_locked(h, pending(pool), pool->stream, EVENT_ON_STREAM, &(event_entry){.tag = epoch});
    if (rc != GPU_OK) return; /* e.g. a destroyed stream: its blocks wait for the next fence */
    h->stream_events++;
}

bool stream_reap_locked(gpu_heap_t *h, bool wait) {
    bool any = false;
    for (size_t i = 0; i < h->npools; i++) {
        stream_pool *pool = h->pools[i];
        if (pool->busy || !pool->npending) continue; /* another thread is at it, or nothing to ask */
        any |= events_reap_locked(h, pending(pool), wait, epoch_done, pool);
    }
    return any;
}

void stream_pools_close(gpu_heap_t *h) {
    for (size_t i = 0; i < h->npools; i++) {
        events_close(h, pending(h->pools[i]));
        free(h->pools[i]);
    }
    h->npools = 0;
}
