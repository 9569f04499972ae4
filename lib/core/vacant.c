/*
 * vacant.c — new memory: a range carved out of vacant VA and one new extent
 * mapped over it.
 *
 * A block of at least one granule gets an extent of its own, sized to it (the
 * driver charges per mapping, not per byte: DESIGN.md §2), with unmapped
 * headroom left after it so that realloc can usually grow it in place; smaller
 * blocks share extents that alloc.c sizes. The range is BUSY while the lock is
 * dropped for the driver call, so no other thread touches it; a failed mapping
 * gives it back to the vacant index.
 *
 * Past the physical budget a large request may instead extend an idle block
 * that ends where mapped memory ends: the rest is mapped right after it, so
 * only the shortfall is new memory. Such a tail is typically what is left of
 * a large extent after smaller blocks were cut from its front; it cannot be
 * given back while they live, and without this it sat idle while the request
 * was mapped whole elsewhere.
 */
#include "core/internal.h"

/* Carves [start, start+size) out of vacant VA at the given alignment, with
 * headroom kept free after it when there is room. The range comes back BUSY. */
int heap_carve_vacant_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out) {
    size_t slack = align > h->gran ? align - h->gran : 0, want = size + slack;
    if (want < size) return gh_note(GPU_ERR_INVALID, "size %zu overflows with alignment %zu", size, align);
    block *v = NULL;
    if (headroom && want + headroom > want) v = tlsf_find(&h->vacant, want + headroom);
    if (!v) {
        headroom = 0;
        v = tlsf_find(&h->vacant, want);
    }
    if (!v) return gh_note(GPU_ERR_OUT_OF_VA, "no free range of %zu bytes left in the heap's %zu-byte reservation", want, h->reserved);
    tlsf_remove(&h->vacant, v);
    uintptr_t start = gh_align_up(v->start, align < h->gran ? h->gran : align);
    size_t room = block_end(v) - start - size; /* free VA after the range */
    if (headroom > room) headroom = room;
    block *b = block_carve(h, v, start, size + headroom, &h->vacant);
    if (headroom) block_split(h, b, size)->state = BLOCK_HEADROOM;
    b->state = BLOCK_BUSY;
    *out = b;
    return GPU_OK;
}

int heap_back_at_locked(gpu_heap_t *h, block *range) {
    gh_assert(range->state == BLOCK_BUSY, "a range is marked BUSY before it is mapped");
    return extent_back_locked(h, range->start, range->size, NULL);
}

int heap_back_after_locked(gpu_heap_t *h, block *n, size_t grow) {
    block_state was = (block_state)n->state;
    gh_assert((was == BLOCK_VACANT || was == BLOCK_HEADROOM) && n->size >= grow, "unmapped VA, enough of it");
    if (was == BLOCK_VACANT) tlsf_remove(&h->vacant, n);
    block *rest = n->size > grow ? block_split(h, n, grow) : NULL; /* records reserved by the caller */
    if (rest && was == BLOCK_VACANT) tlsf_insert(&h->vacant, rest);
    n->state = BLOCK_BUSY;
    int rc = heap_back_at_locked(h, n);
    if (rc == GPU_OK) return GPU_OK;
    if (was == BLOCK_VACANT) {
        block_release_free(h, n, BLOCK_VACANT); /* merges with the rest again */
    } else {
        n->state = BLOCK_HEADROOM; /* the headroom stays whole */
        if (rest && rest->state == BLOCK_HEADROOM) block_absorb_next(h, n);
    }
    return rc;
}

int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out) {
    block *b;
    int rc = heap_carve_vacant_locked(h, size, align, headroom, &b);
    if (rc != GPU_OK) return rc;
    rc = heap_back_at_locked(h, b);
    if (rc != GPU_OK) {
        heap_headroom_release_locked(h, b);
        block_release_free(h, b, BLOCK_VACANT);
        return rc;
    }
    *out = b;
    return GPU_OK;
}

/* ---- an idle tail extended ------------------------------------------------------ */

/* The idle block that an extension would start from: the largest one that ends
 * where mapped memory ends (vacant VA right after it, room enough for the rest),
 * at the alignment, holding at least min bytes and less than need. */
typedef struct tail_pick {
    gpu_heap_t *h;
    size_t need, align, min;
    block *best;
} tail_pick;

static bool pick_tail(block *b, void *arg) {
    tail_pick *p = arg;
    const block *n = b->next_phys;
    if (b->size >= p->need || b->size < p->min || b->start % p->align || !n || n->state != BLOCK_VACANT) return true;
    if (n->size < gh_align_up(p->need - b->size, p->h->gran)) return true;
    if (!p->best || b->size > p->best->size) p->best = b;
    return true;
}

int heap_extend_tail_locked(gpu_heap_t *h, size_t need, size_t align, size_t min, block **out) {
    tail_pick p = {.h = h, .need = need, .align = align, .min = min};
    tlsf_walk(&h->idle, pick_tail, &p);
    if (!p.best) return GH_MISS;
    block *b = p.best;
    tlsf_remove(&h->idle, b);
    b->state = BLOCK_BUSY; /* untouched while the lock is dropped */
    int rc = heap_back_after_locked(h, b->next_phys, gh_align_up(need - b->size, h->gran));
    if (rc != GPU_OK) {
        block_release_free(h, b, BLOCK_IDLE);
        return rc;
    }
    block_absorb_next(h, b);
    *out = b;
    return GPU_OK;
}

/* Headroom left unmapped after a block with its own extent: as much again, up to
 * 1/64 of the reservation. */
size_t heap_headroom_for(const gpu_heap_t *h, size_t size) {
    size_t cap = h->reserved / 64;
    return size < cap ? size : cap;
}
