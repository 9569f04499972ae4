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

/* Headroom left unmapped after a block with its own extent: as much again, up to
 * 1/64 of the reservation. */
size_t heap_headroom_for(const gpu_heap_t *h, size_t size) {
    size_t cap = h->reserved / 64;
    return size < cap ? size : cap;
}
