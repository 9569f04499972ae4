/*
 * backing.c — the doors through which physical memory enters and leaves the
 * heap: backing an extent, and giving one back, with one policy for refusal.
 *
 * Backing is create, map, grant access (the owner read-write, every peer the
 * same), undone in reverse when a step is refused. Giving back is unmap, then
 * release. The release is the step that hurts when refused: the addresses are
 * already unmapped while the books say "mapped" there. Before this door there
 * were four answers to it (retry then leak the handle; map it back; retry then
 * leak silently; retry once more). Now there is one, jemalloc's
 * extent_dalloc_wrapper's: a handle the driver will not take back is mapped back
 * where it was, with its access and its peers', and the extent stays — idle, or
 * owned as before — for a later give-back to try again. Only when the driver
 * refuses to map it back too is the extent forgotten: its addresses are unmapped,
 * its handle leaks, and the heap counts it (gpu_stats_t.extents_lost).
 *
 * The doors make the driver calls and decide each extent's fate; the books
 * change under the lock afterwards (extent_settle_locked), in the caller's order.
 * Fresh handles that never entered the books (a copy being built, a growth being
 * mapped) go through handle_back and handle_discard: they have nowhere to be
 * kept, so a refused release of one is counted as lost at once.
 *
 * Because every physical allocation enters and leaves here, the doors also
 * keep the cap (gpu_set_limit, GPUHEAP_LIMIT): a count per device of the bytes
 * all heaps of the process hold, taken before a create and given back after a
 * release. A create that would pass the cap first has the heap give its idle
 * memory back (heap_reclaim_locked), then the device's other lasting heaps
 * theirs, asking the cap again after each, and is then refused as out of memory
 * with a message naming the cap; the allocation path treats it as it treats the
 * driver's out of memory. A create the driver refuses as out of memory has the
 * other lasting heaps give their memory back too and is tried once more (the
 * heap's own idle memory is its caller's to give: the allocation ladder, a
 * commit; a resume has none). The lasting heaps — the default heaps and the
 * tags' heaps, never destroyed — are the ones memory freed elsewhere in the
 * process sits in: a pause gives a tag's memory back, the program fills it from
 * the default heap and frees it, and without this the resume could not have it
 * back. Every caller of the door holds no heap lock, so each heap's lock is taken
 * alone, and the walk takes no registry lock (registry_each_lasting). An extent
 * that gpu_pause gave back (pause.c) holds no memory: giving it back again costs
 * no driver call.
 */
#include <stdio.h>

#include "core/internal.h"

/* A handle the driver would not take back: it leaks, and the heap says so. */
static void count_lost(gpu_heap_t *h) { atomic_fetch_add_explicit(&h->extents_lost, 1, memory_order_relaxed); }

/* ---- the cap ------------------------------------------------------------------- */

static _Atomic size_t cap_limit = SIZE_MAX;
static _Atomic size_t cap_held[GH_MAX_PEERS]; /* per device ordinal */

void heap_cap_set(size_t bytes) { atomic_store(&cap_limit, bytes ? bytes : SIZE_MAX); }
size_t heap_cap(void) { return atomic_load_explicit(&cap_limit, memory_order_relaxed); }
size_t heap_cap_held(int device) {
    return device >= 0 && device < GH_MAX_PEERS ? atomic_load_explicit(&cap_held[device], memory_order_relaxed) : 0;
}

/* The count of h's device (devices past the table share its last slot). */
static _Atomic size_t *held_of(const gpu_heap_t *h) {
    int d = h->door.b->caps.device;
    return &cap_held[d >= 0 && d < GH_MAX_PEERS ? d : GH_MAX_PEERS - 1];
}

/* Counts size bytes about to be created; false (nothing counted) past the cap. */
static bool cap_take(gpu_heap_t *h, size_t size) {
    _Atomic size_t *held = held_of(h);
    size_t limit = heap_cap();
    if (limit == SIZE_MAX) {
        atomic_fetch_add_explicit(held, size, memory_order_relaxed);
        return true;
    }
    size_t cur = atomic_load_explicit(held, memory_order_relaxed);
    do {
        if (cur > limit || size > limit - cur) return false;
    } while (!atomic_compare_exchange_weak_explicit(held, &cur, cur + size, memory_order_relaxed, memory_order_relaxed));
    return true;
}

static void cap_give(gpu_heap_t *h, size_t size) { atomic_fetch_sub_explicit(held_of(h), size, memory_order_relaxed); }

/* ---- out of memory across heaps ---------------------------------------------------- */

typedef struct reclaim_walk {
    const gpu_heap_t *self;
    int device;
    bool freed; /* some heap gave memory back */
} reclaim_walk;

/* registry_each_lasting's callback: a running lasting heap of the device, other
 * than the one out of memory, gives its idle and quarantined memory back. */
static void reclaim_one(gpu_heap_t *g, void *arg) {
    reclaim_walk *w = arg;
    if (g == w->self || g->door.b->caps.device != w->device || !heap_is_running(g)) return;
    heap_lock(g);
    size_t before = g->mapped_bytes;
    if (heap_is_running(g)) (void)heap_reclaim_locked(g); /* a pause under way gives it back itself */
    if (g->mapped_bytes < before) w->freed = true;
    heap_unlock(g);
}

/* Out of memory in h: the device's other lasting heaps give their idle memory
 * back, one lock at a time. True when any memory went back. Lock not held. */
static bool reclaim_others(gpu_heap_t *h) {
    reclaim_walk w = {.self = h, .device = h->door.b->caps.device};
    registry_each_lasting(reclaim_one, &w);
    return w.freed;
}

/* A create of size bytes, counted against the cap: past it, h's idle memory goes
 * back, then the other lasting heaps', the cap asked again after each; a driver
 * out of memory has the others give theirs back and is tried once more. Lock
 * not held. */
static int create_counted(gpu_heap_t *h, size_t size, vmm_handle *out) {
    bool fits = cap_take(h, size);
    if (!fits) {
        heap_lock(h);
        (void)heap_reclaim_locked(h);
        heap_unlock(h);
        fits = cap_take(h, size) || (reclaim_others(h) && cap_take(h, size));
    }
    if (!fits) {
        size_t limit = heap_cap(), held = atomic_load(held_of(h));
        return vmm_fail(h->door.b, GPU_ERR_OUT_OF_MEMORY,
                        "%zu more bytes would pass the process's limit of %zu bytes of physical memory on device %d "
                        "(gpu_set_limit, GPUHEAP_LIMIT; %zu held)",
                        size, limit, h->door.b->caps.device, held);
    }
    int rc = vmm_call_create(&h->door, size, out);
    if (rc == GPU_ERR_OUT_OF_MEMORY && reclaim_others(h)) rc = vmm_call_create(&h->door, size, out);
    if (rc != GPU_OK) cap_give(h, size);
    return rc;
}

/* ---- the doors ------------------------------------------------------------------ */

void handle_drop(gpu_heap_t *h, vmm_handle hd, size_t size) {
    /* Asked twice, as an unmap undone is (vmm_call_unmap_undo): a handle not in the
     * books has no address to be mapped back at, so a refusal once would leak it
     * (the fuzzer found one in a paged heap's spare set). */
    if (vmm_call_release(&h->door, hd) != GPU_OK && vmm_call_release(&h->door, hd) != GPU_OK) count_lost(h);
    else cap_give(h, size);
}

/* Unmaps a mapping being undone (asked twice: vmm_call_unmap_undo); false, and
 * counted lost, when the driver keeps it: its handle cannot be released then. */
static bool unmap_or_lost(gpu_heap_t *h, uintptr_t va, size_t size) {
    if (vmm_call_unmap_undo(&h->door, va, size) == GPU_OK) return true;
    count_lost(h);
    return false;
}

/* Maps the handle hd (created, or kept unmapped) at [va, va+size) read-write for
 * the owner and every peer; on a refusal the mapping is undone and, with drop,
 * hd released (without, a lingering handle, still mapped elsewhere: linger.c). */
static int handle_map(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle hd, bool drop, vmm_handle *out) {
    int rc = vmm_call_map(&h->door, va, size, hd);
    bool mapped = rc == GPU_OK;
    if (mapped && (rc = vmm_call_set_access(&h->door, va, size, GPU_PROT_READ_WRITE)) == GPU_OK) { /* owner, then peers */
        *out = hd;
        return GPU_OK;
    }
    if (mapped && !unmap_or_lost(h, va, size)) return rc; /* mapped here for good */
    if (drop) handle_drop(h, hd, size);
    return rc;
}

int handle_back(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle *out) {
    vmm_handle hd;
    int rc = create_counted(h, size, &hd);
    return rc == GPU_OK ? handle_map(h, va, size, hd, true, out) : rc;
}

void handle_discard(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle hd) {
    if (unmap_or_lost(h, va, size)) handle_drop(h, hd, size);
}

int extent_back_locked(gpu_heap_t *h, uintptr_t va, size_t size, block *owner, const spare *kept) {
    uint64_t peers = heap_peers(h); /* read under the lock: peer.c explains the race this closes */
    bool stays = kept && kept->from; /* a lingering handle stays the caller's on a refusal */
    vmm_handle hd;
    heap_unlock(h);
    int rc = kept ? handle_map(h, va, size, kept->handle, !stays, &hd) : handle_back(h, va, size, &hd);
    if (kept && !stays && rc != GPU_OK) rc = handle_back(h, va, size, &hd); /* the kept handle is released: a new one */
    heap_lock(h);
    if (rc != GPU_OK) return gh_note(rc, "backing %zu bytes: %s", size, vmm_error());
    extent *e = heap_extent_new_locked(h, va, size, hd);
    if (!e) {
        heap_unlock(h);
        if (!stays) handle_discard(h, va, size, hd);
        else (void)unmap_or_lost(h, va, size);
        heap_lock(h);
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for the extent map");
    }
    e->owner = owner; /* before the lock is dropped again: a check meanwhile sees it owned */
    heap_peer_catch_up_locked(h, va, size, peers);
    return GPU_OK;
}

/* The release of an unmapped extent's handle, and the policy when it is
 * refused: mapped back with r->prot (and the peers), kept; else lost. */
static void release_or_keep(gpu_heap_t *h, extent_return *r) {
    const extent *e = r->e;
    int rc = vmm_call_release(&h->door, e->handle);
    r->rc = rc;
    if (rc == GPU_OK) {
        r->fate = EXTENT_GONE;
        cap_give(h, e->size);
    } else
        r->fate = vmm_call_remap_undo(&h->door, e->va, e->size, e->handle, r->prot) == GPU_OK ? EXTENT_KEPT : EXTENT_LOST;
}

/* An unmap was refused: the extent is still mapped as it was. */
static void keep_unmapped(extent_return *r, int rc) {
    r->rc = rc;
    r->fate = EXTENT_KEPT;
    r->prot = (gpu_prot_t)r->e->prot;
}

/* A paused extent has nothing mapped and no handle: it goes at once. */
static bool gone_paused(extent_return *r) {
    if (!r->e->paused) return false;
    r->rc = GPU_OK;
    r->fate = EXTENT_GONE;
    return true;
}

int extents_give_back(gpu_heap_t *h, extent_return *v, size_t n, bool all_or_none) {
    int first = GPU_OK;
    if (all_or_none) { /* every mapping first; one refused puts the others back */
        size_t done = 0;
        int rc = GPU_OK;
        for (; done < n; done++)
            if (!v[done].e->paused && (rc = vmm_call_unmap(&h->door, v[done].e->va, v[done].e->size)) != GPU_OK) break;
        if (rc != GPU_OK) {
            for (size_t k = 0; k < n; k++) {
                keep_unmapped(&v[k], rc);
                const extent *e = v[k].e;
                if (k < done && !e->paused &&
                    vmm_call_remap_undo(&h->door, e->va, e->size, e->handle, (gpu_prot_t)e->prot) != GPU_OK)
                    v[k].fate = EXTENT_LOST; /* unmapped, and the driver will not map it back */
            }
            return rc;
        }
        for (size_t k = 0; k < n; k++) {
            if (!gone_paused(&v[k])) release_or_keep(h, &v[k]);
            if (first == GPU_OK) first = v[k].rc;
        }
        return first;
    }
    for (size_t k = 0; k < n; k++) {
        if (gone_paused(&v[k])) continue;
        int rc = vmm_call_unmap(&h->door, v[k].e->va, v[k].e->size);
        if (rc == GPU_OK && v[k].spare) {
            v[k].fate = EXTENT_SPARE;
            v[k].rc = GPU_OK;
        } else if (rc == GPU_OK) {
            release_or_keep(h, &v[k]);
        } else {
            keep_unmapped(&v[k], rc);
        }
        if (first == GPU_OK) first = v[k].rc;
    }
    return first;
}

void extent_settle_locked(gpu_heap_t *h, const extent_return *r) {
    extent *e = r->e;
    if (r->fate == EXTENT_KEPT) {
        if (e->prot != r->prot) { /* mapped back with another access than it had */
            if (e->prot == GPU_PROT_READ_WRITE) h->protected_extents++;
            else if (r->prot == GPU_PROT_READ_WRITE) h->protected_extents--;
            e->prot = (uint8_t)r->prot;
        }
        return;
    }
    if (r->fate == EXTENT_LOST) count_lost(h);
    heap_extent_drop_locked(h, e);
}

/* extents_give_back_all's walk: one extent at a time, books untouched. */
static bool give_back_one(extent *e, void *arg) {
    extent_return r = {.e = e, .prot = (gpu_prot_t)e->prot};
    (void)extents_give_back(arg, &r, 1, false);
    return true;
}

void extents_give_back_all(gpu_heap_t *h) { extmap_walk(&h->extents, give_back_one, h); }
