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
 * memory also waits for the pending events before the heap gives up.
 */
#include <stdlib.h>
#include <string.h>

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

/* Drops the pending events of pool that completed, releasing what they cover.
 * Lock held on entry and exit; dropped around the queries. */
static bool reap_pool(gpu_heap_t *h, stream_pool *pool, bool wait) {
    bool any = false;
    pool->busy = true;
    while (pool->npending) {
        vmm_event ev = pool->pending[0].ev;
        uint32_t epoch = pool->pending[0].epoch;
        heap_unlock(h);
        int rc = wait ? vmm_call_event_wait(&h->door, ev) : vmm_call_event_query(&h->door, ev);
        if (rc == GPU_OK) vmm_call_event_release(&h->door, ev);
        heap_lock(h);
        if (rc != GPU_OK) break; /* not yet (or broken: retried later, and the fence covers it) */
        memmove(&pool->pending[0], &pool->pending[1], (pool->npending - 1) * sizeof pool->pending[0]);
        pool->npending--;
        any |= release_upto(h, pool, epoch);
    }
    pool->busy = false;
    return any;
}

void stream_cover_locked(gpu_heap_t *h, stream_pool *pool) {
    if (pool->busy || pool->npending || !pool->free.blocks) return;
    uint32_t epoch = pool->epoch++;
    pool->busy = true;
    heap_unlock(h);
    vmm_event ev;
    int rc = vmm_call_event_record(&h->door, pool->stream, &ev);
    heap_lock(h);
    pool->busy = false;
    if (rc != GPU_OK) return; /* e.g. a destroyed stream: its blocks wait for the next fence */
    pool->pending[pool->npending].ev = ev;
    pool->pending[pool->npending].epoch = epoch;
    pool->npending++;
    h->stream_events++;
}

bool stream_reap_locked(gpu_heap_t *h, bool wait) {
    bool any = false;
    for (size_t i = 0; i < h->npools; i++) {
        stream_pool *pool = h->pools[i];
        if (pool->busy || !pool->npending) continue; /* another thread is at it, or nothing to ask */
        any |= reap_pool(h, pool, wait);
    }
    return any;
}

void stream_pools_close(gpu_heap_t *h) {
    for (size_t i = 0; i < h->npools; i++) {
        stream_pool *pool = h->pools[i];
        for (unsigned k = 0; k < pool->npending; k++) vmm_call_event_release(&h->door, pool->pending[k].ev);
        free(pool);
    }
    h->npools = 0;
}
