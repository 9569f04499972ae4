/*
 * linger.c — a page moved while a legacy-order release may still use it keeps
 * its old mapping until that release is done.
 *
 * In legacy free order (quarantine.c) a freed block is idle at once: the context
 * was made to wait for the work issued before the release, so later work on the
 * memory runs after it — but the CPU did not wait, and that work may still be
 * running. A paged heap (paged.c) moving an idle page to where a new block needs
 * one used to fence first when the page's release was not seen done, since
 * unmapping a range that in-flight work touches faults it (DESIGN.md §3): on an
 * H200, 20–29 device-wide waits in a 40-step training run (bench/RESULTS.md).
 * The driver maps one handle at several addresses, so a page moves without the
 * unmap: its handle is mapped at the new place at once (the work placed there
 * is submitted later, so the context runs it after the release), and the old
 * mapping lingers as a BLOCK_LINGER block, where nothing is placed, until the
 * release's event is seen done; then it is unmapped and its addresses are
 * vacant again. No physical memory is added: the handle is counted once, where
 * it is mapped now.
 *
 * The books: a lingering block's handle first waits in the trade's spare set
 * (spare.from names the block); once mapped, the block joins the heap's list and
 * its twin is the new extent, which is not given back (trim skips it) before the
 * old mapping goes — the driver would release a handle still mapped elsewhere,
 * but the heap would count memory as gone that is still held, and the host
 * backend refuses it. A lingering handle no mapping takes goes back where it is
 * still mapped, idle, with no driver call.
 */
#include <sched.h>

#include "core/internal.h"

#define LINGER_BATCH 64 /* mappings unmapped per drop of the lock */

static void list_add(gpu_heap_t *h, block *b) {
    b->prev_free = NULL;
    b->next_free = h->linger;
    if (h->linger) h->linger->prev_free = b;
    h->linger = b;
    h->nlinger++;
}

static void list_remove(gpu_heap_t *h, block *b) {
    if (b->prev_free) b->prev_free->next_free = b->next_free;
    else h->linger = b->next_free;
    if (b->next_free) b->next_free->prev_free = b->prev_free;
    b->prev_free = b->next_free = NULL;
    h->nlinger--;
}

void linger_keep_locked(gpu_heap_t *h, block *range, extent *e, spare_set *s) {
    gh_assert(range->state == BLOCK_BUSY && e->va == range->start && e->size == range->size && !e->twin,
              "a page that lingers is one whole extent of its own, not itself a twin");
    vmm_handle hd = e->handle;
    range->state = BLOCK_LINGER;
    range->twin = NULL;
    heap_extent_drop_locked(h, e); /* counted again where it is mapped next; meanwhile as a spare */
    spare_keep_locked(h, s, hd, range->size, range);
}

void linger_return_locked(gpu_heap_t *h, const spare *sp) {
    block *b = sp->from;
    gh_assert(b->state == BLOCK_LINGER && !b->twin && b->size == sp->size, "a lingering spare's block waits for it");
    extent *e = pool_reserve(&h->extent_pool, 1) ? heap_extent_new_locked(h, b->start, b->size, sp->handle) : NULL;
    if (!e) { /* out of host memory for the record: the mapping goes instead, once its release is done */
        if (heap_order_owed(h) && b->order_epoch > h->order_done && heap_fence_locked(h, 0) != GPU_OK) {
            atomic_fetch_add_explicit(&h->extents_lost, 1, memory_order_relaxed); /* a capture: left mapped, counted */
            return;
        }
        heap_unlock(h);
        handle_discard(h, b->start, b->size, sp->handle);
        heap_lock(h);
        block_release_free(h, b, BLOCK_VACANT);
        return;
    }
    block_release_free(h, b, BLOCK_IDLE); /* idle for the last release, no earlier than the one it waited for */
}

int linger_back_locked(gpu_heap_t *h, uintptr_t va, size_t size, const spare *sp) {
    gh_assert(sp->from && sp->size == size, "a lingering spare of the piece's size");
    int rc = extent_back_locked(h, va, size, NULL, sp);
    if (rc == GPU_OK) {
        extent *e = extmap_find(&h->extents, va);
        gh_assert(e && e->va == va, "the extent just mapped is in the books");
        e->twin = 1;
        sp->from->twin = e;
        list_add(h, sp->from);
        return GPU_OK;
    }
    linger_return_locked(h, sp); /* the driver would not map it here: it stays where it was */
    return extent_back_locked(h, va, size, NULL, NULL);
}

/* The lingering mappings done with: unmapped (lock dropped), their addresses
 * vacant. One the driver will not unmap stays for a later reap. */
static void unmap_done(gpu_heap_t *h, block **batch, unsigned n) {
    int rc[LINGER_BATCH];
    heap_unlock(h);
    for (unsigned i = 0; i < n; i++) rc[i] = vmm_call_unmap(&h->door, batch[i]->start, batch[i]->size);
    heap_lock(h);
    for (unsigned i = 0; i < n; i++) {
        block *b = batch[i];
        b->busy = 0;
        if (rc[i] != GPU_OK) continue;
        b->twin->twin = 0;
        b->twin = NULL;
        list_remove(h, b);
        block_release_free(h, b, BLOCK_VACANT);
    }
}

void linger_reap_locked(gpu_heap_t *h, bool all) {
    if (!h->nlinger) return;
    if (all && heap_order_owed(h)) (void)heap_fence_locked(h, 0); /* a capture: what is not done stays */
    for (;;) {
        uint64_t safe = heap_order_owed(h) ? h->order_done : UINT64_MAX;
        block *batch[LINGER_BATCH];
        unsigned n = 0;
        for (block *b = h->linger; b && n < LINGER_BATCH; b = b->next_free)
            if (!b->busy && b->order_epoch <= safe) {
                b->busy = 1; /* another thread's reap leaves it alone */
                batch[n++] = b;
            }
        if (!n) return;
        size_t before = h->nlinger;
        unmap_done(h, batch, n);
        if (h->nlinger + n > before) return; /* one was refused: not again now */
    }
}

void linger_settle_twin_locked(gpu_heap_t *h, const extent *e) {
    for (int tries = 0; e->twin && tries < 64; tries++) {
        quarantine_orders_reap_locked(h); /* a release seen done needs no fence */
        linger_reap_locked(h, true);
        if (!e->twin) return;
        heap_unlock(h); /* another thread is unmapping it, or the driver refused: again in a moment */
        sched_yield();
        heap_lock(h);
    }
}

void linger_close(gpu_heap_t *h) {
    for (block *b = h->linger; b; b = b->next_free) (void)vmm_call_unmap(&h->door, b->start, b->size);
}
