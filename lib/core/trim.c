/*
 * trim.c — giving idle physical memory back to the driver, from anywhere in the
 * heap.
 *
 * An extent can go back only when no block uses any byte of it: it lies wholly
 * inside one idle block (free blocks are coalesced, so a wholly free extent is
 * always inside exactly one). Trimming first fences the quarantine into the idle
 * index, then cuts such extents out of their idle blocks, marks them BUSY, drops
 * the lock to give them back (backing.c's door: a handle the driver refuses to
 * release is mapped back and its range stays idle), and turns the addresses of
 * the extents that went into vacant VA. The same path serves gpu_heap_trim, the
 * release threshold, shrinking realloc, recovery from out-of-memory and
 * gpu_pause; in a paused heap it drops extents that no live block uses any more.
 * Extents pinned by an export in flight (export.c) are skipped: their handles
 * are being turned into fds outside the lock.
 */
#include "core/internal.h"

#define TRIM_BATCH 64

/* What may go: extents inside [lo, hi) of idle blocks made idle by no
 * legacy-order release later than safe — or, in unsafe blocks, extents of
 * linger bytes (a page, to linger: nothing else can move before its release is
 * done); with after_fence, whatever would qualify once a fence has passed
 * every release (twins too: their old mappings go then). */
typedef struct goes {
    uintptr_t lo, hi;
    uint64_t safe;
    size_t linger;
    bool after_fence;
} goes;

typedef struct trim_work {
    block *range[TRIM_BATCH];
    extent *ext[TRIM_BATCH];
    extent_return ret[TRIM_BATCH]; /* what the give-back door made of each */
    size_t n, cap;    /* ranges cut, and how many may be */
    size_t goal;      /* bytes still to release */
    goes g;
} trim_work;

/* True when e (whole inside the idle block b) may go: inside [lo, hi), not one
 * another process is being handed (pinned, export.c), nor one a pause or resume
 * is moving with the lock dropped, nor one whose handle still lingers at its
 * old address (linger.c), and b's release allows it. (A paused extent may: it
 * goes without a driver call, backing.c.) */
static bool extent_goes(const goes *g, const block *b, const extent *e) {
    if (e->va < g->lo || e->va + e->size > g->hi || e->pins || e->moving) return false;
    if (g->after_fence) return true;
    return !e->twin && (b->order_epoch <= g->safe || e->size == g->linger);
}

/* Cuts every whole extent that may go out of the idle block b (already out of
 * the index) until the goal is met or the batch is full; what is left goes
 * back idle. */
static void carve_extents(gpu_heap_t *h, block *b, trim_work *w) {
    uintptr_t end = block_end(b);
    for (;;) {
        extent *e = extmap_first_whole(&h->extents, b->start, end);
        while (e && !extent_goes(&w->g, b, e)) e = extmap_next_whole(&h->extents, e, end);
        if (!e || w->n == w->cap || !w->goal || !pool_reserve(&h->block_pool, 2)) break;
        block *range = block_carve(h, b, e->va, e->size, &h->idle);
        range->state = BLOCK_BUSY;
        w->range[w->n] = range;
        w->ext[w->n] = e;
        w->n++;
        w->goal = w->goal > e->size ? w->goal - e->size : 0;
        if (block_end(range) == end) return;
        b = range->next_phys; /* the idle rest: out of the index again while it is looked through */
        tlsf_remove(&h->idle, b);
    }
    tlsf_insert(&h->idle, b);
}

typedef struct pick {
    gpu_heap_t *h;
    const goes *g;
    block *found;
} pick;

/* tlsf_walk's callback: the first idle block holding a whole extent that may go. */
static bool pick_one(block *b, void *arg) {
    pick *p = arg;
    if (block_end(b) <= p->g->lo || b->start >= p->g->hi) return true;
    uintptr_t end = block_end(b);
    for (extent *e = extmap_first_whole(&p->h->extents, b->start, end); e; e = extmap_next_whole(&p->h->extents, e, end))
        if (extent_goes(p->g, b, e)) {
            p->found = b;
            return false;
        }
    return true;
}

/* True when a fence would let anything inside [lo, hi) go: quarantined
 * memory (a legacy-order release skipped while another thread held the seal:
 * the fence makes it idle), or idle memory in whole extents that a release not
 * seen done, or a lingering twin, holds back. Otherwise a fence is a
 * device-wide wait for nothing: idle memory inside pages that live blocks
 * share stays all the same. */
static bool fence_frees(gpu_heap_t *h, uintptr_t lo, uintptr_t hi) {
    if (h->quarantine_bytes) return true;
    goes g = {.lo = lo, .hi = hi, .after_fence = true};
    pick p = {.h = h, .g = &g};
    tlsf_walk(&h->idle, pick_one, &p);
    return p.found;
}

/* Releases whole idle extents inside [lo, hi) until idle bytes are at most keep.
 * In legacy free order idle memory may still be in use by work issued before
 * its free — the context was made to wait for it, the CPU was not — so
 * nothing is unmapped before that work is done (on the H200 an unmap there
 * made a PyTorch run fault on an illegal address). How says what goes:
 * RECYCLE_FENCE has a fence pass the last such release first; RECYCLE_SAFE
 * takes only memory idle since a release seen done (quarantine_orders_reap_locked
 * asks, no one waits); RECYCLE_LINGER takes the rest too, as pages whose old
 * mappings linger (linger.c), as many as spares can hold. Mappings lingering
 * since a release now done go first. */
#define ORDER_FENCE_TRIES 4 /* fences a release in order made during the last may ask for; then it waits for a later trim */

/* Cut ranges that must not be unmapped yet leave the batch as lingering pages. */
static void linger_unsafe(gpu_heap_t *h, trim_work *w, spare_set *spares) {
    size_t kept = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (w->range[i]->order_epoch > w->g.safe) {
            linger_keep_locked(h, w->range[i], w->ext[i], spares);
            continue;
        }
        w->range[kept] = w->range[i];
        w->ext[kept++] = w->ext[i];
    }
    w->n = kept;
}

static int release_idle(gpu_heap_t *h, size_t keep, uintptr_t lo, uintptr_t hi, spare_set *spares, recycle_how how) {
    for (int tries = 0; how == RECYCLE_FENCE && heap_order_owed(h) && h->idle.bytes > keep && fence_frees(h, lo, hi); tries++) {
        if (tries == ORDER_FENCE_TRIES) return GPU_OK; /* other threads keep releasing: nothing goes back now */
        int rc = heap_fence_locked(h, 0);
        if (rc != GPU_OK) return rc; /* a capture: nothing goes back until it ends */
    }
    quarantine_orders_reap_locked(h);
    linger_reap_locked(h, false);
    int first_error = GPU_OK;
    while (h->idle.bytes > keep) {
        size_t room = spares ? SPARE_MAX - spares->n : 0;
        trim_work w = {.goal = h->idle.bytes - keep, .cap = TRIM_BATCH, .g = {.lo = lo, .hi = hi}};
        w.g.safe = heap_order_owed(h) ? h->order_done : UINT64_MAX;
        if (how == RECYCLE_LINGER) {
            w.g.linger = h->page;
            if (room < w.cap) w.cap = room; /* no unsafe page is released */
        }
        while (w.n < w.cap && w.goal) {
            pick p = {.h = h, .g = &w.g};
            tlsf_walk(&h->idle, pick_one, &p);
            if (!p.found) break;
            tlsf_remove(&h->idle, p.found);
            size_t before = w.n;
            carve_extents(h, p.found, &w);
            if (w.n == before) break; /* out of host memory for records */
        }
        if (!w.n) break;
        if (how == RECYCLE_LINGER) linger_unsafe(h, &w, spares);
        /* Idle memory is read-write: a handle the driver will not take back is
         * mapped back so, and its range stays idle for a later trim. */
        room = spares ? SPARE_MAX - spares->n : 0;
        for (size_t i = 0; i < w.n; i++)
            w.ret[i] = (extent_return){.e = w.ext[i], .prot = GPU_PROT_READ_WRITE, .spare = i < room};
        heap_unlock(h);
        (void)extents_give_back(h, w.ret, w.n, false);
        heap_lock(h);
        for (size_t i = 0; i < w.n; i++) {
            if (w.ret[i].rc != GPU_OK && first_error == GPU_OK)
                first_error = gh_note(w.ret[i].rc, "releasing an idle extent: %s", vmm_error());
            bool kept = w.ret[i].fate == EXTENT_KEPT;
            vmm_handle hd = w.ext[i]->handle;
            size_t size = w.ext[i]->size;
            extent_settle_locked(h, &w.ret[i]); /* the record goes, for a spare too */
            if (w.ret[i].fate == EXTENT_SPARE) spare_keep_locked(h, spares, hd, size, NULL);
            block_release_free(h, w.range[i], kept ? BLOCK_IDLE : BLOCK_VACANT);
        }
        if (first_error != GPU_OK) break;
    }
    return first_error;
}

int heap_trim_locked(gpu_heap_t *h, size_t keep) {
    hooks_flush_locked(h); /* the thread caches: this thread's cached blocks first; the others' at their next allocation */
    int rc = heap_drain_locked(h, 0);
    if (rc != GPU_OK) return rc;
    return release_idle(h, keep, h->base, h->base + h->reserved, NULL, RECYCLE_FENCE);
}

int heap_release_range_locked(gpu_heap_t *h, uintptr_t lo, uintptr_t hi) {
    int rc = heap_drain_locked(h, 0);
    if (rc != GPU_OK) return rc;
    return release_idle(h, 0, lo, hi, NULL, RECYCLE_FENCE);
}

int heap_recycle_locked(gpu_heap_t *h, size_t bytes, spare_set *keep, recycle_how how) {
    if (!h->idle.bytes) return GPU_OK;
    heap_unlock(h);
    bool capturing = vmm_call_capturing(&h->door, 0);
    heap_lock(h);
    if (capturing) return GPU_ERR_CAPTURING;
    return release_idle(h, h->idle.bytes > bytes ? h->idle.bytes - bytes : 0, h->base, h->base + h->reserved, keep, how);
}

int heap_trim(gpu_heap_t *h, size_t keep) {
    hooks_trimming(h); /* gpu_map_file's pinned staging buffers */
    heap_lock(h);
    int rc = heap_trim_locked(h, keep);
    heap_unlock(h);
    heap_backup_trim(h); /* the pinned buffer a resume kept for the next pause */
    return rc;
}
