/*
 * test_misuse.c — wrong input never crashes the heap or changes it.
 *
 * Every test sets up a few live "sentinel" blocks with known contents, makes a
 * wrong call (double free, foreign or interior pointer, impossible size, bad
 * protection, NULL where a pointer is needed), checks the documented error
 * code, and then checks that the sentinels, the statistics and the heap's
 * invariants are exactly as before. A failed call changes nothing.
 */
#include "util.h"

/* Live blocks with known contents: small, medium, owned and large. */
typedef struct sentinels {
    gpu_heap_t *h;
    void *p[4];
    size_t size[4];
    gpu_stats_t stats;
} sentinels;

static const size_t sentinel_sizes[4] = {1000, 64 * KiB, 4 * MiB, 40 * MiB};

static sentinels *sentinels_new(void) {
    sentinels *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->h = HEAP_NEW(0);
    for (int i = 0; i < 4; i++) {
        s->size[i] = sentinel_sizes[i];
        s->p[i] = gpu_heap_malloc_flags(s->h, s->size[i], i == 2 ? GPU_ALLOC_OWNED : 0);
        BLOCK_VALID(s->h, s->p[i], s->size[i]);
        block_fill(s->p[i], s->size[i], 500 + i);
    }
    s->stats = STATS(s->h);
    CHECK_HEAP(s->h);
    return s;
}

/* The sentinels are intact and the live counts unchanged since the last call. */
static void sentinels_check_at(sentinels *s, const char *file, int line) {
    heap_check_at(s->h, file, line);
    for (int i = 0; i < 4; i++) {
        block_check_at(s->p[i], s->size[i], s->size[i], 500 + i, file, line);
        size_t u = gpu_heap_malloc_usable_size(s->h, s->p[i]);
        if (u < s->size[i]) fail_at(file, line, "sentinel %d lost: usable size %zu", i, u);
    }
    gpu_stats_t now = stats_at(s->h, file, line);
    if (now.live_blocks != s->stats.live_blocks || now.live_bytes != s->stats.live_bytes)
        fail_at(file, line, "live blocks/bytes changed: %llu/%llu -> %llu/%llu",
                (unsigned long long)s->stats.live_blocks, (unsigned long long)s->stats.live_bytes,
                (unsigned long long)now.live_blocks, (unsigned long long)now.live_bytes);
}
#define SENTINELS_CHECK(s) sentinels_check_at((s), __FILE__, __LINE__)

/* Takes a new baseline after a deliberate change. */
static void sentinels_rebase(sentinels *s) { s->stats = STATS(s->h); }

static int setup(void **state) {
    *state = sentinels_new();
    return 0;
}

static int teardown(void **state) {
    sentinels *s = *state;
    for (int i = 0; i < 4; i++) assert_int_equal(gpu_heap_free(s->h, s->p[i]), GPU_OK);
    assert_int_equal(gpu_heap_destroy(s->h), GPU_OK);
    free(s);
    return 0;
}

/* Fails unless err is one of the two codes. */
#define ASSERT_ONE_OF(err, a, b)                                                                     \
    do {                                                                                             \
        int e_ = (err);                                                                              \
        if (e_ != (a) && e_ != (b))                                                                  \
            fail_msg("%s is %d (%s), expected %s or %s", #err, e_, gpu_strerror(e_), #a, #b);         \
    } while (0)

/* ---- bad frees ------------------------------------------------------------ */

static void test_double_free(void **state) {
    sentinels *s = *state;
    gpu_heap_t *h = s->h;
    static const size_t sizes[] = {0, 1000, 64 * KiB, 3 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (int owned = 0; owned < 2; owned++) {
            void *p = gpu_heap_malloc_flags(h, sizes[i], owned ? GPU_ALLOC_OWNED : 0);
            BLOCK_VALID(h, p, sizes[i]);
            ASSERT_OK(gpu_heap_free(h, p));
            sentinels_rebase(s);
            /* in quarantine */
            ASSERT_ERROR(gpu_heap_free(h, p), GPU_ERR_NOT_LIVE);
            SENTINELS_CHECK(s);
            ASSERT_ERROR(gpu_free(p), GPU_ERR_NOT_LIVE);
            SENTINELS_CHECK(s);
            /* idle, after a drain */
            ASSERT_OK(gpu_heap_trim(h, SIZE_MAX));
            sentinels_rebase(s);
            ASSERT_ERROR(gpu_heap_free(h, p), GPU_ERR_NOT_LIVE);
            SENTINELS_CHECK(s);
            /* unmapped, after everything idle was given back */
            ASSERT_OK(gpu_heap_trim(h, 0));
            sentinels_rebase(s);
            ASSERT_ERROR(gpu_heap_free(h, p), GPU_ERR_NOT_LIVE);
            assert_int_equal(gpu_heap_malloc_usable_size(h, p), 0);
            ASSERT_LAST_ERROR(GPU_ERR_NOT_LIVE);
            SENTINELS_CHECK(s);
        }
    }
}

static void test_foreign_pointer(void **state) {
    sentinels *s = *state;
    gpu_heap_t *h = s->h;
    int on_stack = 0;
    void *host = malloc(4096);
    assert_non_null(host);
    static char in_data[512];
    void *foreign[] = {&on_stack, host, in_data, (void *)(uintptr_t)0x1000, (void *)(uintptr_t)-256,
                       (void *)test_foreign_pointer};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        ASSERT_ERROR(gpu_heap_free(h, foreign[i]), GPU_ERR_NOT_OWNED);
        SENTINELS_CHECK(s);
        ASSERT_ERROR(gpu_free(foreign[i]), GPU_ERR_NOT_OWNED);
        assert_int_equal(gpu_heap_malloc_usable_size(h, foreign[i]), 0);
        ASSERT_LAST_ERROR(GPU_ERR_NOT_OWNED);
        assert_int_equal(gpu_malloc_usable_size(foreign[i]), 0);
        ASSERT_LAST_ERROR(GPU_ERR_NOT_OWNED);
        assert_null(gpu_heap_realloc(h, foreign[i], 100));
        ASSERT_LAST_ERROR(GPU_ERR_NOT_OWNED);
        assert_null(gpu_realloc(foreign[i], 100));
        ASSERT_LAST_ERROR(GPU_ERR_NOT_OWNED);
        SENTINELS_CHECK(s);
    }
    assert_int_equal(on_stack, 0);
    free(host);
}

/* A block of one heap handed to another heap is foreign there. */
static void test_wrong_heap(void **state) {
    sentinels *s = *state;
    gpu_heap_t *other = HEAP_NEW(0);
    void *q = gpu_heap_malloc(other, 5000);
    BLOCK_VALID(other, q, 5000);
    pattern_fill(q, 0, 5000, 7);
    ASSERT_ERROR(gpu_heap_free(s->h, q), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_heap_malloc_usable_size(s->h, q), 0);
    ASSERT_LAST_ERROR(GPU_ERR_NOT_OWNED);
    ASSERT_ERROR(gpu_heap_free(other, s->p[0]), GPU_ERR_NOT_OWNED);
    SENTINELS_CHECK(s);
    assert_int_equal(STATS(other).live_blocks, 1);
    PATTERN_CHECK(q, 0, 5000, 7);
    ASSERT_OK(gpu_free(q)); /* the plain form finds the right heap */
    assert_int_equal(STATS(other).live_blocks, 0);
    CHECK_HEAP(other);
    HEAP_DESTROY(other);
    SENTINELS_CHECK(s);
}

static void test_interior_pointer(void **state) {
    sentinels *s = *state;
    gpu_heap_t *h = s->h;
    for (int i = 0; i < 4; i++) {
        char *p = s->p[i];
        size_t offs[] = {1, 8, 255, 256, 512, s->size[i] / 2, s->size[i] - 1};
        for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++) {
            if (offs[k] == 0 || offs[k] >= s->size[i]) continue;
            ASSERT_ERROR(gpu_heap_free(h, p + offs[k]), GPU_ERR_NOT_LIVE);
            ASSERT_ERROR(gpu_free(p + offs[k]), GPU_ERR_NOT_LIVE);
            assert_int_equal(gpu_heap_malloc_usable_size(h, p + offs[k]), 0);
            ASSERT_LAST_ERROR(GPU_ERR_NOT_LIVE);
            assert_null(gpu_heap_realloc(h, p + offs[k], 10));
            ASSERT_LAST_ERROR(GPU_ERR_NOT_LIVE);
            SENTINELS_CHECK(s);
        }
    }
    /* Inside the reservation, between blocks: never a block start. */
    char *past = (char *)s->p[3] + 64 * MiB;
    ASSERT_ERROR(gpu_heap_free(h, past), GPU_ERR_NOT_LIVE);
    SENTINELS_CHECK(s);
}

/* free(NULL) does nothing and succeeds. */
static void test_free_null(void **state) {
    sentinels *s = *state;
    ASSERT_OK(gpu_heap_free(s->h, NULL));
    SENTINELS_CHECK(s);
    assert_int_equal(gpu_heap_malloc_usable_size(s->h, NULL), 0);
    ASSERT_LAST_ERROR(GPU_ERR_INVALID);
    SENTINELS_CHECK(s);
}

/* ---- bad sizes --------------------------------------------------------------- */

static void test_huge_sizes(void **state) {
    sentinels *s = *state;
    gpu_heap_t *h = s->h;
    static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 100, SIZE_MAX - 255, SIZE_MAX / 2 + 1, SIZE_MAX / 2,
                                  (size_t)1 << 62, (size_t)1 << 48, 65 * GiB};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        assert_null(gpu_heap_malloc(h, huge[i]));
        ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_INVALID, GPU_ERR_OUT_OF_VA);
        SENTINELS_CHECK(s);
        assert_null(gpu_heap_malloc_flags(h, huge[i], GPU_ALLOC_OWNED));
        ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_INVALID, GPU_ERR_OUT_OF_VA);
        assert_null(gpu_heap_malloc_flags(h, huge[i], GPU_ALLOC_ZERO));
        ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_INVALID, GPU_ERR_OUT_OF_VA);
        assert_null(gpu_heap_malloc_aligned(h, huge[i], 4 * MiB));
        ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_INVALID, GPU_ERR_OUT_OF_VA);
        assert_null(gpu_heap_calloc(h, 1, huge[i]));
        ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_INVALID, GPU_ERR_OUT_OF_VA);
        SENTINELS_CHECK(s);
        /* A failed realloc leaves the block as it was. */
        for (int k = 0; k < 4; k++) {
            size_t u = gpu_heap_malloc_usable_size(h, s->p[k]);
            assert_null(gpu_heap_realloc(h, s->p[k], huge[i]));
            ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_INVALID, GPU_ERR_OUT_OF_VA);
            assert_int_equal(gpu_heap_malloc_usable_size(h, s->p[k]), u);
        }
        SENTINELS_CHECK(s);
    }
    /* Larger than the whole 64 GiB reservation but small enough to round: the VA
     * runs out. */
    assert_null(gpu_heap_malloc(h, 65 * GiB));
    ASSERT_ONE_OF(gpu_last_error(), GPU_ERR_OUT_OF_VA, GPU_ERR_INVALID);
    SENTINELS_CHECK(s);
    /* And the heap still works. */
    void *p = gpu_heap_malloc(h, 12345);
    BLOCK_VALID(h, p, 12345);
    ASSERT_OK(gpu_heap_free(h, p));
}

/* calloc with a zero count or size is a unique minimal block, like malloc(0). */
static void test_calloc_zero(void **state) {
    sentinels *s = *state;
    gpu_heap_t *h = s->h;
    static const size_t args[][2] = {{0, 8}, {8, 0}, {0, 0}, {0, SIZE_MAX}, {SIZE_MAX, 0}};
    void *p[5];
    for (int i = 0; i < 5; i++) {
        p[i] = gpu_heap_calloc(h, args[i][0], args[i][1]);
        ASSERT_LAST_ERROR(GPU_OK);
        BLOCK_VALID(h, p[i], 0);
        for (int j = 0; j < i; j++) assert_ptr_not_equal(p[i], p[j]);
    }
    CHECK_ALL(h);
    for (int i = 0; i < 5; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
    SENTINELS_CHECK(s);
}

/* ---- bad protection ------------------------------------------------------------- */

static void test_protect_bad(void **state) {
    sentinels *s = *state;
    gpu_heap_t *h = s->h;
    void *owned = s->p[2];
    gpu_stats_t before = STATS(h);
    static const int bad_prot[] = {7, 2, 4, -1, 1000};
    for (size_t i = 0; i < sizeof bad_prot / sizeof bad_prot[0]; i++) {
        ASSERT_ERROR(gpu_heap_protect(h, owned, 4 * MiB, bad_prot[i]), GPU_ERR_INVALID);
        SENTINELS_CHECK(s);
    }
    ASSERT_ERROR(gpu_heap_protect(h, NULL, 4 * MiB, GPU_PROT_READ), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_protect(NULL, 4 * MiB, GPU_PROT_READ), GPU_ERR_INVALID);
    int local;
    ASSERT_ERROR(gpu_heap_protect(h, &local, 4 * MiB, GPU_PROT_READ), GPU_ERR_NOT_OWNED);
    assert_int_equal(STATS(h).backend_set_access, before.backend_set_access);
    /* A freed owned block cannot be protected any more. */
    void *gone = gpu_heap_malloc_flags(h, 2 * MiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, gone, 2 * MiB);
    ASSERT_OK(gpu_heap_free(h, gone));
    int rc = gpu_heap_protect(h, gone, 2 * MiB, GPU_PROT_READ);
    ASSERT_LAST_ERROR(rc);
    ASSERT_ONE_OF(rc, GPU_ERR_NOT_LIVE, GPU_ERR_NOT_WHOLE_EXTENT);
    /* The owned sentinel is still writable: it was never protected. */
    pattern_fill(owned, 0, 4 * MiB, 502);
    SENTINELS_CHECK(s);
}

/* ---- bad heaps and arguments ------------------------------------------------------ */

static void test_bad_heap_calls(void **state) {
    sentinels *s = *state;
    /* NULL means the default heap, which cannot be destroyed. */
    ASSERT_ERROR(gpu_heap_destroy(NULL), GPU_ERR_INVALID);
    assert_int_equal(gpu_heap_create(NULL, NULL), GPU_ERR_INVALID);
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    assert_int_equal(gpu_heap_create(&cfg, NULL), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_heap_stats(s->h, NULL), GPU_ERR_INVALID);
    ASSERT_OK(gpu_heap_check(s->h, NULL, 0));
    char tiny[1];
    ASSERT_OK(gpu_heap_check(s->h, tiny, sizeof tiny));
    SENTINELS_CHECK(s);
}

/* A failing call followed by a good one: the last error follows the calls. */
static void test_error_then_success(void **state) {
    sentinels *s = *state;
    int local;
    ASSERT_ERROR(gpu_heap_free(s->h, &local), GPU_ERR_NOT_OWNED);
    void *p = gpu_heap_malloc(s->h, 1);
    ASSERT_LAST_ERROR(GPU_OK);
    BLOCK_VALID(s->h, p, 1);
    assert_null(gpu_heap_calloc(s->h, SIZE_MAX, SIZE_MAX));
    ASSERT_LAST_ERROR(GPU_ERR_INVALID);
    ASSERT_OK(gpu_heap_free(s->h, p));
    SENTINELS_CHECK(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_double_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_pointer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_heap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interior_pointer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_calloc_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protect_bad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_heap_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_then_success, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
