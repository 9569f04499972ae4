/*
 * free.c — gpu_free and gpu_free_async: a live block leaves the address map for
 * the quarantine, or for the pool of the stream it was freed on.
 *
 * A freed block is not reusable at once (account.c says why). Before it leaves
 * the map, extents that gpu_protect made read-only or inaccessible get read-write
 * access back, so that idle memory is always read-write. Past the release
 * threshold a free also gives idle extents back (trim.c). A block of a paused
 * heap (pause.c) is freed in the books alone; a free while another thread
 * pauses or resumes the heap waits for it.
 */
#include "core/internal.h"

/* Sets every non-read-write extent of b back to read-write before the memory can
 * be reused. Called with b BUSY and the lock dropped. */
int heap_restore_access(gpu_heap_t *h, block *b) {
    int rc = GPU_OK;
    for (uintptr_t va = b->start; va < block_end(b);) {
        heap_lock(h);
        extent *e = extmap_find(&h->extents, va);
        bool owned = e && extent_owner(e) == b;
        uintptr_t eva = e ? e->va : 0;
        size_t esize = e ? e->size : h->gran;
        bool protected_ = owned && e->prot != GPU_PROT_READ_WRITE;
        if (protected_ && e->paused) { /* gpu_pause gave it back: resume maps it read-write */
            e->prot = GPU_PROT_READ_WRITE;
            h->protected_extents--;
            protected_ = false;
        }
        heap_unlock(h);
        if (protected_) {
            int r = vmm_call_set_access(&h->door, eva, esize, GPU_PROT_READ_WRITE);
            heap_lock(h);
            if (r == GPU_OK) {
                e->prot = GPU_PROT_READ_WRITE;
                h->protected_extents--;
            } else {
                rc = r;
            }
            heap_unlock(h);
        }
        va = e ? eva + esize : gh_align_down(va, h->gran) + h->gran;
    }
    return rc;
}

/* Takes the live block at ptr out of the address map, with read-write access
 * restored, ready to be freed. Lock held on entry and exit. */
static int unmap_live(gpu_heap_t *h, void *ptr, block **out) {
    uintptr_t p = (uintptr_t)ptr;
    block *b = heap_find_live(h, p, true);
    if (!b) return gh_note(GPU_ERR_NOT_LIVE, "%p is not a live block of this heap (double free or interior pointer)", ptr);
    if (b->state == BLOCK_SPARSE)
        return gh_note(GPU_ERR_INVALID, "%p is a gpu_reserve range: give it back with gpu_release", ptr);
    if (b->state == BLOCK_BUSY) return gh_note(GPU_ERR_BUSY, "%p is being changed by another thread", ptr);
    if (b->file) return gh_note(GPU_ERR_INVALID, "%p is a gpu_map_file mapping; end it with gpu_unmap_file", ptr);
    if (h->protected_extents && b->size >= h->gran) {
        b->state = BLOCK_BUSY;
        heap_unlock(h);
        int rc = heap_restore_access(h, b);
        heap_lock(h);
        b->state = BLOCK_LIVE;
        if (rc != GPU_OK) return gh_note(rc, "restoring read-write access before freeing %p: %s", ptr, vmm_error());
    }
    blockmap_remove(&h->live, p);
    heap_note_free_locked(h, b->size);
    *out = b;
    return GPU_OK;
}

/* A freed block at least this large passes the quarantine's smallest budget
 * alone (alloc.c): when no idle memory could serve the same size, the
 * allocation that reuses it will seal and want that cover at once, so its free
 * records the event early (quarantine.c). With idle memory left, the next miss
 * is further off and more frees would find the early event stale. */
#define EARLY_COVER_MIN ((size_t)64 << 20)

int heap_free(gpu_heap_t *h, void *ptr) {
    heap_lock(h);
    heap_settle_locked(h);
    block *b;
    int rc = unmap_live(h, ptr, &b);
    if (rc == GPU_OK) {
        size_t size = b->size;
        heap_quarantine_locked(h, b);
        if (h->cfg.release_threshold != SIZE_MAX && h->idle.bytes + h->quarantine_bytes > h->cfg.release_threshold)
            (void)heap_trim_locked(h, h->cfg.release_threshold); /* the free succeeded; a failed trim is retried at the next one */
        if (size >= EARLY_COVER_MIN && h->idle.bytes < size) quarantine_early_locked(h);
    }
    heap_unlock(h);
    return rc;
}

int heap_free_async(gpu_heap_t *h, void *ptr, uintptr_t stream) {
    /* A free inside a capture would let a later allocation reuse memory that the
     * graph's replays write. Asked before the lock: it is a driver query. */
    if (vmm_call_stream_capturing(&h->door, stream))
        return gh_note(GPU_ERR_CAPTURING, "gpu_free_async(%p): stream %#lx is being captured; free after the graph's last launch",
                       ptr, (unsigned long)stream);
    heap_lock(h);
    heap_settle_locked(h);
    block *b;
    int rc = unmap_live(h, ptr, &b);
    if (rc == GPU_OK) {
        stream_pool *pool = stream_pool_of(h, stream, true);
        if (pool) {
            stream_put(h, pool, b);
            stream_cover_locked(h, pool);
        } else
            heap_quarantine_locked(h, b); /* too many streams: the device fence keeps it safe */
    }
    heap_unlock(h);
    return rc;
}
