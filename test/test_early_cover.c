/*
 * test_early_cover.c — the free of a large block records the next seal's event
 * early (lib/core/quarantine.c), and reuse stays as safe as before.
 *
 * A block that passes the quarantine's budget alone is waited for at once by
 * the allocation that reuses it. Its free records the context-wide event then,
 * and the seal that miss makes takes that event instead of recording one: a
 * warm pair of large blocks makes one record (at the free) and one query (at the
 * allocation). The event covers only what was quarantined before it: a block
 * freed after it makes the seal record a new one. With the event not yet
 * complete the block is not handed out before a fence. Thread caches off: this is
 * the heap's path (a thread's cache keeps a freed large block itself, with the
 * same record and query: test_tcache.c). Host backend, white-box
 * for the door's counters and the event knob (lib/core/internal.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "core/internal.h"
#include "util.h"

#define LARGE (256 * MiB)

/* The heap's own path: with thread caches a thread keeps a freed large block
 * itself until its next allocation (lib/cache/big.c, test_tcache.c). */
static gpu_heap_t *heap_uncached(void) {
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    cfg.thread_cache = 0;
    return HEAP_CREATE(&cfg);
}

static uint64_t calls(gpu_heap_t *h, vmm_op op) { return atomic_load(&h->door.counts.calls[op]); }

/* A warm pair: the free records, the allocation only queries, and the block
 * comes back without a fence. */
static void test_pair_records_at_free(void **state) {
    (void)state;
    gpu_heap_t *h = heap_uncached();
    void *p = gpu_heap_malloc(h, LARGE);
    assert_non_null(p);
    for (int i = 0; i < 3; i++) { /* warm */
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        p = gpu_heap_malloc(h, LARGE);
        assert_non_null(p);
    }
    for (int i = 0; i < 10; i++) {
        uint64_t r0 = calls(h, VMM_OP_EVENT_RECORD), q0 = calls(h, VMM_OP_EVENT_QUERY);
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        assert_int_equal(calls(h, VMM_OP_EVENT_RECORD) - r0, 1);
        assert_int_equal(calls(h, VMM_OP_EVENT_QUERY) - q0, 0);
        uint64_t r1 = calls(h, VMM_OP_EVENT_RECORD), q1 = calls(h, VMM_OP_EVENT_QUERY);
        void *q = gpu_heap_malloc(h, LARGE);
        assert_ptr_equal(q, p);
        assert_int_equal(calls(h, VMM_OP_EVENT_RECORD) - r1, 0);
        assert_int_equal(calls(h, VMM_OP_EVENT_QUERY) - q1, 1);
        p = q;
    }
    assert_int_equal(STATS(h).fences, 0);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A block freed after the early event is not covered by it: the seal records
 * a new event, and the stale one is given back. */
static void test_later_free_makes_it_stale(void **state) {
    (void)state;
    gpu_heap_t *h = heap_uncached();
    void *p = gpu_heap_malloc(h, LARGE), *small = gpu_heap_malloc_flags(h, 64 * KiB, GPU_ALLOC_OWNED);
    assert_non_null(p);
    assert_non_null(small);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK); /* early event */
    uint64_t r0 = calls(h, VMM_OP_EVENT_RECORD);
    assert_int_equal(gpu_heap_free(h, small), GPU_OK); /* enters the quarantine after it */
    void *q = gpu_heap_malloc(h, LARGE);
    assert_non_null(q);
    assert_int_equal(calls(h, VMM_OP_EVENT_RECORD) - r0, 1); /* the seal recorded its own */
    assert_int_equal(h->nearly, 0);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* An early event the GPU has not passed yet: the block stays away until a
 * fence has passed its free. */
static void test_pending_event_keeps_block(void **state) {
    (void)state;
    gpu_heap_t *h = heap_uncached();
    void *p = gpu_heap_malloc(h, LARGE);
    assert_non_null(p);
    vmm_host_set_event_delay(h->door.b, 1000000);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    uint64_t fences = STATS(h).fences;
    void *q = gpu_heap_malloc(h, LARGE);
    assert_non_null(q);
    if (q == p) assert_true(STATS(h).fences > fences); /* reused only after a fence */
    vmm_host_set_event_delay(h->door.b, 0);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* While a capture is in progress no context-wide event is recorded, early or
 * not; the pair still works (new memory, no fence). */
static void test_no_early_event_while_capturing(void **state) {
    (void)state;
    gpu_heap_t *h = heap_uncached();
    void *p = gpu_heap_malloc(h, LARGE);
    assert_non_null(p);
    vmm_host_set_capturing(h->door.b, 0, true);
    uint64_t r0 = calls(h, VMM_OP_EVENT_RECORD);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_int_equal(calls(h, VMM_OP_EVENT_RECORD) - r0, 0);
    void *q = gpu_heap_malloc(h, LARGE);
    assert_non_null(q);
    assert_ptr_not_equal(q, p);
    assert_int_equal(STATS(h).fences, 0);
    vmm_host_set_capturing(h->door.b, 0, false);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* The host backend's clock, which replays set (gpuheap-replay --lag): an event
 * recorded with a 10 ms lag is pending until the clock reads 10 ms past its
 * record, a wait completes it at once, and without a lag events are done at once. */
static void test_host_clock_lag(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(1 * GiB, 0, 0);
    vmm_backend *b;
    assert_int_equal(vmm_host_open(&cfg, &b), GPU_OK);
    const uint64_t lag = 10000000;
    vmm_event e1, e2, e3;
    vmm_host_set_clock(b, 5000, lag);
    assert_int_equal(b->ops->fence_record(b, 0, &e1), GPU_OK);
    assert_int_equal(b->ops->event_query(b, e1), GH_PENDING);
    vmm_host_set_clock(b, 5000 + lag - 1, lag);
    assert_int_equal(b->ops->event_query(b, e1), GH_PENDING);
    vmm_host_set_clock(b, 5000 + lag, lag);
    assert_int_equal(b->ops->event_query(b, e1), GPU_OK);
    assert_int_equal(b->ops->event_record(b, 0, &e2), GPU_OK); /* recorded now: ready 10 ms on */
    assert_int_equal(b->ops->event_query(b, e2), GH_PENDING);
    assert_int_equal(b->ops->event_wait(b, e2), GPU_OK);
    assert_int_equal(b->ops->event_query(b, e2), GPU_OK);
    vmm_host_set_clock(b, 0, 0);
    assert_int_equal(b->ops->event_record(b, 0, &e3), GPU_OK);
    assert_int_equal(b->ops->event_query(b, e3), GPU_OK);
    b->ops->event_release(b, e1);
    b->ops->event_release(b, e2);
    b->ops->event_release(b, e3);
    b->ops->close(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pair_records_at_free),
        cmocka_unit_test(test_later_free_makes_it_stale),
        cmocka_unit_test(test_pending_event_keeps_block),
        cmocka_unit_test(test_no_early_event_while_capturing),
        cmocka_unit_test(test_host_clock_lag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
