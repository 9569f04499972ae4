/*
 * resize.c — gpu_realloc: growing a block without copying it, and shrinking it
 * with its physical memory given back.
 *
 * Growing tries, in order:
 *   1. in place over idle memory right after the block (no driver call);
 *   2. in place over unmapped addresses right after it — its headroom or vacant
 *      VA — by mapping one new extent there;
 *   3. for a block that owns all its extents, a move by remapping: the same
 *      physical handles are mapped at a larger free range, one new extent is added
 *      for the growth, and the old addresses are unmapped after one fence (work
 *      issued before the call may still use them). No device byte is copied;
 *   4. otherwise (a small block sharing extents) a new block and a
 *      device-to-device copy.
 * Shrinking a block that owns its extents cuts it at the first extent boundary
 * past the new size and gives the whole extents behind it back to the driver.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/internal.h"

#define NOT_IN_PLACE 1 /* internal: in-place growth is impossible, not an error */

/* Grows b to need bytes over the idle block right after it. */
static int grow_over_idle(gpu_heap_t *h, block *b, block *n, size_t delta) {
    tlsf_remove(&h->idle, n);
    (void)block_carve(h, n, n->start, delta, &h->idle);
    block_absorb_next(h, b);
    h->live_bytes += delta;
    heap_note_live_peak_locked(h);
    block_claim_extents(h, b);
    return GPU_OK;
}

/* Grows b by mapping one new extent over the unmapped range n right after it. */
static int grow_over_unmapped(gpu_heap_t *h, block *b, block *n, size_t grow) {
    b->state = BLOCK_BUSY;
    int rc = heap_back_after_locked(h, n, grow, NULL);
    b->state = BLOCK_LIVE;
    if (rc != GPU_OK) return rc;
    block_absorb_next(h, b);
    h->live_bytes += grow;
    heap_note_live_peak_locked(h);
    block_claim_extents(h, b);
    return GPU_OK;
}

/* How much of the idle block n a block that owns its extents takes to grow by
 * delta: whole extents up to the first boundary past delta, or 0 when n ends
 * first. An owned block must keep ending at an extent boundary. */
static size_t owned_take(gpu_heap_t *h, const block *n, size_t delta) {
    uintptr_t x = n->start;
    while (x - n->start < delta && x < block_end(n)) {
        extent *e = extmap_find(&h->extents, x);
        x = e->va + e->size;
    }
    return x - n->start >= delta && x <= block_end(n) ? x - n->start : 0;
}

static int grow_in_place(gpu_heap_t *h, block *b, size_t need) {
    size_t delta = need - b->size;
    block *n = b->next_phys;
    if (n && n->state == BLOCK_IDLE && n->size >= delta) {
        size_t take = b->owned ? owned_take(h, n, delta) : delta;
        if (take) return grow_over_idle(h, b, n, take);
    }
    if (block_end(b) % h->gran || !n) return NOT_IN_PLACE;
    size_t grow = gh_align_up(delta, h->gran);
    if (n->state == BLOCK_HEADROOM && n->size < grow && n->next_phys && n->next_phys->state == BLOCK_VACANT) {
        block_release_free(h, n, BLOCK_VACANT); /* headroom and the vacant VA behind it become one */
        n = b->next_phys;
    }
    if ((n->state != BLOCK_VACANT && n->state != BLOCK_HEADROOM) || n->size < grow) return NOT_IN_PLACE;
    return grow_over_unmapped(h, b, n, grow);
}

/* The extents of b, in address order, into a new array. */
static extent **list_extents(gpu_heap_t *h, block *b, size_t *count) {
    size_t n = 0;
    for (uintptr_t va = b->start; va < block_end(b); n++) {
        extent *e = extmap_find(&h->extents, va);
        va = e->va + e->size;
    }
    extent **v = malloc(n * sizeof *v);
    if (!v) return NULL;
    n = 0;
    for (uintptr_t va = b->start; va < block_end(b); va = v[n - 1]->va + v[n - 1]->size) v[n++] = extmap_find(&h->extents, va);
    *count = n;
    return v;
}

/* Moves b (which owns all its extents) to a larger range by remapping. */
static int move_by_remap(gpu_heap_t *h, block *b, size_t need, block **out) {
    size_t total = gh_align_up(need, h->gran);
    block *nb;
    int rc = heap_carve_vacant_locked(h, total, h->gran, heap_headroom_for(h, total), &nb);
    if (rc != GPU_OK) return rc;
    size_t n = 0;
    extent **ext = list_extents(h, b, &n);
    if (!ext || extmap_prepare(&h->extents, nb->start, total) != GPU_OK) {
        free(ext);
        heap_headroom_release_locked(h, nb);
        block_release_free(h, nb, BLOCK_VACANT);
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory to move a block");
    }
    uintptr_t old = b->start, dst = nb->start;
    size_t old_size = b->size, mapped = 0;
    vmm_handle tail = 0;
    b->state = BLOCK_BUSY;
    heap_unlock(h);
    /* Map the same handles at the new range too (a handle may be mapped at several
     * addresses), then the growth; the old range still works until the fence. */
    for (; mapped < n; mapped++) {
        extent *e = ext[mapped];
        uintptr_t at = dst + (e->va - old);
        rc = vmm_call_map(&h->door, at, e->size, e->handle);
        if (rc != GPU_OK) break;
        rc = vmm_call_set_access(&h->door, at, e->size, (gpu_prot_t)e->prot);
        if (rc != GPU_OK) {
            (void)vmm_call_unmap_undo(&h->door, at, e->size);
            break;
        }
    }
    if (rc == GPU_OK && total > old_size) rc = handle_back(h, dst + old_size, total - old_size, &tail);
    if (rc == GPU_OK) { /* the fence releases what waits for one, too */
        heap_lock(h);
        rc = heap_fence_locked(h, 0);
        heap_unlock(h);
    }
    /* The old addresses go only if all of them can: a refused unmap maps the
     * parts already unmapped back, and the move fails with nothing changed. */
    size_t unmapped = 0;
    for (; rc == GPU_OK && unmapped < n; unmapped++)
        if ((rc = vmm_call_unmap(&h->door, ext[unmapped]->va, ext[unmapped]->size)) != GPU_OK) break;
    if (rc != GPU_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", vmm_error());
        for (size_t i = 0; i < unmapped; i++)
            (void)vmm_call_remap_undo(&h->door, ext[i]->va, ext[i]->size, ext[i]->handle, (gpu_prot_t)ext[i]->prot);
        if (tail) handle_discard(h, dst + old_size, total - old_size, tail);
        for (size_t i = 0; i < mapped; i++) (void)vmm_call_unmap_undo(&h->door, dst + (ext[i]->va - old), ext[i]->size);
        heap_lock(h);
        b->state = BLOCK_LIVE;
        heap_headroom_release_locked(h, nb);
        block_release_free(h, nb, BLOCK_VACANT);
        free(ext);
        return gh_note(rc, "moving a %zu-byte block by remapping: %s", old_size, why);
    }
    heap_lock(h);
    for (size_t i = 0; i < n; i++) {
        extmap_clear(&h->extents, ext[i]);
        ext[i]->va = dst + (ext[i]->va - old);
        (void)extmap_set(&h->extents, ext[i]); /* prepared above: cannot fail */
    }
    free(ext);
    if (tail) {
        if (!heap_extent_new_locked(h, dst + old_size, total - old_size, tail))
            gh_assert(0, "extmap_prepare made room for the growth extent");
    }
    blockmap_remove(&h->live, old);
    h->live_bytes -= old_size;
    h->live_blocks--;
    nb->owned = b->owned;
    heap_headroom_release_locked(h, b);
    block_release_free(h, b, BLOCK_VACANT);
    heap_make_live_locked(h, nb);
    *out = nb;
    return GPU_OK;
}

/* Moves b's contents into a new block by a device-to-device copy. */
static int move_by_copy(gpu_heap_t *h, block *b, size_t need, block **out) {
    b->state = BLOCK_BUSY; /* keeps a racing free away while the lock is dropped */
    block *nb;
    int rc = heap_alloc_locked(h, need, GH_QUANTUM, b->owned ? GPU_ALLOC_OWNED : 0, 0, &nb);
    if (rc != GPU_OK) {
        b->state = BLOCK_LIVE;
        return rc;
    }
    uintptr_t src = b->start, dst = nb->start;
    size_t len = b->size;
    heap_unlock(h);
    /* The copy runs on the legacy stream, which a capture of a blocking stream
     * would take in: wait until no capture is in progress. */
    rc = vmm_call_capturing(&h->door, 0) ? GPU_ERR_CAPTURING : vmm_call_copy(&h->door, dst, src, len);
    int rc2 = rc == GPU_OK && h->protected_extents ? heap_restore_access(h, b) : GPU_OK;
    heap_lock(h);
    b->state = BLOCK_LIVE;
    if (rc != GPU_OK || rc2 != GPU_OK) {
        rc = gh_note(rc != GPU_OK ? rc : rc2, "copying %zu bytes to grow a block: %s", len, vmm_error());
        blockmap_remove(&h->live, nb->start);
        heap_quarantine_locked(h, nb);
        return rc;
    }
    blockmap_remove(&h->live, src);
    heap_quarantine_locked(h, b);
    *out = nb;
    return GPU_OK;
}

/* Cuts b down to need bytes; whole extents behind the cut go back to the driver. */
static int shrink(gpu_heap_t *h, block *b, size_t need) {
    uintptr_t cut = b->start + need;
    bool own = block_owns_all(h, b);
    if (own) { /* cut at the first extent boundary at or after need */
        extent *e = extmap_find(&h->extents, cut - 1);
        cut = e->va + e->size;
    }
    if (cut >= block_end(b)) return GPU_OK;
    block_unclaim_extents(h, b); /* an extent b owned may straddle the cut */
    block *tail = block_split(h, b, cut - b->start);
    size_t tail_size = tail->size;
    h->live_blocks++; /* the tail is freed as a block of its own */
    heap_quarantine_locked(h, tail);
    block_claim_extents(h, b);
    if (!own) return GPU_OK;
    b->state = BLOCK_BUSY;
    int rc = heap_release_range_locked(h, cut, cut + tail_size);
    b->state = BLOCK_LIVE;
    /* The block is already shrunk; memory a refused fence or unmap kept mapped
     * stays idle for a later trim, as after gpu_free. Not the caller's error. */
    (void)rc;
    return GPU_OK;
}

int heap_realloc(gpu_heap_t *h, void *ptr, size_t size, void **out) {
    uintptr_t p = (uintptr_t)ptr;
    heap_lock(h);
    int rc = heap_is_running(h) ? heap_reserve_records(h) : heap_refusal(h);
    block *b = rc == GPU_OK ? heap_find_live(h, p, true) : NULL;
    if (rc != GPU_OK) {
    } else if (!b) {
        rc = gh_note(GPU_ERR_NOT_LIVE, "gpu_realloc(%p): not a live block of this heap", ptr);
    } else if (b->state == BLOCK_BUSY) {
        rc = gh_note(GPU_ERR_BUSY, "gpu_realloc(%p): the block is being changed by another thread", ptr);
    } else if (b->file) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_realloc(%p): a gpu_map_file mapping; end it with gpu_unmap_file", ptr);
    } else if (b->state == BLOCK_SPARSE) { /* in the address map too, but not a block to resize */
        rc = gh_note(GPU_ERR_INVALID, "gpu_realloc(%p): a gpu_reserve range: resize it with gpu_commit/gpu_decommit", ptr);
    } else {
        size_t need = gh_align_up(size ? size : 1, b->owned ? h->gran : GH_QUANTUM);
        if (!need || need > h->reserved) {
            rc = gh_note(GPU_ERR_INVALID, "gpu_realloc: size %zu is larger than the heap's reservation", size);
        } else if (need <= b->size) {
            rc = shrink(h, b, need);
            *out = ptr;
        } else {
            rc = grow_in_place(h, b, need);
            if (rc == GPU_OK) *out = ptr;
            if (rc == NOT_IN_PLACE) {
                block *nb = NULL;
                rc = block_owns_all(h, b) ? move_by_remap(h, b, need, &nb) : move_by_copy(h, b, need, &nb);
                if (rc == GPU_OK) *out = (void *)nb->start;
            }
        }
    }
    heap_unlock(h);
    return rc;
}
