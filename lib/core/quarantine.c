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
 *
 * The sealed batches are a FIFO of events.c's, each entry the batch and the
 * cover number taken before its event was recorded. A fence retires the batches
 * sealed before it while the lock is held; their events are spent, given back to
 * the driver only once the lock is dropped (events.c).
 *
 * A block large enough to pass the quarantine's budget alone is waited for at
 * once by the next allocation that wants its memory: that miss seals and looks
 * straight away, and a GPU that has not yet passed an event recorded a moment
 * before costs a device fence. So its free records the next seal's event early
 * (quarantine_early_locked), and the seal takes that event instead of recording
 * one — as long as no block entered the quarantine after it, else it is spent.
 * Same seals, same batches, same looks: one record per reuse, made at the free.
 */
#include "core/internal.h"

/* The sealed batches as events.c sees them. */
static inline event_queue seals(gpu_heap_t *h) {
    return (event_queue){.e = h->sealed, .n = &h->nsealed, .busy = &h->seal_busy, .cap = SEALED_MAX};
}

void quarantine_cover_done(gpu_heap_t *h, uint64_t v) {
    uint64_t d = atomic_load_explicit(&h->cover_done, memory_order_relaxed);
    while (d < v && !atomic_compare_exchange_weak_explicit(&h->cover_done, &d, v, memory_order_release, memory_order_relaxed)) {}
}

quarantine_batch quarantine_take_locked(gpu_heap_t *h) {
    quarantine_batch q = {.head = h->quarantine};
    for (block *b = q.head; b; b = b->next_free) q.bytes += b->size, q.blocks++;
    h->quarantine = NULL;
    h->draining_bytes += q.bytes;
    h->draining_blocks += q.blocks;
    return q;
}

void quarantine_untake_locked(gpu_heap_t *h, const quarantine_batch *q, bool failed) {
    h->draining_bytes -= q->bytes;
    h->draining_blocks -= q->blocks;
    if (!failed || !q->head) return;
    block *last = q->head;
    while (last->next_free) last = last->next_free;
    last->next_free = h->quarantine;
    h->quarantine = q->head;
}

void quarantine_free_locked(gpu_heap_t *h, const quarantine_batch *q) {
    h->quarantine_bytes -= q->bytes;
    h->quarantine_blocks -= q->blocks;
    for (block *b = q->head, *next; b; b = next) {
        next = b->next_free;
        block_release_free(h, b, BLOCK_IDLE);
    }
}

/* The early event as events.c sees it: a queue of one. */
static inline event_queue earlies(gpu_heap_t *h) {
    return (event_queue){.e = &h->early, .n = &h->nearly, .busy = &h->early_busy, .cap = 1};
}

/* The early event, if one covers everything in the quarantine (none entered
 * after it), taken for a seal; NULL otherwise, and a stale one is spent. */
static bool early_take(gpu_heap_t *h, event_entry *out) {
    if (!h->nearly || h->early_busy) return false;
    h->nearly = 0;
    if (h->quarantined != h->early_mark) {
        h->spent[h->nspent++] = h->early.ev; /* given back at the next call made without the lock */
        return false;
    }
    *out = h->early;
    return true;
}

void quarantine_early_locked(gpu_heap_t *h) {
    if (!h->quarantine || h->early_busy || !vmm_call_has_fence_record(&h->door) || quarantine_legacy()) return;
    event_entry old;
    if (early_take(h, &old)) h->spent[h->nspent++] = old.ev; /* it covers less than a new one would */
    uint64_t mark = h->quarantined;
    uint64_t seq = atomic_fetch_add(&h->cover_seq, 1); /* covers every block freed before this */
    if (events_record_locked(h, earlies(h), 0, EVENT_ON_CONTEXT, &(event_entry){.tag = seq}) == GPU_OK) h->early_mark = mark;
}

/* Records one context-wide event (or takes the early one) and hangs the
 * quarantine on it; with empty_ok also when the quarantine is empty (the event
 * then covers thread caches' frees alone). */
static int seal(gpu_heap_t *h, uintptr_t stream, bool empty_ok) {
    if ((!h->quarantine && !empty_ok) || h->nsealed == SEALED_MAX || h->seal_busy || !vmm_call_has_fence_record(&h->door))
        return GPU_OK;
    event_entry early;
    if (early_take(h, &early)) { /* recorded already: nothing to record, nothing a capture could mind */
        early.q = quarantine_take_locked(h);
        quarantine_untake_locked(h, &early.q, false); /* no driver call: the batch stops draining at once */
        h->sealed[h->nsealed++] = early;
        h->seal_events++;
        return GPU_OK;
    }
    quarantine_batch q = quarantine_take_locked(h);
    uint64_t seq = atomic_fetch_add(&h->cover_seq, 1); /* covers every block freed before this */
    int rc = events_record_locked(h, seals(h), stream, EVENT_ON_CONTEXT, &(event_entry){.tag = seq, .q = q});
    quarantine_untake_locked(h, &q, rc != GPU_OK);
    if (rc != GPU_OK) return rc;
    h->seal_events++;
    return GPU_OK;
}

int quarantine_seal_locked(gpu_heap_t *h, uintptr_t stream) { return seal(h, stream, false); }

bool quarantine_cover_locked(gpu_heap_t *h, uint64_t tag) {
    if (quarantine_covered(h, tag)) return true;
    if (quarantine_order_locked(h, 0, true)) return quarantine_covered(h, tag); /* its cover number is past tag */
    if (h->nsealed) (void)quarantine_reap_locked(h);
    if (quarantine_covered(h, tag)) return true;
    if (atomic_load(&h->cover_seq) <= tag) (void)seal(h, 0, true); /* nothing recorded since those frees yet */
    return quarantine_covered(h, tag);
}

/* A sealed batch whose event completed (or a fence passed): its blocks become
 * idle, and so does every block freed before its cover number. */
static void release_batch(gpu_heap_t *h, const event_entry *s) {
    quarantine_cover_done(h, s->tag + 1);
    quarantine_free_locked(h, &s->q);
}

/* events_reap_locked's answer for a completed seal event. */
static bool batch_done(gpu_heap_t *h, const event_entry *e, void *arg) {
    (void)arg;
    release_batch(h, e);
    return true;
}

bool quarantine_reap_locked(gpu_heap_t *h) { return events_reap_locked(h, seals(h), false, batch_done, NULL); }

void quarantine_release_sealed_locked(gpu_heap_t *h, uint64_t before_seq) {
    for (unsigned i = 0; i < h->nsealed;) {
        if (h->sealed[i].tag >= before_seq || (h->seal_busy && i == 0)) { /* sealed after the fence began, or being queried */
            i++;
            continue;
        }
        event_entry s = events_retire_locked(h, seals(h), i); /* its event is given back once the lock is dropped */
        release_batch(h, &s);
    }
}

void quarantine_retire_locked(gpu_heap_t *h, block *b, uint64_t tag) {
    if (quarantine_covered(h, tag)) {
        heap_retire_locked(h, b, true);
        return;
    }
    for (unsigned i = 0; i < h->nsealed; i++) {
        quarantine_batch *q = &h->sealed[i].q;
        if (h->sealed[i].tag < tag || (h->seal_busy && i == 0)) continue; /* recorded before its free, or being asked */
        heap_quarantine_onto_locked(h, b, &q->head);
        q->bytes += b->size;
        q->blocks++;
        return;
    }
    heap_retire_locked(h, b, false);
}

/* ---- the free order --------------------------------------------------------- */

/* The legacy-order releases' events as events.c sees them. */
static inline event_queue orders(gpu_heap_t *h) {
    return (event_queue){.e = h->orders, .n = &h->norders, .busy = &h->order_busy, .cap = ORDERS_MAX};
}

/* events_reap_locked's answer for a release seen done. */
static bool order_seen(gpu_heap_t *h, const event_entry *e, void *arg) {
    (void)arg;
    if (e->tag > h->order_done) h->order_done = e->tag;
    return true;
}

void quarantine_orders_reap_locked(gpu_heap_t *h) {
    if (h->norders) (void)events_reap_locked(h, orders(h), false, order_seen, NULL);
}

static _Atomic int free_order = GPU_FREE_ORDER_EVENT;

bool quarantine_legacy(void) { return atomic_load_explicit(&free_order, memory_order_relaxed) == GPU_FREE_ORDER_LEGACY; }

bool quarantine_order_locked(gpu_heap_t *h, uintptr_t stream, bool empty_ok) {
    if (!quarantine_legacy() || h->seal_busy || !vmm_call_has_fence_order(&h->door)) return false;
    if (!h->quarantine && !h->nsealed && !empty_ok) return false;
    quarantine_batch q = quarantine_take_locked(h);
    uint64_t seq = atomic_fetch_add(&h->cover_seq, 1); /* covers every block freed before this */
    /* A paged heap keeps the event while there is room (a later one's completion
     * says as much): its trades unmap idle pages without a fence (trim.c). */
    vmm_event ev = 0;
    int rc = events_order_locked(h, &h->seal_busy, stream, h->page && h->norders < ORDERS_MAX ? &ev : NULL);
    quarantine_untake_locked(h, &q, rc != GPU_OK);
    if (rc != GPU_OK) return false; /* a capture, or a refusal: the blocks wait for an event or a fence as before */
    h->order_releases++;
    if (ev) { /* only this thread appends (seal_busy); a reap meanwhile only made room */
        h->orders[h->norders++] = (event_entry){.ev = ev, .tag = h->order_releases};
    }
    quarantine_free_locked(h, &q);
    quarantine_release_sealed_locked(h, seq); /* sealed before: their work is before the wait too */
    quarantine_cover_done(h, seq + 1);
    return true;
}

/* registry_each's callback when the order goes back to events: work issued
 * before the heap's last ordered release may still run, and blocks it released
 * may already be in new hands, whose work on a non-blocking stream would not
 * wait for it — one fence ends it. */
static void settle_order(gpu_heap_t *h, void *arg) {
    int *rc = arg;
    heap_lock(h);
    if (heap_order_owed(h)) {
        int r = heap_fence_locked(h, 0);
        if (r != GPU_OK && *rc == GPU_OK) *rc = r;
    }
    heap_unlock(h);
}

int heap_set_free_order(gpu_free_order_t order) {
    if (order != GPU_FREE_ORDER_EVENT && order != GPU_FREE_ORDER_LEGACY)
        return gh_note(GPU_ERR_INVALID, "free order %d: GPU_FREE_ORDER_EVENT or GPU_FREE_ORDER_LEGACY", (int)order);
    int rc = GPU_OK;
    if (atomic_exchange(&free_order, (int)order) == GPU_FREE_ORDER_LEGACY && order == GPU_FREE_ORDER_EVENT)
        registry_each(settle_order, &rc); /* rare (once per process at most under the interposer): heap creation waits meanwhile */
    return rc;
}

gpu_free_order_t heap_free_order(void) { return (gpu_free_order_t)atomic_load(&free_order); }

void quarantine_close(gpu_heap_t *h) {
    events_close(h, orders(h));
    events_close(h, earlies(h));
    events_close(h, seals(h));
}
