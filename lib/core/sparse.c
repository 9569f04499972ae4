/*
 * sparse.c — sparse address spaces: reserve a range, commit and decommit pieces
 * of it, release it.
 *
 * A reservation is a block of the heap's VA in state SPARSE, found by its start in
 * the address map like a live block, and listed so that a pointer inside one finds
 * it. Committing maps one new extent over each uncommitted gap of the range (the
 * driver charges per mapping, so one mapping per gap, not per granule); every
 * extent inside a reservation is owned by it, so gpu_protect works on whole
 * commits. Decommitting unmaps the extents inside the range after one fence (like
 * a free, work issued earlier may still use it). An extent that the range cuts
 * cannot be unmapped in part — the driver maps handles whole — so the part that
 * stays committed is copied into a new extent of its own first: data outside the
 * decommitted range always survives.
 *
 * Every operation marks the reservation busy, drops the heap lock around driver
 * calls, and either completes or undoes what it did: a failed call leaves the
 * committed ranges as they were. Memory goes in and out through backing.c's
 * doors. A handle the driver refuses to take back is mapped back and kept, as
 * everywhere in the heap: a decommit leaves that extent committed (and still
 * succeeds when anything else went), a release hands it to the heap as idle
 * memory for a later trim.
 */
#include <stdlib.h>

#include "core/internal.h"

/* The reservation containing [p, p+len), or NULL with an error noted. */
static block *reservation_of(gpu_heap_t *h, uintptr_t p, size_t len, const char *call, int *rc) {
    for (block *b = h->sparse_list; b; b = b->next_free) {
        if (p - b->start >= b->size) continue;
        if (len > block_end(b) - p) {
            *rc = gh_note(GPU_ERR_INVALID, "%s(%#lx, %zu): the range runs past the reservation's end", call,
                          (unsigned long)p, len);
            return NULL;
        }
        if (b->busy) {
            *rc = gh_note(GPU_ERR_BUSY, "%s: another thread is changing this reservation", call);
            return NULL;
        }
        return b;
    }
    *rc = gh_note(GPU_ERR_NOT_RESERVATION, "%s(%#lx): not inside a live gpu_reserve range", call, (unsigned long)p);
    return NULL;
}

/* Checks that p and len are granule multiples. */
static int aligned(const gpu_heap_t *h, uintptr_t p, size_t len, const char *call) {
    if (p % h->gran || len % h->gran || !len)
        return gh_note(GPU_ERR_INVALID, "%s(%#lx, %zu): start and length must be non-zero multiples of %zu", call,
                       (unsigned long)p, len, h->gran);
    return GPU_OK;
}

int heap_reserve(gpu_heap_t *h, size_t size, void **out) {
    size_t len = gh_align_up(size ? size : 1, h->gran);
    if (!len || len > h->reserved)
        return gh_note(GPU_ERR_INVALID, "gpu_reserve(%zu): larger than the heap's reservation", size);
    heap_lock(h);
    int rc = heap_is_running(h) ? heap_reserve_records(h) : heap_refusal(h);
    block *b = NULL;
    if (rc == GPU_OK) rc = heap_carve_vacant_locked(h, len, h->gran, 0, &b);
    if (rc == GPU_OK) {
        b->state = BLOCK_SPARSE;
        blockmap_insert(&h->live, b);
        b->prev_free = NULL;
        b->next_free = h->sparse_list;
        if (h->sparse_list) h->sparse_list->prev_free = b;
        h->sparse_list = b;
        h->sparse_reserved += len;
        *out = (void *)b->start;
    }
    heap_unlock(h);
    return rc;
}

/* The end of the uncommitted gap starting at va (or va itself when committed). */
static uintptr_t gap_end(gpu_heap_t *h, uintptr_t va, uintptr_t end) {
    while (va < end && !extmap_find(&h->extents, va)) va += h->gran;
    return va;
}

/* Gives back the extents of reservation r inside [lo, hi) (whole, all inside)
 * through backing.c's door, all or none for the unmaps: if the driver refuses
 * one, the others are mapped back — contents intact — and nothing changes (an
 * error). A handle whose release is then refused is mapped back and kept:
 * committed as before, or (releasing set: the reservation is going away) mapped
 * back read-write to become idle memory of the heap; *kept (may be NULL) says how
 * many. Only when nothing went at all is that an error. Lock held; dropped
 * around the driver calls (r is busy meanwhile). */
static int drop_extents(gpu_heap_t *h, block *r, uintptr_t lo, uintptr_t hi, bool releasing, size_t *kept) {
    size_t n = 0, cap = 0;
    extent_return *v = NULL;
    for (uintptr_t va = lo; va < hi;) {
        extent *e = extmap_find(&h->extents, va);
        if (!e) {
            va += h->gran;
            continue;
        }
        gh_assert(e->owner == r && e->va >= lo && e->va + e->size <= hi, "dropped extents lie inside the range");
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            extent_return *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                free(v);
                return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory to decommit");
            }
            v = nv;
        }
        v[n++] = (extent_return){.e = e, .prot = releasing ? GPU_PROT_READ_WRITE : (gpu_prot_t)e->prot};
        va = e->va + e->size;
    }
    /* A kept extent of a released reservation becomes an idle block of its own. */
    if (releasing && !pool_reserve(&h->block_pool, 2 * n + 1)) {
        free(v);
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory to release a reservation");
    }
    heap_unlock(h);
    int rc = extents_give_back(h, v, n, true);
    heap_lock(h);
    size_t nkept = 0;
    bool protected_kept = false; /* kept after a refused unmap: with its own access, maybe not read-write */
    for (size_t k = 0; k < n; k++) {
        if (v[k].fate == EXTENT_KEPT) nkept++, protected_kept |= v[k].prot != GPU_PROT_READ_WRITE;
        else h->sparse_committed -= v[k].e->size;
        extent_settle_locked(h, &v[k]);
    }
    free(v);
    if (kept) *kept = nkept;
    if (n && nkept == n) return gh_note(rc, "giving back committed memory: %s", vmm_error());
    /* A refused unmap whose siblings could not be mapped back (lost) leaves some
     * gone and some kept as they were: a released reservation cannot hand a
     * protected extent over as idle memory, so it stays, with what is left. */
    if (releasing && protected_kept) return gh_note(rc, "giving back committed memory: %s", vmm_error());
    return GPU_OK;
}

/* The extents one commit made, so that a failure can take them back. */
typedef struct made_list {
    uintptr_t *va;
    size_t n, cap;
} made_list;

static bool made_add(made_list *m, uintptr_t va) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        uintptr_t *v = realloc(m->va, cap * sizeof *v);
        if (!v) return false;
        m->va = v;
        m->cap = cap;
    }
    m->va[m->n++] = va;
    return true;
}

int heap_commit(gpu_heap_t *h, void *ptr, size_t len) {
    uintptr_t p = (uintptr_t)ptr, end = p + len;
    int rc = aligned(h, p, len, "gpu_commit");
    if (rc != GPU_OK) return rc;
    heap_lock(h);
    block *r = heap_is_running(h) ? reservation_of(h, p, len, "gpu_commit", &rc) : NULL;
    if (!heap_is_running(h)) rc = heap_refusal(h);
    if (r && extmap_prepare(&h->extents, p, len) != GPU_OK) {
        rc = gh_note(GPU_ERR_OUT_OF_MEMORY, "gpu_commit: out of host memory for the extent map");
        r = NULL;
    }
    if (!r) {
        heap_unlock(h);
        return rc;
    }
    r->busy = 1;
    made_list made = {0};
    bool reclaimed = false;
    for (uintptr_t va = p; va < end && rc == GPU_OK;) {
        extent *e = extmap_find(&h->extents, va);
        if (e) { /* already committed: kept as it is */
            va = e->va + e->size;
            continue;
        }
        uintptr_t ge = gap_end(h, va, end);
        if (!pool_reserve(&h->extent_pool, 1) || !made_add(&made, va)) {
            rc = gh_note(GPU_ERR_OUT_OF_MEMORY, "gpu_commit: out of host memory for extent records");
            break;
        }
        rc = extent_back_locked(h, va, ge - va, r, NULL); /* the map's leaves are prepared: the record cannot fail */
        if (rc != GPU_OK) {
            made.n--;
            if (rc == GPU_ERR_OUT_OF_MEMORY && !reclaimed) { /* give idle memory back, try once more */
                reclaimed = true;
                if (heap_reclaim_locked(h)) {
                    rc = GPU_OK;
                    continue;
                }
            }
            rc = gh_note(rc, "gpu_commit: backing %zu bytes: %s", (size_t)(ge - va), vmm_error());
            break;
        }
        h->sparse_committed += ge - va;
        va = ge;
    }
    if (rc != GPU_OK) /* take back what this call mapped: it holds no data yet */
        for (size_t i = 0; i < made.n; i++) {
            extent *e = extmap_find(&h->extents, made.va[i]);
            (void)drop_extents(h, r, e->va, e->va + e->size, false, NULL);
        }
    free(made.va);
    r->busy = 0;
    heap_unlock(h);
    return rc;
}

/* Extent e straddles the decommitted range [p, end): the parts of it outside the
 * range stay committed, each re-homed in an extent of its own — new memory mapped
 * at scratch VA, the bytes copied — and then e goes back through backing.c's door
 * and the new memory is mapped where those parts were. If the driver keeps e (an
 * unmap or a release refused, e mapped back), nothing changes: the copies go and
 * the decommit fails. Once e is gone, each copy's mapping is tried twice; a copy
 * that still cannot be mapped is the one way bytes outside the range are lost
 * (a driver refusing to map fresh memory at free addresses twice has lost its
 * context), and that is an error. Lock held; dropped around driver calls. The
 * caller fenced already. */
static int keep_outside(gpu_heap_t *h, block *r, extent *e, uintptr_t p, uintptr_t end) {
    struct part {
        uintptr_t lo, hi, tmp;
        block *scratch;
        vmm_handle nh;
    } parts[2];
    int n = 0, rc = GPU_OK;
    if (e->va < p) parts[n++] = (struct part){.lo = e->va, .hi = p};
    if (e->va + e->size > end) parts[n++] = (struct part){.lo = end, .hi = e->va + e->size};
    int made = 0;
    bool reclaimed = false;
    for (; made < n && rc == GPU_OK; made++) {
        struct part *k = &parts[made];
        rc = heap_carve_vacant_locked(h, k->hi - k->lo, h->gran, 0, &k->scratch);
        if (rc != GPU_OK) break;
        k->tmp = k->scratch->start;
        heap_unlock(h);
        bool backed = (rc = handle_back(h, k->tmp, k->hi - k->lo, &k->nh)) == GPU_OK;
        if (backed) {
            rc = vmm_call_copy(&h->door, k->tmp, k->lo, k->hi - k->lo);
            if (rc == GPU_OK) rc = vmm_call_unmap(&h->door, k->tmp, k->hi - k->lo);
            if (rc != GPU_OK) handle_discard(h, k->tmp, k->hi - k->lo, k->nh);
        }
        heap_lock(h);
        block_release_free(h, k->scratch, BLOCK_VACANT);
        if (!backed && rc == GPU_ERR_OUT_OF_MEMORY && !reclaimed) { /* give idle memory back, try this part once more */
            reclaimed = true;
            if (heap_reclaim_locked(h)) {
                rc = GPU_OK;
                made--;
                continue;
            }
        }
        if (rc != GPU_OK) break;
    }
    if (rc != GPU_OK) { /* e is untouched: give back the copies made so far */
        heap_unlock(h);
        for (int i = 0; i < made; i++) handle_drop(h, parts[i].nh, parts[i].hi - parts[i].lo);
        heap_lock(h);
        return gh_note(rc, "gpu_decommit: keeping the committed bytes around the range: %s", vmm_error());
    }
    size_t esize = e->size;
    gpu_prot_t prot = (gpu_prot_t)e->prot;
    extent_return ret = {.e = e, .prot = prot};
    heap_unlock(h);
    rc = extents_give_back(h, &ret, 1, false);
    int mapped = 0;
    if (ret.fate != EXTENT_KEPT)
        for (rc = GPU_OK; mapped < n; mapped++) /* e's addresses are free: the copies take its outer parts */
            if ((rc = vmm_call_remap_undo(&h->door, parts[mapped].lo, parts[mapped].hi - parts[mapped].lo, parts[mapped].nh,
                                          prot)) != GPU_OK)
                break;
    for (int i = mapped; i < n; i++) handle_drop(h, parts[i].nh, parts[i].hi - parts[i].lo); /* e kept: every copy; else those not mapped */
    heap_lock(h);
    if (ret.fate == EXTENT_KEPT) return gh_note(rc, "gpu_decommit: giving back the extent the range cuts: %s", vmm_error());
    h->sparse_committed -= esize;
    extent_settle_locked(h, &ret);
    for (int i = 0; i < mapped; i++) {
        extent *k = heap_extent_new_locked(h, parts[i].lo, parts[i].hi - parts[i].lo, parts[i].nh); /* leaves exist */
        k->owner = r;
        k->prot = (uint8_t)prot;
        if (prot != GPU_PROT_READ_WRITE) h->protected_extents++;
        h->sparse_committed += k->size;
    }
    if (mapped < n) return gh_note(rc, "gpu_decommit: mapping the kept parts (their bytes are lost): %s", vmm_error());
    return GPU_OK;
}

int heap_decommit(gpu_heap_t *h, void *ptr, size_t len) {
    uintptr_t p = (uintptr_t)ptr, end = p + len;
    int rc = aligned(h, p, len, "gpu_decommit");
    if (rc != GPU_OK) return rc;
    heap_lock(h);
    block *r = heap_is_running(h) ? reservation_of(h, p, len, "gpu_decommit", &rc) : NULL;
    if (!heap_is_running(h)) rc = heap_refusal(h);
    if (!r) {
        heap_unlock(h);
        return rc;
    }
    if (gap_end(h, p, end) == end) { /* nothing committed: nothing to do */
        heap_unlock(h);
        return GPU_OK;
    }
    r->busy = 1;
    /* Like a free: GPU work issued before may still use the range. */
    rc = heap_fence_locked(h, 0);
    if (rc != GPU_OK) {
        rc = gh_note_context(rc, "gpu_decommit");
    } else {
        /* Extents that straddle an end keep their outer parts in extents of their own. */
        extent *first = extmap_find(&h->extents, p);
        if (first && (first->va < p || first->va + first->size > end)) rc = keep_outside(h, r, first, p, end);
        extent *last = extmap_find(&h->extents, end - 1);
        if (rc == GPU_OK && last && last->va + last->size > end) rc = keep_outside(h, r, last, p, end);
        if (rc == GPU_OK) rc = drop_extents(h, r, p, end, false, NULL);
    }
    r->busy = 0;
    heap_unlock(h);
    return rc;
}

/* A released reservation whose driver kept some of its handles (mapped back
 * read-write by drop_extents): those extents become idle blocks of the heap, for
 * a later trim to give back, and the rest of the range vacant. r is out of the
 * map and the list; drop_extents reserved the records. Lock held. */
static void adopt_kept(gpu_heap_t *h, block *b) {
    uintptr_t va = b->start;
    while (va < block_end(b)) {
        extent *e = extmap_find(&h->extents, va);
        if (!e) {
            va += h->gran;
            continue;
        }
        h->sparse_committed -= e->size; /* heap memory now, not the reservation's */
        e->owner = NULL;
        if (e->va > b->start) {
            block *x = block_split(h, b, e->va - b->start);
            block_release_free(h, b, BLOCK_VACANT);
            b = x;
        }
        if (b->size == e->size) {
            block_release_free(h, b, BLOCK_IDLE);
            return;
        }
        block *rest = block_split(h, b, e->size);
        block_release_free(h, b, BLOCK_IDLE);
        b = rest;
        va = b->start;
    }
    block_release_free(h, b, BLOCK_VACANT);
}

int heap_release_reservation(gpu_heap_t *h, void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    heap_lock(h);
    heap_settle_locked(h);
    block *r = blockmap_find(&h->live, p);
    int rc = GPU_OK;
    if (!r || r->state != BLOCK_SPARSE)
        rc = gh_note(GPU_ERR_NOT_RESERVATION, "gpu_release(%p): not the start of a live gpu_reserve range", ptr);
    else if (r->busy)
        rc = gh_note(GPU_ERR_BUSY, "gpu_release(%p): another thread is changing this reservation", ptr);
    if (rc != GPU_OK) {
        heap_unlock(h);
        return rc;
    }
    r->busy = 1;
    size_t kept = 0;
    rc = heap_fence_locked(h, 0);
    if (rc == GPU_OK) rc = drop_extents(h, r, r->start, block_end(r), true, &kept);
    else rc = gh_note_context(rc, "gpu_release(%p)", ptr);
    if (rc == GPU_OK) {
        blockmap_remove(&h->live, p);
        if (r->prev_free) r->prev_free->next_free = r->next_free;
        else h->sparse_list = r->next_free;
        if (r->next_free) r->next_free->prev_free = r->prev_free;
        h->sparse_reserved -= r->size;
        r->busy = 0;
        if (kept) adopt_kept(h, r);
        else block_release_free(h, r, BLOCK_VACANT);
    } else {
        r->busy = 0;
    }
    heap_unlock(h);
    return rc;
}
