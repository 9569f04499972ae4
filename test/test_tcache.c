/*
 * test_tcache.c — per-thread caches (lib/cache) keep gpu_free's promise and
 * the heap's books.
 *
 * A cached free must not be reused before a cover (seal event or fence) after
 * it completes; a block freed by another thread, freed twice, resized or looked
 * up behaves as without caches; every block a thread's cache handed out comes
 * back through it, however many are out; the statistics add up with what caches
 * hold; trim, thread exit and heap destruction give cached blocks back or drop
 * them safely. Host backend, white-box for its event knob (lib/core/internal.h)
 * and the size of a cache's table of handed-out blocks (lib/cache/tcache.h).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "api/api.h"
#include "backend/fault/fault.h"
#include "cache/internal.h"
#include "cache/tcache.h"
#include "core/internal.h"
#include "util.h"

static gpu_heap_t *open_heap(size_t cache) {
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    cfg.thread_cache = cache;
    return HEAP_CREATE(&cfg);
}

/* mapped = live + idle + quarantined + cached, with nothing on streams. */
static void books_add_up(gpu_heap_t *h) {
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.mapped_bytes, s.live_bytes + s.idle_bytes + s.quarantine_bytes + s.cached_bytes);
}

/* A freed block of size bytes comes back only after an event recorded after
 * its free has completed, or a device fence: with events held incomplete, it
 * stays away until the heap fences (its quarantine over budget), after at least
 * `patience` pairs (a ring's worth). Then, events completing again, the cache
 * reuses its own blocks with no new memory and no fence. */
static void reuse_waits_for_cover(size_t size, int patience) {
    gpu_heap_t *h = open_heap(32 * MiB);
    vmm_host_set_event_delay(h->door.b, 1000000);
    char *p = gpu_heap_malloc(h, size);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    int before_fence = 0;
    for (int i = 0; i < 5000; i++) {
        char *q = gpu_heap_malloc(h, size);
        assert_non_null(q);
        if (STATS(h).fences) {
            assert_int_equal(gpu_heap_free(h, q), GPU_OK);
            break;
        }
        assert_ptr_not_equal(q, p);
        before_fence++;
        assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    }
    assert_true(before_fence >= patience);
    CHECK_HEAP(h);
    books_add_up(h);
    vmm_host_set_event_delay(h->door.b, 0);
    for (int i = 0; i < 200; i++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, size)), GPU_OK); /* settle */
    gpu_stats_t s0 = STATS(h);
    for (int i = 0; i < 20000; i++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, size)), GPU_OK);
    gpu_stats_t s1 = STATS(h);
    assert_true(s1.mapped_bytes <= s0.mapped_bytes);
    assert_int_equal(s1.backend_create, s0.backend_create);
    assert_int_equal(s1.fences, s0.fences);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

static void test_reuse_waits_for_cover(void **state) {
    (void)state;
    reuse_waits_for_cover(4096, 1000);
    reuse_waits_for_cover(64 * KiB, 64); /* mid slots (exact sizes above 4 KiB) */
    reuse_waits_for_cover(1 * MiB, 16);
}

/* Mid sizes go through the cache: a warm pair hands back a block the thread
 * freed, the cache holds what was freed, and the books add up. Wide sizes
 * (whole granules, up to what the mid budget holds 32 of) too. */
static void test_mid_sizes_cached(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    const size_t sizes[] = {4 * KiB + 256, 64 * KiB, 1 * MiB, 2 * MiB - 256, 2 * MiB, 16 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *first = gpu_heap_malloc(h, sizes[i]);
        assert_non_null(first);
        assert_int_equal(gpu_heap_free(h, first), GPU_OK);
        bool again = false;
        for (int k = 0; k < 2000 && !again; k++) {
            void *q = gpu_heap_malloc(h, sizes[i]);
            BLOCK_VALID(h, q, sizes[i]);
            again = q == first;
            assert_int_equal(gpu_heap_free(h, q), GPU_OK);
        }
        assert_true(again);
        assert_true(STATS(h).cached_bytes >= sizes[i]);
        books_add_up(h);
    }
    /* Past a granule (2 MiB here), sizes of no whole granules, and whole
     * granules past 16 MiB (512 MiB of mid budget / 32), stay with the heap. */
    const size_t heaps[] = {2 * MiB + 256, 3 * MiB, 16 * MiB - 256 * KiB, 18 * MiB, 32 * MiB};
    for (size_t i = 0; i < sizeof heaps / sizeof heaps[0]; i++) {
        void *big = gpu_heap_malloc(h, heaps[i]);
        BLOCK_VALID(h, big, heaps[i]);
        size_t cached = STATS(h).cached_bytes;
        assert_int_equal(gpu_heap_free(h, big), GPU_OK);
        assert_int_equal(STATS(h).cached_bytes, cached);
    }
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* The door's count of backend calls of one kind. */
static uint64_t calls(gpu_heap_t *h, vmm_op op) { return atomic_load(&h->door.counts.calls[op]); }

/* Warm pairs of a wide size look at the covers once every 16 frees at most (a
 * ring at least 32 deep: a record and a query each look), with no fence and no
 * new mapping once warm; through the heap a 16 MiB pair recorded once every 5. */
static void test_wide_pairs_look_rarely(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    const size_t sizes[] = {2 * MiB, 4 * MiB, 16 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (int k = 0; k < 200; k++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, sizes[i])), GPU_OK);
        gpu_stats_t s0 = STATS(h);
        uint64_t r0 = calls(h, VMM_OP_EVENT_RECORD), q0 = calls(h, VMM_OP_EVENT_QUERY);
        enum { PAIRS = 1600 };
        for (int k = 0; k < PAIRS; k++) {
            char *p = gpu_heap_malloc(h, sizes[i]);
            assert_non_null(p);
            p[sizes[i] - 1] = 1;
            assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        }
        gpu_stats_t s1 = STATS(h);
        assert_true(calls(h, VMM_OP_EVENT_RECORD) - r0 <= PAIRS / 16 + 2);
        assert_true(calls(h, VMM_OP_EVENT_QUERY) - q0 <= PAIRS / 16 + 2);
        assert_int_equal(s1.fences, s0.fences);
        assert_int_equal(s1.backend_map, s0.backend_map);
        assert_true(s1.cached_bytes >= sizes[i]);
        assert_int_equal(s1.live_bytes, 0);
        books_add_up(h);
        CHECK_HEAP(h);
    }
    HEAP_DESTROY(h);
}

/* The live peak is the program's: blocks a ring holds free are live in the
 * heap's books, but a ring of thirty-two 16 MiB blocks behind one live block
 * leaves the peak at one block, so it raises no budget. */
static void test_wide_ring_not_in_live_peak(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    for (int k = 0; k < 500; k++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, 16 * MiB)), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_true(s.cached_bytes > 16 * 16 * MiB); /* the ring went deeper than 16 */
    assert_int_equal(s.peak_live_bytes, 16 * MiB);
    assert_int_equal(h->peak_live_bytes, 16 * MiB); /* the one the budget reads */
    HEAP_DESTROY(h);
}

/* In legacy free order wide sizes are the heap's (its ordered releases come in
 * batches; a ring's would come at every look): a pair caches nothing, and a
 * block a ring handed out before the order changed is freed to the heap. Back
 * in event order the ring serves again. */
static void test_wide_sizes_heaps_in_legacy_order(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    for (int k = 0; k < 50; k++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, 16 * MiB)), GPU_OK);
    assert_true(STATS(h).cached_bytes >= 16 * MiB);
    void *out = gpu_heap_malloc(h, 16 * MiB); /* from the ring */
    assert_non_null(out);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK); /* the ring's blocks go back; out stays the cache's */
    assert_int_equal(STATS(h).cached_bytes, 0);
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    assert_int_equal(gpu_heap_free(h, out), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, 0);
    assert_int_equal(s.live_bytes, 0);
    for (int k = 0; k < 50; k++) {
        void *p = gpu_heap_malloc(h, 16 * MiB);
        BLOCK_VALID(h, p, 16 * MiB);
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        assert_int_equal(STATS(h).cached_bytes, 0);
    }
    assert_true(STATS(h).order_releases > 0);
    CHECK_HEAP(h);
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_EVENT), GPU_OK);
    for (int k = 0; k < 50; k++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, 16 * MiB)), GPU_OK);
    assert_true(STATS(h).cached_bytes >= 16 * MiB);
    books_add_up(h);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A block of size bytes the cache handed out that gpu_protect changed is the
 * heap's again: its free restores access and the cache does not keep it. Then
 * one more of that size, written (writable) and freed, which the cache keeps;
 * returned. */
static char *protected_handout_is_the_heaps(gpu_heap_t *h, size_t size) {
    char *p = gpu_heap_malloc(h, size);
    assert_non_null(p);
    assert_int_equal(gpu_heap_protect(h, p, size, GPU_PROT_READ), GPU_OK);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, 0); /* the heap's */
    assert_int_equal(s.protected_extents, 0);
    p = gpu_heap_malloc(h, size);
    assert_non_null(p);
    memset(p, 0x5a, size); /* writable */
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_true(STATS(h).cached_bytes >= size);
    return p;
}

/* p, a block of size bytes the cache holds free, is freed memory: a second free,
 * a realloc, protecting it or asking for the block around an address in it is
 * refused and changes nothing. */
static void cached_block_refuses(gpu_heap_t *h, char *p, size_t size) {
    size_t cached = STATS(h).cached_bytes;
    assert_int_equal(gpu_heap_free(h, p), GPU_ERR_NOT_LIVE);
    assert_null(gpu_heap_realloc(h, p, 2 * size));
    assert_int_equal(gpu_last_error(), GPU_ERR_NOT_LIVE);
    assert_int_equal(gpu_heap_protect(h, p, size, GPU_PROT_NONE), GPU_ERR_NOT_WHOLE_EXTENT);
    uintptr_t start = 0;
    size_t bytes = 0;
    assert_int_equal(heap_block_containing(h, (uintptr_t)p + 4096, &start, &bytes), GPU_ERR_NOT_LIVE);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, cached);
    assert_int_equal(s.protected_extents, 0);
    CHECK_HEAP(h);
}

/* A wide block a ring holds is freed memory, and one the cache handed out that
 * gpu_protect changed is the heap's again (as for the kept large block, below). */
static void test_wide_refusals_and_protect(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    cached_block_refuses(h, protected_handout_is_the_heaps(h, 8 * MiB), 8 * MiB);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK); /* a trim empties the ring */
    assert_int_equal(STATS(h).cached_bytes, 0);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A mid slot serves one size at a time. A block handed out under one size whose
 * slot then went to other sizes is freed to the heap, never into the ring of
 * another size: every later block has the size asked for. */
static void test_mid_slot_taken_over(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    enum { SIZES = 64 };
    void *held = gpu_heap_malloc(h, 5 * KiB);
    assert_non_null(held);
    for (int i = 0; i < SIZES; i++) { /* 64 sizes over 16 slots: held's slot changes hands */
        size_t s = 8 * KiB + (size_t)i * 4 * KiB;
        for (int k = 0; k < 4; k++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, s)), GPU_OK);
    }
    assert_int_equal(gpu_heap_free(h, held), GPU_OK);
    books_add_up(h); /* a ring counts its blocks at its size: held in another ring would not add up */
    for (int i = SIZES - 1; i >= 0; i--) { /* latest first: each ring emptied, whatever it holds handed out */
        size_t s = 8 * KiB + (size_t)i * 4 * KiB;
        void *p[8];
        for (int k = 0; k < 8; k++) {
            p[k] = gpu_heap_malloc(h, s);
            BLOCK_VALID(h, p[k], s);
            memset(p[k], 0x5a, s);
        }
        for (int k = 0; k < 8; k++) assert_int_equal(gpu_heap_free(h, p[k]), GPU_OK);
    }
    CHECK_HEAP(h);
    books_add_up(h);
    HEAP_DESTROY(h);
}

/* Blocks kept in mid slots never make the heap map: before it maps new memory
 * the heap takes them back (its room hook), and what they held serves a
 * request of another size. */
static void test_mid_blocks_come_back_before_map(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    enum { N = 40 };
    void *p[N];
    for (int i = 0; i < N; i++) assert_non_null(p[i] = gpu_heap_malloc(h, 1 * MiB));
    for (int i = 0; i < N; i++) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    gpu_stats_t s0 = STATS(h);
    assert_true(s0.cached_bytes >= 32 * MiB);
    void *q[N / 2];
    for (int i = 0; i < N / 2; i++) {
        q[i] = gpu_heap_malloc(h, 2 * MiB - 256);
        BLOCK_VALID(h, q[i], 2 * MiB - 256);
    }
    gpu_stats_t s1 = STATS(h);
    assert_true(s1.mapped_bytes <= s0.mapped_bytes + 8 * MiB); /* at most what still waited for its cover */
    for (int i = 0; i < N / 2; i++) assert_int_equal(gpu_heap_free(h, q[i]), GPU_OK);
    CHECK_HEAP(h);
    books_add_up(h);
    HEAP_DESTROY(h);
}

/* The calling thread's mid ring for blocks of size bytes (white-box). */
static tc_class *mid_ring(gpu_heap_t *h, size_t size) {
    tcache *c = tcache_mine(h);
    assert_non_null(c);
    for (unsigned k = TC_CLASSES; k < TC_ALL; k++)
        if (c->cls[k].size == size) return &c->cls[k];
    fail_msg("no mid ring holds %zu-byte blocks", size);
    return NULL;
}

/* n warm pairs of size bytes, one every 100 ns on the host backend's clock
 * from *t on. */
static void timed_pairs(gpu_heap_t *h, size_t size, int n, uint64_t *t, uint64_t lag_ns) {
    for (int i = 0; i < n; i++) {
        vmm_host_set_clock(h->door.b, *t += 100, lag_ns);
        assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, size)), GPU_OK);
    }
}

/* A mid ring stays at its starting depth while covers are seen in time, and
 * deepens — within its budget, so within what the heap maps — once a cover
 * takes longer to complete than the ring takes to come round (16 threads
 * recording at once on an H200: 4.7 us at the median, 20 us at p90, against
 * 64 pairs of 70 ns); deeper, its head is covered again and the pairs reuse its
 * own blocks with no new memory. */
static void test_mid_ring_deepens_while_covers_lag(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    const size_t size = 1 * MiB;
    uint64_t t = 0;
    timed_pairs(h, size, 5000, &t, 0);
    tc_class *q = mid_ring(h, size);
    const uint32_t start = q->depth;
    assert_int_equal(start, 64);   /* 64 MiB of 1 MiB blocks */
    assert_int_equal(q->cap, 256); /* half the mid budget: 256 MiB */
    size_t mapped0 = STATS(h).mapped_bytes;

    timed_pairs(h, size, 20000, &t, 10000); /* a cover completes 10 us (100 pairs) after its record */
    assert_true(q->depth > start);
    assert_true(q->depth <= q->cap);
    gpu_stats_t s0 = STATS(h);
    assert_true(s0.mapped_bytes <= mapped0 + 256 * MiB); /* the ring's budget */
    timed_pairs(h, size, 20000, &t, 10000);
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.backend_create, s0.backend_create); /* deep enough: its own blocks come round covered */
    assert_int_equal(s1.fences, s0.fences);
    CHECK_HEAP(h);
    books_add_up(h);
    HEAP_DESTROY(h);
}

/* Contents survive, sizes are honest, and a double free through the cache is
 * refused with the heap unchanged. */
static void test_blocks_and_double_free(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    enum { N = 300 };
    char *p[N];
    for (int i = 0; i < N; i++) {
        size_t size = 1 + (size_t)(i * 977) % (64 * KiB);
        p[i] = gpu_heap_malloc(h, size);
        assert_true(BLOCK_VALID(h, p[i], size) >= size);
        pattern_fill(p[i], 0, size, (uint64_t)i);
    }
    for (int i = 0; i < N; i++) PATTERN_CHECK(p[i], 0, 1 + (size_t)(i * 977) % (64 * KiB), (uint64_t)i);
    for (int i = 0; i < N; i += 2) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    gpu_stats_t before = STATS(h);
    assert_true(before.cached_blocks > 0);
    assert_int_equal(gpu_heap_free(h, p[0]), GPU_ERR_NOT_LIVE);
    assert_int_equal(gpu_heap_free(h, p[2] + 256), GPU_ERR_NOT_LIVE); /* interior of a cached free block */
    assert_int_equal(gpu_heap_malloc_usable_size(h, p[4]), 0); /* freed: not a live block */
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.live_bytes, before.live_bytes);
    assert_int_equal(after.cached_bytes, before.cached_bytes);
    CHECK_HEAP(h);
    books_add_up(h);
    for (int i = 1; i < N; i += 2) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    assert_int_equal(STATS(h).live_bytes, 0);
    HEAP_DESTROY(h);
}

/* A cached block can be resized, keeps its contents, and is freed after. */
static void test_realloc_of_cached_block(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    char *p = gpu_heap_malloc(h, 1000);
    pattern_fill(p, 0, 1000, 7);
    char *q = gpu_heap_realloc(h, p, 3 * MiB);
    assert_non_null(q);
    PATTERN_CHECK(q, 0, 1000, 7);
    char *r = gpu_heap_realloc(h, q, 512);
    assert_non_null(r);
    PATTERN_CHECK(r, 0, 512, 7);
    assert_int_equal(gpu_heap_free(h, r), GPU_OK);
    assert_int_equal(gpu_heap_free(h, r), GPU_ERR_NOT_LIVE);
    CHECK_HEAP(h);
    books_add_up(h);
    HEAP_DESTROY(h);
}

/* trim empties the calling thread's cache: its blocks become idle and go. */
static void test_trim_empties_cache(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    void *p[64];
    for (int i = 0; i < 64; i++) p[i] = gpu_heap_malloc(h, 4096);
    for (int i = 0; i < 64; i++) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    assert_true(STATS(h).cached_bytes > 0);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, 0);
    assert_int_equal(s.live_bytes, 0);
    assert_int_equal(s.mapped_bytes, 0);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* With a small granularity, a block of a granule or more owns its extent and
 * may be protected: gpu_protect takes such a block a cache handed out back to
 * the heap, so a protected block freed and allocated again comes back writable
 * (the fuzzer's find). */
static void test_protected_blocks_bypass_cache(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * GiB, 64 * KiB, 0);
    cfg.thread_cache = 32 * MiB;
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    char *small = gpu_heap_malloc(h, 4096);
    assert_int_equal(gpu_heap_protect(h, small, 4096, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    for (int i = 0; i < 50; i++) {
        char *p = gpu_heap_malloc(h, 64 * KiB);
        assert_non_null(p);
        memset(p, 0x11, 64 * KiB); /* writable: a protection never survives a free */
        assert_int_equal(gpu_heap_protect(h, p, 64 * KiB, GPU_PROT_READ), GPU_OK);
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    }
    assert_int_equal(gpu_heap_free(h, small), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    CHECK_HEAP(h);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.protected_extents, 0);
    HEAP_DESTROY(h);
}

/* A plain block of 64 MiB and more is kept by its thread from its free to the
 * next allocation of as many granules (lib/cache/big.c): the free records the
 * cover, the allocation queries once and gets the same block, with no fence and
 * no mapping; the books count it cached meanwhile. With its cover not complete
 * it is not reused before a fence; a request of another size gets it back to
 * the heap first. */
static void test_big_block_kept_for_next_pair(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    void *p = gpu_heap_malloc(h, 256 * MiB);
    assert_non_null(p);
    gpu_stats_t s0 = STATS(h);
    for (int i = 0; i < 10; i++) {
        uint64_t r0 = calls(h, VMM_OP_EVENT_RECORD), q0 = calls(h, VMM_OP_EVENT_QUERY);
        assert_int_equal(gpu_heap_free(h, p), GPU_OK);
        assert_int_equal(calls(h, VMM_OP_EVENT_RECORD) - r0, 1);
        assert_int_equal(calls(h, VMM_OP_EVENT_QUERY) - q0, 0);
        assert_int_equal(STATS(h).cached_bytes, 256 * MiB);
        books_add_up(h);
        CHECK_HEAP(h);
        void *q = gpu_heap_malloc(h, 256 * MiB - 1000); /* as many granules */
        assert_ptr_equal(q, p);
        assert_int_equal(calls(h, VMM_OP_EVENT_RECORD) - r0, 1);
        assert_int_equal(calls(h, VMM_OP_EVENT_QUERY) - q0, 1);
        assert_int_equal(STATS(h).cached_bytes, 0);
    }
    gpu_stats_t s1 = STATS(h);
    assert_int_equal(s1.fences, s0.fences);
    assert_int_equal(s1.backend_map, s0.backend_map);

    /* Its cover not complete: back to the quarantine, reused only after a fence. */
    vmm_host_set_event_delay(h->door.b, 1000000);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    uint64_t fences = STATS(h).fences;
    void *q = gpu_heap_malloc(h, 256 * MiB);
    assert_non_null(q);
    if (q == p) assert_true(STATS(h).fences > fences);
    assert_int_equal(STATS(h).cached_bytes, 0);
    vmm_host_set_event_delay(h->door.b, 0);
    CHECK_HEAP(h);

    /* Any allocation that goes to the heap (here gpu_calloc) gets it back there
     * first: its cover completed, it is found idle. */
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    assert_int_equal(STATS(h).cached_bytes, 256 * MiB);
    fences = STATS(h).fences;
    void *z = gpu_heap_calloc(h, 1, 256 * MiB);
    assert_ptr_equal(z, q);
    assert_int_equal(STATS(h).fences, fences);
    assert_int_equal(gpu_heap_free(h, z), GPU_OK); /* the heap's block: its free is the heap's */
    assert_int_equal(STATS(h).cached_bytes, 0);
    q = gpu_heap_malloc(h, 256 * MiB);
    assert_non_null(q);

    /* Another size: the kept block goes back idle before the heap serves it. */
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    assert_int_equal(STATS(h).cached_bytes, 256 * MiB);
    void *other = gpu_heap_malloc(h, 128 * MiB);
    assert_non_null(other);
    gpu_stats_t s2 = STATS(h);
    assert_int_equal(s2.cached_bytes, 0);
    assert_true(s2.idle_bytes >= 128 * MiB); /* what is left of it */
    books_add_up(h);
    assert_int_equal(gpu_heap_free(h, other), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK); /* a trim takes the kept block too */
    assert_int_equal(STATS(h).cached_bytes, 0);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A kept block is freed memory: a second free, a realloc, protecting it or
 * asking for the block around an address in it is refused and changes nothing.
 * A block the cache handed out that gpu_protect changed is the heap's again: its
 * free restores access and the cache does not keep it. */
static void test_big_block_refusals_and_protect(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    char *p = protected_handout_is_the_heaps(h, 64 * MiB);
    assert_int_equal(STATS(h).cached_bytes, 64 * MiB);
    cached_block_refuses(h, p, 64 * MiB);
    uintptr_t start = 0;
    size_t size = 0;

    char *q = gpu_heap_malloc(h, 64 * MiB);
    assert_ptr_equal(q, p);
    assert_int_equal(heap_block_containing(h, (uintptr_t)q + 4096, &start, &size), GPU_OK);
    assert_int_equal(start, (uintptr_t)q);
    assert_int_equal(size, 64 * MiB);
    memset(q, 0x6b, 64 * MiB);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* An aligned request (the interposer asks cudaMalloc's alignment) is the heap's:
 * its block is not kept, and a kept block goes back to the heap before it. */
static void test_big_block_aligned_is_the_heaps(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    void *p = gpu_heap_malloc_aligned(h, 128 * MiB, 2 * MiB);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_int_equal(STATS(h).cached_bytes, 0);
    void *q = gpu_heap_malloc(h, 128 * MiB);
    assert_non_null(q);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    assert_int_equal(STATS(h).cached_bytes, 128 * MiB);
    void *a = gpu_heap_malloc_aligned(h, 128 * MiB, 2 * MiB);
    assert_non_null(a);
    assert_int_equal(STATS(h).cached_bytes, 0);
    assert_int_equal(gpu_heap_free(h, a), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A kept block counts as freed for the heap's backing: after a kept 64 MiB free,
 * a 1 GiB block is backed in chunks (lib/core/vacant.c), as after gpu_free. */
static void test_big_block_free_counts_for_chunks(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    void *p = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_int_equal(STATS(h).cached_bytes, 64 * MiB);
    uint64_t maps = STATS(h).backend_map;
    void *g = gpu_heap_malloc(h, 1 * GiB);
    assert_non_null(g);
    assert_true(STATS(h).backend_map - maps >= 8); /* chunks of an eighth */
    assert_int_equal(gpu_heap_free(h, g), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A kept block whose cover is still running when it goes back joins the batch
 * sealed at its free, and is released with it: no new seal for it. */
static bool in_list(const block *b, uintptr_t start) {
    for (; b; b = b->next_free)
        if (b->start == start) return true;
    return false;
}

static void test_big_block_back_with_its_seal(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    void *ballast = gpu_heap_malloc_flags(h, 1 * GiB, GPU_ALLOC_OWNED); /* room under the physical budget: no fence */
    void *p = gpu_heap_malloc(h, 256 * MiB);
    assert_non_null(ballast);
    assert_non_null(p);
    vmm_host_set_event_delay(h->door.b, 1000000);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK); /* kept; its seal recorded */
    assert_int_equal(h->nsealed, 1);
    uint64_t r_free = calls(h, VMM_OP_EVENT_RECORD);
    void *o = gpu_heap_malloc(h, 128 * MiB); /* another size: p goes back, still running */
    assert_non_null(o);
    assert_int_equal(calls(h, VMM_OP_EVENT_RECORD), r_free); /* nothing sealed anew for it */
    assert_false(in_list(h->quarantine, (uintptr_t)p));
    assert_true(in_list(h->sealed[0].q.head, (uintptr_t)p));
    CHECK_HEAP(h);
    vmm_host_set_event_delay(h->door.b, 0);
    uint64_t r0 = calls(h, VMM_OP_EVENT_RECORD);
    void *q = gpu_heap_malloc_flags(h, 256 * MiB, GPU_ALLOC_ZERO); /* the heap's path */
    assert_ptr_equal(q, p);
    assert_int_equal(calls(h, VMM_OP_EVENT_RECORD), r0);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    assert_int_equal(gpu_heap_free(h, o), GPU_OK);
    assert_int_equal(gpu_heap_free(h, ballast), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* A block one thread's cache handed out and another thread frees is the heap's:
 * the first thread's next pair does not find it kept. */
static void *free_it(void *p) { return (void *)(intptr_t)gpu_free(p); }

static void test_big_block_freed_elsewhere(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    void *p = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(p);
    pthread_t t;
    void *rc;
    assert_int_equal(pthread_create(&t, NULL, free_it, p), 0);
    assert_int_equal(pthread_join(t, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, 0);
    assert_true(s.quarantine_bytes + s.idle_bytes >= 64 * MiB);
    CHECK_HEAP(h);
    void *q = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(q);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* thread_cache 0: nothing is ever cached. */
static void test_cache_off(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    for (int i = 0; i < 1000; i++) assert_int_equal(gpu_heap_free(h, gpu_heap_malloc(h, 4096)), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, 0);
    assert_int_equal(s.cached_blocks, 0);
    HEAP_DESTROY(h);
}

/* A thread that holds many small blocks at once frees every one of them through
 * its cache: the cache remembers all it handed out (a table that forgot the
 * older ones sent them to the heap's locked path). */
static void test_many_live_blocks_free_through_cache(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    enum { N = 10000 };
    void **p = calloc(N, sizeof *p);
    assert_non_null(p);
    /* 625 blocks of each class: no ring fills (1024 slots) and the rings' bytes
     * stay under the 32 MiB limit, so nothing needs to go back to the heap. */
    for (int i = 0; i < N; i++) assert_non_null(p[i] = gpu_heap_malloc(h, 256 * (size_t)(1 + i % 16)));
    gpu_stats_t before = STATS(h);
    assert_int_equal(before.live_blocks, N);
    for (int i = 0; i < N; i++) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.live_blocks, 0);
    assert_int_equal(after.cached_blocks - before.cached_blocks, N); /* every free stayed in the cache */
    assert_int_equal(after.quarantine_blocks, before.quarantine_blocks);
    CHECK_HEAP(h);
    books_add_up(h);
    free(p);
    HEAP_DESTROY(h);
}

/* ---- threads ------------------------------------------------------------------------ */

typedef struct xarg {
    gpu_heap_t *h;
    void **ptrs;
    int n;
    int seed;
    int bad;
} xarg;

static void *alloc_many(void *arg) {
    xarg *a = arg;
    for (int i = 0; i < a->n; i++) {
        size_t size = 1 + (size_t)(i * 7919 + a->seed) % (32 * KiB);
        a->ptrs[i] = gpu_heap_malloc(a->h, size);
        if (!a->ptrs[i]) a->bad++;
        else pattern_fill(a->ptrs[i], 0, size, (uint64_t)i);
    }
    return NULL;
}

static void *free_many(void *arg) {
    xarg *a = arg;
    for (int i = 0; i < a->n; i++) {
        size_t size = 1 + (size_t)(i * 7919 + a->seed) % (32 * KiB);
        if (pattern_mismatch(a->ptrs[i], 0, size, (uint64_t)i) != SIZE_MAX) a->bad++;
        if (gpu_heap_free(a->h, a->ptrs[i]) != GPU_OK) a->bad++;
    }
    return NULL;
}

/* Blocks one thread's cache handed out are freed by another; a thread that
 * exits gives its cache back. */
static void test_cross_thread_and_exit(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    enum { N = 2000 };
    void **ptrs = calloc(N, sizeof *ptrs);
    xarg a = {h, ptrs, N, 3, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, alloc_many, &a), 0);
    assert_int_equal(pthread_join(t, NULL), 0); /* the allocating thread is gone: its cache went back */
    assert_int_equal(a.bad, 0);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.cached_bytes, 0);
    assert_int_equal(s.live_blocks, N);
    assert_int_equal(pthread_create(&t, NULL, free_many, &a), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(a.bad, 0);
    s = STATS(h);
    assert_int_equal(s.live_bytes, 0);
    assert_int_equal(s.cached_bytes, 0);
    for (int i = 0; i < 10; i++) assert_int_equal(gpu_heap_free(h, ptrs[i]), GPU_ERR_NOT_LIVE);
    CHECK_HEAP(h);
    books_add_up(h);
    free(ptrs);
    HEAP_DESTROY(h);
}

typedef struct churn_arg {
    gpu_heap_t *h;
    void *_Atomic *shared; /* slots any thread may take a block from and free */
    int slots, iters, seed, bad;
} churn_arg;

static void *churn(void *arg) {
    churn_arg *a = arg;
    uint64_t rng = (uint64_t)a->seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < a->iters; i++) {
        rng = mix64(rng);
        int k = (int)(rng % (uint64_t)a->slots);
        void *mine = gpu_heap_malloc(a->h, 1 + (rng >> 20) % (70 * KiB));
        if (!mine) {
            a->bad++;
            continue;
        }
        void *old = atomic_exchange(&a->shared[k], mine);
        if (old && gpu_heap_free(a->h, old) != GPU_OK) a->bad++;
    }
    return NULL;
}

/* Many threads hand blocks to each other through shared slots: every free
 * lands, and the heap checks out at the end. */
static void test_threads_exchange_blocks(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(4 * MiB);
    enum { T = 8, SLOTS = 256 };
    void *_Atomic shared[SLOTS];
    for (int i = 0; i < SLOTS; i++) atomic_init(&shared[i], NULL);
    churn_arg a[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        a[i] = (churn_arg){h, shared, SLOTS, 4000, i + 1, 0};
        assert_int_equal(pthread_create(&th[i], NULL, churn, &a[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(a[i].bad, 0);
    }
    CHECK_HEAP(h);
    books_add_up(h);
    for (int i = 0; i < SLOTS; i++) {
        void *p = atomic_load(&shared[i]);
        if (p) assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    }
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.live_bytes, 0);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

typedef struct keep_arg {
    pthread_barrier_t *b;
    gpu_heap_t *h;
    int bad;
} keep_arg;

static void *cache_then_wait(void *arg) {
    keep_arg *a = arg;
    for (int i = 0; i < 100; i++) (void)gpu_heap_free(a->h, gpu_heap_malloc(a->h, 4096));
    pthread_barrier_wait(a->b); /* the main thread destroys the heap */
    pthread_barrier_wait(a->b);
    gpu_heap_t *h2 = open_heap(32 * MiB); /* may land where the old one was: the serial tells them apart */
    for (int i = 0; i < 100; i++)
        if (gpu_heap_free(h2, gpu_heap_malloc(h2, 4096)) != GPU_OK) a->bad++;
    if (gpu_heap_destroy(h2) != GPU_OK) a->bad++;
    return NULL; /* exits with caches of two destroyed heaps: nothing to give back */
}

/* A heap destroyed while another thread holds a cache of it: the cache goes
 * with the heap, and the thread neither uses nor frees it twice. */
static void test_destroy_with_caches(void **state) {
    (void)state;
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    keep_arg a = {&b, open_heap(32 * MiB), 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cache_then_wait, &a), 0);
    pthread_barrier_wait(&b);
    HEAP_DESTROY(a.h);
    pthread_barrier_wait(&b);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(a.bad, 0);
    pthread_barrier_destroy(&b);
}

static void *cache_then_allocate_once(void *arg) {
    keep_arg *a = arg;
    void *p[64];
    for (int i = 0; i < 64; i++) p[i] = gpu_heap_malloc(a->h, 4096);
    for (int i = 0; i < 64; i++)
        if (gpu_heap_free(a->h, p[i]) != GPU_OK) a->bad++;
    pthread_barrier_wait(a->b); /* the main thread trims */
    pthread_barrier_wait(a->b);
    if (gpu_heap_free(a->h, gpu_heap_malloc(a->h, 256)) != GPU_OK) a->bad++; /* gives the 4 KiB blocks back first */
    pthread_barrier_wait(a->b);
    return NULL;
}

/* A trim empties the calling thread's cache at once and asks the others: a
 * thread gives its cached blocks back at its next small allocation. */
static void test_trim_asks_other_threads(void **state) {
    (void)state;
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    keep_arg a = {&b, open_heap(32 * MiB), 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cache_then_allocate_once, &a), 0);
    pthread_barrier_wait(&b);
    assert_int_equal(gpu_heap_trim(a.h, 0), GPU_OK);
    assert_true(STATS(a.h).cached_bytes >= 64 * 4096); /* still the other thread's until it calls */
    pthread_barrier_wait(&b);
    pthread_barrier_wait(&b);
    assert_true(STATS(a.h).cached_bytes <= 64 * 256); /* only the 256-byte batch its allocation took */
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(a.bad, 0);
    CHECK_HEAP(a.h);
    HEAP_DESTROY(a.h);
    pthread_barrier_destroy(&b);
}

typedef struct handoff_arg {
    pthread_barrier_t *b;
    gpu_heap_t *h;
    void **ptrs;
    int n, rounds;
    size_t slots; /* the largest table of handed-out blocks the thread's cache had */
} handoff_arg;

static void *allocate_for_main(void *arg) {
    handoff_arg *a = arg;
    for (int r = 0; r < a->rounds; r++) {
        for (int i = 0; i < a->n; i++) a->ptrs[i] = gpu_heap_malloc(a->h, 256);
        size_t slots = tcache_handout_slots(a->h);
        if (slots > a->slots) a->slots = slots;
        pthread_barrier_wait(a->b); /* main frees them */
        pthread_barrier_wait(a->b);
    }
    return NULL;
}

/* Blocks a thread's cache handed out and another thread freed leave stale
 * entries in its table of handed-out blocks; the table drops them as it fills,
 * so it stays the size of what is really out. */
static void test_blocks_freed_elsewhere_leave_no_trace(void **state) {
    (void)state;
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    enum { N = 500, ROUNDS = 200 };
    void *ptrs[N];
    handoff_arg a = {&b, open_heap(32 * MiB), ptrs, N, ROUNDS, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, allocate_for_main, &a), 0);
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_wait(&b);
        for (int i = 0; i < N; i++) assert_int_equal(gpu_heap_free(a.h, ptrs[i]), GPU_OK);
        pthread_barrier_wait(&b);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(a.slots > 0);
    assert_true(a.slots <= 8 * N); /* not the N * ROUNDS blocks handed out in all */
    assert_int_equal(STATS(a.h).live_blocks, 0);
    CHECK_HEAP(a.h);
    HEAP_DESTROY(a.h);
    pthread_barrier_destroy(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reuse_waits_for_cover),
        cmocka_unit_test(test_mid_sizes_cached),
        cmocka_unit_test(test_wide_pairs_look_rarely),
        cmocka_unit_test(test_wide_ring_not_in_live_peak),
        cmocka_unit_test(test_wide_refusals_and_protect),
        cmocka_unit_test(test_wide_sizes_heaps_in_legacy_order),
        cmocka_unit_test(test_mid_slot_taken_over),
        cmocka_unit_test(test_mid_blocks_come_back_before_map),
        cmocka_unit_test(test_mid_ring_deepens_while_covers_lag),
        cmocka_unit_test(test_blocks_and_double_free),
        cmocka_unit_test(test_realloc_of_cached_block),
        cmocka_unit_test(test_trim_empties_cache),
        cmocka_unit_test(test_protected_blocks_bypass_cache),
        cmocka_unit_test(test_big_block_kept_for_next_pair),
        cmocka_unit_test(test_big_block_refusals_and_protect),
        cmocka_unit_test(test_big_block_freed_elsewhere),
        cmocka_unit_test(test_big_block_aligned_is_the_heaps),
        cmocka_unit_test(test_big_block_free_counts_for_chunks),
        cmocka_unit_test(test_big_block_back_with_its_seal),
        cmocka_unit_test(test_cache_off),
        cmocka_unit_test(test_many_live_blocks_free_through_cache),
        cmocka_unit_test(test_cross_thread_and_exit),
        cmocka_unit_test(test_threads_exchange_blocks),
        cmocka_unit_test(test_destroy_with_caches),
        cmocka_unit_test(test_blocks_freed_elsewhere_leave_no_trace),
        cmocka_unit_test(test_trim_asks_other_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
