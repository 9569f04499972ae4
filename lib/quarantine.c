/*
 * quarantine.c — giving freed blocks back without stopping the CPU.
 *
 * gpu_free quarantines a block until GPU work issued before the free has
 * finished. The blunt way to know is a device sync (heap_drain_locked), which
 * also waits for everything issued after the free — in a training loop, the
 * whole queue the CPU has run ahead. Sealing is the gentle way: one context-wide
 * event (cuCtxRecordEvent) recorded after all work issued so far covers every
 * block in the quarantine at that moment, and the batch hangs on it. A later miss
 * queries the events, oldest first, and the batches of completed ones become idle
 * memory for everyone; no thread waits. The heap still fences when memory would
 * otherwise grow past its budget, and a fence releases the batches sealed before
 * it too.
 *
 * Like a fence, recording a context-wide event during a stream capture would
 * invalidate the capture, so sealing asks first and leaves the quarantine alone
 * while a capture is in progress. A backend without context events (an older
 * driver) simply never seals.
 */
#include <string.h>

#include "internal.h"

#define SEALED_MAX (sizeof ((gpu_heap_t *)0)->sealed / sizeof ((gpu_heap_t *)0)->sealed[0])

int quarantine_seal_locked(gpu_heap_t *h, uintptr_t stream) {
    if (!h->quarantine || h->nsealed == SEALED_MAX || h->seal_busy || !h->door.b->ops->fence_record) return GPU_OK;
    block *batch = h->quarantine;
    size_t bytes = 0, n = 0;
    for (block *b = batch; b; b = b->next_free) bytes += b->size, n++;
    h->quarantine = NULL;
    h->draining_bytes += bytes; /* still quarantined while the lock is dropped */
    h->draining_blocks += n;
    h->seal_busy = true;
    heap_unlock(h);
    vmm_event ev = 0;
    bool capturing = vmm_call_capturing(&h->door, stream);
    int rc = capturing ? GPU_ERR_CAPTURING : vmm_call_fence_record(&h->door, &ev);
    heap_lock(h);
    h->seal_busy = false;
    h->draining_bytes -= bytes;
    h->draining_blocks -= n;
    if (rc != GPU_OK) { /* put the batch back in front of what was freed meanwhile */
        block *last = batch;
        while (last->next_free) last = last->next_free;
        last->next_free = h->quarantine;
        h->quarantine = batch;
        return rc;
    }
    h->sealed[h->nsealed++] = (struct sealed_batch){.batch = batch, .bytes = bytes, .blocks = n, .ev = ev, .seq = h->seal_seq++};
    h->seal_events++;
    return GPU_OK;
}

/* Makes sealed batch i idle and drops it from the list. */
static void release_batch(gpu_heap_t *h, unsigned i) {
    struct sealed_batch s = h->sealed[i];
    memmove(&h->sealed[i], &h->sealed[i + 1], (h->nsealed - i - 1) * sizeof h->sealed[0]);
    h->nsealed--;
    h->quarantine_bytes -= s.bytes;
    h->quarantine_blocks -= s.blocks;
    for (block *b = s.batch, *next; b; b = next) {
        next = b->next_free;
        block_release_free(h, b, BLOCK_IDLE);
    }
}

bool quarantine_reap_locked(gpu_heap_t *h) {
    bool any = false;
    if (h->seal_busy) return false; /* another thread is at it */
    h->seal_busy = true;
    while (h->nsealed) {
        vmm_event ev = h->sealed[0].ev;
        heap_unlock(h);
        int rc = vmm_call_event_query(&h->door, ev);
        if (rc == GPU_OK) vmm_call_event_release(&h->door, ev);
        heap_lock(h);
        if (rc != GPU_OK) break; /* not yet: the next miss asks again (and a fence covers it) */
        release_batch(h, 0);
        any = true;
    }
    h->seal_busy = false;
    return any;
}

void quarantine_release_sealed_locked(gpu_heap_t *h, uint64_t before_seq) {
    for (unsigned i = 0; i < h->nsealed;) {
        if (h->sealed[i].seq >= before_seq || (h->seal_busy && i == 0)) { /* sealed after the fence began, or being queried */
            i++;
            continue;
        }
        vmm_call_event_release(&h->door, h->sealed[i].ev);
        release_batch(h, i);
    }
}

void quarantine_close(gpu_heap_t *h) {
    for (unsigned i = 0; i < h->nsealed; i++) vmm_call_event_release(&h->door, h->sealed[i].ev);
    h->nsealed = 0;
}
