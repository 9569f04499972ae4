/*
 * test_lookup.c — the live block around an address (lib/lookup.c), on the host
 * backend.
 *
 * The interposer answers cuMemGetAddressRange and the range attributes from
 * heap_block_containing, so it must find the block for its first byte, any
 * interior byte and its last byte, whether the block shares an extent with
 * others, spans two extents, or owns extents of its own; and it must say "not
 * live" for freed and idle memory and "not owned" outside the heap — never a
 * neighbour's bounds. Each case is checked against the usable size the heap
 * reports, after gpu_heap_check.
 */
#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

/* Expects the block [p, p+usable) for every probe inside it. */
static void expect_block(gpu_heap_t *h, void *p) {
    size_t usable = gpu_heap_malloc_usable_size(h, p);
    assert_true(usable > 0);
    uintptr_t base = (uintptr_t)p;
    const uintptr_t probes[] = {base, base + 1, base + usable / 2, base + usable - 256, base + usable - 1};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        uintptr_t start = 0;
        size_t size = 0;
        assert_int_equal(heap_block_containing(h, probes[i], &start, &size), GPU_OK);
        assert_int_equal(start, base);
        assert_int_equal(size, usable);
    }
}

/* Small blocks in shared extents, a block across two extents, large blocks with
 * extents of their own: each found from any byte. */
static void test_lookup_finds_every_byte(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    enum { N = 64 };
    void *p[N];
    for (size_t i = 0; i < N; i++) {
        size_t size = (i % 8 == 7) ? (3 + i) * MiB : 256 * (1 + i * 37 % 700);
        p[i] = gpu_heap_malloc(h, size);
        assert_non_null(p[i]);
    }
    void *owned = gpu_heap_malloc_flags(h, 5 * MiB, GPU_ALLOC_OWNED);
    assert_non_null(owned);
    CHECK_HEAP(h);
    for (size_t i = 0; i < N; i++) expect_block(h, p[i]);
    expect_block(h, owned);
    HEAP_DESTROY(h);
}

/* A freed block (quarantined, then idle after trim), idle memory between blocks,
 * and addresses outside the heap are not live blocks. */
static void test_lookup_refuses_free_and_foreign(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *a = gpu_heap_malloc(h, 4096);
    void *b = gpu_heap_malloc(h, 8192);
    void *c = gpu_heap_malloc(h, 4096);
    assert_non_null(a), assert_non_null(b), assert_non_null(c);
    uintptr_t start;
    size_t size;
    ASSERT_OK(gpu_heap_free(h, b));
    assert_int_equal(heap_block_containing(h, (uintptr_t)b + 100, &start, &size), GPU_ERR_NOT_LIVE);
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* the quarantine becomes idle, nothing unmapped */
    assert_int_equal(heap_block_containing(h, (uintptr_t)b + 100, &start, &size), GPU_ERR_NOT_LIVE);
    expect_block(h, a);
    expect_block(h, c);
    /* The idle tail of the shared extent, far above every live block. */
    gpu_stats_t s = STATS(h);
    assert_true(s.idle_bytes > 0);
    int x = 0;
    assert_int_equal(heap_block_containing(h, (uintptr_t)&x, &start, &size), GPU_ERR_NOT_OWNED);
    ASSERT_OK(gpu_heap_free(h, a));
    ASSERT_OK(gpu_heap_free(h, c));
    assert_int_equal(heap_block_containing(h, (uintptr_t)a, &start, &size), GPU_ERR_NOT_LIVE);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* Blocks packed back to back: a probe at a block's first byte must not return
 * the block before it, and the last byte must not return the one after. */
static void test_lookup_neighbours(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    enum { N = 200 };
    void *p[N];
    for (size_t i = 0; i < N; i++) {
        p[i] = gpu_heap_malloc(h, 256 * (1 + i % 5));
        assert_non_null(p[i]);
    }
    for (size_t i = 0; i < N; i += 3) ASSERT_OK(gpu_heap_free(h, p[i]));
    for (size_t i = 0; i < N; i++)
        if (i % 3) expect_block(h, p[i]);
    for (size_t i = 0; i < N; i++)
        if (i % 3) ASSERT_OK(gpu_heap_free(h, p[i]));
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_finds_every_byte),
        cmocka_unit_test(test_lookup_refuses_free_and_foreign),
        cmocka_unit_test(test_lookup_neighbours),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
