/*
 * protect.c — access control on ranges of a live block.
 *
 * The driver sets access per mapping, whole mappings only (DESIGN.md §3), and a
 * mapping here is an extent. So protection works on ranges made of whole extents
 * that one live block owns: blocks from gpu_malloc_flags(GPU_ALLOC_OWNED) and
 * blocks of a granule or more that got extents of their own. The extent map finds
 * the owner from any extent boundary inside the block, so a caller may protect a
 * block's tail as well as its head. The committed extents of a gpu_reserve range
 * are owned by it, so the same works there. Anything else is refused and changes
 * nothing.
 */
#include "core/internal.h"

int heap_protect(gpu_heap_t *h, void *ptr, size_t size, gpu_prot_t prot) {
    uintptr_t p = (uintptr_t)ptr;
    size_t len = gh_align_up(size, h->gran);
    if (!len || p + len < p) return gh_note(GPU_ERR_INVALID, "gpu_protect: size %zu overflows", size);
    heap_lock(h);
    if (!heap_is_running(h)) {
        int rc = heap_refusal(h);
        heap_unlock(h);
        return rc;
    }
    extent *e = extmap_find(&h->extents, p);
    block *b = e ? extent_owner(e) : NULL;
    /* A block a thread cache handed out becomes the heap's alone, so that its free
     * goes to the heap, which restores access; one a cache holds free is not live. */
    if (b && b->state == BLOCK_LIVE && heap_find_live(h, b->start, true) != b) b = NULL;
    int rc = GPU_OK;
    bool sparse = b && b->state == BLOCK_SPARSE;
    if (!e || e->va != p || !b || (b->state != BLOCK_LIVE && !sparse) || (sparse && b->busy)) {
        rc = gh_note(GPU_ERR_NOT_WHOLE_EXTENT,
                     "gpu_protect(%p): not the start of an extent owned by one live block "
                     "(allocate with GPU_ALLOC_OWNED to protect a block)", ptr);
    } else if (p + len > block_end(b)) {
        rc = gh_note(GPU_ERR_NOT_WHOLE_EXTENT, "gpu_protect(%p, %zu): the range runs past its block (%zu bytes)",
                     ptr, size, b->size);
    } else {
        for (uintptr_t va = p; va < p + len; va = e->va + e->size) {
            e = extmap_find(&h->extents, va);
            if (!e) {
                rc = gh_note(GPU_ERR_NOT_WHOLE_EXTENT, "gpu_protect(%p, %zu): %#lx is not committed", ptr, size,
                             (unsigned long)va);
                break;
            }
            if (extent_owner(e) != b || e->va + e->size > p + len) {
                rc = gh_note(GPU_ERR_NOT_WHOLE_EXTENT,
                             "gpu_protect(%p, %zu): the range cuts the extent at %#lx (%zu bytes)", ptr, size,
                             (unsigned long)e->va, e->size);
                break;
            }
        }
    }
    if (rc != GPU_OK) {
        heap_unlock(h);
        return rc;
    }
    /* Keep a racing free (or decommit) away while the lock is dropped. */
    if (sparse)
        b->busy = 1;
    else
        b->state = BLOCK_BUSY;
    heap_unlock(h);
    rc = vmm_call_set_access(&h->door, p, len, prot);
    heap_lock(h);
    if (rc == GPU_OK) {
        for (uintptr_t va = p; va < p + len; va = e->va + e->size) {
            e = extmap_find(&h->extents, va);
            h->protected_extents += (prot != GPU_PROT_READ_WRITE) - (e->prot != GPU_PROT_READ_WRITE);
            e->prot = (uint8_t)prot;
        }
    } else {
        rc = gh_note(rc, "gpu_protect(%p, %zu): %s", ptr, size, vmm_error());
    }
    if (sparse)
        b->busy = 0;
    else
        b->state = BLOCK_LIVE;
    heap_unlock(h);
    return rc;
}
