/*
 * block.c — block records and the few moves the heap makes with them: split,
 * carve, merge, index, and claiming the extents a block covers.
 *
 * Every byte of a heap's reservation lies in exactly one block; blocks are linked
 * in address order (prev_phys/next_phys) so that a freed block meets its
 * neighbours in O(1). Free blocks come in two kinds that never merge with each
 * other: IDLE (mapped, reusable at once) and VACANT (address space with nothing
 * behind it). Merges keep the lower record and splits keep the front in the
 * original record, so the record at the reservation's base never changes.
 * Every cut of a piece out of a free block — new VA, idle memory taken, an extent
 * given back, a stream's block reused — is one carve, so the pieces left over
 * always land in their index in the same order.
 *
 * Records come from slab pools, never from the memory they describe: device memory
 * cannot hold headers (jemalloc's out-of-band extent records are the model).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

#define POOL_SLAB_RECORDS 1024

void pool_init(record_pool *p, size_t record_size) {
    memset(p, 0, sizeof *p);
    p->size = gh_align_up(record_size < sizeof(void *) ? sizeof(void *) : record_size, 64);
}

/* The next record of the slab being carved, zeroed (a block's tc generation
 * starts at 0; a record's later lives keep theirs). */
static void *bump_take(record_pool *p) {
    void *r = p->bump;
    memset(r, 0, p->size);
    p->bump += p->size;
    p->bump_left--;
    return r;
}

/* Adds a slab of records to the free list. */
static bool pool_grow(record_pool *p) {
    if (p->nslabs == p->cap_slabs) {
        size_t cap = p->cap_slabs ? p->cap_slabs * 2 : 16;
        void **slabs = realloc(p->slabs, cap * sizeof *slabs);
        if (!slabs) return false;
        p->slabs = slabs;
        p->cap_slabs = cap;
    }
    /* Not zeroed here: calloc clears the whole slab whenever malloc hands back
     * memory it had before (a heap made after another was closed: ~20 µs on a
     * cold heap's first allocation). Each record is zeroed as it leaves the
     * bump region instead (a block's tc generation starts at 0). Aligned as the
     * records ask (a block is two cache lines); the slab list keeps malloc's
     * pointer. */
    char *raw = malloc(p->size * POOL_SLAB_RECORDS + 64);
    if (!raw) return false;
    char *slab = (char *)gh_align_up((uintptr_t)raw, 64);
    p->slabs[p->nslabs++] = raw;
    /* Records are carved from the slab as they are needed, so that its pages
     * are touched one by one rather than all at once (a cold heap's first
     * allocation paid for 32 page faults). A slab left uncarved is dropped
     * into the free list first. */
    while (p->bump_left) {
        void *r = bump_take(p);
        *(void **)r = p->free_list;
        p->free_list = r;
    }
    p->bump = slab;
    p->bump_left = POOL_SLAB_RECORDS;
    p->nfree += POOL_SLAB_RECORDS;
    return true;
}

bool pool_reserve(record_pool *p, size_t n) {
    while (p->nfree < n)
        if (!pool_grow(p)) return false;
    return true;
}

void *pool_get(record_pool *p) {
    if (!p->free_list && !p->bump_left && !pool_grow(p)) return NULL;
    void *r = p->free_list;
    if (r) p->free_list = *(void **)r;
    else r = bump_take(p);
    p->in_use++;
    p->nfree--;
    return r;
}

void pool_put(record_pool *p, void *r) {
    *(void **)r = p->free_list;
    p->free_list = r;
    p->in_use--;
    p->nfree++;
}

void pool_destroy(record_pool *p) {
    for (size_t i = 0; i < p->nslabs; i++) free(p->slabs[i]);
    free(p->slabs);
    memset(p, 0, sizeof *p);
}

block *block_new(gpu_heap_t *h, uintptr_t start, size_t size, block_state state) {
    block *b = pool_get(&h->block_pool);
    if (!b) return NULL;
    /* Everything but tc: a thread cache may still hold this record's old address
     * with its generation, which must not come round again. */
    memset(b, 0, offsetof(block, tc));
    tc_set(b, TC_NONE);
    b->start = start;
    b->size = size;
    b->state = (uint8_t)state;
    return b;
}

block *block_split(gpu_heap_t *h, block *b, size_t size) {
    gh_assert(size > 0 && size < b->size && size % GH_QUANTUM == 0, "split inside the block at a quantum");
    block *r = block_new(h, b->start + size, b->size - size, (block_state)b->state);
    if (!r) return NULL;
    r->pool = b->pool; /* a stream-freed remainder stays in its stream's pool, */
    r->epoch = b->epoch; /* waiting for the same event */
    r->order_epoch = b->order_epoch; /* an idle remainder, for the same release */
    b->size = size;
    r->prev_phys = b;
    r->next_phys = b->next_phys;
    if (b->next_phys) b->next_phys->prev_phys = r;
    b->next_phys = r;
    return r;
}

block *block_carve(gpu_heap_t *h, block *b, uintptr_t at, size_t size, tlsf_index *index) {
    gh_assert(at >= b->start && size > 0 && size <= block_end(b) - at, "the piece lies inside the block");
    if (at != b->start) {
        block *piece = block_split(h, b, at - b->start);
        gh_assert(piece, "records are reserved before a carve");
        tlsf_insert(index, b);
        b = piece;
    }
    if (b->size > size) {
        block *rest = block_split(h, b, size);
        gh_assert(rest, "records are reserved before a carve");
        tlsf_insert(index, rest);
    }
    return b;
}

/* The index that holds free block b (IDLE, VACANT, or STREAM in its pool). */
static tlsf_index *index_of(gpu_heap_t *h, const block *b) {
    switch (b->state) {
    case BLOCK_IDLE: return &h->idle;
    case BLOCK_VACANT: return &h->vacant;
    case BLOCK_STREAM: return &b->pool->free;
    }
    gh_assert(0, "only IDLE, VACANT and STREAM blocks are indexed");
    return NULL;
}

void block_unindex(gpu_heap_t *h, block *b) { tlsf_remove(index_of(h, b), b); }

/* True when n may merge with b: the same free state (and, freed on streams, the same stream). */
static inline bool mergeable(const block *b, const block *n) {
    return n->state == b->state && (b->state != BLOCK_STREAM || n->pool == b->pool);
}

void block_absorb_next(gpu_heap_t *h, block *b) {
    block *n = b->next_phys;
    b->size += n->size;
    b->next_phys = n->next_phys;
    if (n->next_phys) n->next_phys->prev_phys = b;
    pool_put(&h->block_pool, n);
}

block *block_release_free(gpu_heap_t *h, block *b, block_state state) {
    b->state = (uint8_t)state;
    /* Idle while a legacy-order release may still run: work issued before its
     * free is before the last release (it was made idle by one, or by a fence
     * or an event after it), so that release's being done makes it unmappable. */
    b->order_epoch = state == BLOCK_IDLE && heap_order_owed(h) ? h->order_releases : 0;
    b->owned = 0;
    b->claims = 0; /* free: its extents' owner pointers, if they name it, are stale (extent_owner) */
    if (state != BLOCK_STREAM) b->pool = NULL;
    tlsf_index *t = index_of(h, b);
    block *n = b->next_phys;
    if (n && mergeable(b, n)) {
        tlsf_remove(t, n);
        if (n->epoch > b->epoch) b->epoch = n->epoch; /* merged stream blocks wait for the later free */
        if (n->order_epoch > b->order_epoch) b->order_epoch = n->order_epoch; /* merged idle ones for the later release */
        block_absorb_next(h, b);
    }
    block *p = b->prev_phys;
    if (p && mergeable(b, p)) {
        tlsf_remove(t, p);
        if (b->epoch > p->epoch) p->epoch = b->epoch;
        if (b->order_epoch > p->order_epoch) p->order_epoch = b->order_epoch;
        block_absorb_next(h, p);
        b = p;
    }
    tlsf_insert(t, b);
    return b;
}

/* Sets owner on every extent lying wholly inside b. */
static void set_owner(gpu_heap_t *h, block *b, block *owner) {
    if (b->size < h->gran) return;
    uintptr_t end = block_end(b);
    for (uintptr_t va = gh_align_down(b->start, h->gran); va < end;) {
        extent *e = extmap_find(&h->extents, va);
        gh_assert(e, "every byte of a used block is mapped");
        if (e->va >= b->start && e->va + e->size <= end) e->owner = owner;
        va = e->va + e->size;
    }
}

void block_claim_extents(gpu_heap_t *h, block *b) {
    set_owner(h, b, b);
    b->claims = 1;
}
void block_unclaim_extents(gpu_heap_t *h, block *b) {
    set_owner(h, b, NULL);
    b->claims = 0;
}

bool block_owns_all(gpu_heap_t *h, const block *b) {
    uintptr_t end = block_end(b);
    extent *e = extmap_find(&h->extents, b->start);
    if (!e || e->va != b->start) return false;
    for (uintptr_t va = b->start; va < end; va = e->va + e->size) {
        e = extmap_find(&h->extents, va);
        if (!e || extent_owner(e) != b || e->va + e->size > end) return false;
    }
    return true;
}
