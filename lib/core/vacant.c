/*
 * vacant.c — new memory: a range carved out of vacant VA and new extents
 * mapped over it.
 *
 * A block of at least one granule gets an extent of its own, sized to it (the
 * driver charges per mapping, not per byte: DESIGN.md §2) — or, where the
 * caller asks, several extents of a chunk size each — with unmapped
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

/* Backing a range in chunks (chunk > 0 and the range at least two of them):
 * each chunk an extent of its own, at most BACK_CHUNKS_MAX of them (larger
 * chunks past that), the last one taking the rest so that no sliver is left.
 * alloc.c says when it pays. */
#define BACK_CHUNKS_MAX 16

static size_t chunk_for(const gpu_heap_t *h, size_t size, size_t chunk) {
    if (!chunk) return size;
    chunk = gh_align_up(chunk, h->gran);
    if (size / chunk >= BACK_CHUNKS_MAX) chunk = gh_align_up(size / (BACK_CHUNKS_MAX - 1), h->gran);
    return chunk;
}

int heap_back_at_locked(gpu_heap_t *h, block *range, size_t chunk) {
    gh_assert(range->state == BLOCK_BUSY, "a range is marked BUSY before it is mapped");
    chunk = chunk_for(h, range->size, chunk);
    size_t done = 0;
    if (!pool_reserve(&h->extent_pool, range->size / chunk + 1))
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for extent records");
    int rc = GPU_OK;
    while (done < range->size && rc == GPU_OK) {
        size_t left = range->size - done, piece = left < 2 * chunk ? left : chunk; /* no sliver at the end */
        rc = extent_back_locked(h, range->start + done, piece, NULL);
        if (rc == GPU_OK) done += piece;
    }
    /* A refused chunk: the ones backed before it go back (the range stays BUSY,
     * the lock is dropped around each). */
    while (rc != GPU_OK && done) {
        extent *e = extmap_find(&h->extents, range->start + done - 1);
        gh_assert(e && e->va >= range->start, "every chunk backed so far is an extent in the books");
        uintptr_t va = e->va;
        size_t size = e->size;
        vmm_handle hd = e->handle;
        heap_extent_drop_locked(h, e);
        heap_unlock(h);
        handle_discard(h, va, size, hd);
        heap_lock(h);
        done -= size;
    }
    return rc;
}

int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, size_t chunk, block **out) {
    block *b;
    int rc = heap_carve_vacant_locked(h, size, align, headroom, &b);
    if (rc != GPU_OK) return rc;
    rc = heap_back_at_locked(h, b, chunk);
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
