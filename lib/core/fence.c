/*
 * fence.c — waiting for the GPU, so that freed memory can be reused.
 *
 * Freed blocks wait in the quarantine, or in the pool of the stream they were
 * freed on, until the GPU work issued before the free has finished. Events show
 * that without waiting (quarantine.c, stream.c); one device fence waits for all
 * of it and makes the quarantine, every sealed batch and every stream-freed block
 * idle at once. The allocation path fences only when the quarantine outgrows its
 * budget (alloc.c); out of memory waits for everything and gives idle memory
 * back (heap_reclaim_locked). No extent is ever unmapped while quarantined.
 */
#include "core/internal.h"

/* Bytes freed on streams and not yet idle. */
static size_t stream_bytes(const gpu_heap_t *h) {
    size_t n = 0;
    for (size_t i = 0; i < h->npools; i++) n += h->pools[i]->free.bytes;
    return n;
}

int heap_fence_locked(gpu_heap_t *h, uintptr_t stream) {
    uint64_t released = h->order_releases; /* releases in legacy order before the fence began */
    quarantine_batch q = quarantine_take_locked(h);
    uint32_t epochs[STREAM_POOLS_MAX];
    size_t npools = stream_fence_begin_locked(h, epochs);
    uint64_t seq = atomic_fetch_add(&h->cover_seq, 1); /* the fence covers every block freed before this */
    heap_unlock(h);
    bool capturing = vmm_call_capturing(&h->door, stream);
    int rc = capturing ? GPU_ERR_CAPTURING : vmm_call_fence(&h->door);
    heap_lock(h);
    quarantine_untake_locked(h, &q, rc != GPU_OK); /* failed: nothing is released, the batch goes back */
    if (rc != GPU_OK)
        return capturing ? gh_note(rc, "a stream capture is in progress: the device fence waits for it to end")
                         : gh_note(rc, "device fence failed: %s", vmm_error());
    h->fences++;
    /* What releases in legacy order let run before the fence is done too — unless
     * one came while the lock was dropped, whose work may have begun after it. */
    if (released > h->order_done) h->order_done = released;
    quarantine_free_locked(h, &q);
    stream_fence_end_locked(h, epochs, npools);
    quarantine_release_sealed_locked(h, seq);
    quarantine_cover_done(h, seq + 1);
    return GPU_OK;
}

int heap_drain_locked(gpu_heap_t *h, uintptr_t stream) {
    if (!h->quarantine && !stream_bytes(h) && !h->nsealed) return GPU_OK;
    return heap_fence_locked(h, stream);
}

bool heap_reclaim_locked(gpu_heap_t *h) {
    if (h->npools) (void)stream_reap_locked(h, true);
    int rc = heap_trim_locked(h, 0);
    return rc == GPU_OK || rc == GPU_ERR_CAPTURING;
}
