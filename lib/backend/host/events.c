/*
 * events.c — the host backend's fence, events and graph capture, and the knobs
 * tests turn to make them behave like a busy GPU.
 *
 * Nothing runs asynchronously on the host: every operation is done when it
 * returns, so the fence waits for nothing and an event could complete at once.
 * Tests of stream-ordered frees and of the quarantine need events that are not
 * done yet and streams that are being captured, so an event is a slot that
 * completes only after event_delay queries (vmm_host_set_event_delay; waiting on
 * it completes it), and a test can mark streams as captured
 * (vmm_host_set_capturing). A replay can make events trail a clock it sets
 * (vmm_host_set_clock): a GPU running behind the CPU, as a recorded program's
 * was. A context-wide event (fence_record, fence_order) is an event
 * like any other.
 */
#include <limits.h>

#include "backend/host/host_internal.h"

/* Nothing runs asynchronously on the host: every operation is done when it returns. */
int host_fence(vmm_backend *b) {
    (void)b;
    return GPU_OK;
}

/* Records an event: a slot that completes after event_delay queries. */
int host_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    host_backend *hb = host_of(b);
    (void)stream;
    pthread_mutex_lock(&hb->lock);
    size_t i = 0;
    while (i < hb->nevents && hb->event_left[i] != UINT_MAX) i++;
    if (i == hb->nevents) { /* every slot taken: grow the table, new slots free */
        size_t cap = hb->nevents;
        size_t cap_ready = hb->nevents;
        if (!host_grow((void **)&hb->event_left, &cap, hb->nevents + 1, sizeof *hb->event_left) ||
            !host_grow((void **)&hb->event_ready, &cap_ready, cap, sizeof *hb->event_ready)) {
            pthread_mutex_unlock(&hb->lock);
            return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "event_record: out of host memory");
        }
        for (size_t k = hb->nevents; k < cap; k++) hb->event_left[k] = UINT_MAX;
        hb->nevents = cap;
    }
    hb->event_left[i] = hb->event_delay;
    hb->event_ready[i] = hb->clock_ns + hb->lag_ns;
    pthread_mutex_unlock(&hb->lock);
    *out = (vmm_event)(i + 1);
    return GPU_OK;
}

/* The slot of a recorded event, or NULL. Called with the lock held. */
static unsigned *host_event_slot(host_backend *hb, vmm_event ev) {
    return ev >= 1 && ev <= hb->nevents && hb->event_left[ev - 1] != UINT_MAX ? &hb->event_left[ev - 1] : NULL;
}

int host_event_query(vmm_backend *b, vmm_event ev) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    unsigned *left = host_event_slot(hb, ev);
    bool lagging = left && hb->clock_ns < hb->event_ready[ev - 1];
    int rc = !left ? vmm_fail(b, GPU_ERR_INVALID, "event_query: %llu is not a recorded event", (unsigned long long)ev)
             : *left || lagging ? GH_PENDING : GPU_OK;
    if (left && *left) --*left;
    pthread_mutex_unlock(&hb->lock);
    return rc;
}

int host_event_wait(vmm_backend *b, vmm_event ev) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    unsigned *left = host_event_slot(hb, ev);
    if (left) *left = 0, hb->event_ready[ev - 1] = 0;
    pthread_mutex_unlock(&hb->lock);
    return left ? GPU_OK : vmm_fail(b, GPU_ERR_INVALID, "event_wait: %llu is not a recorded event", (unsigned long long)ev);
}

void host_event_release(vmm_backend *b, vmm_event ev) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    unsigned *left = host_event_slot(hb, ev);
    if (left) *left = UINT_MAX;
    pthread_mutex_unlock(&hb->lock);
}

/* The host has no queue: a context-wide event is an event like any other,
 * refused while a stream it would break is marked as captured. */
int host_fence_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    if ((stream && host_capturing(b, stream)) || host_capturing(b, 0)) return GPU_ERR_CAPTURING;
    return host_event_record(b, 0, out);
}

/* No queue to order either: a record refused as fence_record's is, and counted
 * (orders, for tests: vmm_host_counts). Its event completes as any other does
 * (at once, or after the lag of vmm_host_set_clock). */
int host_fence_order(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    vmm_event ev;
    int rc = host_fence_record(b, stream, &ev);
    if (rc != GPU_OK) return rc;
    if (out) *out = ev;
    else host_event_release(b, ev);
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    hb->orders++;
    pthread_mutex_unlock(&hb->lock);
    return GPU_OK;
}

int host_capturing(vmm_backend *b, uintptr_t stream) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    int on = 0;
    for (size_t i = 0; i < hb->ncapturing; i++) on |= hb->capturing[i] == stream;
    pthread_mutex_unlock(&hb->lock);
    return on;
}

void vmm_host_set_event_delay(vmm_backend *b, unsigned queries) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    hb->event_delay = queries;
    pthread_mutex_unlock(&hb->lock);
}

void vmm_host_set_clock(vmm_backend *b, uint64_t now_ns, uint64_t lag_ns) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    hb->clock_ns = now_ns;
    hb->lag_ns = lag_ns;
    pthread_mutex_unlock(&hb->lock);
}

void vmm_host_set_capturing(vmm_backend *b, uintptr_t stream, bool on) {
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    size_t i = 0;
    while (i < hb->ncapturing && hb->capturing[i] != stream) i++;
    if (on && i == hb->ncapturing && hb->ncapturing < sizeof hb->capturing / sizeof hb->capturing[0])
        hb->capturing[hb->ncapturing++] = stream;
    if (!on && i < hb->ncapturing) hb->capturing[i] = hb->capturing[--hb->ncapturing];
    pthread_mutex_unlock(&hb->lock);
}
