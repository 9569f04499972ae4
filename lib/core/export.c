/*
 * export.c — the heap's side of sharing a block with other processes: the
 * block's export token, and the extents behind it held still while their
 * handles become file descriptors (lib/ipc does the rest).
 *
 * A block is exported by giving it a random token that the handle carries; the
 * token lives in the block's record and is cleared whenever the block becomes
 * or stops being live (account.c), so a handle names one life of one block: once
 * the block is freed (or moved by realloc) no request with that token finds it,
 * and nothing of the memory that held it is ever served again.
 *
 * Serving a request has to make driver calls (an fd per extent) and so must
 * drop the lock, while the extents must not be given back meanwhile: begin
 * checks the block and its token and pins the extents that cover it (trim.c
 * skips pinned extents), the caller exports their handles, and end unpins them
 * and checks the block once more — still live, same token, same size — so that
 * memory whose block was freed while the lock was dropped is not handed out.
 * The extents of a live block run without a gap from the one holding its first
 * byte (which may start before it: the offset) to the one holding its last.
 */
#include "core/internal.h"

int heap_export_token(gpu_heap_t *h, void *ptr, uint64_t fresh, uint64_t *token, size_t *size) {
    gh_assert(fresh, "a token is never zero");
    heap_lock(h);
    /* Taken from any thread cache: a later free of it goes through the heap,
     * which clears the token. */
    block *b = heap_find_live(h, (uintptr_t)ptr, true);
    int rc = GPU_OK;
    if (!heap_is_running(h))
        rc = heap_refusal(h); /* paused memory has nothing to share */
    else if (!b)
        rc = gh_note(GPU_ERR_NOT_LIVE, "%p is not the start of a live block of this heap (freed, or an interior pointer)", ptr);
    else if (b->state == BLOCK_SPARSE)
        rc = gh_note(GPU_ERR_INVALID, "%p is a gpu_reserve range: only blocks can be shared", ptr);
    else if (b->state != BLOCK_LIVE)
        rc = gh_note(GPU_ERR_BUSY, "%p is being changed by another thread", ptr);
    if (rc == GPU_OK) {
        if (!b->export_token) {
            b->export_token = fresh;
            h->ipc_exports++;
        }
        *token = b->export_token;
        *size = b->size;
    }
    heap_unlock(h);
    return rc;
}

/* Sets *out to the live block exported with token at start, or notes why
 * there is none. Lock held. */
static int exported_block(gpu_heap_t *h, uintptr_t start, uint64_t token, block **out) {
    block *b = blockmap_find(&h->live, start);
    if (b && b->state == BLOCK_BUSY && b->export_token == token)
        return gh_note(GPU_ERR_BUSY, "the block is being changed by another thread of the exporting process; try again");
    if (!b || b->state != BLOCK_LIVE || b->export_token != token)
        return gh_note(GPU_ERR_INVALID, "the block was freed (or moved by realloc) since it was exported");
    *out = b;
    return GPU_OK;
}

int heap_export_begin(gpu_heap_t *h, heap_export *x) {
    heap_lock(h);
    block *b = NULL;
    int rc = exported_block(h, x->start, x->token, &b);
    if (rc != GPU_OK) {
        heap_unlock(h);
        return rc;
    }
    uintptr_t end = block_end(b);
    extent *e = extmap_find(&h->extents, b->start);
    gh_assert(e, "a live block is mapped");
    unsigned n = 0;
    for (uintptr_t va = e->va; va < end; va = e->va + e->size, n++) {
        e = extmap_find(&h->extents, va);
        gh_assert(e && e->va == va, "the extents of a live block run without a gap");
        if (n == x->max) {
            heap_unlock(h);
            return gh_note(GPU_ERR_INVALID, "the block lies on more than %u extents, more than one request carries", x->max);
        }
        if (e->paused || e->moving) { /* given back by gpu_pause, or being given back or mapped again */
            heap_unlock(h);
            return gh_note(GPU_ERR_PAUSED, "the exporting process has paused this block's memory (gpu_pause)");
        }
        x->ext[n] = (heap_export_extent){.e = e, .handle = e->handle, .size = e->size};
    }
    for (unsigned i = 0; i < n; i++) x->ext[i].e->pins++;
    x->n = n;
    x->size = b->size;
    x->offset = b->start - x->ext[0].e->va;
    x->granularity = h->gran;
    heap_unlock(h);
    return GPU_OK;
}

int heap_export_end(gpu_heap_t *h, heap_export *x) {
    heap_lock(h);
    for (unsigned i = 0; i < x->n; i++) {
        gh_assert(x->ext[i].e->pins, "an export unpins what it pinned");
        x->ext[i].e->pins--;
    }
    block *b = NULL;
    int rc = exported_block(h, x->start, x->token, &b);
    if (rc == GPU_OK && b->size != x->size) rc = gh_note(GPU_ERR_INVALID, "the block was resized while it was being exported");
    heap_unlock(h);
    return rc;
}

bool heap_export_live(gpu_heap_t *h, uintptr_t start, uint64_t token) {
    heap_lock(h);
    const block *b = blockmap_find(&h->live, start);
    bool live = b && (b->state == BLOCK_LIVE || b->state == BLOCK_BUSY) && b->export_token == token;
    heap_unlock(h);
    return live;
}

void heap_import_count(gpu_heap_t *h, int delta) {
    if (delta > 0) atomic_fetch_add_explicit(&h->ipc_imports_open, (uint64_t)delta, memory_order_relaxed);
    else atomic_fetch_sub_explicit(&h->ipc_imports_open, (uint64_t)-delta, memory_order_relaxed);
}
