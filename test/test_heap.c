/*
 * test_heap.c — how the heap places, grows, moves and gives back blocks,
 * checked from outside on the host backend.
 *
 * The contract says what must happen (coalescing, in-place growth, moving a
 * block that owns its extents by remapping, giving back whole idle extents,
 * recovering from out-of-memory, protection per extent); these tests make each
 * case happen on a fresh heap, where the layout is simple enough to predict,
 * and check addresses, statistics and every byte the test wrote. Protection is
 * checked in forked children, since a working fence kills the process that
 * crosses it.
 */
#include "util.h"

/* ---- coalescing ---------------------------------------------------------- */

/* Frees three adjacent 4 KiB blocks in the given order; once the quarantine is
 * drained, 12 KiB fits where the first one was. */
static void coalesce_three(const int order[3]) {
    gpu_heap_t *h = HEAP_NEW(0);
    void *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = gpu_heap_malloc(h, 4096);
        assert_int_equal(BLOCK_VALID(h, p[i], 4096), 4096);
        pattern_fill(p[i], 0, 4096, (uint64_t)i);
    }
    /* On a fresh heap consecutive small blocks are carved one after another. */
    if ((char *)p[1] != (char *)p[0] + 4096 || (char *)p[2] != (char *)p[1] + 4096)
        fail_msg("fresh heap: 4 KiB blocks at %p %p %p are not adjacent", p[0], p[1], p[2]);
    CHECK_ALL(h);
    for (int i = 0; i < 3; i++) {
        ASSERT_OK(gpu_heap_free(h, p[order[i]]));
        CHECK_ALL(h);
    }
    /* Before a drain, the freed addresses may come back only after a fence. */
    gpu_stats_t s0 = STATS(h);
    assert_true(s0.quarantine_blocks <= 3);
    void *early = gpu_heap_malloc(h, 12 * KiB);
    BLOCK_VALID(h, early, 12 * KiB);
    gpu_stats_t s1 = STATS(h);
    if ((char *)early < (char *)p[2] + 4096 && (char *)early + 12 * KiB > (char *)p[0] &&
        s1.fences == s0.fences && s0.quarantine_blocks > 0)
        fail_msg("quarantined memory at %p reused as %p without a fence", p[0], early);
    ASSERT_OK(gpu_heap_free(h, early));

    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    gpu_stats_t s2 = STATS(h);
    assert_int_equal(s2.quarantine_blocks, 0);
    assert_int_equal(s2.live_blocks, 0);
    CHECK_HEAP(h);
    void *q = gpu_heap_malloc(h, 12 * KiB);
    BLOCK_VALID(h, q, 12 * KiB);
    if (q != p[0])
        fail_msg("free order %d %d %d: 12 KiB went to %p, not to the coalesced %p", order[0], order[1], order[2],
                 q, p[0]);
    assert_int_equal(STATS(h).backend_create, s2.backend_create);
    ASSERT_OK(gpu_heap_free(h, q));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

static void test_coalesce_three(void **state) {
    (void)state;
    static const int orders[][3] = {{0, 1, 2}, {2, 1, 0}, {1, 0, 2}, {1, 2, 0}, {0, 2, 1}, {2, 0, 1}};
    for (size_t i = 0; i < sizeof orders / sizeof orders[0]; i++) coalesce_three(orders[i]);
}

/* 64 adjacent blocks freed in a scrambled order coalesce back into one range
 * that a single allocation fills without new physical memory. */
static void test_coalesce_many(void **state) {
    (void)state;
    enum { N = 64, SZ = 4096 };
    gpu_heap_t *h = HEAP_NEW(0);
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = gpu_heap_malloc(h, SZ - (i % 3) * 100);
        BLOCK_VALID(h, p[i], SZ - (i % 3) * 100);
        if ((char *)p[i] != (char *)p[0] + (size_t)i * SZ)
            fail_msg("fresh heap: block %d at %p, expected %p", i, p[i], (void *)((char *)p[0] + (size_t)i * SZ));
        pattern_fill(p[i], 0, SZ - (i % 3) * 100, i);
    }
    for (int i = 0; i < N; i++) PATTERN_CHECK(p[i], 0, SZ - (i % 3) * 100, i);
    for (int k = 0; k < N; k++) {
        int i = (k * 37 + 11) % N; /* 37 is prime to 64: every block once */
        ASSERT_OK(gpu_heap_free(h, p[i]));
        if (k % 8 == 0) CHECK_ALL(h);
    }
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    gpu_stats_t s = STATS(h);
    CHECK_HEAP(h);
    void *q = gpu_heap_malloc(h, (size_t)N * SZ);
    BLOCK_VALID(h, q, (size_t)N * SZ);
    assert_ptr_equal(q, p[0]);
    assert_int_equal(STATS(h).backend_create, s.backend_create);
    pattern_fill(q, 0, (size_t)N * SZ, 99);
    ASSERT_OK(gpu_heap_free(h, q));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* ---- placement ------------------------------------------------------------ */

typedef struct placed {
    char *p;
    size_t usable;
    uint64_t seed;
    size_t size;
} placed;

static int placed_by_address(const void *a, const void *b) {
    const placed *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

/* Fails if two live blocks overlap. */
static void check_disjoint(placed *v, size_t n) {
    qsort(v, n, sizeof *v, placed_by_address);
    for (size_t i = 1; i < n; i++)
        if (v[i - 1].p + v[i - 1].usable > v[i].p)
            fail_msg("blocks overlap: %p+%zu and %p", (void *)v[i - 1].p, v[i - 1].usable, (void *)v[i].p);
}

/* Blocks of mixed sizes, alignments and flags never overlap, keep their
 * alignment, and keep their contents while others come and go. */
static void test_placement(void **state) {
    (void)state;
    enum { N = 400 };
    gpu_heap_t *h = HEAP_NEW(64 * KiB);
    placed v[N];
    size_t n = 0;
    rng r = rng_seeded(42);
    for (int round = 0; round < 3; round++) {
        while (n < N) {
            size_t size = rng_log_size(&r, 1, 8 * MiB);
            size_t align = (size_t)1 << (8 + rng_below(&r, 16)); /* 256 B .. 8 MiB */
            int kind = (int)rng_below(&r, 4);
            void *p = kind == 0   ? gpu_heap_malloc_aligned(h, size, align)
                      : kind == 1 ? gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED)
                      : kind == 2 ? gpu_heap_calloc(h, 1, size)
                                  : gpu_heap_malloc(h, size);
            size_t u = BLOCK_VALID(h, p, size);
            if (kind == 0 && (uintptr_t)p % align) fail_msg("aligned(%zu, %zu) = %p", size, align, p);
            if (kind == 1 && (uintptr_t)p % (64 * KiB)) fail_msg("owned block %p not at a granule", p);
            if (kind == 2) BLOCK_ZERO_CHECK(p, size);
            v[n] = (placed){p, u, rng_next(&r), size};
            block_fill(p, size, v[n].seed);
            n++;
        }
        check_disjoint(v, n);
        CHECK_ALL(h);
        for (size_t i = 0; i < n; i++) BLOCK_CHECK(v[i].p, v[i].size, v[i].seed);
        /* Free a random half. */
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (rng_below(&r, 2)) {
                ASSERT_OK(gpu_heap_free(h, v[i].p));
            } else {
                v[k++] = v[i];
            }
        }
        n = k;
        CHECK_ALL(h);
        if (round == 1) ASSERT_OK(gpu_heap_trim(h, 0));
    }
    for (size_t i = 0; i < n; i++) {
        BLOCK_CHECK(v[i].p, v[i].size, v[i].seed);
        ASSERT_OK(gpu_heap_free(h, v[i].p));
    }
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Blocks of two granules and more reuse idle memory only where they fill whole
 * extents while the heap is within its physical budget (the live peak and an
 * eighth, and 64 MiB): a 16 MiB block takes a freed 16 MiB extent, not the front
 * of a freed 64 MiB one, and 32 and 40 MiB blocks map extents of their own rather
 * than pin the rest of the 64 MiB. Past the budget, a block is cut from any idle
 * block that holds it, and nothing is mapped; a block freed there is sealed on an
 * event the next miss queries at once (the host backend's complete at once), so
 * it comes back with neither a fence nor a mapping. */
static void test_placement_whole_extents(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *big = gpu_heap_malloc(h, 256 * MiB); /* sets the live peak */
    void *a = gpu_heap_malloc(h, 64 * MiB), *b = gpu_heap_malloc(h, 16 * MiB);
    assert_non_null(big);
    assert_non_null(a);
    assert_non_null(b);
    ASSERT_OK(gpu_heap_free(h, a));
    ASSERT_OK(gpu_heap_free(h, b));
    ASSERT_OK(gpu_heap_free(h, big));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* the quarantine becomes idle, nothing goes back */
    uint64_t creates = STATS(h).backend_create; /* 336 MiB mapped; budget: peak 336 x 1.125 + 64 = 442 MiB */

    void *c = gpu_heap_malloc(h, 16 * MiB);
    assert_ptr_equal(c, b); /* the 16 MiB extent, whole */
    assert_int_equal(STATS(h).backend_create, creates);

    void *d = gpu_heap_malloc(h, 32 * MiB), *f = gpu_heap_malloc(h, 40 * MiB); /* 408 MiB mapped */
    assert_non_null(d);
    assert_non_null(f);
    assert_int_equal(STATS(h).backend_create, creates + 2);
    if ((char *)d >= (char *)a && (char *)d < (char *)a + 64 * MiB) fail_msg("32 MiB block %p cut from the idle 64 MiB extent at %p", d, a);
    if ((char *)f >= (char *)a && (char *)f < (char *)a + 64 * MiB) fail_msg("40 MiB block %p cut from the idle 64 MiB extent at %p", f, a);
    CHECK_ALL(h);

    /* 48 MiB more would pass the budget: cut from the idle 64 MiB extent (the
     * smallest idle block that holds it, not the idle 256 MiB one). */
    creates = STATS(h).backend_create;
    void *e = gpu_heap_malloc(h, 48 * MiB);
    assert_non_null(e);
    assert_int_equal(STATS(h).backend_create, creates);
    if ((char *)e < (char *)a || (char *)e + 48 * MiB > (char *)a + 64 * MiB) fail_msg("48 MiB block %p not inside the idle 64 MiB extent at %p", e, a);
    CHECK_ALL(h);

    void *old_e = e;
    ASSERT_OK(gpu_heap_free(h, e));
    gpu_stats_t before = STATS(h);
    e = gpu_heap_malloc(h, 48 * MiB);
    assert_ptr_equal(e, old_e);
    assert_int_equal(STATS(h).backend_create, before.backend_create);
    assert_int_equal(STATS(h).fences, before.fences);
    CHECK_ALL(h);
    void *all[] = {c, d, f, e};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ASSERT_OK(gpu_heap_free(h, all[i]));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* A plain block that would fill less than three quarters of its new extent
 * leaves the rest idle: a 2.25 MiB block maps a 4 MiB extent, and a 1.5 MiB
 * block after it is cut from the rest with no mapping. The rest comes back with
 * the block, and the whole extent goes back at a trim. A 3 MiB block (three
 * quarters) keeps its extent whole, as does a granule-aligned 2.25 MiB one. */
static void test_placement_rest_idle(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *a = gpu_heap_malloc(h, 2 * MiB + 256 * KiB);
    assert_int_equal(BLOCK_VALID(h, a, 2 * MiB + 256 * KiB), 2 * MiB + 256 * KiB);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.backend_create, 1);
    assert_int_equal(s.mapped_bytes, 4 * MiB);
    assert_int_equal(s.idle_bytes, 2 * MiB - 256 * KiB);
    char *b = gpu_heap_malloc(h, 1536 * KiB);
    BLOCK_VALID(h, b, 1536 * KiB);
    assert_int_equal(STATS(h).backend_create, 1);
    if (b < a || b + 1536 * KiB > a + 4 * MiB) fail_msg("1.5 MiB block %p not in the rest of %p's extent", (void *)b, (void *)a);
    block_fill(a, 2 * MiB + 256 * KiB, 1);
    block_fill(b, 1536 * KiB, 2);
    BLOCK_CHECK(a, 2 * MiB + 256 * KiB, 1);
    ASSERT_OK(gpu_heap_free(h, a));
    ASSERT_OK(gpu_heap_free(h, b));
    CHECK_ALL(h);
    ASSERT_OK(gpu_heap_trim(h, 0));
    assert_int_equal(STATS(h).mapped_bytes, 0);

    char *c = gpu_heap_malloc(h, 3 * MiB), *d = gpu_heap_malloc_aligned(h, 2 * MiB + 256 * KiB, 2 * MiB);
    assert_int_equal(BLOCK_VALID(h, c, 3 * MiB), 4 * MiB);
    assert_int_equal(BLOCK_VALID(h, d, 2 * MiB + 256 * KiB), 4 * MiB);
    s = STATS(h);
    assert_int_equal(s.mapped_bytes, 8 * MiB);
    assert_int_equal(s.idle_bytes, 0);
    ASSERT_OK(gpu_heap_free(h, c));
    ASSERT_OK(gpu_heap_free(h, d));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* A block whose extent's rest stays idle grows in place over that rest, with no
 * driver call; past the extent it moves, its contents kept (it owns no extent
 * to remap: a device copy). */
static void test_realloc_rest_idle(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *p = gpu_heap_malloc(h, 2 * MiB + 256 * KiB);
    BLOCK_VALID(h, p, 2 * MiB + 256 * KiB);
    pattern_fill(p, 0, 2 * MiB + 256 * KiB, 5);
    gpu_stats_t s0 = STATS(h);
    char *q = gpu_heap_realloc(h, p, 3 * MiB + 512 * KiB);
    ASSERT_LAST_ERROR(GPU_OK);
    assert_ptr_equal(q, p);
    BLOCK_VALID(h, q, 3 * MiB + 512 * KiB);
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.backend_create, s0.backend_create);
    assert_int_equal(s1.backend_copy, s0.backend_copy);
    PATTERN_CHECK(q, 0, 2 * MiB + 256 * KiB, 5);
    pattern_fill(q, 2 * MiB + 256 * KiB, 1 * MiB + 256 * KiB, 5);
    char *r = gpu_heap_realloc(h, q, 8 * MiB);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, r, 8 * MiB);
    PATTERN_CHECK(r, 0, 3 * MiB + 512 * KiB, 5);
    CHECK_ALL(h);
    ASSERT_OK(gpu_heap_free(h, r));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Past the budget, a large block that no idle block holds starts with the idle
 * tail of a larger extent — here what a 128 MiB cut left of a freed 480 MiB
 * extent — and maps only the rest after it: 148 MiB, not 500. The block spans
 * the two extents, holds what is written across the seam, and goes back idle
 * whole; the heap's books agree throughout. (480 MiB: one extent; from 512 MiB
 * a range is backed in chunks, test_placement_idle_chunks_go_back.) */
static void test_placement_extends_idle_tail(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *x = gpu_heap_malloc(h, 480 * MiB); /* sets the live peak */
    assert_non_null(x);
    assert_int_equal(STATS(h).extents, 1);
    ASSERT_OK(gpu_heap_free(h, x));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* the quarantine becomes idle, nothing goes back */
    /* 128 MiB: budget 480 + 480/16 + 64 = 574 MiB, mapped 480 + 128 passes it: cut from the front. */
    char *y = gpu_heap_malloc(h, 128 * MiB);
    assert_ptr_equal(y, x);
    gpu_stats_t before = STATS(h);

    /* 500 MiB: the 352 MiB idle tail holds too little; 148 MiB are mapped after it. */
    char *z = gpu_heap_malloc(h, 500 * MiB);
    assert_ptr_equal(z, x + 128 * MiB);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.backend_create, before.backend_create + 1);
    assert_int_equal(after.backend_unmap, before.backend_unmap);
    assert_int_equal(after.mapped_bytes, before.mapped_bytes + 148 * MiB);
    assert_int_equal(after.live_bytes, 628 * MiB);
    CHECK_ALL(h);
    pattern_fill(z, 352 * MiB - 4096, 8192, 7);
    PATTERN_CHECK(z, 352 * MiB - 4096, 8192, 7); /* across the seam */

    ASSERT_OK(gpu_heap_free(h, z));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    CHECK_ALL(h);
    assert_int_equal(STATS(h).idle_bytes, 500 * MiB);
    ASSERT_OK(gpu_heap_free(h, y));
    ASSERT_OK(gpu_heap_trim(h, 0)); /* everything idle goes back: both extents whole */
    assert_int_equal(STATS(h).mapped_bytes, 0);
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* From 512 MiB a range is backed in chunks of an eighth, at least 128 MiB, each
 * an extent, once the heap has freed a block of 64 MiB or more (or holds as much
 * as the range): a freed 512 MiB block cut by a 128 MiB one pins that chunk alone.
 * Past the budget, a larger block that no idle memory holds first has the wholly
 * idle chunks given back — even though they hold less than it — instead of
 * starting on them: here 384 MiB go back and 500 are mapped, where a single
 * 512 MiB extent kept all of it and mapped the rest after its tail
 * (test_placement_extends_idle_tail). Contents and books hold throughout. */
static void test_placement_idle_chunks_go_back(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *first = gpu_heap_malloc(h, 512 * MiB); /* a fresh heap's first large range: one extent */
    assert_non_null(first);
    assert_int_equal(STATS(h).extents, 1);
    ASSERT_OK(gpu_heap_free(h, first));
    ASSERT_OK(gpu_heap_trim(h, 0));
    assert_int_equal(STATS(h).mapped_bytes, 0);
    char *x = gpu_heap_malloc(h, 512 * MiB); /* after a large free: chunks */
    assert_non_null(x);
    assert_int_equal(STATS(h).extents, 4); /* 4 x 128 MiB */
    pattern_fill(x, 128 * MiB - 4096, 8192, 3);
    PATTERN_CHECK(x, 128 * MiB - 4096, 8192, 3); /* across a seam between chunks */
    char *small = gpu_heap_malloc(h, 256 * MiB); /* one extent, after x */
    assert_non_null(small);
    assert_int_equal(STATS(h).extents, 5);
    ASSERT_OK(gpu_heap_free(h, x));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    /* 128 MiB: budget 768 + 768/16 + 64 = 880 MiB, mapped 768 + 128 passes it: one whole chunk. */
    char *y = gpu_heap_malloc(h, 128 * MiB);
    assert_ptr_equal(y, x);
    gpu_stats_t before = STATS(h);
    assert_int_equal(before.idle_bytes, 384 * MiB);

    char *z = gpu_heap_malloc(h, 500 * MiB);
    assert_non_null(z);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.backend_unmap, before.backend_unmap + 3); /* the three idle chunks */
    assert_int_equal(after.idle_bytes, 0);
    assert_int_equal(after.mapped_bytes, before.mapped_bytes - 384 * MiB + 500 * MiB);
    CHECK_ALL(h);
    pattern_fill(z, 0, 4096, 9);
    PATTERN_CHECK(z, 0, 4096, 9);
    void *all[] = {y, z, small};
    for (size_t i = 0; i < 3; i++) ASSERT_OK(gpu_heap_free(h, all[i]));
    ASSERT_OK(gpu_heap_trim(h, 0));
    assert_int_equal(STATS(h).mapped_bytes, 0);
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Within the physical budget, a block of 256 MiB or more whose new extent would
 * raise the heap's physical peak first gives idle extents back, when at least a
 * quarter of its size sits idle: 320 MiB after a freed 256 MiB extent maps with
 * that extent gone (the peak rises by 64 MiB, not 320). A smaller block maps
 * beside idle memory as before, and so does a large one with less than a
 * quarter of its size idle. Every request here is within the budget (live +
 * request, an eighth, 64 MiB), so the budget's own rungs play no part. */
static void test_placement_holds_the_peak(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *big = gpu_heap_malloc(h, 2 * GiB), *a = gpu_heap_malloc(h, 256 * MiB);
    assert_non_null(big);
    assert_non_null(a);
    ASSERT_OK(gpu_heap_free(h, a));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* the quarantine and the thread's kept block become idle */
    assert_int_equal(STATS(h).idle_bytes, 256 * MiB);

    /* 200 MiB: under 256 MiB, so it maps beside the idle extent (peak 2,504 MiB). */
    gpu_stats_t before = STATS(h);
    char *d = gpu_heap_malloc(h, 200 * MiB);
    assert_non_null(d);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.backend_unmap, before.backend_unmap);
    assert_int_equal(after.idle_bytes, 256 * MiB);
    assert_int_equal(after.peak_mapped_bytes, 2504 * MiB);

    /* 320 MiB: 2,824 MiB mapped would be a new peak, under the budget
     * (2,568 + 321 + 64 MiB); the idle 256 MiB extent goes back first. */
    before = after;
    char *c = gpu_heap_malloc(h, 320 * MiB);
    assert_non_null(c);
    after = STATS(h);
    assert_int_equal(after.backend_unmap, before.backend_unmap + 1);
    assert_int_equal(after.idle_bytes, 0);
    assert_int_equal(after.mapped_bytes, 2568 * MiB);
    assert_int_equal(after.peak_mapped_bytes, 2568 * MiB);
    CHECK_ALL(h);
    pattern_fill(c, 0, 4096, 5);
    PATTERN_CHECK(c, 0, 4096, 5);

    /* 1 GiB with 200 MiB idle, less than a quarter of it: mapped beside it. */
    ASSERT_OK(gpu_heap_free(h, d));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    before = STATS(h);
    char *e = gpu_heap_malloc(h, 1 * GiB);
    assert_non_null(e);
    after = STATS(h);
    assert_int_equal(after.backend_unmap, before.backend_unmap);
    assert_int_equal(after.idle_bytes, 200 * MiB);
    assert_int_equal(after.mapped_bytes, before.mapped_bytes + 1 * GiB);
    CHECK_ALL(h);
    void *all[] = {big, c, e};
    for (size_t i = 0; i < 3; i++) ASSERT_OK(gpu_heap_free(h, all[i]));
    ASSERT_OK(gpu_heap_trim(h, 0));
    assert_int_equal(STATS(h).mapped_bytes, 0);
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* A miss that finds a batch of freed blocks waiting (LOOK_BATCH, 32, or more)
 * seals them and looks at once: on an idle device (the host backend's events
 * complete at once) they come back without a fence or a new mapping. A miss
 * with fewer maps new memory instead, so that a warm loop's pool grows and it
 * does not seal at every turn. */
static void test_quarantine_batch_reused(void **state) {
    (void)state;
    enum { N = 64 };
    gpu_heap_t *h = HEAP_NEW(0);
    void *p[N];
    for (int i = 0; i < N; i++) assert_non_null(p[i] = gpu_heap_malloc(h, 64 * KiB));
    for (int i = 0; i < N; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
    gpu_stats_t before = STATS(h);
    for (int i = 0; i < N; i++) assert_non_null(p[i] = gpu_heap_malloc(h, 64 * KiB));
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.backend_create, before.backend_create);
    assert_int_equal(after.fences, before.fences);
    assert_true(after.seal_events > before.seal_events);
    CHECK_ALL(h);
    for (int i = 0; i < N; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
    HEAP_DESTROY(h);
}

/* ---- realloc ------------------------------------------------------------- */

/* A block with free addresses after it grows in place, keeping its pointer. */
static void test_realloc_in_place(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    /* a large block */
    char *p = gpu_heap_malloc(h, 64 * MiB);
    BLOCK_VALID(h, p, 64 * MiB);
    pattern_fill(p, 0, 64 * MiB, 1);
    char *q = gpu_heap_realloc(h, p, 128 * MiB);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, q, 128 * MiB);
    assert_ptr_equal(q, p);
    PATTERN_CHECK(q, 0, 64 * MiB, 1);
    pattern_fill(q, 64 * MiB, 64 * MiB, 1);
    CHECK_ALL(h);
    q = gpu_heap_realloc(h, q, 200 * MiB + 12345);
    BLOCK_VALID(h, q, 200 * MiB + 12345);
    assert_ptr_equal(q, p);
    PATTERN_CHECK(q, 0, 128 * MiB, 1);
    pattern_fill(q, 128 * MiB, 72 * MiB + 12345, 1);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.live_bytes, gpu_heap_malloc_usable_size(h, q));
    CHECK_HEAP(h);
    ASSERT_OK(gpu_heap_free(h, q));

    /* an owned block */
    p = gpu_heap_malloc_flags(h, 8 * MiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, p, 8 * MiB);
    pattern_fill(p, 0, 8 * MiB, 2);
    q = gpu_heap_realloc(h, p, 24 * MiB);
    BLOCK_VALID(h, q, 24 * MiB);
    assert_ptr_equal(q, p);
    PATTERN_CHECK(q, 0, 8 * MiB, 2);
    CHECK_ALL(h);
    ASSERT_OK(gpu_heap_free(h, q));

    /* a small block on a fresh heap: the addresses after it are free */
    gpu_heap_t *h2 = HEAP_NEW(0);
    p = gpu_heap_malloc(h2, 1000);
    BLOCK_VALID(h2, p, 1000);
    pattern_fill(p, 0, 1000, 3);
    q = gpu_heap_realloc(h2, p, 100000);
    BLOCK_VALID(h2, q, 100000);
    assert_ptr_equal(q, p);
    PATTERN_CHECK(q, 0, 1000, 3);
    CHECK_ALL(h2);
    ASSERT_OK(gpu_heap_free(h2, q));
    HEAP_DESTROY(h2);
    HEAP_DESTROY(h);
}

/* An owned block whose next addresses are taken moves by remapping: new
 * pointer, every byte intact, and at no moment old and new copies both mapped. */
static void test_realloc_remap(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *a = gpu_heap_malloc_flags(h, 8 * MiB, GPU_ALLOC_OWNED);
    char *b = gpu_heap_malloc_flags(h, 8 * MiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, a, 8 * MiB);
    BLOCK_VALID(h, b, 8 * MiB);
    char *lo = a < b ? a : b, *hi = a < b ? b : a;
    pattern_fill(lo, 0, 8 * MiB, 10);
    pattern_fill(hi, 0, 8 * MiB, 11);
    gpu_stats_t s0 = STATS(h);
    CHECK_HEAP(h);
    /* Growing lo past hi's start cannot happen in place. */
    size_t grow = (size_t)(hi - lo) + 8 * MiB;
    char *m = gpu_heap_realloc(h, lo, grow);
    ASSERT_LAST_ERROR(GPU_OK);
    size_t u = BLOCK_VALID(h, m, grow);
    assert_ptr_not_equal(m, lo);
    PATTERN_CHECK(m, 0, 8 * MiB, 10);
    PATTERN_CHECK(hi, 0, 8 * MiB, 11);
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.live_blocks, 2);
    assert_int_equal(s1.live_bytes, u + 8 * MiB);
    /* A copy would need the old 8 MiB, the new u and hi's 8 MiB mapped at once;
     * a remap reuses the old physical memory. */
    if (s1.peak_mapped_bytes >= s0.mapped_bytes + u)
        fail_msg("realloc by remap: peak mapped %llu >= %llu before + %zu new: the bytes were copied "
                 "(or a remapped extent is counted twice in mapped_bytes)",
                 (unsigned long long)s1.peak_mapped_bytes, (unsigned long long)s0.mapped_bytes, u);
    CHECK_HEAP(h);
    pattern_fill(m, 8 * MiB, 4 * MiB, 10);
    /* The old range is free again: once drained, an owned 8 MiB block fits there. */
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    CHECK_ALL(h);
    PATTERN_CHECK(m, 0, 12 * MiB, 10);
    ASSERT_OK(gpu_heap_free(h, m));
    ASSERT_OK(gpu_heap_free(h, hi));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* An owned block stays made of whole extents however realloc grows it — here
 * in place over idle memory whose extent reaches past the new end — so
 * gpu_protect keeps working on it. */
static void test_realloc_owned_stays_owned(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(64 * KiB);
    /* Two idle extents side by side: 64 KiB, then the rest of 2 MiB. */
    char *x = gpu_heap_malloc_flags(h, 64 * KiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, x, 64 * KiB);
    char *x2 = gpu_heap_realloc(h, x, 2 * MiB);
    BLOCK_VALID(h, x2, 2 * MiB);
    ASSERT_OK(gpu_heap_free(h, x2));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    CHECK_ALL(h);
    char *a = gpu_heap_malloc_flags(h, 64 * KiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, a, 64 * KiB);
    pattern_fill(a, 0, 64 * KiB, 7);
    ASSERT_OK(gpu_heap_protect(h, a, 64 * KiB, GPU_PROT_READ_WRITE));
    static const size_t grow[] = {128 * KiB, 200 * KiB, 3 * MiB};
    for (size_t i = 0; i < sizeof grow / sizeof grow[0]; i++) {
        char *a2 = gpu_heap_realloc(h, a, grow[i]);
        size_t u = BLOCK_VALID(h, a2, grow[i]);
        PATTERN_CHECK(a2, 0, 64 * KiB, 7);
        if (u % (64 * KiB) || (uintptr_t)a2 % (64 * KiB))
            fail_msg("owned block grown to %zu: %p, usable %zu", grow[i], (void *)a2, u);
        int rc = gpu_heap_protect(h, a2, u, GPU_PROT_READ);
        if (rc != GPU_OK)
            fail_msg("owned block %p grown %s to %zu (usable %zu): protect -> %d (%s)", (void *)a2,
                     a2 == a ? "in place" : "by a move", grow[i], u, rc, gpu_strerror(rc));
        ASSERT_OK(gpu_heap_protect(h, a2, u, GPU_PROT_READ_WRITE));
        CHECK_ALL(h);
        a = a2;
    }
    ASSERT_OK(gpu_heap_free(h, a));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Small blocks move by copying: contents intact, the blocker untouched. */
static void test_realloc_copy(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *a = gpu_heap_malloc(h, 1000);
    size_t ua = BLOCK_VALID(h, a, 1000);
    char *b = gpu_heap_malloc(h, 1000);
    BLOCK_VALID(h, b, 1000);
    pattern_fill(a, 0, ua, 20);
    pattern_fill(b, 0, 1000, 21);
    char *m = gpu_heap_realloc(h, a, 100 * KiB);
    BLOCK_VALID(h, m, 100 * KiB);
    if (b == a + ua) assert_ptr_not_equal(m, a); /* b blocks growth in place */
    PATTERN_CHECK(m, 0, ua, 20);
    PATTERN_CHECK(b, 0, 1000, 21);
    CHECK_ALL(h);
    pattern_fill(m, 0, 100 * KiB, 22);
    /* small to large and back */
    char *big = gpu_heap_realloc(h, m, 16 * MiB);
    BLOCK_VALID(h, big, 16 * MiB);
    PATTERN_CHECK(big, 0, 100 * KiB, 22);
    pattern_fill(big, 0, 16 * MiB, 23);
    CHECK_ALL(h);
    char *small = gpu_heap_realloc(h, big, 3000);
    BLOCK_VALID(h, small, 3000);
    PATTERN_CHECK(small, 0, 3000, 23);
    PATTERN_CHECK(b, 0, 1000, 21);
    CHECK_ALL(h);
    /* shrinking a small block keeps its prefix */
    char *tiny = gpu_heap_realloc(h, small, 1);
    BLOCK_VALID(h, tiny, 1);
    PATTERN_CHECK(tiny, 0, 1, 23);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.live_blocks, 2);
    assert_int_equal(s.live_bytes, gpu_heap_malloc_usable_size(h, tiny) + gpu_heap_malloc_usable_size(h, b));
    ASSERT_OK(gpu_heap_free(h, tiny));
    ASSERT_OK(gpu_heap_free(h, b));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Shrinking keeps the prefix and gives back the extents that became unused. */
static void test_realloc_shrink(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    /* Grown in place from 8 to 64 MiB, the block has extents past 8 MiB. */
    char *p = gpu_heap_malloc_flags(h, 8 * MiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, p, 8 * MiB);
    char *q = gpu_heap_realloc(h, p, 64 * MiB);
    BLOCK_VALID(h, q, 64 * MiB);
    assert_ptr_equal(q, p);
    pattern_fill(q, 0, 64 * MiB, 30);
    ASSERT_OK(gpu_heap_trim(h, 0));
    gpu_stats_t s0 = STATS(h);
    assert_int_equal(s0.mapped_bytes, s0.live_bytes);
    CHECK_HEAP(h);
    char *r = gpu_heap_realloc(h, q, 8 * MiB);
    size_t u = BLOCK_VALID(h, r, 8 * MiB);
    PATTERN_CHECK(r, 0, 8 * MiB, 30);
    CHECK_ALL(h);
    ASSERT_OK(gpu_heap_trim(h, 0));
    gpu_stats_t s1 = STATS(h);
    if (s1.mapped_bytes > s0.mapped_bytes - 56 * MiB)
        fail_msg("shrink 64 -> 8 MiB: mapped %llu -> %llu after trim, usable %zu",
                 (unsigned long long)s0.mapped_bytes, (unsigned long long)s1.mapped_bytes, u);
    assert_int_equal(s1.mapped_bytes, s1.live_bytes);
    assert_true(s1.extents < s0.extents);
    PATTERN_CHECK(r, 0, 8 * MiB, 30);
    CHECK_HEAP(h);
    ASSERT_OK(gpu_heap_free(h, r));

    /* A large plain block: the prefix stays, and mapping never grows. */
    p = gpu_heap_malloc(h, 64 * MiB);
    BLOCK_VALID(h, p, 64 * MiB);
    pattern_fill(p, 0, 64 * MiB, 31);
    ASSERT_OK(gpu_heap_trim(h, 0));
    s0 = STATS(h);
    q = gpu_heap_realloc(h, p, 16 * MiB + 100);
    BLOCK_VALID(h, q, 16 * MiB + 100);
    PATTERN_CHECK(q, 0, 16 * MiB + 100, 31);
    ASSERT_OK(gpu_heap_trim(h, 0));
    s1 = STATS(h);
    assert_true(s1.mapped_bytes <= s0.mapped_bytes);
    CHECK_HEAP(h);
    ASSERT_OK(gpu_heap_free(h, q));
    HEAP_DESTROY(h);
}

/* realloc(NULL, n) is malloc; realloc(p, 0) frees p and returns NULL. */
static void test_realloc_edges(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *p = gpu_heap_realloc(h, NULL, 5000);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, p, 5000);
    assert_int_equal(STATS(h).live_blocks, 1);
    pattern_fill(p, 0, 5000, 40);
    CHECK_HEAP(h);
    void *z = gpu_heap_realloc(h, p, 0);
    assert_null(z);
    ASSERT_LAST_ERROR(GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.live_blocks, 0);
    assert_int_equal(s.live_bytes, 0);
    CHECK_HEAP(h);
    ASSERT_ERROR(gpu_heap_free(h, p), GPU_ERR_NOT_LIVE); /* already freed by realloc */
    /* realloc(NULL, 0) behaves as malloc(0). */
    void *m0 = gpu_heap_realloc(h, NULL, 0);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, m0, 0);
    ASSERT_OK(gpu_heap_free(h, m0));
    /* The same size keeps the block and its contents. */
    p = gpu_heap_malloc(h, 3 * MiB);
    size_t u = BLOCK_VALID(h, p, 3 * MiB);
    block_fill(p, 3 * MiB, 41);
    void *same = gpu_heap_realloc(h, p, u);
    BLOCK_VALID(h, same, u);
    BLOCK_CHECK_CLIP(same, 3 * MiB, u, 41);
    ASSERT_OK(gpu_heap_free(h, same));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* ---- trim and release threshold ---------------------------------------------- */

/* trim(0) gives back every idle extent; trim(keep) keeps at most keep idle. */
static void test_trim(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *o[3];
    for (int i = 0; i < 3; i++) {
        o[i] = gpu_heap_malloc_flags(h, 4 * MiB, GPU_ALLOC_OWNED);
        assert_int_equal(BLOCK_VALID(h, o[i], 4 * MiB), 4 * MiB);
        pattern_fill(o[i], 0, 4 * MiB, 50 + i);
    }
    gpu_stats_t s0 = STATS(h);
    ASSERT_OK(gpu_heap_free(h, o[1]));
    ASSERT_OK(gpu_heap_trim(h, 0));
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.live_bytes, 8 * MiB);
    assert_int_equal(s1.mapped_bytes, 8 * MiB);
    assert_int_equal(s1.idle_bytes, 0);
    assert_int_equal(s1.quarantine_bytes, 0);
    assert_true(s1.extents < s0.extents);
    assert_true(s1.backend_release > s0.backend_release);
    assert_true(s1.fences >= s0.fences);
    PATTERN_CHECK(o[0], 0, 4 * MiB, 50);
    PATTERN_CHECK(o[2], 0, 4 * MiB, 52);
    CHECK_HEAP(h);
    ASSERT_OK(gpu_heap_free(h, o[0]));
    ASSERT_OK(gpu_heap_free(h, o[2]));

    /* Many small blocks; some stay. */
    enum { N = 300 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = gpu_heap_malloc(h, (size_t)(i % 40 + 1) * 1000);
        BLOCK_VALID(h, p[i], (size_t)(i % 40 + 1) * 1000);
    }
    gpu_stats_t s2 = STATS(h);
    for (int i = 0; i < N; i++)
        if (i % 50) ASSERT_OK(gpu_heap_free(h, p[i]));
    ASSERT_OK(gpu_heap_trim(h, 0));
    gpu_stats_t s3 = STATS(h);
    assert_true(s3.mapped_bytes <= s2.mapped_bytes);
    assert_int_equal(s3.quarantine_bytes, 0);
    assert_int_equal(s3.live_blocks, N / 50);
    CHECK_HEAP(h);
    for (int i = 0; i < N; i += 50) ASSERT_OK(gpu_heap_free(h, p[i]));
    ASSERT_OK(gpu_heap_trim(h, 0));
    gpu_stats_t s4 = STATS(h);
    assert_int_equal(s4.mapped_bytes, 0);
    assert_int_equal(s4.extents, 0);
    assert_int_equal(s4.idle_bytes, 0);
    CHECK_HEAP(h);

    /* trim(keep) */
    void *q[32];
    for (int i = 0; i < 32; i++) {
        q[i] = gpu_heap_malloc_flags(h, 2 * MiB, GPU_ALLOC_OWNED);
        BLOCK_VALID(h, q[i], 2 * MiB);
    }
    for (int i = 0; i < 32; i++) ASSERT_OK(gpu_heap_free(h, q[i]));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
    gpu_stats_t s5 = STATS(h);
    assert_int_equal(s5.quarantine_bytes, 0);
    ASSERT_OK(gpu_heap_trim(h, 8 * MiB));
    gpu_stats_t s6 = STATS(h);
    if (s6.idle_bytes > 8 * MiB) fail_msg("trim(8 MiB) left %llu idle", (unsigned long long)s6.idle_bytes);
    assert_int_equal(s6.mapped_bytes, s6.idle_bytes);
    assert_true(s6.mapped_bytes <= s5.mapped_bytes);
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* keeps everything */
    assert_int_equal(STATS(h).mapped_bytes, s6.mapped_bytes);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* With a release threshold, idle memory past it is given back once the
 * quarantine drains. */
static void test_release_threshold(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    cfg.release_threshold = 8 * MiB;
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    for (int round = 0; round < 3; round++) {
        void *q[32];
        for (int i = 0; i < 32; i++) {
            q[i] = gpu_heap_malloc_flags(h, 2 * MiB, GPU_ALLOC_OWNED);
            BLOCK_VALID(h, q[i], 2 * MiB);
        }
        CHECK_ALL(h);
        for (int i = 0; i < 32; i++) ASSERT_OK(gpu_heap_free(h, q[i]));
        CHECK_ALL(h);
        ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* drain */
        gpu_stats_t s = STATS(h);
        if (s.idle_bytes > 8 * MiB + 2 * MiB)
            fail_msg("release threshold 8 MiB: %llu bytes idle after the drain (round %d)",
                     (unsigned long long)s.idle_bytes, round);
        CHECK_HEAP(h);
    }
    HEAP_DESTROY(h);
}

/* ---- out of memory --------------------------------------------------------- */

/* With a 64 MiB budget, 16 MiB blocks run out with OUT_OF_MEMORY and change
 * nothing; once freed, a 48 MiB block fits because idle extents are given back
 * and the request retried. */
static void test_out_of_memory(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * GiB, 0, 64 * MiB);
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    void *p[8];
    int n = 0;
    for (; n < 8; n++) {
        gpu_stats_t before = STATS(h);
        p[n] = gpu_heap_malloc(h, 16 * MiB);
        if (!p[n]) {
            ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
            gpu_stats_t after = STATS(h);
            assert_int_equal(after.live_blocks, before.live_blocks);
            assert_int_equal(after.live_bytes, before.live_bytes);
            assert_int_equal(after.mapped_bytes, before.mapped_bytes);
            break;
        }
        BLOCK_VALID(h, p[n], 16 * MiB);
        block_fill(p[n], 16 * MiB, 60 + n);
    }
    /* Block records live in host memory, so the whole budget is usable. */
    if (n != 4) fail_msg("16 MiB blocks in a 64 MiB budget: %d, expected 4", n);
    CHECK_ALL(h);
    /* Other failing calls under the budget. */
    assert_null(gpu_heap_calloc(h, 16, MiB));
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    assert_null(gpu_heap_malloc_flags(h, 16 * MiB, GPU_ALLOC_OWNED));
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    size_t u0 = gpu_heap_malloc_usable_size(h, p[0]);
    assert_null(gpu_heap_realloc(h, p[0], 40 * MiB));
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    assert_int_equal(gpu_heap_malloc_usable_size(h, p[0]), u0); /* unchanged */
    for (int i = 0; i < n; i++) BLOCK_CHECK(p[i], 16 * MiB, 60 + i);
    CHECK_ALL(h);

    for (int i = 0; i < n; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
    CHECK_ALL(h);
    void *big = gpu_heap_malloc(h, 48 * MiB);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, big, 48 * MiB);
    pattern_fill(big, 0, 48 * MiB, 70);
    CHECK_ALL(h);
    void *rest = gpu_heap_malloc(h, 16 * MiB);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, rest, 16 * MiB);
    pattern_fill(rest, 0, 16 * MiB, 71);
    PATTERN_CHECK(big, 0, 48 * MiB, 70);
    CHECK_ALL(h);
    ASSERT_OK(gpu_heap_free(h, big));
    ASSERT_OK(gpu_heap_free(h, rest));
    /* The whole budget as one block, once everything is free. */
    void *all = gpu_heap_malloc(h, 64 * MiB);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, all, 64 * MiB);
    ASSERT_OK(gpu_heap_free(h, all));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Small blocks run the budget out too, and the heap recovers the same way. */
static void test_out_of_memory_small(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * GiB, 64 * KiB, 8 * MiB);
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    enum { MAX = 4096 };
    static void *p[MAX];
    int n = 0;
    for (; n < MAX; n++) {
        p[n] = gpu_heap_malloc(h, 8 * KiB);
        if (!p[n]) break;
        BLOCK_VALID(h, p[n], 8 * KiB);
        pattern_fill(p[n], 0, 8 * KiB, n);
    }
    assert_true(n < MAX);
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    print_message("8 KiB blocks in an 8 MiB budget: %d\n", n);
    assert_true(n >= 512);
    CHECK_ALL(h);
    for (int i = 0; i < n; i++) PATTERN_CHECK(p[i], 0, 8 * KiB, i);
    for (int i = 0; i < n; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
    void *big = gpu_heap_malloc(h, 6 * MiB);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(h, big, 6 * MiB);
    pattern_fill(big, 0, 6 * MiB, 1);
    ASSERT_OK(gpu_heap_free(h, big));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* ---- protection -------------------------------------------------------------- */

typedef struct probe {
    volatile uint8_t *p;
    size_t len;
    uint64_t seed;
} probe;

/* The children write back the byte they read: the host backend's memory is
 * shared with the parent across fork, so a write that succeeds must not change
 * the parent's pattern. */
static int child_write_first(void *arg) {
    probe *a = arg;
    a->p[0] = pattern_byte(a->seed, 0);
    return 0;
}
static int child_write_last(void *arg) {
    probe *a = arg;
    a->p[a->len - 1] = pattern_byte(a->seed, a->len - 1);
    return 0;
}
static int child_read_pattern(void *arg) {
    probe *a = arg;
    return pattern_mismatch((const void *)a->p, 0, a->len, a->seed) == SIZE_MAX ? 0 : 3;
}
static int child_fill(void *arg) {
    probe *a = arg;
    pattern_fill((void *)a->p, 0, a->len, a->seed);
    return 0;
}

#define EXPECT_FAULT(fn, acc)                                                                 \
    do {                                                                                      \
        int st_ = run_in_child((fn), (acc));                                                  \
        if (!died_of_fault(st_))                                                              \
            fail_msg("%s on %p: expected a fault, child status 0x%x", #fn, (void *)(acc)->p, st_); \
    } while (0)
#define EXPECT_NO_FAULT(fn, acc)                                                                  \
    do {                                                                                          \
        int st_ = run_in_child((fn), (acc));                                                      \
        if (!exited_ok(st_))                                                                      \
            fail_msg("%s on %p: expected success, child status 0x%x", #fn, (void *)(acc)->p, st_); \
    } while (0)

/* READ stops writes, NONE stops reads, READ_WRITE gives both back; only
 * whole extents of one block can be protected. */
static void test_protect(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    char *small = gpu_heap_malloc(h, 4096);
    BLOCK_VALID(h, small, 4096);
    pattern_fill(small, 0, 4096, 80);
    char *p = gpu_heap_malloc_flags(h, 4 * MiB, GPU_ALLOC_OWNED);
    assert_int_equal(BLOCK_VALID(h, p, 4 * MiB), 4 * MiB);
    pattern_fill(p, 0, 4 * MiB, 81);
    char *after = gpu_heap_malloc(h, 4096);
    BLOCK_VALID(h, after, 4096);
    pattern_fill(after, 0, 4096, 82);
    probe ap = {(volatile uint8_t *)p, 4 * MiB, 81};
    probe as = {(volatile uint8_t *)small, 4096, 80};
    probe aa = {(volatile uint8_t *)after, 4096, 82};
    gpu_stats_t s0 = STATS(h);

    ASSERT_OK(gpu_heap_protect(h, p, 4 * MiB, GPU_PROT_READ));
    EXPECT_FAULT(child_write_first, &ap);
    EXPECT_FAULT(child_write_last, &ap);
    EXPECT_NO_FAULT(child_read_pattern, &ap);
    PATTERN_CHECK(p, 0, 4 * MiB, 81); /* the parent reads too */
    EXPECT_NO_FAULT(child_fill, &as); /* neighbours keep read-write */
    EXPECT_NO_FAULT(child_fill, &aa);
    assert_true(STATS(h).backend_set_access > s0.backend_set_access);
    CHECK_HEAP(h);

    ASSERT_OK(gpu_heap_protect(h, p, 4 * MiB, GPU_PROT_NONE));
    EXPECT_FAULT(child_read_pattern, &ap);
    EXPECT_FAULT(child_write_last, &ap);
    CHECK_HEAP(h);

    ASSERT_OK(gpu_heap_protect(h, p, 4 * MiB, GPU_PROT_READ_WRITE));
    EXPECT_NO_FAULT(child_fill, &ap);
    PATTERN_CHECK(p, 0, 4 * MiB, 81);
    pattern_fill(p, 0, 4 * MiB, 83);
    PATTERN_CHECK(p, 0, 4 * MiB, 83);
    ap.seed = 83;

    /* The size is rounded up to the granularity. */
    ASSERT_OK(gpu_heap_protect(h, p, 4 * MiB - 100, GPU_PROT_READ));
    EXPECT_FAULT(child_write_last, &ap);
    ASSERT_OK(gpu_heap_protect(h, p, 4 * MiB, GPU_PROT_READ_WRITE));
    EXPECT_NO_FAULT(child_write_last, &ap);

    /* Not whole extents of one block: refused, and nothing changes. */
    gpu_stats_t s1 = STATS(h);
    ASSERT_ERROR(gpu_heap_protect(h, small, 4096, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    ASSERT_ERROR(gpu_heap_protect(h, small, 2 * MiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    ASSERT_ERROR(gpu_heap_protect(h, p + 256, 2 * MiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    ASSERT_ERROR(gpu_heap_protect(h, p, 6 * MiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    ASSERT_ERROR(gpu_heap_protect(h, p, 4 * MiB + 1, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    EXPECT_NO_FAULT(child_fill, &as);
    EXPECT_NO_FAULT(child_fill, &ap);
    EXPECT_NO_FAULT(child_fill, &aa);
    gpu_stats_t s2 = STATS(h);
    assert_int_equal(s2.backend_set_access, s1.backend_set_access);
    PATTERN_CHECK(small, 0, 4096, 80);
    PATTERN_CHECK(after, 0, 4096, 82);
    CHECK_HEAP(h);

    /* A large plain block is made of whole extents too. */
    char *big = gpu_heap_malloc(h, 64 * MiB);
    BLOCK_VALID(h, big, 64 * MiB);
    probe ab = {(volatile uint8_t *)big, 64 * MiB, 84};
    block_fill(big, 64 * MiB, 84);
    ASSERT_OK(gpu_heap_protect(h, big, 64 * MiB, GPU_PROT_READ));
    EXPECT_FAULT(child_write_first, &ab);
    EXPECT_FAULT(child_write_last, &ab);
    ASSERT_OK(gpu_heap_protect(h, big, 64 * MiB, GPU_PROT_READ_WRITE));
    EXPECT_NO_FAULT(child_write_last, &ab);
    BLOCK_CHECK(big, 64 * MiB, 84);

    ASSERT_OK(gpu_heap_free(h, big));
    ASSERT_OK(gpu_heap_free(h, p));
    ASSERT_OK(gpu_heap_free(h, small));
    ASSERT_OK(gpu_heap_free(h, after));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Freeing a protected block restores read-write before the memory is reused.
 * The test means something only when the protected memory is what the next
 * allocations get, so it insists on that: on a fresh heap the one idle range is
 * the freed block's (its headroom is unmapped), and no new physical memory may
 * be created for the blocks that follow. */
static void test_protect_free_reuse(void **state) {
    (void)state;
    for (int prot = GPU_PROT_NONE; prot <= GPU_PROT_READ; prot++) {
        gpu_heap_t *h = HEAP_NEW(0);
        char *p = gpu_heap_malloc_flags(h, 4 * MiB, GPU_ALLOC_OWNED);
        assert_int_equal(BLOCK_VALID(h, p, 4 * MiB), 4 * MiB);
        ASSERT_OK(gpu_heap_protect(h, p, 4 * MiB, prot));
        assert_int_equal(STATS(h).protected_extents, 1);
        ASSERT_OK(gpu_heap_free(h, p));
        ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* drain: the memory is idle now */
        CHECK_ALL(h);
        gpu_stats_t s0 = STATS(h);
        assert_int_equal(s0.protected_extents, 0); /* restored at the free */
        assert_int_equal(s0.idle_bytes, 4 * MiB);  /* and p's memory is all there is */
        assert_int_equal(s0.mapped_bytes, 4 * MiB);

        /* First in a child, since a missed restore would kill the process
         * (the heap's own zeroing writes there). */
        char *q = gpu_heap_malloc_flags(h, 4 * MiB, GPU_ALLOC_OWNED);
        BLOCK_VALID(h, q, 4 * MiB);
        if (q != p)
            fail_msg("prot %d: the protected block %p was not reused (got %p): the test's premise fails", prot,
                     (void *)p, (void *)q);
        assert_int_equal(STATS(h).backend_create, s0.backend_create);
        probe aq = {(volatile uint8_t *)q, 4 * MiB, 90};
        EXPECT_NO_FAULT(child_fill, &aq);
        pattern_fill(q, 0, 4 * MiB, 90);
        PATTERN_CHECK(q, 0, 4 * MiB, 90);
        ASSERT_OK(gpu_heap_free(h, q));
        ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* else r would get new memory beside q's quarantine */

        /* Reused as small blocks, zeroed by calloc: the 16 blocks tile the
         * protected block's 4 MiB exactly. */
        char *r = gpu_heap_malloc_flags(h, 4 * MiB, GPU_ALLOC_OWNED);
        BLOCK_VALID(h, r, 4 * MiB);
        if (r != p)
            fail_msg("prot %d: block %p not reused for the second protection (got %p)", prot, (void *)p, (void *)r);
        ASSERT_OK(gpu_heap_protect(h, r, 4 * MiB, prot));
        ASSERT_OK(gpu_heap_free(h, r));
        ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
        gpu_stats_t s1 = STATS(h);
        assert_int_equal(s1.protected_extents, 0);
        assert_int_equal(s1.idle_bytes, 4 * MiB);
        char *c[16];
        for (int i = 0; i < 16; i++) {
            c[i] = gpu_heap_calloc(h, 1, 256 * KiB);
            BLOCK_VALID(h, c[i], 256 * KiB);
            if (c[i] < r || c[i] + 256 * KiB > r + 4 * MiB)
                fail_msg("prot %d: calloc block %d at %p is outside the freed protected block [%p, %p)", prot, i,
                         (void *)c[i], (void *)r, (void *)(r + 4 * MiB));
            ZERO_CHECK(c[i], 0, 256 * KiB);
            probe ac = {(volatile uint8_t *)c[i], 256 * KiB, 100 + i};
            EXPECT_NO_FAULT(child_fill, &ac);
            pattern_fill(c[i], 0, 256 * KiB, 100 + i);
        }
        gpu_stats_t s2 = STATS(h);
        assert_int_equal(s2.backend_create, s1.backend_create); /* no new memory: all of it was r's */
        assert_int_equal(s2.idle_bytes, 0);
        for (int i = 0; i < 16; i++) {
            PATTERN_CHECK(c[i], 0, 256 * KiB, 100 + i);
            ASSERT_OK(gpu_heap_free(h, c[i]));
        }
        CHECK_ALL(h);
        HEAP_DESTROY(h);
    }
}

/* A GPU_ALLOC_OWNED block reuses idle whole extents only where they fit it to
 * within an eighth or a granule: a 1-byte block does not take a whole idle
 * 32 MiB extent (it gets one granule of new memory instead), a 30 MiB one
 * does. */
static void test_owned_reuse_is_snug(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(2 * MiB);
    char *big = gpu_heap_malloc(h, 32 * MiB);
    assert_non_null(big);
    ASSERT_OK(gpu_heap_free(h, big));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* drained: the 32 MiB extent idle, still mapped */
    char *small = gpu_heap_malloc_flags(h, 1, GPU_ALLOC_OWNED);
    assert_non_null(small);
    assert_int_equal(gpu_heap_malloc_usable_size(h, small), 2 * MiB);
    char *fits = gpu_heap_malloc_flags(h, 30 * MiB, GPU_ALLOC_OWNED);
    assert_ptr_equal(fits, big);
    assert_int_equal(gpu_heap_malloc_usable_size(h, fits), 32 * MiB);
    CHECK_HEAP(h);
    ASSERT_OK(gpu_heap_free(h, small));
    ASSERT_OK(gpu_heap_free(h, fits));
    HEAP_DESTROY(h);
}

int main(void) {
    test_thread_cache = 0; /* the heap core's placement and merging, without thread caches in front */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_owned_reuse_is_snug),
        cmocka_unit_test(test_coalesce_three),
        cmocka_unit_test(test_coalesce_many),
        cmocka_unit_test(test_placement),
        cmocka_unit_test(test_placement_whole_extents),
        cmocka_unit_test(test_placement_rest_idle),
        cmocka_unit_test(test_realloc_rest_idle),
        cmocka_unit_test(test_placement_extends_idle_tail),
        cmocka_unit_test(test_placement_idle_chunks_go_back),
        cmocka_unit_test(test_placement_holds_the_peak),
        cmocka_unit_test(test_quarantine_batch_reused),
        cmocka_unit_test(test_realloc_in_place),
        cmocka_unit_test(test_realloc_remap),
        cmocka_unit_test(test_realloc_owned_stays_owned),
        cmocka_unit_test(test_realloc_copy),
        cmocka_unit_test(test_realloc_shrink),
        cmocka_unit_test(test_realloc_edges),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_release_threshold),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_out_of_memory_small),
        cmocka_unit_test(test_protect),
        cmocka_unit_test(test_protect_free_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
