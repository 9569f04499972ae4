/*
 * test_misuse_catalogue.c — every way a caller can misuse the API, one row each,
 * with what the caller gets; README.md's "Reliability" table is this file.
 *
 * test_misuse.c proves the core cases deeply (double frees in each state of the
 * freed block, every foreign pointer kind). This file is the catalogue: one test
 * per row of README's misuse table, covering every entry point — the stream,
 * sparse and file calls included — and the heap handle itself (NULL, destroyed,
 * never created). Each misuse call is checked for its exact error code (the
 * returned one and gpu_last_error), and after each row a set of sentinel blocks
 * (small, large, owned — one of them read-only) must hold its contents and the
 * heap its invariants and live counts: a failed call changes nothing. Every
 * checked call is counted, and the total is printed for README's figures.
 */
#include "util.h"

/* Misuse calls checked, printed at the end. */
static unsigned cases;

/* rc must be err, and the thread's last error too. */
#define MISUSE(rc, err)          \
    do {                         \
        ASSERT_ERROR((rc), err); \
        cases++;                 \
    } while (0)

/* A pointer call must return NULL with err. */
#define MISUSE_NULL(call, err)       \
    do {                             \
        assert_null(call);           \
        ASSERT_LAST_ERROR(err);      \
        cases++;                     \
    } while (0)

/* A size call must return 0 with err. */
#define MISUSE_ZERO(call, err)          \
    do {                                \
        assert_int_equal((call), 0);    \
        ASSERT_LAST_ERROR(err);         \
        cases++;                        \
    } while (0)

/* ---- sentinels: what must not change --------------------------------------- */

enum { NSENT = 4 };
static const size_t sent_size[NSENT] = {3000, 256 * KiB, 2 * MiB, 6 * MiB};

typedef struct world {
    gpu_heap_t *h;
    char *p[NSENT];
    gpu_stats_t before;
} world;

static int setup(void **state) {
    world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->h = HEAP_NEW(0);
    for (int i = 0; i < NSENT; i++) {
        w->p[i] = gpu_heap_malloc_flags(w->h, sent_size[i], i == 2 ? GPU_ALLOC_OWNED : 0);
        BLOCK_VALID(w->h, w->p[i], sent_size[i]);
        block_fill(w->p[i], sent_size[i], 900 + i);
    }
    /* One sentinel read-only: misuse must not open it up (nor crash on it). */
    ASSERT_OK(gpu_heap_protect(w->h, w->p[2], 2 * MiB, GPU_PROT_READ));
    w->before = STATS(w->h);
    *state = w;
    return 0;
}

static void unchanged_at(world *w, const char *file, int line) {
    heap_check_at(w->h, file, line);
    for (int i = 0; i < NSENT; i++) {
        block_check_at(w->p[i], sent_size[i], sent_size[i], 900 + i, file, line);
        if (gpu_heap_malloc_usable_size(w->h, w->p[i]) < sent_size[i]) fail_at(file, line, "sentinel %d lost", i);
    }
    gpu_stats_t s = stats_at(w->h, file, line);
    if (s.live_blocks != w->before.live_blocks || s.live_bytes != w->before.live_bytes ||
        s.protected_extents != w->before.protected_extents)
        fail_at(file, line, "live blocks/bytes or protection changed: %llu/%llu/%llu -> %llu/%llu/%llu",
                (unsigned long long)w->before.live_blocks, (unsigned long long)w->before.live_bytes,
                (unsigned long long)w->before.protected_extents, (unsigned long long)s.live_blocks,
                (unsigned long long)s.live_bytes, (unsigned long long)s.protected_extents);
}
#define UNCHANGED(w) unchanged_at((w), __FILE__, __LINE__)

static int teardown(void **state) {
    world *w = *state;
    UNCHANGED(w);
    for (int i = 0; i < NSENT; i++) assert_int_equal(gpu_heap_free(w->h, w->p[i]), GPU_OK);
    HEAP_DESTROY(w->h);
    free(w);
    return 0;
}

/* A block freed just now (in quarantine) and one whose memory was given back. */
static void freed_pointers(world *w, char **quarantined, char **unmapped) {
    *unmapped = gpu_heap_malloc(w->h, 5 * MiB);
    BLOCK_VALID(w->h, *unmapped, 5 * MiB);
    ASSERT_OK(gpu_heap_free(w->h, *unmapped));
    ASSERT_OK(gpu_heap_trim(w->h, 0));
    *quarantined = gpu_heap_malloc(w->h, 1000);
    BLOCK_VALID(w->h, *quarantined, 1000);
    ASSERT_OK(gpu_heap_free(w->h, *quarantined));
}

/* ---- the rows -------------------------------------------------------------------- */

/* free / free_async / realloc / usable_size / protect of a freed block: NOT_LIVE. */
static void test_double_free(void **state) {
    world *w = *state;
    char *q, *u;
    freed_pointers(w, &q, &u);
    char *freed[2] = {q, u};
    for (int i = 0; i < 2; i++) {
        MISUSE(gpu_heap_free(w->h, freed[i]), GPU_ERR_NOT_LIVE);
        MISUSE(gpu_free(freed[i]), GPU_ERR_NOT_LIVE);
        MISUSE(gpu_heap_free_async(w->h, freed[i], (void *)0x1001), GPU_ERR_NOT_LIVE);
        MISUSE_NULL(gpu_heap_realloc(w->h, freed[i], 100), GPU_ERR_NOT_LIVE);
        MISUSE_ZERO(gpu_heap_malloc_usable_size(w->h, freed[i]), GPU_ERR_NOT_LIVE);
    }
    /* A freed owned block cannot be protected: its extents have no owner now. */
    char *o = gpu_heap_malloc_flags(w->h, 2 * MiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(w->h, o, 2 * MiB);
    ASSERT_OK(gpu_heap_free(w->h, o));
    MISUSE(gpu_heap_protect(w->h, o, 2 * MiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    UNCHANGED(w);
}

/* Pointers inside a live block, or inside the reservation between blocks: NOT_LIVE. */
static void test_interior_pointer(void **state) {
    world *w = *state;
    for (int i = 0; i < NSENT; i++) {
        char *q = w->p[i] + (i == 0 ? 256 : 4096);
        MISUSE(gpu_heap_free(w->h, q), GPU_ERR_NOT_LIVE);
        MISUSE(gpu_free(q), GPU_ERR_NOT_LIVE);
        MISUSE(gpu_heap_free_async(w->h, q, NULL), GPU_ERR_NOT_LIVE);
        MISUSE_NULL(gpu_heap_realloc(w->h, q, 10), GPU_ERR_NOT_LIVE);
        MISUSE_ZERO(gpu_heap_malloc_usable_size(w->h, q), GPU_ERR_NOT_LIVE);
    }
    /* protect inside the owned block, not at an extent start: NOT_WHOLE_EXTENT. */
    MISUSE(gpu_heap_protect(w->h, w->p[2] + 4096, 4096, GPU_PROT_NONE), GPU_ERR_NOT_WHOLE_EXTENT);
    UNCHANGED(w);
}

/* Pointers outside every heap: NOT_OWNED, from every call that takes one. */
static void test_foreign_pointer(void **state) {
    world *w = *state;
    int local;
    char *host = malloc(64);
    assert_non_null(host);
    void *foreign[3] = {&local, host, (void *)(uintptr_t)0x1000};
    for (int i = 0; i < 3; i++) {
        MISUSE(gpu_heap_free(w->h, foreign[i]), GPU_ERR_NOT_OWNED);
        MISUSE(gpu_free(foreign[i]), GPU_ERR_NOT_OWNED);
        MISUSE(gpu_free_async(foreign[i], NULL), GPU_ERR_NOT_OWNED);
        MISUSE_NULL(gpu_realloc(foreign[i], 10), GPU_ERR_NOT_OWNED);
        MISUSE_ZERO(gpu_malloc_usable_size(foreign[i]), GPU_ERR_NOT_OWNED);
        MISUSE(gpu_protect(foreign[i], 4096, GPU_PROT_READ), GPU_ERR_NOT_OWNED);
    }
    free(host);
    /* Another heap's block, given to this heap. */
    gpu_heap_t *other = HEAP_NEW(0);
    char *x = gpu_heap_malloc(other, 100);
    BLOCK_VALID(other, x, 100);
    MISUSE(gpu_heap_free(w->h, x), GPU_ERR_NOT_OWNED);
    MISUSE_NULL(gpu_heap_realloc(w->h, x, 200), GPU_ERR_NOT_OWNED);
    ASSERT_OK(gpu_free(x)); /* the plain form finds the right heap */
    HEAP_DESTROY(other);
    UNCHANGED(w);
}

/* Sizes too large for the reservation: INVALID (or OUT_OF_VA when they round to
 * something that fits the arithmetic but not the VA); calloc overflow: INVALID. */
static void test_huge_sizes(void **state) {
    world *w = *state;
    static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 255, SIZE_MAX / 2 + 1, (size_t)1 << 48};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        MISUSE_NULL(gpu_heap_malloc(w->h, huge[i]), GPU_ERR_INVALID);
        MISUSE_NULL(gpu_heap_malloc_flags(w->h, huge[i], GPU_ALLOC_OWNED), GPU_ERR_INVALID);
        MISUSE_NULL(gpu_heap_malloc_async(w->h, huge[i], NULL), GPU_ERR_INVALID);
        MISUSE_NULL(gpu_heap_realloc(w->h, w->p[0], huge[i]), GPU_ERR_INVALID);
        MISUSE_NULL(gpu_heap_reserve(w->h, huge[i]), GPU_ERR_INVALID);
    }
    /* Fits the arithmetic and the 64 GiB reservation's size, but not the free
     * range the sentinels leave. */
    MISUSE_NULL(gpu_heap_malloc(w->h, 64 * GiB - 2 * MiB), GPU_ERR_OUT_OF_VA);
    MISUSE_NULL(gpu_heap_malloc(w->h, 64 * GiB + 1), GPU_ERR_INVALID);
    static const size_t over[][2] = {{SIZE_MAX, 2}, {2, SIZE_MAX}, {(size_t)1 << 32, (size_t)1 << 32}, {SIZE_MAX, SIZE_MAX}};
    for (size_t i = 0; i < sizeof over / sizeof over[0]; i++)
        MISUSE_NULL(gpu_heap_calloc(w->h, over[i][0], over[i][1]), GPU_ERR_INVALID);
    UNCHANGED(w);
}

/* Zero sizes are not errors where the contract gives them a meaning (malloc(0),
 * calloc with a zero factor: a unique minimal block; realloc(p, 0): free), and
 * are errors where it does not (protect of 0 bytes, commit of 0 bytes). */
static void test_zero_sizes(void **state) {
    world *w = *state;
    char *a = gpu_heap_malloc(w->h, 0), *b = gpu_heap_calloc(w->h, 0, 8), *c = gpu_heap_malloc_async(w->h, 0, NULL);
    BLOCK_VALID(w->h, a, 0);
    BLOCK_VALID(w->h, b, 0);
    BLOCK_VALID(w->h, c, 0);
    assert_true(a != b && b != c && a != c);
    assert_null(gpu_heap_realloc(w->h, a, 0));
    ASSERT_LAST_ERROR(GPU_OK);
    MISUSE(gpu_heap_free(w->h, a), GPU_ERR_NOT_LIVE); /* realloc(p, 0) freed it */
    ASSERT_OK(gpu_heap_free(w->h, b));
    ASSERT_OK(gpu_heap_free(w->h, c));
    MISUSE(gpu_heap_protect(w->h, w->p[2], 0, GPU_PROT_NONE), GPU_ERR_INVALID);
    char *r = gpu_heap_reserve(w->h, 4 * MiB);
    assert_non_null(r);
    MISUSE(gpu_heap_commit(w->h, r, 0), GPU_ERR_INVALID);
    MISUSE(gpu_heap_decommit(w->h, r, 0), GPU_ERR_INVALID);
    ASSERT_OK(gpu_heap_release(w->h, r));
    ASSERT_OK(gpu_heap_free(w->h, NULL)); /* free(NULL) does nothing */
    ASSERT_OK(gpu_heap_free_async(w->h, NULL, NULL));
    UNCHANGED(w);
}

/* Unknown allocation flags, alignments that are not powers of two or exceed the
 * reservation: INVALID. */
static void test_bad_flags_and_alignment(void **state) {
    world *w = *state;
    static const unsigned bad_flags[] = {1u << 2, 1u << 7, 1u << 31, ~0u};
    for (size_t i = 0; i < sizeof bad_flags / sizeof bad_flags[0]; i++)
        MISUSE_NULL(gpu_heap_malloc_flags(w->h, 100, bad_flags[i]), GPU_ERR_INVALID);
    static const size_t bad_align[] = {3, 100, 255, 257, 3 * MiB, SIZE_MAX, (size_t)1 << 63};
    for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++)
        MISUSE_NULL(gpu_heap_malloc_aligned(w->h, 100, bad_align[i]), GPU_ERR_INVALID);
    UNCHANGED(w);
}

/* Protection values other than NONE, READ, READ_WRITE: INVALID; a range that is
 * not whole extents of one block (a small block sharing an extent, a range
 * running past its block, a cut extent): NOT_WHOLE_EXTENT; NULL: INVALID. */
static void test_bad_protect(void **state) {
    world *w = *state;
    static const int bad[] = {2, 4, 7, -1, 1000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        MISUSE(gpu_heap_protect(w->h, w->p[2], 2 * MiB, bad[i]), GPU_ERR_INVALID);
    MISUSE(gpu_heap_protect(w->h, w->p[0], 4096, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT); /* shared extent */
    MISUSE(gpu_heap_protect(w->h, w->p[1], 256 * KiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    MISUSE(gpu_heap_protect(w->h, w->p[2], 4 * MiB, GPU_PROT_NONE), GPU_ERR_NOT_WHOLE_EXTENT); /* past the block */
    MISUSE(gpu_heap_protect(w->h, w->p[3], 2 * MiB, GPU_PROT_NONE), GPU_ERR_NOT_WHOLE_EXTENT); /* cuts its extent */
    MISUSE(gpu_heap_protect(w->h, NULL, 4096, GPU_PROT_READ), GPU_ERR_INVALID);
    MISUSE(gpu_heap_protect(w->h, w->p[2], SIZE_MAX, GPU_PROT_READ), GPU_ERR_INVALID); /* overflows */
    UNCHANGED(w);
}

/* Sparse calls on what is not a reservation: NOT_RESERVATION; unaligned or
 * outside the range: INVALID; release of an interior pointer: NOT_RESERVATION;
 * a reservation given to free, realloc or usable_size: INVALID. */
static void test_sparse_misuse(void **state) {
    world *w = *state;
    size_t g = STATS(w->h).granularity;
    char *r = gpu_heap_reserve(w->h, 4 * g);
    assert_non_null(r);
    MISUSE(gpu_heap_commit(w->h, w->p[1], g), GPU_ERR_INVALID); /* a heap block: not granule-aligned */
    MISUSE(gpu_heap_commit(w->h, w->p[2], g), GPU_ERR_NOT_RESERVATION); /* granule-aligned, but a block */
    MISUSE(gpu_heap_commit(w->h, r + 256, g), GPU_ERR_INVALID);
    MISUSE(gpu_heap_commit(w->h, r, g + 256), GPU_ERR_INVALID);
    MISUSE(gpu_heap_commit(w->h, r + 3 * g, 2 * g), GPU_ERR_INVALID); /* runs past the end */
    MISUSE(gpu_heap_decommit(w->h, r + 256, g), GPU_ERR_INVALID);
    MISUSE(gpu_heap_release(w->h, r + g), GPU_ERR_NOT_RESERVATION);
    MISUSE(gpu_heap_release(w->h, w->p[2]), GPU_ERR_NOT_RESERVATION);
    MISUSE(gpu_heap_free(w->h, r), GPU_ERR_INVALID);
    MISUSE(gpu_heap_free_async(w->h, r, NULL), GPU_ERR_INVALID);
    MISUSE_NULL(gpu_heap_realloc(w->h, r, 100), GPU_ERR_INVALID); /* aborted the process before (fixed in resize.c) */
    MISUSE_NULL(gpu_heap_realloc(w->h, r, 64 * MiB), GPU_ERR_INVALID);
    MISUSE_ZERO(gpu_heap_malloc_usable_size(w->h, r), GPU_ERR_INVALID);
    ASSERT_OK(gpu_heap_release(w->h, r));
    MISUSE(gpu_heap_release(w->h, r), GPU_ERR_NOT_RESERVATION); /* twice */
    MISUSE(gpu_heap_commit(w->h, r, g), GPU_ERR_NOT_RESERVATION); /* after release */
    UNCHANGED(w);
}

/* NULL where a result must go: INVALID, nothing written anywhere. */
static void test_null_out_params(void **state) {
    world *w = *state;
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    MISUSE(gpu_heap_create(&cfg, NULL), GPU_ERR_INVALID);
    MISUSE(gpu_heap_create(NULL, NULL), GPU_ERR_INVALID);
    MISUSE(gpu_heap_stats(w->h, NULL), GPU_ERR_INVALID);
    MISUSE(gpu_heap_map_file(w->h, "/dev/null", 0, 0, 0, NULL), GPU_ERR_INVALID);
    void *out = (void *)0x1;
    MISUSE(gpu_heap_map_file(w->h, NULL, 0, 0, 0, &out), GPU_ERR_INVALID);
    MISUSE(gpu_trace_start(NULL), GPU_ERR_INVALID);
    MISUSE_ZERO(gpu_heap_malloc_usable_size(w->h, NULL), GPU_ERR_INVALID);
    /* Not errors: a NULL message buffer for the checker, a NULL stats_json buffer
     * of length 0 (it returns the length it needs). */
    ASSERT_OK(gpu_heap_check(w->h, NULL, 0));
    assert_true(gpu_heap_stats_json(w->h, NULL, 0) > 0);
    UNCHANGED(w);
}

/* A heap handle after gpu_heap_destroy, or one never created: DESTROYED from
 * every call; destroy of NULL (the default heap): INVALID; bad configurations. */
static void test_bad_heap_handles(void **state) {
    world *w = *state;
    gpu_heap_t *dead = HEAP_NEW(0);
    char *p = gpu_heap_malloc(dead, 100);
    BLOCK_VALID(dead, p, 100);
    HEAP_DESTROY(dead); /* frees p with it */
    gpu_heap_t *never = (gpu_heap_t *)(uintptr_t)0x12345600;
    gpu_heap_t *bad[2] = {dead, never};
    gpu_stats_t st;
    for (int i = 0; i < 2; i++) {
        gpu_heap_t *h = bad[i];
        MISUSE_NULL(gpu_heap_malloc(h, 100), GPU_ERR_DESTROYED);
        MISUSE_NULL(gpu_heap_calloc(h, 1, 100), GPU_ERR_DESTROYED);
        MISUSE_NULL(gpu_heap_malloc_aligned(h, 100, 4096), GPU_ERR_DESTROYED);
        MISUSE_NULL(gpu_heap_malloc_flags(h, 100, GPU_ALLOC_OWNED), GPU_ERR_DESTROYED);
        MISUSE_NULL(gpu_heap_malloc_async(h, 100, NULL), GPU_ERR_DESTROYED);
        MISUSE_NULL(gpu_heap_realloc(h, NULL, 100), GPU_ERR_DESTROYED);
        MISUSE_NULL(gpu_heap_reserve(h, 100), GPU_ERR_DESTROYED);
        MISUSE(gpu_heap_free(h, w->p[0]), GPU_ERR_DESTROYED);
        MISUSE(gpu_heap_stats(h, &st), GPU_ERR_DESTROYED);
        MISUSE(gpu_heap_trim(h, 0), GPU_ERR_DESTROYED);
        MISUSE(gpu_heap_check(h, NULL, 0), GPU_ERR_DESTROYED);
        MISUSE(gpu_heap_destroy(h), GPU_ERR_DESTROYED);
    }
    /* The destroyed heap's block is gone with it: its pointer is foreign now. */
    MISUSE(gpu_free(p), GPU_ERR_NOT_OWNED);
    MISUSE(gpu_heap_destroy(NULL), GPU_ERR_INVALID); /* the default heap lives as long as the process */
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    gpu_heap_t *h = NULL;
    cfg.backend = (gpu_backend_kind_t)7;
    MISUSE(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
    cfg = host_config(64 * GiB, 0, 0);
    cfg.device = -1;
    MISUSE(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
    cfg = host_config(64 * GiB, 3 * MiB, 0); /* granularity not a power of two */
    MISUSE(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
    cfg = host_config(SIZE_MAX, 0, 0); /* a reservation that cannot round up */
    MISUSE(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
    assert_null(h);
    UNCHANGED(w);
}

/* Stream-ordered misuse: the same answers as the plain calls. */
static void test_stream_misuse(void **state) {
    world *w = *state;
    char *p = gpu_heap_malloc_async(w->h, 1000, (void *)0x1001);
    BLOCK_VALID(w->h, p, 1000);
    ASSERT_OK(gpu_heap_free_async(w->h, p, (void *)0x1001));
    MISUSE(gpu_heap_free_async(w->h, p, (void *)0x1001), GPU_ERR_NOT_LIVE); /* twice on its stream */
    MISUSE(gpu_heap_free_async(w->h, p, (void *)0x2002), GPU_ERR_NOT_LIVE); /* and on another */
    MISUSE(gpu_heap_free(w->h, p), GPU_ERR_NOT_LIVE);
    MISUSE_NULL(gpu_heap_realloc(w->h, p, 10), GPU_ERR_NOT_LIVE);
    UNCHANGED(w);
}

/* Bad environment values: gpu_config_init reports INVALID and keeps the default;
 * a bad GPUHEAP_BACKEND leaves a backend that no heap opens with (test_config). */
static void test_bad_environment(void **state) {
    world *w = *state;
    static const char *vars[][2] = {
        {"GPUHEAP_RESERVE", "lots"}, {"GPUHEAP_RELEASE_THRESHOLD", "-5"}, {"GPUHEAP_HOST_BUDGET", "12Q"},
        {"GPUHEAP_BACKEND", "quantum"},
    };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        gpu_config_t def, cfg;
        assert_int_equal(gpu_config_init(&def), GPU_OK);
        setenv(vars[i][0], vars[i][1], 1);
        MISUSE(gpu_config_init(&cfg), GPU_ERR_INVALID);
        unsetenv(vars[i][0]);
        if (!strcmp(vars[i][0], "GPUHEAP_BACKEND")) {
            gpu_heap_t *h = NULL;
            MISUSE(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
            assert_null(h);
            cfg.backend = def.backend;
        }
        assert_memory_equal(&def, &cfg, sizeof def);
    }
    MISUSE(gpu_config_init(NULL), GPU_ERR_INVALID);
    UNCHANGED(w);
}

static int print_cases(void **state) {
    (void)state;
    print_message("misuse catalogue: %u misuse calls checked, each with its exact error and nothing changed\n", cases);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_double_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interior_pointer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_pointer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_flags_and_alignment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_protect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sparse_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_out_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_heap_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_environment, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, print_cases);
}
