/*
 * lookup.c — finding live blocks: from a block's first byte (heap_find_live,
 * which every call on a pointer starts with, and the small calls that need
 * nothing more: usable size, marking a file mapping), and from any address
 * inside a block, for interior pointers.
 *
 * The address map (blockmap.c) finds a block only from its first byte, which is
 * all gpu_free needs (a block a thread cache holds free is in the map too, and
 * is not live to a caller). The driver's range queries need more: the
 * interposer must answer cuMemGetAddressRange and the RANGE_START_ADDR /
 * RANGE_SIZE pointer attributes for any address inside an allocation, with the
 * bounds of the block the program asked for — not of the extent behind it,
 * which is what the driver itself would report for memory mapped through the
 * virtual memory API.
 *
 * Two facts make this cheap without a second index:
 *  - an extent wholly inside a live block records that block as its owner, so
 *    an address in a large block (which owns most of its extents) is answered
 *    from the extent map in O(1);
 *  - blocks tile the reservation, so the nearest live block start at or below
 *    the address is the only candidate: scanning down one quantum at a time,
 *    the first start the address map knows either contains the address or
 *    proves that no live block does. Crossing into an extent with an owner
 *    answers at once; an unmapped granule ends the search (live blocks are
 *    mapped). The scan is bounded by the distance to the block's start inside
 *    shared extents, which hold blocks smaller than one granule, or by the
 *    extent's size when the address lies in free memory.
 *
 * The heap lock is held throughout; no driver call is made.
 */
#include "core/internal.h"

/* True when b is a block the caller owns (live, being changed for its owner, or
 * a reserved sparse range) and p lies inside it. A block a thread cache holds
 * free is in the books as live, and is not the caller's. */
static bool block_holds(const block *b, uintptr_t p) {
    return b && b->start <= p && p < block_end(b) && b->state != BLOCK_QUARANTINE &&
           tc_state(atomic_load_explicit(&((block *)b)->tc, memory_order_acquire)) != TC_FREE;
}

int heap_block_containing(gpu_heap_t *h, uintptr_t p, uintptr_t *start, size_t *size) {
    if (!heap_owns(h, p)) return gh_note(GPU_ERR_NOT_OWNED, "%#lx is not in this heap", (unsigned long)p);
    heap_lock(h);
    extent *e = extmap_find(&h->extents, p);
    const block *found = NULL;
    block *o = e ? extent_owner(e) : NULL;
    if (o && block_holds(o, p)) found = o;
    for (uintptr_t a = gh_align_down(p, GH_QUANTUM); !found && e && a >= h->base; a -= GH_QUANTUM) {
        if (a < e->va) { /* crossed into the extent below */
            e = extmap_find(&h->extents, a);
            if (!e) break;
            if ((o = extent_owner(e)) != NULL) {
                if (block_holds(o, p)) found = o;
                break;
            }
        }
        block *b = blockmap_find(&h->live, a);
        if (b) {
            if (block_holds(b, p)) found = b;
            break;
        }
        if (a == h->base) break;
    }
    if (found) {
        *start = found->start;
        *size = found->size;
    }
    heap_unlock(h);
    return found ? GPU_OK : gh_note(GPU_ERR_NOT_LIVE, "%#lx is not inside a live block", (unsigned long)p);
}

block *heap_find_live(gpu_heap_t *h, uintptr_t p, bool take) {
    block *b = blockmap_find(&h->live, p);
    if (!b || b->state != BLOCK_LIVE) return b;
    uint64_t w = atomic_load_explicit(&b->tc, memory_order_acquire);
    while (tc_state(w) != TC_NONE) {
        if (tc_state(w) == TC_FREE) return NULL; /* a thread cache holds it free */
        if (!take) return b;
        if (atomic_compare_exchange_weak_explicit(&b->tc, &w, tc_with(w, TC_NONE), memory_order_acq_rel, memory_order_acquire))
            return b;
    }
    return b;
}

int heap_mark_file(gpu_heap_t *h, void *ptr, bool on) {
    heap_lock(h);
    block *b = heap_find_live(h, (uintptr_t)ptr, true);
    if (b) b->file = on;
    heap_unlock(h);
    return b ? GPU_OK : gh_note(GPU_ERR_NOT_LIVE, "%p is not a live block of this heap", ptr);
}

int heap_usable_size(gpu_heap_t *h, const void *ptr, size_t *out) {
    heap_lock(h);
    block *b = heap_find_live(h, (uintptr_t)ptr, false);
    size_t size = b ? b->size : 0;
    bool sparse = b && b->state == BLOCK_SPARSE;
    heap_unlock(h);
    if (!b) return gh_note(GPU_ERR_NOT_LIVE, "%p is not a live block of this heap", ptr);
    if (sparse) return gh_note(GPU_ERR_INVALID, "%p is a gpu_reserve range, not a block", ptr);
    *out = size;
    return GPU_OK;
}
