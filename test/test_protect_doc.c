/*
 * test_protect_doc.c — what gpu_protect's contract really promises, on the host
 * backend: the statements include/gpuheap.h and README.md make about which blocks
 * can be protected and how they are aligned, each checked where it is most likely
 * to break — beside idle memory left in shared extents.
 *
 * What holds (asserted):
 *  - a GPU_ALLOC_OWNED block starts on a granule boundary, its usable size is a
 *    multiple of the granularity (at least the size rounded up to it, and more
 *    when the idle extents it was cut from are larger), and gpu_protect over its
 *    whole usable size works — on a fresh heap, beside drained small blocks, with
 *    large shared extents idle, after a partial trim, and after realloc;
 *  - a plain block smaller than a granule never owns an extent: gpu_protect
 *    refuses it with GPU_ERR_NOT_WHOLE_EXTENT and changes nothing;
 *  - a plain block of a granule or more that the heap maps new memory for (no
 *    idle memory can hold it: here, a heap with nothing idle or quarantined) gets
 *    extents of its own: granule-aligned, usable size rounded up to the
 *    granularity, protectable — unless it would fill less than three quarters of
 *    its extent (more than a granule, less than one and a half): then the rest
 *    stays idle for other blocks, and gpu_protect refuses it cleanly;
 *  - a plain block of a granule or more cut from idle memory is only 256-byte
 *    aligned and may share its first or last extent; gpu_protect then refuses it
 *    cleanly (GPU_ERR_NOT_WHOLE_EXTENT, nothing changed). Asking for the
 *    granule's alignment (gpu_malloc_aligned, as the interposer does from 2 MiB
 *    up) gives a granule-aligned start, but still no ownership.
 * The last case is the one the documents overstated ("large blocks" can be
 * protected; blocks of 2 MiB and more "own 2 MiB-aligned extents anyway"): with
 * one small block live and many 16 KiB blocks freed and drained, a plain 3 MiB
 * block starts 256 bytes into the small block's extent, and a plain 5 MiB one is
 * granule-aligned but ends inside an extent. The test prints what it found there.
 */
#include <stdbool.h>

#include "util.h"

#define GRAN (2 * MiB) /* the host backend's default granularity, as on current GPUs */

static size_t round_gran(size_t n) { return (n + GRAN - 1) / GRAN * GRAN; }

/* ---- layouts of idle memory ------------------------------------------------------- */

enum { L_FRESH, L_DRAINED_SMALL, L_BIG_SHARED, L_PARTLY_TRIMMED, L_COUNT };
static const char *layout_name[] = {"fresh heap", "small block live, 16 KiB blocks freed and drained",
                                    "large shared extents idle", "partly trimmed"};

/* A heap in one of the layouts; *keep is the small block kept live (or NULL). */
static gpu_heap_t *heap_in(int layout, char **keep) {
    gpu_heap_t *h = HEAP_NEW(0);
    *keep = NULL;
    if (layout == L_FRESH) return h;
    *keep = gpu_heap_malloc(h, 256);
    BLOCK_VALID(h, *keep, 256);
    pattern_fill(*keep, 0, 256, 7);
    size_t n = layout == L_BIG_SHARED ? 6000 : 1000; /* 6000: shared extents of 8 MiB and more */
    char **v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = gpu_heap_malloc(h, 16 * KiB);
        BLOCK_VALID(h, v[i], 16 * KiB);
    }
    for (size_t i = 0; i < n; i++) ASSERT_OK(gpu_heap_free(h, v[i]));
    free(v);
    ASSERT_OK(gpu_heap_trim(h, layout == L_PARTLY_TRIMMED ? 5 * MiB : SIZE_MAX));
    CHECK_ALL(h);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.granularity, GRAN);
    assert_int_equal(s.quarantine_bytes, 0);
    assert_true(s.idle_bytes > 0);
    return h;
}

/* ---- GPU_ALLOC_OWNED: always protectable, granule-aligned ------------------------------- */

typedef struct probe {
    volatile uint8_t *p;
} probe;
static int child_write(void *arg) {
    probe *a = arg;
    a->p[0] = a->p[0]; /* writes back what is there: the memory is shared across fork */
    return 0;
}

/* p is a live owned-style block for size: granule-aligned, whole granules, and
 * protectable over its whole usable size (read-only, then back). */
static size_t expect_protectable_at(gpu_heap_t *h, char *p, size_t size, const char *what, const char *file,
                                    int line) {
    size_t u = block_valid_at(h, p, size, file, line);
    if ((uintptr_t)p % GRAN || u % GRAN || u < round_gran(size))
        fail_at(file, line, "%s: %zu bytes at %p (granule offset %zu), usable %zu: not whole granules", what, size,
                (void *)p, (size_t)((uintptr_t)p % GRAN), u);
    gpu_stats_t s0 = STATS(h);
    int rc = gpu_heap_protect(h, p, u, GPU_PROT_READ);
    if (rc != GPU_OK) fail_at(file, line, "%s: gpu_protect(%p, %zu) = %d (%s)", what, (void *)p, u, rc, gpu_strerror(rc));
    gpu_stats_t s1 = STATS(h);
    if (s1.protected_extents <= s0.protected_extents || s1.backend_set_access <= s0.backend_set_access)
        fail_at(file, line, "%s: protect worked but no extent became protected", what);
    rc = gpu_heap_protect(h, p, u, GPU_PROT_READ_WRITE);
    if (rc != GPU_OK) fail_at(file, line, "%s: unprotect = %d", what, rc);
    if (STATS(h).protected_extents != s0.protected_extents) fail_at(file, line, "%s: unprotect left extents protected", what);
    return u;
}
#define EXPECT_PROTECTABLE(h, p, size, what) expect_protectable_at((h), (p), (size), (what), __FILE__, __LINE__)

static const size_t owned_sizes[] = {1, 4 * KiB, 2 * MiB - 1, 2 * MiB, 3 * MiB, 5 * MiB, 33 * MiB};
#define NOWNED (sizeof owned_sizes / sizeof owned_sizes[0])

static void test_owned_always_protectable(void **state) {
    (void)state;
    for (int layout = 0; layout < L_COUNT; layout++) {
        char *keep;
        gpu_heap_t *h = heap_in(layout, &keep);
        char *p[NOWNED];
        size_t u[NOWNED];
        for (size_t i = 0; i < NOWNED; i++) { /* kept live: each one meets the idle memory the last left */
            p[i] = gpu_heap_malloc_flags(h, owned_sizes[i], GPU_ALLOC_OWNED);
            char what[128];
            snprintf(what, sizeof what, "%s: owned block of %zu bytes", layout_name[layout], owned_sizes[i]);
            u[i] = EXPECT_PROTECTABLE(h, p[i], owned_sizes[i], what);
            block_fill(p[i], u[i], 100 + i);
            CHECK_ALL(h);
        }
        /* The protection is real: a write into the read-only block faults. */
        ASSERT_OK(gpu_heap_protect(h, p[NOWNED - 1], u[NOWNED - 1], GPU_PROT_READ));
        probe a = {(volatile uint8_t *)p[NOWNED - 1] + u[NOWNED - 1] - 1};
        assert_true(died_of_fault(run_in_child(child_write, &a)));
        for (size_t i = 0; i < NOWNED; i++) {
            BLOCK_CHECK(p[i], u[i], 100 + i);
            ASSERT_OK(gpu_heap_free(h, p[i])); /* the protected one too: freeing restores access */
        }
        if (keep) PATTERN_CHECK(keep, 0, 256, 7);
        assert_int_equal(STATS(h).protected_extents, 0);
        CHECK_ALL(h);
        HEAP_DESTROY(h);
    }
}

/* An owned block stays so through realloc: grown in place or moved, shrunk. */
static void test_owned_realloc_stays_protectable(void **state) {
    (void)state;
    char *keep;
    gpu_heap_t *h = heap_in(L_DRAINED_SMALL, &keep);
    char *p = gpu_heap_malloc_flags(h, 3 * MiB, GPU_ALLOC_OWNED);
    size_t u = EXPECT_PROTECTABLE(h, p, 3 * MiB, "owned 3 MiB");
    block_fill(p, 3 * MiB, 50);
    static const size_t to[] = {9 * MiB, 40 * MiB, 1 * MiB, 6 * MiB + 1};
    size_t have = 3 * MiB;
    for (size_t i = 0; i < sizeof to / sizeof to[0]; i++) {
        char *q = gpu_heap_realloc(h, p, to[i]);
        char what[64];
        snprintf(what, sizeof what, "owned realloc %zu -> %zu", have, to[i]);
        u = EXPECT_PROTECTABLE(h, q, to[i], what);
        size_t kept = have < to[i] ? have : to[i];
        BLOCK_CHECK_CLIP(q, have, kept, 50);
        block_fill(q, to[i], 50);
        p = q;
        have = to[i];
        CHECK_ALL(h);
    }
    (void)u;
    ASSERT_OK(gpu_heap_free(h, p));
    ASSERT_OK(gpu_heap_free(h, keep));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* ---- plain blocks below a granule: never ------------------------------------------------ */

static void expect_refused_at(gpu_heap_t *h, char *p, size_t len, uint64_t seed, size_t patterned, const char *what,
                              const char *file, int line) {
    gpu_stats_t s0 = STATS(h);
    int rc = gpu_heap_protect(h, p, len, GPU_PROT_READ);
    if (rc != GPU_ERR_NOT_WHOLE_EXTENT)
        fail_at(file, line, "%s: gpu_protect(%p, %zu) = %d (%s), expected GPU_ERR_NOT_WHOLE_EXTENT", what, (void *)p,
                len, rc, gpu_strerror(rc));
    if (gpu_last_error() != GPU_ERR_NOT_WHOLE_EXTENT) fail_at(file, line, "%s: last error %d", what, gpu_last_error());
    gpu_stats_t s1 = STATS(h);
    if (s1.backend_set_access != s0.backend_set_access || s1.protected_extents != s0.protected_extents)
        fail_at(file, line, "%s: a refused protect changed access", what);
    block_check_at(p, patterned, patterned, seed, file, line);
}
#define EXPECT_REFUSED(h, p, len, seed, patterned, what) \
    expect_refused_at((h), (p), (len), (seed), (patterned), (what), __FILE__, __LINE__)

static void test_small_plain_never_protectable(void **state) {
    (void)state;
    static const size_t sizes[] = {1, 256, 4 * KiB, 16 * KiB, 1 * MiB, 2 * MiB - 256};
    for (int layout = 0; layout < L_COUNT; layout++) {
        char *keep;
        gpu_heap_t *h = heap_in(layout, &keep);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            char *p = gpu_heap_malloc(h, sizes[i]);
            size_t u = BLOCK_VALID(h, p, sizes[i]);
            block_fill(p, u, 200 + i);
            char what[128];
            snprintf(what, sizeof what, "%s: plain block of %zu bytes at granule offset %zu", layout_name[layout],
                     sizes[i], (size_t)((uintptr_t)p % GRAN));
            EXPECT_REFUSED(h, p, u, 200 + i, u, what);
            EXPECT_REFUSED(h, p, GRAN, 200 + i, u, what); /* not even as a whole granule */
            ASSERT_OK(gpu_heap_free(h, p));
        }
        if (keep) PATTERN_CHECK(keep, 0, 256, 7);
        CHECK_ALL(h);
        HEAP_DESTROY(h);
    }
}

/* ---- plain blocks of a granule or more ---------------------------------------------------- */

/* With nothing idle that could hold them, they get extents of their own — but
 * those that would fill less than three quarters of theirs, whose rest stays
 * idle (test_plain_large_rest_idle). */
static void test_plain_large_on_new_memory(void **state) {
    (void)state;
    static const size_t sizes[] = {2 * MiB, 3 * MiB, 5 * MiB, 64 * MiB + 256, 3 * MiB + 1, 4 * MiB - 256};
    for (int with_small = 0; with_small <= 1; with_small++) {
        gpu_heap_t *h = HEAP_NEW(0);
        char *small = with_small ? gpu_heap_malloc(h, 256) : NULL; /* leaves 2 MiB - 256 idle: too little */
        char *p[sizeof sizes / sizeof sizes[0]];
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            gpu_stats_t s = STATS(h);
            assert_true(s.idle_bytes < sizes[i]);
            assert_int_equal(s.quarantine_bytes, 0);
            p[i] = gpu_heap_malloc(h, sizes[i]);
            char what[96];
            snprintf(what, sizeof what, "plain %zu bytes on new memory%s", sizes[i], with_small ? " beside a small block" : "");
            size_t u = EXPECT_PROTECTABLE(h, p[i], sizes[i], what);
            assert_int_equal(u, round_gran(sizes[i]));
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
        if (small) ASSERT_OK(gpu_heap_free(h, small));
        CHECK_ALL(h);
        HEAP_DESTROY(h);
    }
}

/* More than a granule and less than one and a half, on new memory: the block
 * starts at the new extent and ends inside it, the rest idle; it owns no
 * extent, so gpu_protect refuses it and changes nothing. Asking for the
 * granule's alignment keeps the extent whole, and protectable. */
static void test_plain_large_rest_idle(void **state) {
    (void)state;
    static const size_t sizes[] = {2 * MiB + 1, 2 * MiB + 256 * KiB, 3 * MiB - 256};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (int aligned = 0; aligned <= 1; aligned++) {
            gpu_heap_t *h = HEAP_NEW(0);
            char *p = aligned ? gpu_heap_malloc_aligned(h, sizes[i], GRAN) : gpu_heap_malloc(h, sizes[i]);
            char what[96];
            snprintf(what, sizeof what, "plain %zu bytes on new memory%s", sizes[i], aligned ? ", granule-aligned" : "");
            if (aligned) {
                assert_int_equal(EXPECT_PROTECTABLE(h, p, sizes[i], what), round_gran(sizes[i]));
            } else {
                size_t u = BLOCK_VALID(h, p, sizes[i]);
                assert_int_equal((uintptr_t)p % GRAN, 0);
                assert_true(u < round_gran(sizes[i]));
                gpu_stats_t s = STATS(h);
                assert_int_equal(s.mapped_bytes, round_gran(sizes[i]));
                assert_int_equal(s.idle_bytes, round_gran(sizes[i]) - u);
                block_fill(p, sizes[i], 400 + i);
                EXPECT_REFUSED(h, p, sizes[i], 400 + i, sizes[i], what);
            }
            ASSERT_OK(gpu_heap_free(h, p));
            CHECK_ALL(h);
            HEAP_DESTROY(h);
        }
    }
}

/* Cut from idle memory, they are 256-byte aligned and may not own their extents:
 * gpu_protect works or refuses cleanly, never anything else. With the granule's
 * alignment asked for, the start is granule-aligned. */
static void test_plain_large_from_idle(void **state) {
    (void)state;
    static const size_t sizes[] = {3 * MiB, 5 * MiB, 2 * MiB, 9 * MiB};
    for (int layout = L_DRAINED_SMALL; layout < L_COUNT; layout++) {
        for (int aligned = 0; aligned <= 1; aligned++) {
            char *keep;
            gpu_heap_t *h = heap_in(layout, &keep);
            char *p[sizeof sizes / sizeof sizes[0]];
            int idle_served = 0;
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                gpu_stats_t s0 = STATS(h);
                p[i] = aligned ? gpu_heap_malloc_aligned(h, sizes[i], GRAN) : gpu_heap_malloc(h, sizes[i]);
                size_t u = BLOCK_VALID(h, p[i], sizes[i]);
                size_t off = (uintptr_t)p[i] % GRAN;
                if (aligned) assert_int_equal(off, 0);
                block_fill(p[i], sizes[i], 300 + i);
                bool from_idle = STATS(h).backend_create == s0.backend_create;
                idle_served += from_idle;
                int rc = gpu_heap_protect(h, p[i], sizes[i], GPU_PROT_READ);
                if (rc == GPU_OK) {
                    assert_int_equal(off, 0); /* a protectable range starts at an extent */
                    ASSERT_OK(gpu_heap_protect(h, p[i], sizes[i], GPU_PROT_READ_WRITE));
                } else {
                    assert_int_equal(rc, GPU_ERR_NOT_WHOLE_EXTENT);
                    EXPECT_REFUSED(h, p[i], sizes[i], 300 + i, sizes[i], "plain block from idle memory");
                }
                print_message("# %s, plain %s%zu MiB: %s, granule offset %zu, usable %zu: %s\n", layout_name[layout],
                              aligned ? "2 MiB-aligned " : "", sizes[i] >> 20, from_idle ? "idle memory" : "new memory",
                              off, u, rc == GPU_OK ? "protectable" : "NOT protectable (GPU_ERR_NOT_WHOLE_EXTENT)");
                CHECK_ALL(h);
            }
            /* The premise: where idle memory was left drained, it served some of
             * them (else this checked new memory only). After a partial trim it
             * may not: that layout is the control. */
            if (!idle_served && layout != L_PARTLY_TRIMMED) fail_msg("%s: no plain large block came from idle memory", layout_name[layout]);
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                BLOCK_CHECK(p[i], sizes[i], 300 + i);
                ASSERT_OK(gpu_heap_free(h, p[i]));
            }
            PATTERN_CHECK(keep, 0, 256, 7);
            CHECK_ALL(h);
            HEAP_DESTROY(h);
        }
    }
}

int main(void) {
    test_thread_cache = 0; /* the heap core's placement, without thread caches in front */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_owned_always_protectable),
        cmocka_unit_test(test_owned_realloc_stays_protectable),
        cmocka_unit_test(test_small_plain_never_protectable),
        cmocka_unit_test(test_plain_large_on_new_memory),
        cmocka_unit_test(test_plain_large_rest_idle),
        cmocka_unit_test(test_plain_large_from_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
