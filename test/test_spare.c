/*
 * test_spare.c — handles a trade keeps for the mapping that follows it
 * (lib/core/spare.c).
 *
 * A large request that gives idle extents back before it maps (here: one that
 * would raise the heap's physical peak) unmaps them but keeps their handles;
 * the pieces of its new range that have a kept handle's size get that handle
 * instead of a new one, and the handles left over are released before anything
 * is created. The books come out as if every handle had been released and
 * new ones created: only the driver calls differ (creates and releases). A
 * kept handle the driver will not map again is released, and the piece gets a
 * new one. White-box for the backend's ops table (lib/core/internal.h).
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

/* A heap holding a live 3 GiB block and 512 MiB idle in four 128 MiB chunks
 * (ranges of 512 MiB and more are backed in chunks once a large block was
 * freed). A 600 MiB request then misses the idle memory (not enough of it),
 * is within the physical budget (3,672 MiB live with it: an eighth and
 * 64 MiB more allow 4,195 MiB, and 4,184 would be mapped) but would raise the
 * physical peak with more than a quarter of its size idle: the four chunks go
 * back first, and its range is pieced as three 128 MiB chunks and 216 MiB. */
static gpu_heap_t *heap_with_idle_chunks(char **big) {
    gpu_heap_t *h = HEAP_NEW(0);
    void *warm = gpu_heap_malloc(h, 64 * MiB); /* a large free: ranges in chunks from now on */
    assert_non_null(warm);
    ASSERT_OK(gpu_heap_free(h, warm));
    ASSERT_OK(gpu_heap_trim(h, 0));
    *big = gpu_heap_malloc(h, 3 * GiB);
    char *x = gpu_heap_malloc(h, 512 * MiB);
    assert_non_null(*big);
    assert_non_null(x);
    ASSERT_OK(gpu_heap_free(h, x));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* idle, and still mapped */
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.idle_bytes, 512 * MiB);
    assert_int_equal(s.mapped_bytes, 3 * GiB + 512 * MiB);
    CHECK_ALL(h);
    return h;
}

static void finish(gpu_heap_t *h, char *big, char *y) {
    pattern_fill(y, 128 * MiB - 4096, 8192, 4); /* across the seam of two pieces */
    PATTERN_CHECK(y, 128 * MiB - 4096, 8192, 4);
    pattern_fill(y, 600 * MiB - 4096, 4096, 5); /* the last byte, in the new piece */
    PATTERN_CHECK(y, 600 * MiB - 4096, 4096, 5);
    ASSERT_OK(gpu_heap_free(h, y));
    ASSERT_OK(gpu_heap_free(h, big));
    ASSERT_OK(gpu_heap_trim(h, 0));
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.mapped_bytes, 0);
    assert_int_equal(s.extents_lost, 0);
    CHECK_ALL(h);
    HEAP_DESTROY(h);
}

/* Three kept handles back three pieces; one is released; one piece is new. */
static void test_kept_handles_back_pieces_of_their_size(void **state) {
    (void)state;
    char *big;
    gpu_heap_t *h = heap_with_idle_chunks(&big);
    gpu_stats_t before = STATS(h);
    char *y = gpu_heap_malloc(h, 600 * MiB);
    assert_non_null(y);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.backend_unmap, before.backend_unmap + 4);     /* the idle chunks */
    assert_int_equal(after.backend_create, before.backend_create + 1);   /* 216 MiB */
    assert_int_equal(after.backend_release, before.backend_release + 1); /* the chunk no piece took */
    assert_int_equal(after.backend_map, before.backend_map + 4);
    assert_int_equal(after.idle_bytes, 0);
    assert_int_equal(after.mapped_bytes, 3 * GiB + 600 * MiB);
    assert_int_equal(after.peak_mapped_bytes, 3 * GiB + 600 * MiB); /* as with releases and creates */
    assert_int_equal(h->spare_bytes, 0);
    CHECK_ALL(h);
    finish(h, big, y);
}

/* The first map after the trade is refused once: that kept handle is
 * released and its piece gets a new one. */
static int (*real_map)(vmm_backend *b, uintptr_t va, size_t size, vmm_handle hd);
static int maps_refused;
static int map_refused_once(vmm_backend *b, uintptr_t va, size_t size, vmm_handle hd) {
    if (maps_refused < 1) {
        maps_refused++;
        return vmm_fail(b, GPU_ERR_BACKEND, "map refused by the test");
    }
    return real_map(b, va, size, hd);
}

static void test_kept_handle_refused_is_replaced(void **state) {
    (void)state;
    char *big;
    gpu_heap_t *h = heap_with_idle_chunks(&big);
    vmm_ops patched = *h->door.b->ops;
    const vmm_ops *saved = h->door.b->ops;
    real_map = patched.map;
    patched.map = map_refused_once;
    h->door.b->ops = &patched;
    maps_refused = 0;
    gpu_stats_t before = STATS(h);
    char *y = gpu_heap_malloc(h, 600 * MiB);
    h->door.b->ops = saved;
    assert_non_null(y);
    assert_int_equal(maps_refused, 1);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.backend_create, before.backend_create + 2);   /* 216 MiB, and the refused chunk's */
    assert_int_equal(after.backend_release, before.backend_release + 2); /* the unfit chunk, and the refused one */
    assert_int_equal(after.mapped_bytes, 3 * GiB + 600 * MiB);
    assert_int_equal(h->spare_bytes, 0);
    CHECK_ALL(h);
    finish(h, big, y);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kept_handles_back_pieces_of_their_size),
        cmocka_unit_test(test_kept_handle_refused_is_replaced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
