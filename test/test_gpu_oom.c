/*
 * test_gpu_oom.c — filling the whole device through gpuheap, freeing half, and
 * allocating again (meson suite 'gpu').
 *
 * The promise under test is DESIGN.md's "out of memory: give idle extents back,
 * retry, then fail with a clear error; never abort": a heap that has mapped every
 * byte of the device in 256 MiB extents, half of them idle after frees, must
 * serve blocks larger than any idle extent by unmapping and releasing idle ones
 * (the out-of-memory path: a refused cuMemCreate, a fence, a trim, a retry), and
 * say GPU_ERR_OUT_OF_MEMORY — nothing else, no crash — once the device really is
 * full. Every block's contents are written and verified on the device by kernels
 * (cuda_util), so a block that lost its memory would show, and gpu_heap_check
 * runs after every phase.
 *
 * Phases: (1) 256 MiB blocks until the device refuses; (2) free a random half;
 * (3) 256 MiB blocks again (the freed ones come back after one fence, no new
 * memory); (4) free another random set, then 1 GiB blocks — four times any freed
 * one — until the device refuses again; the bytes served must come close to the
 * bytes freed; (5) everything freed and trimmed: the driver gets it all back.
 * Without a driver or a device it exits 77 (skip).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/cuda/loader.h"
#include "cuda_util.h"
#include "gpuheap.h"

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define SMALL (256 * MiB)
#define BIG (1 * GiB)
#define MAX_BLOCKS 4096

typedef struct blk {
    char *p;
    size_t size;
    uint32_t seed;
} blk;

static blk blocks[MAX_BLOCKS];
static size_t nblocks;
static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static CUdeviceptr dptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }

static void heap_ok(gpu_heap_t *h, const char *when) {
    char msg[512] = "";
    if (gpu_heap_check(h, msg, sizeof msg) != GPU_OK) fail_msg("gpu_heap_check %s: %s", when, msg);
}

/* The device's free and total bytes (cuMemGetInfo, through the library's loader). */
static void mem_info(size_t *free_b, size_t *total_b) {
    CUresult (*get)(size_t *, size_t *) = (CUresult(*)(size_t *, size_t *))cuda_loader_proc("cuMemGetInfo");
    *free_b = *total_b = 0;
    if (get) (void)get(free_b, total_b);
}

/* Allocates blocks of size until the device refuses; each is filled on the device.
 * Returns how many it got. The refusal must be GPU_ERR_OUT_OF_MEMORY. */
static size_t fill_device(gpu_heap_t *h, size_t size, uint32_t seed0) {
    size_t got = 0;
    for (;;) {
        assert_true(nblocks < MAX_BLOCKS);
        char *p = gpu_heap_malloc(h, size);
        if (!p) {
            int e = gpu_last_error();
            if (e != GPU_ERR_OUT_OF_MEMORY) fail_msg("malloc(%zu) failed with %d (%s), not out of memory", size, e, gpu_strerror(e));
            return got;
        }
        blk *b = &blocks[nblocks++];
        *b = (blk){p, size, seed0 + (uint32_t)got};
        CUresult r = cu_fill(dptr(p), size / 4, b->seed, 0);
        if (r != CUDA_SUCCESS) fail_msg("fill %p: %s", p, cu_util_errname(r));
        got++;
    }
}

/* Every live block still holds its pattern. */
static void verify_all(const char *when) {
    for (size_t i = 0; i < nblocks; i++) {
        uint64_t bad = cu_check(dptr(blocks[i].p), blocks[i].size / 4, blocks[i].seed, 0);
        if (bad) fail_msg("%s: block %zu (%p, %zu bytes) has %llu wrong words", when, i, blocks[i].p, blocks[i].size,
                          (unsigned long long)bad);
    }
}

/* Frees each live block with probability 1/2; returns the bytes freed and the
 * largest block freed. */
static size_t free_half(gpu_heap_t *h, size_t *largest) {
    size_t freed = 0, k = 0;
    *largest = 0;
    for (size_t i = 0; i < nblocks; i++) {
        if (rng() & 1) {
            assert_int_equal(gpu_heap_free(h, blocks[i].p), GPU_OK);
            freed += blocks[i].size;
            if (blocks[i].size > *largest) *largest = blocks[i].size;
        } else {
            blocks[k++] = blocks[i];
        }
    }
    nblocks = k;
    return freed;
}

static void print_stats(gpu_heap_t *h, const char *when) {
    gpu_stats_t s;
    assert_int_equal(gpu_heap_stats(h, &s), GPU_OK);
    size_t fr, tot;
    mem_info(&fr, &tot);
    print_message("%-28s live %6.2f GiB in %4llu blocks, mapped %6.2f GiB in %4llu extents, idle %6.2f GiB, "
                  "quarantined %6.2f GiB, fences %llu; device free %6.2f of %6.2f GiB\n",
                  when, s.live_bytes / (double)GiB, (unsigned long long)s.live_blocks, s.mapped_bytes / (double)GiB,
                  (unsigned long long)s.extents, s.idle_bytes / (double)GiB, s.quarantine_bytes / (double)GiB,
                  (unsigned long long)s.fences, fr / (double)GiB, tot / (double)GiB);
}

static void test_fill_free_half_refill(void **state) {
    (void)state;
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_CUDA;
    cfg.device = 0;
    cfg.reserve_bytes = (size_t)1 << 40; /* far more VA than any device's memory */
    gpu_heap_t *h = NULL;
    int rc = gpu_heap_create(&cfg, &h);
    if (rc != GPU_OK) fail_msg("gpu_heap_create(CUDA): %s", gpu_strerror(rc));
    size_t free0, total;
    mem_info(&free0, &total);

    /* (1) The whole device in 256 MiB blocks. */
    size_t n1 = fill_device(h, SMALL, 1000);
    print_stats(h, "(1) filled with 256 MiB:");
    heap_ok(h, "after filling the device");
    assert_true(n1 * SMALL > total / 2); /* nearly all of it, whatever the card */
    verify_all("after filling");

    /* (2) A random half freed: quarantined, still mapped. */
    size_t largest, freed = free_half(h, &largest);
    print_stats(h, "(2) half freed:");
    heap_ok(h, "after freeing half");
    verify_all("after freeing half");

    /* (3) 256 MiB again: the freed blocks come back after a fence, no new memory. */
    size_t n3 = fill_device(h, SMALL, 3000);
    print_stats(h, "(3) refilled with 256 MiB:");
    heap_ok(h, "after refilling");
    if (n3 * SMALL < freed) fail_msg("only %zu of %zu freed bytes served again", n3 * SMALL, freed);
    verify_all("after refilling");

    /* (4) Free a random half again, then 1 GiB blocks: larger than any idle extent,
     * so each one needs idle extents unmapped and released first. */
    freed = free_half(h, &largest);
    assert_true(largest < BIG);
    size_t n4 = fill_device(h, BIG, 5000);
    print_stats(h, "(4) refilled with 1 GiB:");
    heap_ok(h, "after refilling with larger blocks");
    /* All freed bytes but what does not make a whole 1 GiB, and a little slack for
     * what the driver keeps for itself when extents change size. */
    if (n4 * BIG + BIG + 512 * MiB < freed)
        fail_msg("1 GiB blocks: %zu served of %zu bytes freed", n4 * BIG, freed);
    print_message("freed %.2f GiB in blocks of at most 256 MiB; served %zu blocks of 1 GiB\n", freed / (double)GiB, n4);
    verify_all("after refilling with larger blocks");

    /* A small block at the very end, when the device is full: served from the
     * leftovers or refused cleanly. */
    char *s = gpu_heap_malloc(h, 4096);
    if (!s) assert_int_equal(gpu_last_error(), GPU_ERR_OUT_OF_MEMORY);
    else assert_int_equal(gpu_heap_free(h, s), GPU_OK);

    /* (5) Everything back to the driver. */
    for (size_t i = 0; i < nblocks; i++) assert_int_equal(gpu_heap_free(h, blocks[i].p), GPU_OK);
    nblocks = 0;
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    print_stats(h, "(5) all freed and trimmed:");
    gpu_stats_t st;
    assert_int_equal(gpu_heap_stats(h, &st), GPU_OK);
    assert_int_equal(st.mapped_bytes, 0);
    heap_ok(h, "at the end");
    assert_int_equal(gpu_heap_destroy(h), GPU_OK);
    size_t free5;
    mem_info(&free5, &total);
    print_message("device free: %.2f GiB before, %.2f GiB after\n", free0 / (double)GiB, free5 / (double)GiB);
    if (free5 + 256 * MiB < free0) fail_msg("the driver did not get its memory back: %zu < %zu", free5, free0);
    CUresult r = cu.cuCtxSynchronize();
    if (r != CUDA_SUCCESS) fail_msg("the CUDA context is broken: %s", cu_util_errname(r));
}

int main(void) {
    int rc = cu_util_init(0);
    if (rc == CU_UTIL_SKIP) {
        fprintf(stderr, "test_gpu_oom: skipped: no usable GPU (reason above)\n");
        return CU_UTIL_SKIP;
    }
    if (rc != 0) return 1;
    printf("# device: %s, %d SMs\n", cu_util_device_name(), cu_util_sm_count());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fill_free_half_refill),
    };
    return cmocka_run_group_tests_name("gpu-oom", tests, NULL, NULL);
}
