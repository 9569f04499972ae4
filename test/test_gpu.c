/*
 * test_gpu.c — the heap on a real GPU (meson suite 'gpu').
 *
 * The unit suites run the heap over the host backend, which enforces the
 * driver's rules but cannot show what only a GPU shows: that device memory
 * behind a pointer is really mapped and writable by kernels, that calloc zeroes
 * on the device, that realloc keeps device contents when it moves or remaps a
 * block, that protection is honoured by the driver, and above all that a freed
 * block is not handed out while a kernel issued before the free still writes it.
 *
 * Device contents are written and verified by small kernels (cuda_util.c): fill
 * writes a pattern derived from a seed and the word's index, check counts the
 * words that differ. The host reads device memory only where a test is about
 * bytes the host put there (copies) or zeroes.
 *
 * Each test makes its own heap on the CUDA backend and checks it with
 * gpu_heap_check after every step. Without a driver or a device the program
 * prints why and exits 77, which meson reports as skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cuda_util.h"
#include "gpuheap.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* ---- helpers ---------------------------------------------------------------- */

/* A driver call that must succeed. */
#define CU_OK(call)                                                                  \
    do {                                                                             \
        CUresult cu_ok_r_ = (call);                                                  \
        if (cu_ok_r_ != CUDA_SUCCESS) fail_msg("%s: %s", #call, cu_util_errname(cu_ok_r_)); \
    } while (0)

/* The heap's own checker, after a step; names the line that preceded it. */
#define HEAP_OK(h) heap_ok((h), __LINE__)
static void heap_ok(gpu_heap_t *h, int line) {
    char msg[512] = "";
    int rc = gpu_heap_check(h, msg, sizeof msg);
    if (rc != GPU_OK) fail_msg("gpu_heap_check after line %d: %s: %s", line, gpu_strerror(rc), msg);
}

static CUdeviceptr dptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }

/* Fills the first `bytes` bytes (whole words) of p with seed's pattern and
 * verifies them on the device. */
static void fill_check(const void *p, size_t bytes, uint32_t seed) {
    CU_OK(cu_fill(dptr(p), bytes / 4, seed, 0));
    uint64_t bad = cu_check(dptr(p), bytes / 4, seed, 0);
    if (bad != 0) fail_msg("%p (%zu bytes, seed %u): %llu words wrong", p, bytes, seed, (unsigned long long)bad);
}

/* Verifies that the first `bytes` bytes of p still hold seed's pattern. */
static void expect_pattern(const void *p, size_t bytes, uint32_t seed) {
    uint64_t bad = cu_check(dptr(p), bytes / 4, seed, 0);
    if (bad != 0) fail_msg("%p (%zu bytes, seed %u): %llu words wrong", p, bytes, seed, (unsigned long long)bad);
}

/* Copies `bytes` of device memory to the host and checks every byte is zero. */
static void expect_zero(const void *p, size_t bytes) {
    unsigned char *host = malloc(bytes ? bytes : 1);
    assert_non_null(host);
    memset(host, 0xA5, bytes);
    CU_OK(cu.cuMemcpyDtoH(host, dptr(p), bytes));
    for (size_t i = 0; i < bytes; i++) {
        if (host[i] != 0) {
            unsigned v = host[i];
            free(host);
            fail_msg("%p (%zu bytes): byte %zu is 0x%02x, not zero", p, bytes, i, v);
        }
    }
    free(host);
}

static gpu_stats_t stats_of(gpu_heap_t *h) {
    gpu_stats_t s;
    memset(&s, 0, sizeof s);
    assert_int_equal(gpu_heap_stats(h, &s), GPU_OK);
    assert_int_equal(s.version, GPU_STATS_VERSION);
    return s;
}

/* A deterministic generator, so a failure repeats. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* True when [a, a+an) and [b, b+bn) share a byte. */
static int ranges_overlap(uintptr_t a, size_t an, uintptr_t b, size_t bn) { return a < b + bn && b < a + an; }

/* ---- fixtures ---------------------------------------------------------------- */

static int heap_setup(void **state) {
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_CUDA;
    cfg.device = 0;
    cfg.reserve_bytes = (size_t)64 << 30;
    gpu_heap_t *h = NULL;
    int rc = gpu_heap_create(&cfg, &h);
    if (rc != GPU_OK) {
        fprintf(stderr, "gpu_heap_create(CUDA): %s\n", gpu_strerror(rc));
        return -1;
    }
    *state = h;
    return 0;
}

static int heap_teardown(void **state) {
    gpu_heap_t *h = *state;
    if (h == NULL) return 0;
    char msg[512] = "";
    int rc = gpu_heap_check(h, msg, sizeof msg);
    if (rc != GPU_OK) fprintf(stderr, "teardown: gpu_heap_check: %s\n", msg);
    int drc = gpu_heap_destroy(h);
    if (drc != GPU_OK) fprintf(stderr, "teardown: gpu_heap_destroy: %s\n", gpu_strerror(drc));
    /* A test that broke the context would make every later test fail for the
     * wrong reason: say so here. */
    CUresult r = cu.cuCtxSynchronize();
    if (r != CUDA_SUCCESS) fprintf(stderr, "teardown: the CUDA context is broken: %s\n", cu_util_errname(r));
    return rc == GPU_OK && drc == GPU_OK && r == CUDA_SUCCESS ? 0 : -1;
}

/* ---- malloc ------------------------------------------------------------------ */

/* Sizes from one byte to 1 GiB, all live at once: each is aligned, at least as
 * large as asked, writable over its whole usable size by a kernel, and holds what
 * the host copies in; once all are written, none has overwritten another. */
static void test_malloc_sizes(void **state) {
    gpu_heap_t *h = *state;
    static const size_t sizes[] = {
        0, 1, 3, 255, 256, 257, 4 * KiB, 65 * KiB + 1, 1 * MiB, 2 * MiB - 1, 2 * MiB,
        3 * MiB + 5, 64 * MiB, 256 * MiB + 1, 1 * GiB,
    };
    enum { N = sizeof sizes / sizeof sizes[0] };
    void *p[N];
    size_t usable[N];

    for (size_t i = 0; i < N; i++) {
        p[i] = gpu_heap_malloc(h, sizes[i]);
        if (p[i] == NULL) fail_msg("gpu_heap_malloc(%zu): %s", sizes[i], gpu_strerror(gpu_last_error()));
        HEAP_OK(h);
        assert_int_equal((uintptr_t)p[i] % GPU_MIN_ALIGNMENT, 0);
        usable[i] = gpu_heap_malloc_usable_size(h, p[i]);
        assert_true(usable[i] >= sizes[i]);
        assert_int_equal(usable[i] % GPU_MIN_ALIGNMENT, 0);
        assert_int_equal(gpu_malloc_usable_size(p[i]), usable[i]); /* found from the pointer */
        fill_check(p[i], usable[i], 1000u + (uint32_t)i);

        /* The exact bytes asked for, through the copy engine. */
        if (sizes[i] > 0 && sizes[i] <= 4 * MiB) {
            unsigned char *in = malloc(sizes[i]), *out = malloc(sizes[i]);
            assert_non_null(in);
            assert_non_null(out);
            for (size_t k = 0; k < sizes[i]; k++) in[k] = (unsigned char)(k * 7 + i);
            CU_OK(cu.cuMemcpyHtoD(dptr(p[i]), in, sizes[i]));
            CU_OK(cu.cuMemcpyDtoH(out, dptr(p[i]), sizes[i]));
            assert_memory_equal(in, out, sizes[i]);
            free(in);
            free(out);
            fill_check(p[i], usable[i], 1000u + (uint32_t)i); /* back to the pattern */
        }
    }
    for (size_t i = 0; i < N; i++)
        for (size_t j = i + 1; j < N; j++)
            assert_false(ranges_overlap((uintptr_t)p[i], usable[i], (uintptr_t)p[j], usable[j]));
    for (size_t i = 0; i < N; i++) expect_pattern(p[i], usable[i], 1000u + (uint32_t)i);

    gpu_stats_t s = stats_of(h);
    assert_int_equal(s.live_blocks, N);
    assert_true(s.mapped_bytes >= s.live_bytes);

    for (size_t i = 0; i < N; i++) {
        assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
        HEAP_OK(h);
    }
    s = stats_of(h);
    assert_int_equal(s.live_blocks, 0);
    assert_int_equal(s.live_bytes, 0);
}

/* Larger alignments are honoured and the blocks are usable. */
static void test_malloc_aligned(void **state) {
    gpu_heap_t *h = *state;
    static const struct { size_t size, align; } cases[] = {
        {1000, 512}, {1000, 4 * KiB}, {100 * KiB, 64 * KiB}, {3 * MiB, 2 * MiB}, {5 * MiB, 16 * MiB},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    void *p[N];
    for (size_t i = 0; i < N; i++) {
        p[i] = gpu_heap_malloc_aligned(h, cases[i].size, cases[i].align);
        if (p[i] == NULL)
            fail_msg("gpu_heap_malloc_aligned(%zu, %zu): %s", cases[i].size, cases[i].align,
                     gpu_strerror(gpu_last_error()));
        HEAP_OK(h);
        assert_int_equal((uintptr_t)p[i] % cases[i].align, 0);
        fill_check(p[i], cases[i].size, 2000u + (uint32_t)i);
    }
    for (size_t i = 0; i < N; i++) expect_pattern(p[i], cases[i].size, 2000u + (uint32_t)i);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
        HEAP_OK(h);
    }
}

/* ---- calloc ------------------------------------------------------------------ */

/* calloc returns zeroed device memory even where the same bytes were just
 * written and freed. Round 0 frees and callocs at once (the freed blocks may
 * still be in quarantine, so calloc may get fresh memory); round 1 drains the
 * quarantine first with gpu_heap_trim(h, SIZE_MAX), which keeps every idle byte
 * mapped, so calloc is served from the dirty idle memory. */
static void test_calloc_zeroes_dirty_memory(void **state) {
    gpu_heap_t *h = *state;
    static const size_t sizes[] = {1, 4 * KiB, 300 * KiB + 4, 2 * MiB, 4 * MiB, 64 * MiB};
    enum { K = 6 };
    for (int round = 0; round < 2; round++) {
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t size = sizes[si];
            void *dirty[K], *clean[K];
            for (int k = 0; k < K; k++) {
                dirty[k] = gpu_heap_malloc(h, size);
                assert_non_null(dirty[k]);
                /* The whole usable size, so any byte calloc might return is dirty. */
                size_t us = gpu_heap_malloc_usable_size(h, dirty[k]);
                fill_check(dirty[k], us, 0xC0FFEEu + (uint32_t)k);
            }
            for (int k = 0; k < K; k++) assert_int_equal(gpu_heap_free(h, dirty[k]), GPU_OK);
            HEAP_OK(h);
            if (round == 1) {
                assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK);
                HEAP_OK(h);
            }
            int reused = 0;
            for (int k = 0; k < K; k++) {
                /* n * size with n > 1 where the size allows, to use both factors. */
                clean[k] = (size % 4 == 0) ? gpu_heap_calloc(h, size / 4, 4) : gpu_heap_calloc(h, 1, size);
                if (clean[k] == NULL) fail_msg("gpu_heap_calloc(%zu): %s", size, gpu_strerror(gpu_last_error()));
                HEAP_OK(h);
                for (int j = 0; j < K; j++) reused += clean[k] == dirty[j];
                expect_zero(clean[k], size);
            }
            print_message("calloc round %d, %zu bytes: %d of %d blocks reused freed addresses\n", round, size,
                          reused, K);
            for (int k = 0; k < K; k++) assert_int_equal(gpu_heap_free(h, clean[k]), GPU_OK);
            HEAP_OK(h);
        }
    }

    /* GPU_ALLOC_ZERO is the same promise through malloc_flags. */
    void *d = gpu_heap_malloc(h, 1 * MiB);
    assert_non_null(d);
    fill_check(d, 1 * MiB, 77);
    assert_int_equal(gpu_heap_free(h, d), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK);
    void *z = gpu_heap_malloc_flags(h, 1 * MiB, GPU_ALLOC_ZERO);
    assert_non_null(z);
    expect_zero(z, 1 * MiB);
    assert_int_equal(gpu_heap_free(h, z), GPU_OK);

    /* n * size overflowing is refused, and nothing changes. */
    assert_null(gpu_heap_calloc(h, SIZE_MAX / 2, 3));
    assert_int_equal(gpu_last_error(), GPU_ERR_INVALID);
    HEAP_OK(h);
}

/* ---- many small blocks ------------------------------------------------------- */

/* 10,000 blocks of 256 B .. 64 KiB, each filled with its own seed; half freed at
 * random, 5,000 more allocated and filled; then every live block still holds its
 * own pattern — no block was handed out twice or overlaps another. */
static void test_many_small_blocks(void **state) {
    gpu_heap_t *h = *state;
    enum { FIRST = 10000, MORE = 5000, TOTAL = FIRST + MORE };
    void **p = calloc(TOTAL, sizeof *p);
    size_t *size = calloc(TOTAL, sizeof *size);
    assert_non_null(p);
    assert_non_null(size);
    uint64_t rng = 0x9E3779B97F4A7C15ull;

    for (int i = 0; i < FIRST; i++) {
        size[i] = 256 + (size_t)(rng_next(&rng) % (64 * KiB - 256 + 1));
        p[i] = gpu_heap_malloc(h, size[i]);
        if (p[i] == NULL) fail_msg("block %d (%zu bytes): %s", i, size[i], gpu_strerror(gpu_last_error()));
        CU_OK(cu_fill(dptr(p[i]), size[i] / 4, (uint32_t)i + 1, 0));
    }
    HEAP_OK(h);
    size_t live = FIRST;
    for (int i = 0; i < FIRST; i++) {
        if (rng_next(&rng) & 1) {
            assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
            p[i] = NULL;
            live--;
        }
    }
    HEAP_OK(h);
    for (int i = FIRST; i < TOTAL; i++) {
        size[i] = 256 + (size_t)(rng_next(&rng) % (64 * KiB - 256 + 1));
        p[i] = gpu_heap_malloc(h, size[i]);
        if (p[i] == NULL) fail_msg("block %d (%zu bytes): %s", i, size[i], gpu_strerror(gpu_last_error()));
        CU_OK(cu_fill(dptr(p[i]), size[i] / 4, (uint32_t)i + 1, 0));
        live++;
    }
    HEAP_OK(h);

    gpu_stats_t s = stats_of(h);
    assert_int_equal(s.live_blocks, live);
    size_t asked = 0;
    for (int i = 0; i < TOTAL; i++) asked += p[i] ? size[i] : 0;
    assert_true(s.live_bytes >= asked);

    for (int i = 0; i < TOTAL; i++) {
        if (p[i] == NULL) continue;
        uint64_t bad = cu_check(dptr(p[i]), size[i] / 4, (uint32_t)i + 1, 0);
        if (bad != 0) fail_msg("block %d at %p (%zu bytes): %llu words wrong", i, p[i], size[i], (unsigned long long)bad);
    }
    for (int i = 0; i < TOTAL; i++)
        if (p[i] != NULL) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    HEAP_OK(h);
    assert_int_equal(stats_of(h).live_blocks, 0);
    free(p);
    free(size);
}

/* ---- realloc ----------------------------------------------------------------- */

/* A large block grows 64 MiB -> 256 MiB -> 1 GiB; its first 64 MiB survive each
 * step (in place or moved by remapping), and the grown block is usable whole. */
static void test_realloc_grow_large(void **state) {
    gpu_heap_t *h = *state;
    const uint32_t seed = 0x5EED0001u;
    void *p = gpu_heap_malloc(h, 64 * MiB);
    assert_non_null(p);
    fill_check(p, 64 * MiB, seed);

    static const size_t steps[] = {256 * MiB, 1 * GiB};
    for (size_t i = 0; i < 2; i++) {
        void *q = gpu_heap_realloc(h, p, steps[i]);
        if (q == NULL) fail_msg("gpu_heap_realloc(%zu): %s", steps[i], gpu_strerror(gpu_last_error()));
        HEAP_OK(h);
        print_message("realloc 64 MiB block to %zu MiB: %s\n", steps[i] >> 20, q == p ? "in place" : "moved");
        p = q;
        assert_int_equal((uintptr_t)p % GPU_MIN_ALIGNMENT, 0);
        assert_true(gpu_heap_malloc_usable_size(h, p) >= steps[i]);
        expect_pattern(p, 64 * MiB, seed);
    }
    fill_check(p, 1 * GiB, seed + 1);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    HEAP_OK(h);
}

/* A small block between two neighbours grows 4 KiB -> 8 MiB (so it cannot grow
 * in place and is copied) and keeps its contents; the neighbours are untouched;
 * then it shrinks to 1000 bytes and keeps its prefix. */
static void test_realloc_small(void **state) {
    gpu_heap_t *h = *state;
    void *before = gpu_heap_malloc(h, 4 * KiB);
    void *p = gpu_heap_malloc(h, 4 * KiB);
    void *after = gpu_heap_malloc(h, 4 * KiB);
    assert_non_null(before);
    assert_non_null(p);
    assert_non_null(after);
    fill_check(before, 4 * KiB, 11);
    fill_check(p, 4 * KiB, 12);
    fill_check(after, 4 * KiB, 13);

    void *q = gpu_heap_realloc(h, p, 8 * MiB);
    if (q == NULL) fail_msg("gpu_heap_realloc(8 MiB): %s", gpu_strerror(gpu_last_error()));
    HEAP_OK(h);
    p = q;
    assert_true(gpu_heap_malloc_usable_size(h, p) >= 8 * MiB);
    expect_pattern(p, 4 * KiB, 12);
    expect_pattern(before, 4 * KiB, 11);
    expect_pattern(after, 4 * KiB, 13);

    fill_check(p, 8 * MiB, 14);
    q = gpu_heap_realloc(h, p, 1000);
    if (q == NULL) fail_msg("gpu_heap_realloc(1000): %s", gpu_strerror(gpu_last_error()));
    HEAP_OK(h);
    p = q;
    assert_true(gpu_heap_malloc_usable_size(h, p) >= 1000);
    expect_pattern(p, 1000, 14);
    expect_pattern(before, 4 * KiB, 11);
    expect_pattern(after, 4 * KiB, 13);

    /* realloc(NULL, n) is malloc; realloc(p, 0) frees. */
    void *r = gpu_heap_realloc(h, NULL, 4 * KiB);
    assert_non_null(r);
    fill_check(r, 4 * KiB, 15);
    assert_null(gpu_heap_realloc(h, r, 0));
    HEAP_OK(h);

    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_int_equal(gpu_heap_free(h, before), GPU_OK);
    assert_int_equal(gpu_heap_free(h, after), GPU_OK);
    HEAP_OK(h);
    assert_int_equal(stats_of(h).live_blocks, 0);
}

/* A 512 MiB block that owns its extents shrinks to 64 MiB: the prefix survives,
 * and once the heap has trimmed, less physical memory is mapped. */
/* Shrinking gives back whole extents that fall out of use (one physical handle
 * cannot be cut): grow an owned block in place so that it is made of two
 * extents, 64 MiB and 448 MiB, then shrink it back to the first. */
static void test_realloc_shrink_owned(void **state) {
    gpu_heap_t *h = *state;
    void *p0 = gpu_heap_malloc_flags(h, 64 * MiB, GPU_ALLOC_OWNED);
    if (p0 == NULL) fail_msg("gpu_heap_malloc_flags(64 MiB, OWNED): %s", gpu_strerror(gpu_last_error()));
    void *p = gpu_heap_realloc(h, p0, 512 * MiB);
    if (p == NULL) fail_msg("gpu_heap_realloc(512 MiB): %s", gpu_strerror(gpu_last_error()));
    assert_ptr_equal(p, p0); /* the headroom after a fresh owned block lets it grow in place */
    fill_check(p, 512 * MiB, 21);
    gpu_stats_t big = stats_of(h);
    assert_int_equal(big.extents, 2);
    assert_true(big.mapped_bytes >= 512 * MiB);

    void *q = gpu_heap_realloc(h, p, 64 * MiB);
    if (q == NULL) fail_msg("gpu_heap_realloc(64 MiB): %s", gpu_strerror(gpu_last_error()));
    HEAP_OK(h);
    p = q;
    expect_pattern(p, 64 * MiB, 21);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    HEAP_OK(h);
    gpu_stats_t small = stats_of(h);
    print_message("shrink 512 MiB -> 64 MiB (owned): mapped %llu MiB -> %llu MiB, extents %llu -> %llu\n",
                  (unsigned long long)(big.mapped_bytes >> 20), (unsigned long long)(small.mapped_bytes >> 20),
                  (unsigned long long)big.extents, (unsigned long long)small.extents);
    assert_true(small.mapped_bytes < big.mapped_bytes);
    assert_true(small.live_bytes >= 64 * MiB);
    assert_true(small.live_bytes < 512 * MiB);
    assert_int_equal(small.idle_bytes, 0);
    expect_pattern(p, 64 * MiB, 21);
    fill_check(p, gpu_heap_malloc_usable_size(h, p), 22);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    HEAP_OK(h);
}

/* ---- protection -------------------------------------------------------------- */

/* A read-only owned block refuses a driver memset but can still be read; made
 * read-write again it takes writes. No kernel ever writes a protected range:
 * that would raise an illegal-address error and lose the context. */
static void test_protect(void **state) {
    gpu_heap_t *h = *state;
    const size_t size = 4 * MiB;
    void *p = gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED);
    if (p == NULL) fail_msg("gpu_heap_malloc_flags(4 MiB, OWNED): %s", gpu_strerror(gpu_last_error()));
    assert_true(gpu_heap_malloc_usable_size(h, p) >= size);
    fill_check(p, size, 31);

    assert_int_equal(gpu_heap_protect(h, p, size, GPU_PROT_READ), GPU_OK);
    HEAP_OK(h);
    CUresult r = cu.cuMemsetD8(dptr(p), 0, size);
    print_message("cuMemsetD8 into a read-only block: %s\n", cu_util_errname(r));
    assert_int_not_equal(r, CUDA_SUCCESS);
    CU_OK(cu.cuCtxSynchronize()); /* the refusal is not sticky */
    expect_pattern(p, size, 31);  /* reads work, and nothing was written */
    uint32_t head[1024];
    CU_OK(cu.cuMemcpyDtoH(head, dptr(p), sizeof head));
    for (size_t i = 0; i < 1024; i++) assert_int_equal(head[i], cu_pattern(31, i));

    /* Ranges that are not whole extents of one block are refused, changing nothing. */
    assert_int_equal(gpu_heap_protect(h, (char *)p + GPU_MIN_ALIGNMENT, size - 2 * MiB, GPU_PROT_READ_WRITE),
                     GPU_ERR_NOT_WHOLE_EXTENT);
    assert_int_not_equal(cu.cuMemsetD8(dptr(p), 0, size), CUDA_SUCCESS);

    /* The plain form finds the heap from the pointer. */
    assert_int_equal(gpu_protect(p, size, GPU_PROT_READ_WRITE), GPU_OK);
    HEAP_OK(h);
    CU_OK(cu.cuMemsetD8(dptr(p), 0, size));
    expect_zero(p, 64 * KiB);
    fill_check(p, size, 32);

    /* No access and back, without touching it in between. */
    assert_int_equal(gpu_heap_protect(h, p, size, GPU_PROT_NONE), GPU_OK);
    HEAP_OK(h);
    assert_int_equal(gpu_heap_protect(h, p, size, GPU_PROT_READ_WRITE), GPU_OK);
    expect_pattern(p, size, 32);

    /* A small block shares its extent: protection is refused and it stays writable. */
    void *s = gpu_heap_malloc(h, 4 * KiB);
    assert_non_null(s);
    assert_int_equal(gpu_heap_protect(h, s, 4 * KiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);
    HEAP_OK(h);
    CU_OK(cu.cuMemsetD8(dptr(s), 0, 4 * KiB));
    fill_check(s, 4 * KiB, 33);
    assert_int_equal(gpu_heap_free(h, s), GPU_OK);

    /* Freeing a read-only block gives it back read-write: whatever the next
     * owned blocks of that size get (after the quarantine is drained), they
     * take writes. */
    assert_int_equal(gpu_heap_protect(h, p, size, GPU_PROT_READ), GPU_OK);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    HEAP_OK(h);
    assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK);
    void *again[4];
    int reused = 0;
    for (int k = 0; k < 4; k++) {
        again[k] = gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED);
        assert_non_null(again[k]);
        reused += again[k] == p;
        CU_OK(cu.cuMemsetD8(dptr(again[k]), 0, size));
        fill_check(again[k], size, 34u + (uint32_t)k);
    }
    print_message("after freeing a read-only block, %d of 4 new owned blocks reused its address\n", reused);
    for (int k = 0; k < 4; k++) assert_int_equal(gpu_heap_free(h, again[k]), GPU_OK);
    HEAP_OK(h);
}

/* ---- reuse safety ------------------------------------------------------------ */

/* The streams a spinning kernel runs on in the reuse tests: the cover must hold
 * for work on any stream of the context. */
static const struct {
    const char *name;
    int create;
    unsigned flags;
} spin_kinds[] = {
    {"legacy stream", 0, 0},
    {"blocking stream", 1, CU_STREAM_DEFAULT},
    {"non-blocking stream", 1, CU_STREAM_NON_BLOCKING},
};

/* The guarantee cudaFree gives by synchronizing: a block freed while a kernel
 * still writes it is not handed out again until that kernel is done.
 *
 * Block A (64 MiB) gets a kernel that spins ~200 ms, then fills A with S1. A is
 * freed at once. Eight 64 MiB blocks B are then allocated and filled with S2+k
 * on a second, non-blocking stream, which runs beside the spinning kernel. If
 * the heap gave A's memory to a B before the kernel ended, the late S1 fill
 * overwrites that B, which the final check sees; a B that overlaps A while the
 * kernel still runs is reported directly. The spinning kernel is issued on the
 * legacy stream, a blocking stream and a non-blocking stream in turn: the
 * heap's fence must cover work on any stream of the context. */
static void test_reuse_after_free_waits_for_gpu(void **state) {
    gpu_heap_t *h = *state;
    enum { NB = 8 };
    const size_t size = 64 * MiB, words = size / 4;
    const long long cycles = 200 * cu_util_cycles_per_ms();

    CUstream other;
    CU_OK(cu.cuStreamCreate(&other, CU_STREAM_NON_BLOCKING));
    for (size_t kind = 0; kind < sizeof spin_kinds / sizeof spin_kinds[0]; kind++) {
        CUstream spin = NULL;
        if (spin_kinds[kind].create) CU_OK(cu.cuStreamCreate(&spin, spin_kinds[kind].flags));
        const uint32_t s1 = 0xA0000000u + (uint32_t)kind, s2 = 0xB0000000u + (uint32_t)kind * 16;

        void *a = gpu_heap_malloc(h, size);
        assert_non_null(a);
        fill_check(a, size, 0x11111111u);
        gpu_stats_t before = stats_of(h);

        CU_OK(cu_spin_fill(dptr(a), words, s1, cycles, 8, spin));
        assert_int_equal(gpu_heap_free(h, a), GPU_OK);
        int running_after_free = cu.cuStreamQuery(spin) == CUDA_ERROR_NOT_READY;
        gpu_stats_t freed = stats_of(h);
        HEAP_OK(h);
        /* A waits in quarantine, or in this thread's cache for its next pair (lib/cache/big.c), or the heap
         * fenced (waited) to free it. */
        assert_true((freed.quarantine_blocks >= 1 && freed.quarantine_bytes >= size) || freed.cached_bytes >= size ||
                    freed.fences > before.fences);
        if (!running_after_free)
            print_message("%s: the spinning kernel ended before gpu_free returned (did free fence?); "
                          "the test proves less\n", spin_kinds[kind].name);

        void *b[NB];
        int early_overlap = -1;
        for (int k = 0; k < NB; k++) {
            b[k] = gpu_heap_malloc(h, size);
            int running = cu.cuStreamQuery(spin) == CUDA_ERROR_NOT_READY;
            if (b[k] == NULL) {
                (void)cu.cuCtxSynchronize();
                fail_msg("gpu_heap_malloc B%d: %s", k, gpu_strerror(gpu_last_error()));
            }
            if (running && early_overlap < 0 && ranges_overlap((uintptr_t)a, size, (uintptr_t)b[k], size))
                early_overlap = k;
            CU_OK(cu_fill(dptr(b[k]), words, s2 + (uint32_t)k, other));
        }
        CU_OK(cu.cuStreamSynchronize(other));
        int still_running = cu.cuStreamQuery(spin) == CUDA_ERROR_NOT_READY;
        CU_OK(cu.cuCtxSynchronize());
        HEAP_OK(h);
        print_message("%s: kernel running after free: %s, after the B fills: %s; fences %llu -> %llu\n",
                      spin_kinds[kind].name, running_after_free ? "yes" : "no", still_running ? "yes" : "no",
                      (unsigned long long)before.fences, (unsigned long long)stats_of(h).fences);
        if (early_overlap >= 0)
            fail_msg("%s: B%d overlaps freed block A while the kernel using A still ran", spin_kinds[kind].name,
                     early_overlap);
        for (int k = 0; k < NB; k++) {
            uint64_t bad = cu_check(dptr(b[k]), words, s2 + (uint32_t)k, 0);
            if (bad != 0)
                fail_msg("%s: B%d (%p) lost %llu words to the kernel that was still using freed block A (%p)",
                         spin_kinds[kind].name, k, b[k], (unsigned long long)bad, a);
        }
        for (int k = 0; k < NB; k++) assert_int_equal(gpu_heap_free(h, b[k]), GPU_OK);
        assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK); /* drains the quarantine */
        HEAP_OK(h);
        gpu_stats_t done = stats_of(h);
        assert_int_equal(done.quarantine_blocks, 0);
        assert_int_equal(done.quarantine_bytes, 0);
        assert_int_equal(done.live_blocks, 0);
        if (spin != NULL) CU_OK(cu.cuStreamDestroy(spin));
    }
    CU_OK(cu.cuStreamDestroy(other));
}

/* Legacy free order (gpu_set_free_order): the freed block is handed out again
 * while the kernel that used it still runs, and the context's wait keeps the new
 * user's work after it. A kernel spins ~200 ms on A (on the legacy, a
 * blocking or a non-blocking stream: the cover is context-wide), then fills it
 * with S1; A is freed and B allocated at once — A's own memory, with no fence —
 * and filled with S2 on a blocking stream, then zeroed in part by gpu_calloc's
 * memset. If the fill or the memset ran beside the spinning kernel, its late S1
 * would show through. */
static void test_legacy_order_reuses_behind_the_gpu(void **state) {
    gpu_heap_t *h = *state;
    const size_t size = 64 * MiB, words = size / 4;
    const long long cycles = 200 * cu_util_cycles_per_ms();
    CUstream user;
    CU_OK(cu.cuStreamCreate(&user, CU_STREAM_DEFAULT)); /* blocking: ordered by the legacy stream */
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    for (size_t kind = 0; kind < sizeof spin_kinds / sizeof spin_kinds[0]; kind++) {
        CUstream spin = NULL;
        if (spin_kinds[kind].create) CU_OK(cu.cuStreamCreate(&spin, spin_kinds[kind].flags));
        const uint32_t s1 = 0xD0000000u + (uint32_t)kind, s2 = 0xE0000000u + (uint32_t)kind;
        void *a = gpu_heap_malloc(h, size);
        assert_non_null(a);
        fill_check(a, size, 0x22222222u);
        gpu_stats_t before = stats_of(h);
        CU_OK(cu_spin_fill(dptr(a), words, s1, cycles, 8, spin));
        assert_int_equal(gpu_heap_free(h, a), GPU_OK);
        void *b = gpu_heap_malloc(h, size);
        int running = cu.cuStreamQuery(spin) == CUDA_ERROR_NOT_READY;
        assert_ptr_equal(b, a);
        gpu_stats_t after = stats_of(h);
        assert_int_equal(after.fences, before.fences);
        assert_true(after.order_releases > before.order_releases);
        CU_OK(cu_fill(dptr(b), words, s2, user));
        CU_OK(cu.cuStreamSynchronize(user));
        uint64_t bad = cu_check(dptr(b), words, s2, 0);
        print_message("%s: kernel running when A came back: %s; words of B lost: %llu\n", spin_kinds[kind].name,
                      running ? "yes" : "no", (unsigned long long)bad);
        if (bad) fail_msg("%s: B lost %llu words to the kernel still using freed A", spin_kinds[kind].name, (unsigned long long)bad);
        if (!running) print_message("%s: the kernel ended before B came back; the test proves less\n", spin_kinds[kind].name);

        /* The same with calloc: its memset runs on the backend's own stream,
         * which the context's wait orders as it does every stream. */
        CU_OK(cu_spin_fill(dptr(b), words, s1, cycles, 8, spin));
        assert_int_equal(gpu_heap_free(h, b), GPU_OK);
        void *z = gpu_heap_calloc(h, 1, size);
        assert_ptr_equal(z, a);
        CU_OK(cu.cuCtxSynchronize());
        expect_zero(z, size);
        assert_int_equal(gpu_heap_free(h, z), GPU_OK);
        HEAP_OK(h);
        if (spin != NULL) CU_OK(cu.cuStreamDestroy(spin));
    }
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_EVENT), GPU_OK);
    CU_OK(cu.cuStreamDestroy(user));
}

/* Paged placement in legacy order (lib/core/linger.c): a freed block's pages
 * move under a new, larger block while the kernel that used them still runs —
 * with no fence and no unmap: the old mappings linger until the release is seen
 * done. An unmap there would fault the kernel (DESIGN.md §3), a sticky error;
 * the new block, filled on a blocking stream, must not show the kernel's late
 * S1. One heap per kind of stream, so that each move is past the heap's peak. */
static void test_legacy_paged_pages_move_behind_the_gpu(void **state) {
    (void)state;
    const size_t size = 48 * MiB, more = size + 6 * MiB;
    const long long cycles = 200 * cu_util_cycles_per_ms();
    CUstream user;
    CU_OK(cu.cuStreamCreate(&user, CU_STREAM_DEFAULT));
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    for (size_t kind = 0; kind < sizeof spin_kinds / sizeof spin_kinds[0]; kind++) {
        gpu_config_t cfg;
        gpu_config_init(&cfg);
        cfg.backend = GPU_BACKEND_CUDA;
        cfg.device = 0;
        cfg.reserve_bytes = (size_t)64 << 30;
        cfg.page_size = 2 * MiB;
        cfg.thread_cache = 0;
        gpu_heap_t *h = NULL;
        assert_int_equal(gpu_heap_create(&cfg, &h), GPU_OK);
        CUstream spin = NULL;
        if (spin_kinds[kind].create) CU_OK(cu.cuStreamCreate(&spin, spin_kinds[kind].flags));
        const uint32_t s1 = 0xB0000000u + (uint32_t)kind, s2 = 0xC0000000u + (uint32_t)kind;
        void *a = gpu_heap_malloc(h, size);
        void *b = gpu_heap_malloc(h, 4096); /* after a: the next block cannot take a's place alone */
        assert_non_null(a);
        assert_non_null(b);
        fill_check(a, size, 0x33333333u);
        CU_OK(cu.cuCtxSynchronize());
        gpu_stats_t before = stats_of(h);
        CU_OK(cu_spin_fill(dptr(a), size / 4, s1, cycles, 8, spin));
        assert_int_equal(gpu_heap_free(h, a), GPU_OK);
        void *e = gpu_heap_malloc(h, more); /* past the peak: a's pages move under it */
        int running = cu.cuStreamQuery(spin) == CUDA_ERROR_NOT_READY;
        assert_non_null(e);
        assert_ptr_not_equal(e, a);
        gpu_stats_t after = stats_of(h);
        assert_int_equal(after.fences, before.fences);
        assert_int_equal(after.backend_unmap, before.backend_unmap); /* the old mappings linger */
        assert_true(after.backend_create - before.backend_create < more / (2 * MiB)); /* a's pages moved, not new ones */
        CU_OK(cu_fill(dptr(e), more / 4, s2, user));
        CU_OK(cu.cuStreamSynchronize(user));
        uint64_t bad = cu_check(dptr(e), more / 4, s2, 0);
        print_message("%s: kernel running when a's pages moved: %s; words of the new block lost: %llu\n",
                      spin_kinds[kind].name, running ? "yes" : "no", (unsigned long long)bad);
        if (bad) fail_msg("%s: the new block lost %llu words to the kernel still using a's pages", spin_kinds[kind].name,
                          (unsigned long long)bad);
        if (!running) print_message("%s: the kernel ended before the pages moved; the test proves less\n", spin_kinds[kind].name);
        CU_OK(cu.cuCtxSynchronize());
        assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK); /* the release seen done: the old mappings go */
        assert_true(stats_of(h).backend_unmap > after.backend_unmap);
        HEAP_OK(h);
        assert_int_equal(gpu_heap_free(h, e), GPU_OK);
        assert_int_equal(gpu_heap_free(h, b), GPU_OK);
        HEAP_OK(h);
        assert_int_equal(gpu_heap_destroy(h), GPU_OK);
        if (spin != NULL) CU_OK(cu.cuStreamDestroy(spin));
    }
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_EVENT), GPU_OK);
    CU_OK(cu.cuStreamDestroy(user));
}

/* ---- trim -------------------------------------------------------------------- */

/* With no live blocks, gpu_heap_trim(h, 0) gives every byte back; the heap then
 * maps memory again on demand. */
static void test_trim_releases_everything(void **state) {
    gpu_heap_t *h = *state;
    void *p = gpu_heap_malloc(h, 1 * GiB);
    assert_non_null(p);
    fill_check(p, 1 * GiB, 41);
    assert_true(stats_of(h).mapped_bytes >= 1 * GiB);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    HEAP_OK(h);

    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    HEAP_OK(h);
    gpu_stats_t s = stats_of(h);
    assert_int_equal(s.live_blocks, 0);
    assert_int_equal(s.live_bytes, 0);
    assert_int_equal(s.idle_bytes, 0);
    assert_int_equal(s.quarantine_blocks, 0);
    assert_int_equal(s.quarantine_bytes, 0);
    assert_int_equal(s.mapped_bytes, 0);
    assert_int_equal(s.extents, 0);
    assert_true(s.backend_release >= 1);

    p = gpu_heap_malloc(h, 1 * GiB);
    assert_non_null(p);
    HEAP_OK(h);
    fill_check(p, 1 * GiB, 42);
    void *small = gpu_heap_malloc(h, 256);
    assert_non_null(small);
    fill_check(small, 256, 43);
    assert_int_equal(gpu_heap_free(h, small), GPU_OK);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    HEAP_OK(h);
    assert_int_equal(stats_of(h).mapped_bytes, 0);
}

/* ---- the default heap -------------------------------------------------------- */

/* With the primary context current, the plain calls use device 0's default heap,
 * and gpu_heap_stats(NULL, ...) sees their blocks. */
static void test_default_heap(void **state) {
    (void)state;
    gpu_heap_t *d = gpu_heap_default();
    if (d == NULL) fail_msg("gpu_heap_default: %s", gpu_strerror(gpu_last_error()));
    assert_int_equal(gpu_heap_destroy(d), GPU_ERR_INVALID); /* a default heap is not destroyed */
    gpu_stats_t s0 = stats_of(NULL);

    void *p = gpu_malloc(1 * MiB);
    void *c = gpu_calloc(1000, 4);
    if (p == NULL || c == NULL) fail_msg("default heap: %s", gpu_strerror(gpu_last_error()));
    gpu_stats_t s1 = stats_of(NULL);
    assert_int_equal(s1.live_blocks, s0.live_blocks + 2);
    assert_true(s1.live_bytes >= s0.live_bytes + 1 * MiB + 4000);
    assert_true(gpu_malloc_usable_size(p) >= 1 * MiB);
    fill_check(p, 1 * MiB, 51);
    expect_zero(c, 4000);
    HEAP_OK(NULL);

    void *q = gpu_realloc(p, 3 * MiB);
    assert_non_null(q);
    expect_pattern(q, 1 * MiB, 51);
    assert_int_equal(gpu_free(q), GPU_OK);
    assert_int_equal(gpu_free(c), GPU_OK);
    assert_int_equal(gpu_free(NULL), GPU_OK);
    gpu_stats_t s2 = stats_of(NULL);
    assert_int_equal(s2.live_blocks, s0.live_blocks);
    assert_int_equal(s2.live_bytes, s0.live_bytes);
    HEAP_OK(NULL);
}

/* ---- what a process learns of a device once ------------------------------------ */

static char refused[512];
static void keep_message(int err, const char *message, void *arg) {
    (void)err, (void)arg;
    snprintf(refused, sizeof refused, "%s", message);
}

/* gpu_ipc_get_mem_handle's answer for a fresh 4 KiB block of h. */
static int export_answer(gpu_heap_t *h) {
    void *p = gpu_heap_malloc(h, 4096);
    assert_non_null(p);
    gpu_ipc_mem_handle_t handle;
    refused[0] = '\0';
    int rc = gpu_ipc_get_mem_handle(&handle, p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    return rc;
}

/* A process's heaps on one device share what its first heap there learned of it
 * (lib/backend/cuda/known.c): the device's granularity and whether its memory can
 * be exported, probed once. Each later heap reports the same granularity and
 * answers an export as the first did; a heap opened with ipc = 0 refuses with
 * its own reason whatever the heaps around it learned, and a heap with ipc on
 * after it answers as the first did again. */
static void test_later_heaps_know_the_device(void **state) {
    gpu_heap_t *first = *state;
    gpu_error_handler_t old = gpu_set_error_handler(keep_message, NULL);
    int want = export_answer(first);
    char want_msg[512];
    snprintf(want_msg, sizeof want_msg, "%s", refused);
    size_t gran = stats_of(first).granularity;
    print_message("first heap: export %s%s\n", want == GPU_OK ? "served" : "refused: ", want == GPU_OK ? "" : want_msg);
    for (int k = 0; k < 4; k++) {
        gpu_config_t cfg;
        gpu_config_init(&cfg);
        cfg.backend = GPU_BACKEND_CUDA;
        cfg.device = 0;
        cfg.reserve_bytes = (size_t)4 << 30;
        cfg.ipc = k % 2 == 0 ? 0 : 1; /* ipc off first: a heap that learned nothing of exports comes before one that asks */
        gpu_heap_t *h = NULL;
        assert_int_equal(gpu_heap_create(&cfg, &h), GPU_OK);
        assert_int_equal(stats_of(h).granularity, gran);
        int rc = export_answer(h);
        if (cfg.ipc == 0) {
            assert_int_equal(rc, GPU_ERR_INVALID);
            if (!strstr(refused, "GPUHEAP_IPC=0")) fail_msg("heap %d (ipc = 0): \"%s\"", k, refused);
        } else {
            assert_int_equal(rc, want);
            if (rc != GPU_OK && strcmp(refused, want_msg)) fail_msg("heap %d: \"%s\", the first: \"%s\"", k, refused, want_msg);
        }
        HEAP_OK(h);
        assert_int_equal(gpu_heap_destroy(h), GPU_OK);
    }
    gpu_set_error_handler(old, NULL);
}

int main(void) {
    int rc = cu_util_init(0);
    if (rc == CU_UTIL_SKIP) {
        fprintf(stderr, "test_gpu: skipped: no usable GPU (reason above)\n");
        return CU_UTIL_SKIP;
    }
    if (rc != 0) return 1;
    printf("# device: %s, %d SMs\n", cu_util_device_name(), cu_util_sm_count());

    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_malloc_sizes, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_malloc_aligned, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_calloc_zeroes_dirty_memory, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_many_small_blocks, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_realloc_grow_large, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_realloc_small, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_realloc_shrink_owned, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_protect, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_reuse_after_free_waits_for_gpu, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_legacy_order_reuses_behind_the_gpu, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_legacy_paged_pages_move_behind_the_gpu, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_trim_releases_everything, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_later_heaps_know_the_device, heap_setup, heap_teardown),
        cmocka_unit_test(test_default_heap),
    };
    return cmocka_run_group_tests_name("gpu", tests, NULL, NULL);
}
