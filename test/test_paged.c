/*
 * test_paged.c — paged placement (gpu_config_t.page_size, lib/core/paged.c).
 *
 * On host-backend heaps of 64 KiB granules and 256 KiB pages, without thread
 * caches: a page size is checked when the heap is made; blocks of every size
 * share pages; a block over an unmapped hole and the idle memory beside it maps
 * only the hole; a block mapped past the physical peak moves idle pages under
 * it (kept handles: no create, no release); in legacy free order those pages
 * move without a fence, and while the release that made them idle is not seen
 * done their old mappings linger until it is. Each test fails without the part it names. White-box
 * for the host backend's clock (events that complete late).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "core/internal.h"
#include "util.h"

#define G (64 * KiB)
#define P (4 * G) /* the page */

static gpu_heap_t *paged_heap(void) {
    gpu_config_t cfg = host_config(4 * GiB, G, 0);
    cfg.page_size = P;
    cfg.thread_cache = 0;
    return HEAP_CREATE(&cfg);
}

static void free_all(gpu_heap_t *h, void **p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) ASSERT_OK(gpu_heap_free(h, p[i]));
    CHECK_ALL(h);
    gpu_heap_destroy(h);
}

/* A page size must be a power of two of at least the granularity; the variable
 * sets it, and a malformed one is refused. */
static char said[512];
static void keep_message(int err, const char *message, void *arg) {
    (void)err, (void)arg;
    snprintf(said, sizeof said, "%s", message);
}

static void test_page_size_checked(void **state) {
    (void)state;
    gpu_error_handler_t was = gpu_set_error_handler(keep_message, NULL);
    gpu_config_t cfg = host_config(1 * GiB, G, 0);
    gpu_heap_t *h = NULL;
    cfg.page_size = 3 * G;
    assert_int_equal(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
    assert_null(h);
    assert_non_null(strstr(said, "page size"));
    cfg.page_size = G / 2;
    assert_int_equal(gpu_heap_create(&cfg, &h), GPU_ERR_INVALID);
    assert_null(h);
    gpu_set_error_handler(was, NULL);
    setenv("GPUHEAP_PAGE_SIZE", "1M", 1);
    ASSERT_OK(gpu_config_init(&cfg));
    assert_int_equal(cfg.page_size, 1 * MiB);
    setenv("GPUHEAP_PAGE_SIZE", "big", 1);
    assert_int_equal(gpu_config_init(&cfg), GPU_ERR_INVALID);
    assert_int_equal(cfg.page_size, 0);
    unsetenv("GPUHEAP_PAGE_SIZE");
}

/* A block of two granules goes into the idle tail of a 5-granule block's pages
 * instead of extents of its own. */
static void test_blocks_share_pages(void **state) {
    (void)state;
    gpu_heap_t *h = paged_heap();
    char *a = gpu_heap_malloc(h, 5 * G);
    assert_non_null(a);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.mapped_bytes, 2 * P);
    assert_int_equal(s.extents, 2);
    char *b = gpu_heap_malloc(h, 2 * G);
    assert_ptr_equal(b, a + 5 * G);
    gpu_stats_t t = STATS(h);
    assert_int_equal(t.mapped_bytes, 2 * P);
    assert_int_equal(t.backend_create, s.backend_create);
    free_all(h, (void *[]){a, b}, 2);
}

/* Six granules where a freed page was given back (a hole) and the idle half of
 * the next page: the block takes both and maps only the hole's page — not a
 * range of two pages of its own. */
static void test_run_maps_only_the_hole(void **state) {
    (void)state;
    gpu_heap_t *h = paged_heap();
    char *a = gpu_heap_malloc(h, 6 * G);
    char *b = gpu_heap_malloc(h, 2 * G);
    assert_non_null(a);
    assert_ptr_equal(b, a + 6 * G);
    ASSERT_OK(gpu_heap_free(h, a));
    ASSERT_OK(gpu_heap_trim(h, 0)); /* the first page goes; the second holds b */
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.mapped_bytes, P);
    assert_int_equal(s.idle_bytes, 2 * G);
    char *c = gpu_heap_malloc(h, 6 * G);
    assert_ptr_equal(c, a);
    gpu_stats_t t = STATS(h);
    assert_int_equal(t.mapped_bytes, 2 * P);
    assert_int_equal(t.backend_create, s.backend_create + 1);
    assert_int_equal(t.idle_bytes, 0);
    free_all(h, (void *[]){b, c}, 2);
}

/* Two idle pages, a live small block after them and idle memory up to the end
 * of its page: a block of ten granules maps two pages after that tail, past the
 * physical peak, so the two idle pages move there (unmapped, their handles
 * mapped again). */
static char *idle_pages_then_ten(gpu_heap_t *h, char **a, char **b, gpu_stats_t *before) {
    *a = gpu_heap_malloc(h, 2 * P);
    *b = gpu_heap_malloc(h, G);
    assert_non_null(*a);
    assert_ptr_equal(*b, *a + 2 * P);
    ASSERT_OK(gpu_heap_free(h, *a));
    ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* the quarantine drained, everything kept */
    *before = STATS(h);
    return gpu_heap_malloc(h, 10 * G);
}

static void test_idle_pages_move(void **state) {
    (void)state;
    gpu_heap_t *h = paged_heap();
    char *a, *b;
    gpu_stats_t s;
    char *e = idle_pages_then_ten(h, &a, &b, &s);
    assert_ptr_equal(e, b + G);
    gpu_stats_t t = STATS(h);
    assert_int_equal(t.mapped_bytes, 3 * P);
    assert_int_equal(t.peak_mapped_bytes, 3 * P);
    assert_int_equal(t.backend_create, s.backend_create);
    assert_int_equal(t.backend_release, s.backend_release);
    assert_int_equal(t.backend_unmap, s.backend_unmap + 2);
    assert_int_equal(t.backend_map, s.backend_map + 2);
    assert_int_equal(h->spare_bytes, 0);
    free_all(h, (void *[]){b, e}, 2);
}

/* Legacy free order: the freed block waits in the quarantine until a release
 * makes the context wait for it. Its pages move at once once that release's
 * event is seen done; while it is not (the host's "GPU" a second behind), they
 * move too, with no fence, and their old mappings linger (linger.c): still
 * mapped to the same memory, unmapped only when a later look finds the
 * release done. */
static void legacy_move(bool late, size_t bytes) {
    ASSERT_OK(gpu_set_free_order(GPU_FREE_ORDER_LEGACY));
    gpu_heap_t *h = paged_heap();
    vmm_host_set_clock(h->door.b, 0, late ? 1000000000ull : 0);
    size_t pages = bytes / P, size = bytes + 2 * P + 3 * G;
    char *big = gpu_heap_malloc(h, bytes); /* with the next request, past the quarantine's 64 MiB: a release */
    char *b = gpu_heap_malloc(h, G);
    assert_non_null(big);
    assert_ptr_equal(b, big + bytes);
    ASSERT_OK(gpu_heap_free(h, big));
    gpu_stats_t s = STATS(h);
    char *e = gpu_heap_malloc(h, size); /* from b's idle tail: past the peak, freed pages move */
    assert_ptr_equal(e, b + G);
    gpu_stats_t t = STATS(h);
    assert_int_equal(t.order_releases, s.order_releases + 1);
    assert_int_equal(t.fences, s.fences); /* no fence either way */
    assert_int_equal(t.backend_create, s.backend_create + 2); /* the freed pages moved, 2 new */
    assert_int_equal(t.backend_release, s.backend_release);
    assert_int_equal(t.peak_mapped_bytes, s.peak_mapped_bytes + 2 * P);
    assert_int_equal(t.backend_unmap, s.backend_unmap + (late ? 0 : pages));
    assert_int_equal(h->nlinger, late ? pages : 0);
    CHECK_ALL(h);
    if (late) {
        /* The old address still shows the page's memory, as work issued before
         * the free still sees it: the last page's old mapping reads what the
         * block wrote where that page is now. */
        size_t at = 0;
        for (size_t off = 0; off < size; off += P) e[off] = (char)(off / P + 1);
        for (const block *l = h->linger; l; l = l->next_free) {
            const extent *x = l->twin;
            assert_true(x->twin && x->va >= (uintptr_t)e && x->va < (uintptr_t)e + size);
            assert_int_equal(*(char *)l->start, *(char *)x->va);
            at++;
        }
        assert_int_equal(at, pages);
        gpu_heap_trim(h, SIZE_MAX); /* a look while the release runs: nothing unmapped, no fence */
        t = STATS(h);
        assert_int_equal(h->nlinger, pages);
        assert_int_equal(t.fences, s.fences);
        vmm_host_set_clock(h->door.b, 2000000000ull, 1000000000ull); /* the release done */
        gpu_heap_trim(h, SIZE_MAX);
        t = STATS(h);
        assert_int_equal(h->nlinger, 0);
        assert_int_equal(t.backend_unmap, s.backend_unmap + pages);
        assert_int_equal(t.fences, s.fences);
        assert_int_equal(t.backend_release, s.backend_release); /* the handles are the block's now */
    }
    void *p[] = {b, e};
    free_all(h, p, 2);
    ASSERT_OK(gpu_set_free_order(GPU_FREE_ORDER_EVENT));
}

static void test_legacy_moves_without_a_fence(void **state) {
    (void)state;
    legacy_move(false, 48 * MiB);
}

static void test_legacy_pages_linger_while_the_release_runs(void **state) {
    (void)state;
    legacy_move(true, 48 * MiB);
}

/* A range of more pages than one trade's set of handles holds (SPARE_MAX) is
 * traded for a set's worth at a time: every freed page moves, none is released
 * and none more is created — both while the release runs (the pages linger)
 * and after it. A range of 600 pages is still mapped in pages (it could not
 * take the freed ones otherwise). */
static void test_more_pages_than_a_trade_holds(void **state) {
    (void)state;
    legacy_move(false, (SPARE_MAX + 64) * P);
    legacy_move(true, (SPARE_MAX + 64) * P);
    legacy_move(false, 600 * P);
    legacy_move(true, 600 * P);
}

/* A paged heap's page grid is where its reservation starts: a range starts on
 * a page, so a heap whose base lay off the grid (the reservation was aligned to
 * the granularity only) placed the same calls differently as the base moved —
 * RMM's random workload in 8 MiB pages held 1.098-1.103x its live peak from one
 * run to the next on the host backend. Heaps held at once lie at different
 * addresses; each places the same calls at the same offsets, with the same
 * mappings. */
#define GRID_HEAPS 6
#define GRID_CALLS 400
static void test_placement_does_not_depend_on_where_the_heap_lies(void **state) {
    (void)state;
    gpu_heap_t *h[GRID_HEAPS];
    for (int k = 0; k < GRID_HEAPS; k++) {
        gpu_config_t cfg = host_config(1 * GiB, G, 0);
        cfg.page_size = 16 * G;
        cfg.thread_cache = 0;
        h[k] = HEAP_CREATE(&cfg);
        assert_int_equal(h[k]->base % (16 * G), 0);
    }
    static size_t off[GRID_HEAPS][GRID_CALLS];
    gpu_stats_t end[GRID_HEAPS];
    for (int k = 0; k < GRID_HEAPS; k++) {
        char *p[32] = {0};
        uint64_t rng = 7;
        for (int i = 0; i < GRID_CALLS; i++) {
            rng = mix64(rng);
            size_t slot = rng % 32;
            off[k][i] = 0;
            if (p[slot]) {
                ASSERT_OK(gpu_heap_free(h[k], p[slot]));
                p[slot] = NULL;
                continue;
            }
            p[slot] = gpu_heap_malloc(h[k], 1 + (rng >> 16) % (40 * G));
            assert_non_null(p[slot]);
            off[k][i] = (uintptr_t)p[slot] - h[k]->base + 1;
        }
        end[k] = STATS(h[k]);
        CHECK_ALL(h[k]);
        for (int i = 0; i < 32; i++)
            if (p[i]) ASSERT_OK(gpu_heap_free(h[k], p[i]));
    }
    for (int k = 1; k < GRID_HEAPS; k++) {
        assert_memory_equal(off[k], off[0], sizeof off[0]);
        assert_int_equal(end[k].peak_mapped_bytes, end[0].peak_mapped_bytes);
        assert_int_equal(end[k].backend_map, end[0].backend_map);
        assert_int_equal(end[k].backend_unmap, end[0].backend_unmap);
    }
    /* The backend's own door: an alignment that is no power of two of at least
     * the granularity is refused; a larger one is kept. */
    vmm_backend *b = h[0]->door.b;
    uintptr_t va = 0;
    assert_int_equal(b->ops->reserve(b, 64 * G, 3 * G, &va), GPU_ERR_INVALID);
    assert_int_equal(b->ops->reserve(b, 64 * G, 256 * G, &va), GPU_OK);
    assert_int_equal(va % (256 * G), 0);
    ASSERT_OK(b->ops->unreserve(b, va, 64 * G));
    for (int k = 0; k < GRID_HEAPS; k++) gpu_heap_destroy(h[k]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_size_checked),
        cmocka_unit_test(test_blocks_share_pages),
        cmocka_unit_test(test_run_maps_only_the_hole),
        cmocka_unit_test(test_idle_pages_move),
        cmocka_unit_test(test_legacy_moves_without_a_fence),
        cmocka_unit_test(test_legacy_pages_linger_while_the_release_runs),
        cmocka_unit_test(test_more_pages_than_a_trade_holds),
        cmocka_unit_test(test_placement_does_not_depend_on_where_the_heap_lies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
