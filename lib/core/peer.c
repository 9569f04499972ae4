/*
 * peer.c — other devices' access to a heap's memory (peer access).
 *
 * Memory from cudaMalloc becomes reachable from device D once D enables peer
 * access to the device that owns it (cudaDeviceEnablePeerAccess). Memory mapped
 * through the virtual memory API follows another rule: each mapping is reachable
 * from exactly the devices cuMemSetAccess named. So a heap keeps a set of peer
 * devices in its backend door (vmm_door.peers, one bit per ordinal), and:
 *  - every set_access through the door grants the peers the same protection as
 *    the owner (backend/door.c), so extents mapped later reach them too;
 *  - heap_peer_add grants a new peer access to every extent mapped now.
 *
 * The word changes only with the heap lock held (add, a failed add taking its
 * bit back, remove); it is atomic because the door reads it without the lock,
 * in the set_access calls made with the lock dropped. The race between the two
 * paths above is closed by the lock: heap_peer_add sets the bit and lists the
 * extents in one hold of it; a thread backing a new extent reads the set under
 * the lock before it leaves to call the driver, and after it puts the extent in
 * the map (under the lock again) grants whatever bits appeared in between
 * (heap_peer_catch_up_locked). An extent therefore either is in the list, or was
 * backed by a thread that sees the new bit. The grants themselves are driver
 * calls and run with the lock dropped; an extent unmapped in the meantime (trim)
 * makes its grant fail, which is not an error.
 *
 * Extents that gpu_pause gave back have nothing to grant: resume maps them
 * through the same door, so they reach every peer then (pause.c).
 *
 * Removing a peer stops grants to future extents; extents already granted keep
 * the peer's access (the safe direction: a program that disabled peer access
 * does not touch that memory any more).
 */
#include <stdlib.h>

#include "core/internal.h"

/* One extent as listed under the lock, granted after it is dropped. */
typedef struct peer_grant {
    uintptr_t va;
    size_t size;
    gpu_prot_t prot;
} peer_grant;

struct lister {
    peer_grant *list;
    size_t n, cap;
};

static bool list_one(extent *e, void *arg) {
    struct lister *ls = arg;
    if (e->paused) return true; /* nothing mapped: resume grants every peer */
    if (ls->n == ls->cap) return false;
    ls->list[ls->n++] = (peer_grant){.va = e->va, .size = e->size, .prot = (gpu_prot_t)e->prot};
    return true;
}

/* Lists every extent of h into a malloc'd array (*out, *n). Lock held. */
static int extents_list_locked(gpu_heap_t *h, peer_grant **out, size_t *n) {
    peer_grant *list = malloc((h->nextents ? h->nextents : 1) * sizeof *list);
    if (!list) return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory listing %zu extents", h->nextents);
    struct lister ls = {.list = list, .cap = h->nextents};
    extmap_walk(&h->extents, list_one, &ls);
    *out = list;
    *n = ls.n;
    return GPU_OK;
}

/* True when an extent of exactly [va, va+size) is still mapped (not trimmed,
 * not paused meanwhile). Lock held. */
static bool extent_still_there(gpu_heap_t *h, uintptr_t va, size_t size) {
    extent *e = extmap_find(&h->extents, va);
    return e && e->va == va && e->size == size && !e->paused && !e->moving;
}

int heap_peer_add(gpu_heap_t *h, int device) {
    if (device < 0 || device >= GH_MAX_PEERS)
        return gh_note(GPU_ERR_INVALID, "peer device %d is out of range (0..%d)", device, GH_MAX_PEERS - 1);
    if (device == h->door.b->caps.device) return GPU_OK; /* the owner has access already */
    uint64_t bit = (uint64_t)1 << device;
    heap_lock(h);
    heap_settle_locked(h); /* not while a pause or resume moves extents */
    if (atomic_load(&h->door.peers) & bit) {
        heap_unlock(h);
        return GPU_OK;
    }
    peer_grant *list = NULL;
    size_t n = 0;
    int rc = extents_list_locked(h, &list, &n);
    if (rc == GPU_OK) atomic_fetch_or(&h->door.peers, bit);
    heap_unlock(h);
    if (rc != GPU_OK) return rc;
    for (size_t i = 0; i < n && rc == GPU_OK; i++) {
        int r = vmm_call_grant(&h->door, list[i].va, list[i].size, device, list[i].prot);
        if (r == GPU_OK) continue;
        heap_lock(h);
        bool gone = !extent_still_there(h, list[i].va, list[i].size);
        heap_unlock(h);
        if (!gone) rc = gh_note(r, "granting device %d access to %#lx+%zu: %s", device, (unsigned long)list[i].va,
                                list[i].size, vmm_error());
    }
    free(list);
    if (rc != GPU_OK) { /* later extents need not reach a peer that failed */
        heap_lock(h);
        atomic_fetch_and(&h->door.peers, ~bit);
        heap_unlock(h);
    }
    return rc;
}

int heap_peer_remove(gpu_heap_t *h, int device) {
    if (device < 0 || device >= GH_MAX_PEERS)
        return gh_note(GPU_ERR_INVALID, "peer device %d is out of range (0..%d)", device, GH_MAX_PEERS - 1);
    heap_lock(h);
    atomic_fetch_and(&h->door.peers, ~((uint64_t)1 << device));
    heap_unlock(h);
    return GPU_OK;
}

uint64_t heap_peers(const gpu_heap_t *h) { return atomic_load(&h->door.peers); }

void heap_peer_catch_up_locked(gpu_heap_t *h, uintptr_t va, size_t size, uint64_t seen) {
    uint64_t missed = atomic_load(&h->door.peers) & ~seen;
    if (!missed) return;
    heap_unlock(h);
    /* The extent is fresh: read-write for its owner. A failure leaves the peer
     * without access to this one extent; the allocation itself stands. */
    if (vmm_call_grant_peers(&h->door, va, size, missed, GPU_PROT_READ_WRITE) != GPU_OK)
        (void)gh_note(GPU_ERR_BACKEND, "granting peers access to a new extent: %s", vmm_error());
    heap_lock(h);
}
