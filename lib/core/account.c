/*
 * account.c — the books a block's life changes: live bytes and blocks (with
 * their peak), mapped bytes and extents, and a block's way out of LIVE.
 *
 * A block becomes LIVE in one place (heap_make_live_locked: into the address
 * map, counted, owning the extents it covers whole) and stops being live in one
 * (heap_unlive_locked, its inverse). A freed block does not go back to the idle
 * index at once: GPU work issued before the free may still use it (cudaFree
 * syncs the device; gpuheap does not sync per free), so it waits in the
 * quarantine until an event or a fence shows that work finished (quarantine.c,
 * fence.c) — unless the caller knows that no work can use it. Extent records are
 * made and dropped here too, so mapped bytes and the extent count change in one
 * place each (a paused extent's bytes count as paused_bytes instead: pause.c).
 * Both ways clear the block's export token, so that a handle other processes
 * hold names one life of a block and never the next (export.c).
 */
#include <string.h>

#include "core/internal.h"

void heap_mapped_add(gpu_heap_t *h, size_t bytes) {
    h->mapped_bytes += bytes;
    size_t held = h->mapped_bytes + h->spare_bytes; /* physical memory held, mapped or kept for a moment */
    if (held > h->peak_mapped_bytes) h->peak_mapped_bytes = held;
}

extent *heap_extent_new_locked(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle handle) {
    extent *e = pool_get(&h->extent_pool);
    gh_assert(e, "reserve_records made an extent record available");
    memset(e, 0, sizeof *e);
    e->va = va;
    e->size = size;
    e->handle = handle;
    e->prot = GPU_PROT_READ_WRITE;
    if (extmap_set(&h->extents, e) != GPU_OK) {
        pool_put(&h->extent_pool, e);
        return NULL;
    }
    heap_mapped_add(h, size);
    h->nextents++;
    return e;
}

void heap_extent_drop_locked(gpu_heap_t *h, extent *e) {
    gh_assert(!e->moving, "no one drops an extent a pause or resume holds");
    extmap_clear(&h->extents, e);
    if (e->paused) { /* given back by gpu_pause already: only its record goes */
        h->paused_bytes -= e->size;
        h->npaused--;
    } else {
        h->mapped_bytes -= e->size;
        h->nextents--;
    }
    if (e->prot != GPU_PROT_READ_WRITE) h->protected_extents--;
    pool_put(&h->extent_pool, e);
}

/* The live peak is the program's: blocks the thread caches hold free are live
 * in these books, and counted in the peak they raised the physical budget with
 * them — a ring of 16 MiB blocks took the recorded PyTorch trace from 1.092x its
 * live peak to 1.118-1.134x, the same with the caches' bytes left out. Asked
 * only when the books' count passes the peak (it is never below the
 * program's), so the hook's walk over the caches comes with growth, not with
 * every block. */
void heap_note_live_peak_locked(gpu_heap_t *h) {
    if (h->live_bytes <= h->peak_live_bytes) return;
    size_t held = hooks_held_locked(h);
    size_t program = h->live_bytes > held ? h->live_bytes - held : 0;
    if (program > h->peak_live_bytes) h->peak_live_bytes = program;
}

void heap_make_live_locked(gpu_heap_t *h, block *b) {
    b->state = BLOCK_LIVE;
    b->export_token = 0; /* a block's exports end with its life, and a record may come back with an old one */
    blockmap_insert(&h->live, b);
    h->live_bytes += b->size;
    h->live_blocks++;
    heap_note_live_peak_locked(h);
    if (b->size >= h->gran) block_claim_extents(h, b); /* a smaller block holds no extent whole */
}

/* Gives the headroom after b back to the vacant index. */
void heap_headroom_release_locked(gpu_heap_t *h, block *b) {
    block *n = b->next_phys;
    if (n && n->state == BLOCK_HEADROOM) block_release_free(h, n, BLOCK_VACANT);
}

void heap_unlive_locked(gpu_heap_t *h, block *b) {
    h->live_bytes -= b->size;
    h->live_blocks--;
    b->claims = 0; /* its extents keep b as their owner, stale from now on (extent_owner) */
    heap_headroom_release_locked(h, b);
    b->owned = 0;
    b->export_token = 0; /* a handle of a freed block is refused (export.c) */
    tc_set(b, TC_NONE);
}

void heap_quarantine_onto_locked(gpu_heap_t *h, block *b, block **list) {
    heap_unlive_locked(h, b);
    b->state = BLOCK_QUARANTINE;
    b->prev_free = NULL;
    b->next_free = *list;
    *list = b;
    h->quarantine_bytes += b->size;
    h->quarantine_blocks++;
}

void heap_quarantine_locked(gpu_heap_t *h, block *b) {
    heap_quarantine_onto_locked(h, b, &h->quarantine);
    h->quarantined++;
}

void heap_retire_locked(gpu_heap_t *h, block *b, bool safe) {
    if (!safe) {
        heap_quarantine_locked(h, b);
        return;
    }
    heap_unlive_locked(h, b);
    block_release_free(h, b, BLOCK_IDLE);
}
