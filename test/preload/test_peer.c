/*
 * test_peer.c — peer access bookkeeping (lib/peer.c and the door), on the host
 * backend.
 *
 * A GPU machine with one device cannot show that device 1 reaches device 0's
 * memory, but the books can be checked anywhere: the host backend accepts a
 * grant under the driver's rules (whole mappings only) and counts it. Adding a
 * peer must grant every extent mapped now, once; every extent mapped later, and
 * every later change of protection, must reach the peer too; the owner, a peer
 * added twice, and a removed peer change nothing; a bad ordinal is refused.
 */
#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

static vmm_host_counts counts(gpu_heap_t *h) {
    vmm_host_counts c;
    vmm_host_counts_get(h->door.b, &c);
    return c;
}

static void test_peer_grants_present_and_future_extents(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *small = gpu_heap_malloc(h, 4096);
    void *big = gpu_heap_malloc(h, 6 * MiB);
    void *big2 = gpu_heap_malloc(h, 3 * MiB);
    assert_non_null(small), assert_non_null(big), assert_non_null(big2);
    gpu_stats_t s = STATS(h);
    assert_true(s.extents >= 3);
    assert_int_equal(counts(h).grants, 0);

    ASSERT_OK(heap_peer_add(h, 1));
    assert_int_equal(heap_peers(h), 2);
    vmm_host_counts c = counts(h);
    assert_int_equal(c.grants, s.extents); /* every extent, once */
    assert_int_equal(c.granted_devices, 2);

    ASSERT_OK(heap_peer_add(h, 1)); /* again: nothing more */
    ASSERT_OK(heap_peer_add(h, h->door.b->caps.device)); /* the owner: nothing */
    assert_int_equal(counts(h).grants, s.extents);

    void *later = gpu_heap_malloc(h, 10 * MiB); /* a new extent reaches the peer */
    assert_non_null(later);
    gpu_stats_t s2 = STATS(h);
    assert_int_equal(counts(h).grants, s.extents + (s2.extents - s.extents));

    void *owned = gpu_heap_malloc_flags(h, 2 * MiB, GPU_ALLOC_OWNED);
    assert_non_null(owned);
    size_t before = counts(h).grants;
    ASSERT_OK(gpu_heap_protect(h, owned, 2 * MiB, GPU_PROT_READ)); /* protection follows to the peer */
    assert_int_equal(counts(h).grants, before + 1);

    ASSERT_OK(heap_peer_add(h, 5)); /* a second peer: every extent again, for it alone */
    gpu_stats_t s3 = STATS(h);
    assert_int_equal(counts(h).grants, before + 1 + s3.extents);
    assert_int_equal(counts(h).granted_devices, (1u << 1) | (1u << 5));
    assert_int_equal(heap_peers(h), (1u << 1) | (1u << 5));

    ASSERT_OK(heap_peer_remove(h, 1));
    ASSERT_OK(heap_peer_remove(h, 5));
    size_t at_removal = counts(h).grants;
    void *after = gpu_heap_malloc(h, 12 * MiB);
    assert_non_null(after);
    assert_int_equal(counts(h).grants, at_removal); /* removed peers get no new extents */

    assert_int_equal(heap_peer_add(h, -1), GPU_ERR_INVALID);
    assert_int_equal(heap_peer_add(h, GH_MAX_PEERS), GPU_ERR_INVALID);
    assert_int_equal(heap_peers(h), 0);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* Extents given back by trim while a peer is set are simply gone; a peer added
 * to an empty heap grants nothing until memory is mapped. */
static void test_peer_on_empty_and_trimmed_heap(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    ASSERT_OK(heap_peer_add(h, 2));
    assert_int_equal(counts(h).grants, 0);
    void *p = gpu_heap_malloc(h, 4 * MiB);
    assert_non_null(p);
    assert_int_equal(counts(h).grants, STATS(h).extents);
    ASSERT_OK(gpu_heap_free(h, p));
    ASSERT_OK(gpu_heap_trim(h, 0));
    assert_int_equal(STATS(h).extents, 0);
    size_t g = counts(h).grants;
    p = gpu_heap_malloc(h, 1000);
    assert_non_null(p);
    assert_int_equal(counts(h).grants, g + STATS(h).extents);
    ASSERT_OK(gpu_heap_free(h, p));
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A block that owns its extents and moves by remapping (realloc past a block
 * that takes its next addresses) is mapped at new addresses: the peer is granted
 * each of them, the moved extents and the growth alike. */
static void test_peer_follows_a_remapped_block(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *a = gpu_heap_malloc_flags(h, 8 * MiB, GPU_ALLOC_OWNED);
    char *b = gpu_heap_malloc_flags(h, 8 * MiB, GPU_ALLOC_OWNED);
    assert_non_null(a), assert_non_null(b);
    char *lo = a < b ? a : b, *hi = a < b ? b : a;
    ASSERT_OK(heap_peer_add(h, 3));
    size_t before = counts(h).grants;
    gpu_stats_t s0 = STATS(h);
    char *m = gpu_heap_realloc(h, lo, (size_t)(hi - lo) + 8 * MiB); /* cannot grow in place */
    assert_non_null(m);
    assert_ptr_not_equal(m, lo);
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.copy_bytes, s0.copy_bytes); /* moved by remapping, not copied */
    /* Every extent of the moved block, at its new address. */
    size_t moved = 0;
    for (uintptr_t va = (uintptr_t)m; va < (uintptr_t)m + (hi - lo) + 8 * MiB;) {
        extent *e = extmap_find(&h->extents, va);
        assert_non_null(e);
        moved++;
        va = e->va + e->size;
    }
    if (counts(h).grants < before + moved)
        fail_msg("a block moved by remapping: %zu grants for its %zu extents at their new addresses",
                 counts(h).grants - before, moved);
    ASSERT_OK(gpu_heap_free(h, m));
    ASSERT_OK(gpu_heap_free(h, hi));
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peer_grants_present_and_future_extents),
        cmocka_unit_test(test_peer_on_empty_and_trimmed_heap),
        cmocka_unit_test(test_peer_follows_a_remapped_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
