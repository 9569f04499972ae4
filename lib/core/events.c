/*
 * events.c — the one FIFO of events the heap waits on: each entry is a point in
 * the GPU's order (an event) and what becomes safe once the GPU has passed it.
 *
 * Two owners keep such a FIFO. The quarantine hangs sealed batches of freed
 * blocks on context-wide events (quarantine.c); a stream pool hangs the epochs of
 * its frees on events recorded on its stream (stream.c). Both do the same three
 * things, and do them here: record an event and append it, with the lock dropped
 * around the driver call and the owner's busy flag set meanwhile; reap, oldest
 * first, asking the driver (query, or wait) with the lock dropped and handing each
 * completed entry back to the owner, who makes its blocks idle; and close. An
 * entry that the owner retires while it holds the lock (a device fence made it
 * safe) leaves its event here, spent: no driver call is ever made under the
 * heap's lock, so spent events are given back at the next record or reap, which
 * drops the lock anyway, or when the heap closes.
 *
 * The owner keeps the entries, their count and its busy flag among its own books
 * (the names others read stay where they were); an event_queue names them.
 */
#include <string.h>

#include "core/internal.h"

/* Takes the spent events off the heap's list (lock held), to give back once it
 * is dropped. Returns how many. */
static unsigned take_spent(gpu_heap_t *h, vmm_event *out) {
    unsigned n = h->nspent;
    memcpy(out, h->spent, n * sizeof *out);
    h->nspent = 0;
    return n;
}

/* Gives events back to the driver. Lock not held. */
static void give_back(gpu_heap_t *h, const vmm_event *ev, unsigned n) {
    for (unsigned i = 0; i < n; i++) vmm_call_event_release(&h->door, ev[i]);
}

/* Records an event of kind (an ordered one only when ev is not NULL), busy set
 * while the lock is dropped around the call. */
static int record(gpu_heap_t *h, bool *busy, event_kind kind, uintptr_t stream, vmm_event *ev) {
    vmm_event spent[SPENT_MAX];
    unsigned nspent = take_spent(h, spent);
    *busy = true;
    heap_unlock(h);
    give_back(h, spent, nspent);
    int rc = kind == EVENT_ON_STREAM ? vmm_call_event_record(&h->door, stream, ev)
           : kind == EVENT_ON_CONTEXT ? vmm_call_fence_record(&h->door, stream, ev) /* would break a capture: refused then */
                                      : vmm_call_fence_order(&h->door, stream, ev);
    heap_lock(h);
    *busy = false;
    return rc;
}

int events_record_locked(gpu_heap_t *h, event_queue q, uintptr_t stream, event_kind kind, const event_entry *item) {
    gh_assert(!*q.busy && *q.n < q.cap, "one thread at a time records, into a queue with room");
    gh_assert(kind != EVENT_ORDERED, "an ordered record keeps no event to append");
    vmm_event ev = 0;
    int rc = record(h, q.busy, kind, stream, &ev);
    if (rc != GPU_OK) return rc;
    q.e[*q.n] = *item;
    q.e[*q.n].ev = ev;
    ++*q.n;
    return GPU_OK;
}

int events_order_locked(gpu_heap_t *h, bool *busy, uintptr_t stream, vmm_event *ev) {
    gh_assert(!*busy, "one thread at a time records");
    return record(h, busy, EVENT_ORDERED, stream, ev);
}

/* Drops the oldest entry. */
static void pop_front(event_queue q) {
    memmove(&q.e[0], &q.e[1], (*q.n - 1) * sizeof q.e[0]);
    --*q.n;
}

bool events_reap_locked(gpu_heap_t *h, event_queue q, bool wait, events_done_fn done, void *arg) {
    if (*q.busy) return false; /* another thread is at it */
    bool any = false;
    *q.busy = true;
    while (*q.n) {
        vmm_event ev = q.e[0].ev, spent[SPENT_MAX];
        unsigned nspent = take_spent(h, spent);
        heap_unlock(h);
        give_back(h, spent, nspent);
        int rc = wait ? vmm_call_event_wait(&h->door, ev) : vmm_call_event_query(&h->door, ev);
        if (rc == GPU_OK) vmm_call_event_release(&h->door, ev);
        heap_lock(h);
        if (rc != GPU_OK) break; /* not yet (or broken: asked again later, and a fence covers it) */
        event_entry e = q.e[0]; /* the owner's busy flag kept it in front meanwhile */
        pop_front(q);
        any |= done(h, &e, arg);
    }
    *q.busy = false;
    return any;
}

event_entry events_retire_locked(gpu_heap_t *h, event_queue q, unsigned i) {
    gh_assert(i < *q.n && !(*q.busy && i == 0), "the entry exists and no thread is asking about it");
    /* Room: a quarantine holds at most SEALED_MAX entries and spent events together,
     * since every record gives the spent ones back before it appends (and one
     * more spent slot is the early event's, quarantine.c). */
    gh_assert(h->nspent < SPENT_MAX, "spent events fit");
    event_entry e = q.e[i];
    h->spent[h->nspent++] = e.ev;
    memmove(&q.e[i], &q.e[i + 1], (*q.n - i - 1) * sizeof q.e[0]);
    --*q.n;
    return e;
}

void events_close(gpu_heap_t *h, event_queue q) {
    for (unsigned i = 0; i < *q.n; i++) vmm_call_event_release(&h->door, q.e[i].ev);
    *q.n = 0;
    vmm_event spent[SPENT_MAX];
    give_back(h, spent, take_spent(h, spent));
}
