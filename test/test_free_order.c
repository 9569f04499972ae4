/*
 * test_free_order.c — legacy free order (gpu_set_free_order): a freed block is
 * handed out again at once, the legacy stream made to wait, and going back to
 * events fences whatever was released that way.
 *
 * The host backend's events are made never to complete on their own
 * (vmm_host_set_event_delay), as on a GPU far behind the CPU: in event order a
 * freed block then stays away until a fence; in legacy order the next miss
 * releases it with one fence_order (vmm_host_counts.orders) and no fence, query
 * or new mapping. White-box for the door's counters (lib/core/internal.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "core/internal.h"
#include "util.h"

#define LARGE (256 * MiB)
#define FAR_BEHIND 1000000u /* queries before a host event completes */

static uint64_t calls(gpu_heap_t *h, vmm_op op) { return atomic_load(&h->door.counts.calls[op]); }

static size_t orders(gpu_heap_t *h) {
    vmm_host_counts c;
    vmm_host_counts_get(h->door.b, &c);
    return c.orders;
}

static int order_event(void **state) {
    (void)state;
    return gpu_set_free_order(GPU_FREE_ORDER_EVENT) == GPU_OK ? 0 : -1;
}

/* A heap whose events never complete unless waited for. */
static gpu_heap_t *far_behind(void) {
    gpu_heap_t *h = HEAP_NEW(0);
    vmm_host_set_event_delay(h->door.b, FAR_BEHIND);
    return h;
}

/* Event order: the freed block waits; legacy order: the same block at once,
 * with one fence_order and neither a fence, a query nor a new mapping. */
static void test_legacy_hands_out_at_once(void **state) {
    (void)state;
    gpu_heap_t *h = far_behind();
    void *p = gpu_heap_malloc(h, LARGE);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    void *q = gpu_heap_malloc(h, LARGE);
    assert_non_null(q);
    if (q == p) assert_true(STATS(h).fences > 0); /* event order: only after a fence */
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    (void)gpu_heap_trim(h, 0);

    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    assert_int_equal(gpu_free_order(), GPU_FREE_ORDER_LEGACY);
    p = gpu_heap_malloc(h, LARGE);
    assert_non_null(p);
    for (int i = 0; i < 20; i++) {
        gpu_stats_t s0 = STATS(h);
        size_t o0 = orders(h);
        uint64_t q0 = calls(h, VMM_OP_EVENT_QUERY);
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        q = gpu_heap_malloc(h, LARGE);
        assert_ptr_equal(q, p);
        gpu_stats_t s1 = STATS(h);
        assert_int_equal(orders(h) - o0, 1);
        assert_int_equal(s1.order_releases - s0.order_releases, 1);
        assert_int_equal(s1.fences, s0.fences);
        assert_int_equal(calls(h, VMM_OP_EVENT_QUERY), q0);
        assert_int_equal(s1.backend_map, s0.backend_map);
        p = q;
    }
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A large block the thread keeps from its free (lib/cache/big.c) goes back to
 * the heap before any other allocation of the thread: gpu_calloc of its size
 * gets it at once, by one ordered release, with no fence and no new mapping. */
static void test_legacy_kept_block_serves_calloc(void **state) {
    (void)state;
    gpu_heap_t *h = far_behind();
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    for (int i = 0; i < 3; i++) {
        void *p = gpu_heap_malloc(h, LARGE);
        assert_non_null(p);
        gpu_stats_t s0 = STATS(h);
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        assert_int_equal(STATS(h).cached_bytes, LARGE);
        void *z = gpu_heap_calloc(h, 1, LARGE);
        assert_ptr_equal(z, p);
        gpu_stats_t s1 = STATS(h);
        assert_int_equal(s1.order_releases - s0.order_releases, 1);
        assert_int_equal(s1.fences, s0.fences);
        assert_int_equal(s1.backend_map, s0.backend_map);
        assert_int_equal(s1.cached_bytes, 0);
        assert_int_equal(gpu_heap_free(h, z), GPU_OK);
    }
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* Releases come in batches: a warm loop of 16 MiB pairs releases once per
 * quarantine budget's worth (64 MiB here: a few blocks), not once per pair, and
 * maps no more than that budget beside the block in use; never a fence. */
static void test_legacy_releases_in_batches(void **state) {
    (void)state;
    enum { PAIRS = 200 };
    gpu_heap_t *h = far_behind();
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    void *p = gpu_heap_malloc(h, 16 * MiB);
    assert_non_null(p);
    for (int i = 0; i < PAIRS; i++) {
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        assert_non_null(p = gpu_heap_malloc(h, 16 * MiB));
    }
    gpu_stats_t s = STATS(h);
    print_message("%d pairs of 16 MiB: %llu releases in order, %zu MiB mapped at the peak\n", PAIRS,
                  (unsigned long long)s.order_releases, (size_t)(s.peak_mapped_bytes >> 20));
    assert_true(s.order_releases > 0);
    assert_true(s.order_releases <= PAIRS / 3);
    assert_true(s.peak_mapped_bytes <= 64 * MiB + 2 * 16 * MiB + 64 * MiB); /* the budget, the block, the physical slack */
    assert_int_equal(s.fences, 0);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* Small blocks go through the thread caches, whose covers are released the same
 * way. With no event ever completing, a loop of thousands of frees and
 * allocations fences in event order; in legacy order, once warm, it maps nothing
 * new and never fences. */
enum { SMALL_N = 3000 };
static void *small[SMALL_N];

static void small_round(gpu_heap_t *h, bool free_first) {
    for (int i = 0; free_first && i < SMALL_N; i++) assert_int_equal(gpu_heap_free(h, small[i]), GPU_OK);
    for (int i = 0; i < SMALL_N; i++) assert_non_null(small[i] = gpu_heap_malloc(h, 1024 + (size_t)(i % 7) * 512));
}

static void test_legacy_small_blocks_never_wait(void **state) {
    (void)state;
    gpu_heap_t *h = far_behind();
    small_round(h, false);
    for (int round = 0; round < 3; round++) small_round(h, true);
    assert_true(STATS(h).fences > 0); /* event order: the quarantine's block budget fenced */

    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    small_round(h, true); /* warm */
    gpu_stats_t s0 = STATS(h);
    for (int round = 0; round < 5; round++) small_round(h, true);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.mapped_bytes, s0.mapped_bytes);
    assert_int_equal(s.fences, s0.fences);
    assert_true(s.order_releases > s0.order_releases);
    for (int i = 0; i < SMALL_N; i++) assert_int_equal(gpu_heap_free(h, small[i]), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* While a capture is in progress nothing is recorded on the legacy stream (it
 * would break the capture): the block waits, new memory is mapped, no fence. */
static void test_capture_keeps_event_order(void **state) {
    (void)state;
    gpu_heap_t *h = far_behind();
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    void *p = gpu_heap_malloc(h, LARGE);
    assert_non_null(p);
    vmm_host_set_capturing(h->door.b, 0, true);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    void *q = gpu_heap_malloc(h, LARGE);
    assert_non_null(q);
    assert_ptr_not_equal(q, p);
    assert_int_equal(orders(h), 0);
    assert_int_equal(STATS(h).fences, 0);
    vmm_host_set_capturing(h->door.b, 0, false);
    /* After the capture the next miss releases the block in order. */
    void *r = gpu_heap_malloc(h, LARGE);
    assert_ptr_equal(r, p);
    assert_int_equal(orders(h), 1);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    assert_int_equal(gpu_heap_free(h, r), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* Back to events: a heap that released blocks in legacy order fences once (its
 * work may now meet streams the legacy stream does not order), one that did not
 * does not; from then on a freed block waits again. */
static void test_back_to_events_fences_once(void **state) {
    (void)state;
    gpu_heap_t *used = far_behind(), *untouched = far_behind();
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    void *p = gpu_heap_malloc(used, LARGE), *u = gpu_heap_malloc(untouched, LARGE);
    assert_non_null(p);
    assert_non_null(u);
    assert_int_equal(gpu_heap_free(used, p), GPU_OK);
    void *q = gpu_heap_malloc(used, LARGE);
    assert_ptr_equal(q, p);
    assert_int_equal(STATS(used).fences, 0);

    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_EVENT), GPU_OK);
    assert_int_equal(gpu_free_order(), GPU_FREE_ORDER_EVENT);
    assert_int_equal(STATS(used).fences, 1);
    assert_int_equal(STATS(untouched).fences, 0);
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_EVENT), GPU_OK); /* again: nothing owed */
    assert_int_equal(STATS(used).fences, 1);

    size_t o = orders(used);
    assert_int_equal(gpu_heap_free(used, q), GPU_OK);
    void *r = gpu_heap_malloc(used, LARGE);
    assert_non_null(r);
    assert_int_equal(orders(used), o);
    if (r == q) assert_true(STATS(used).fences > 1); /* reused only after a fence again */
    assert_int_equal(gpu_heap_free(used, r), GPU_OK);
    assert_int_equal(gpu_heap_free(untouched, u), GPU_OK);
    CHECK_HEAP(used);
    CHECK_HEAP(untouched);
    HEAP_DESTROY(used);
    HEAP_DESTROY(untouched);
}

/* Idle memory released in legacy order may still be used by work issued before
 * its free: trimming it (or any give-back of idle extents) fences first, even
 * with nothing in the quarantine. */
static void test_legacy_idle_unmapped_after_a_fence(void **state) {
    (void)state;
    gpu_heap_t *h = far_behind();
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    void *c = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(c);
    assert_int_equal(gpu_heap_free(h, c), GPU_OK);
    void *d = gpu_heap_malloc(h, LARGE); /* releases c in order, maps new for d */
    assert_non_null(d);
    gpu_stats_t s0 = STATS(h);
    assert_int_equal(s0.quarantine_blocks, 0);
    assert_true(s0.idle_bytes >= 64 * MiB);
    assert_true(s0.order_releases > 0);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.fences, s0.fences + 1);
    assert_true(s1.backend_unmap > s0.backend_unmap);
    assert_int_equal(gpu_heap_free(h, d), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A release in order that comes while a fence waits (the lock is dropped for it)
 * may hand out memory whose old work began after the fence did: that fence does
 * not settle it, and idle memory is unmapped only after another. The backend's
 * fence is wrapped to free and reallocate a large block in the middle of it. */
static gpu_heap_t *fenced_heap;
static void *during_fence;
static int releases_left; /* how many fences make a release beside them */
static int (*real_fence)(vmm_backend *b);
static int fence_with_a_release(vmm_backend *b) {
    int rc = real_fence(b);
    if (releases_left > 0) {
        releases_left--;
        void *p = during_fence;
        assert_int_equal(gpu_heap_free(fenced_heap, p), GPU_OK);
        during_fence = gpu_heap_malloc(fenced_heap, LARGE); /* released in order: the quarantine is over its budget */
    }
    return rc;
}

static void test_release_during_a_fence_owes_another(void **state) {
    (void)state;
    gpu_heap_t *h = fenced_heap = far_behind();
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    void *a = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(a);
    assert_int_equal(gpu_heap_free(h, a), GPU_OK);
    void *d = gpu_heap_malloc(h, LARGE), *x = gpu_heap_malloc(h, LARGE); /* a released in order, idle */
    assert_non_null(d);
    assert_non_null(x);
    vmm_ops patched = *h->door.b->ops;
    const vmm_ops *saved = h->door.b->ops;
    real_fence = patched.fence;
    patched.fence = fence_with_a_release;
    h->door.b->ops = &patched;
    during_fence = x;
    releases_left = 1;
    gpu_stats_t s0 = STATS(h);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    gpu_stats_t s1 = STATS(h);
    assert_non_null(during_fence); /* the block the release handed out again */
    assert_true(s1.order_releases > s0.order_releases);
    assert_int_equal(s1.fences, s0.fences + 2); /* the release during the first fence owed a second */
    assert_true(s1.backend_unmap > s0.backend_unmap);
    /* Releases beside every fence: after a few the trim gives up for now, unmapping nothing. */
    a = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(a);
    assert_int_equal(gpu_heap_free(h, a), GPU_OK);
    void *e = gpu_heap_malloc(h, LARGE); /* a released in order again */
    assert_non_null(e);
    releases_left = 100;
    s0 = STATS(h);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    s1 = STATS(h);
    h->door.b->ops = saved;
    releases_left = 0;
    assert_int_equal(s1.fences, s0.fences + 4);
    assert_int_equal(s1.backend_unmap, s0.backend_unmap);
    assert_int_equal(gpu_heap_free(h, e), GPU_OK);
    assert_int_equal(gpu_heap_free(h, during_fence), GPU_OK);
    assert_int_equal(gpu_heap_free(h, d), GPU_OK);
    during_fence = NULL;
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

static char said[256];
static void keep_message(int err, const char *message, void *arg) {
    (void)err, (void)arg;
    snprintf(said, sizeof said, "%s", message);
}

/* No such order: refused with a message, nothing changes. */
static void test_unknown_order_refused(void **state) {
    (void)state;
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    gpu_error_handler_t old = gpu_set_error_handler(keep_message, NULL);
    assert_int_equal(gpu_set_free_order((gpu_free_order_t)7), GPU_ERR_INVALID);
    (void)gpu_set_error_handler(old, NULL);
    assert_int_equal(gpu_last_error(), GPU_ERR_INVALID);
    assert_non_null(strstr(said, "free order 7"));
    assert_int_equal(gpu_free_order(), GPU_FREE_ORDER_LEGACY);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_legacy_hands_out_at_once, order_event),
        cmocka_unit_test_teardown(test_legacy_releases_in_batches, order_event),
        cmocka_unit_test_teardown(test_legacy_kept_block_serves_calloc, order_event),
        cmocka_unit_test_teardown(test_legacy_small_blocks_never_wait, order_event),
        cmocka_unit_test_teardown(test_capture_keeps_event_order, order_event),
        cmocka_unit_test_teardown(test_back_to_events_fences_once, order_event),
        cmocka_unit_test_teardown(test_legacy_idle_unmapped_after_a_fence, order_event),
        cmocka_unit_test_teardown(test_release_during_a_fence_owes_another, order_event),
        cmocka_unit_test_teardown(test_unknown_order_refused, order_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
