/*
 * test_carve.c — the two small doors every cut through the heap's books goes
 * through, checked directly on a host heap (white-box: lib/core/internal.h).
 *
 * block_carve cuts [at, at+size) out of a free block: the piece comes back in
 * no index, what lies before and after it stays in the block's index, in its
 * state. The whole-extent walk (extent.h) lists the extents lying wholly inside
 * a mapped range. Both are built here on an idle run of extents of known sizes,
 * mapped side by side through the heap's own vacant carve and backing, so the
 * cases are exact: a cut at the start, in the middle, at the end and of the
 * whole block; a walk over a range that starts or ends inside an extent, over
 * many extents, and over none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "core/internal.h"
#include "util.h"

#define RUN_EXTENTS 4
#define QUANTUM ((size_t)GPU_MIN_ALIGNMENT) /* lib/util.h's GH_QUANTUM (test/util.h hides that header) */

/* The run: extents of 2, 1, 3 and 1 granules, side by side, one idle block. */
static const size_t run_granules[RUN_EXTENTS] = {2, 1, 3, 1};

typedef struct run {
    gpu_heap_t *h;
    size_t g;                  /* the granularity */
    extent *e[RUN_EXTENTS];
    uintptr_t lo, hi;          /* the run's range */
} run;

/* A heap with no thread cache (the test reads the heap's own books) and the
 * run mapped at the start of its reservation. */
static run run_open(void) {
    test_thread_cache = 0;
    run r = {.h = HEAP_NEW(0)};
    gpu_heap_t *h = r.h;
    r.g = h->gran;
    heap_lock(h);
    for (size_t i = 0; i < RUN_EXTENTS; i++) {
        block *b;
        assert_int_equal(heap_reserve_records(h), GPU_OK);
        assert_int_equal(heap_carve_vacant_locked(h, run_granules[i] * r.g, r.g, 0, &b), GPU_OK);
        assert_int_equal(heap_back_at_locked(h, b, NULL), GPU_OK);
        r.e[i] = extmap_find(&h->extents, b->start);
        assert_non_null(r.e[i]);
        assert_int_equal(r.e[i]->va, b->start);
        if (i) assert_int_equal(r.e[i]->va, r.e[i - 1]->va + r.e[i - 1]->size); /* side by side */
        (void)block_release_free(h, b, BLOCK_IDLE); /* merges with the run so far */
    }
    r.lo = r.e[0]->va;
    r.hi = r.e[RUN_EXTENTS - 1]->va + r.e[RUN_EXTENTS - 1]->size;
    assert_int_equal(h->idle.blocks, 1);
    assert_int_equal(h->idle.bytes, r.hi - r.lo);
    heap_unlock(h);
    CHECK_HEAP(h);
    return r;
}

static void run_close(run *r) {
    CHECK_HEAP(r->h);
    HEAP_DESTROY(r->h);
}

/* The idle block that holds the run (lock held). */
static block *run_block(run *r) {
    block *b = r->h->first;
    while (b && block_end(b) <= r->lo) b = b->next_phys;
    assert_non_null(b);
    assert_int_equal(b->state, BLOCK_IDLE);
    assert_int_equal(b->start, r->lo);
    assert_int_equal(block_end(b), r->hi);
    return b;
}

/* ---- block_carve ------------------------------------------------------------ */

/* Cuts [at, at+size) out of the run's idle block and checks every piece: the
 * piece itself, the front and back remainders (idle, in the index, linked in
 * address order) and the records taken; then puts the piece back. */
static void carve_and_check(run *r, uintptr_t at, size_t size) {
    gpu_heap_t *h = r->h;
    heap_lock(h);
    assert_int_equal(heap_reserve_records(h), GPU_OK);
    block *b = run_block(r);
    tlsf_remove(&h->idle, b);
    size_t records = h->block_pool.in_use;
    bool front = at > r->lo, back = at + size < r->hi;

    block *m = block_carve(h, b, at, size, &h->idle);

    assert_int_equal(m->start, at);
    assert_int_equal(m->size, size);
    assert_int_equal(m->state, BLOCK_IDLE); /* the caller gives it its new state */
    assert_false(tlsf_contains(&h->idle, m));
    assert_int_equal(h->block_pool.in_use, records + front + back);
    assert_int_equal(h->idle.blocks, (size_t)front + back);
    assert_int_equal(h->idle.bytes, (r->hi - r->lo) - size);
    if (front) {
        block *f = m->prev_phys;
        assert_ptr_equal(f, b); /* the front keeps the original record */
        assert_int_equal(f->start, r->lo);
        assert_int_equal(block_end(f), at);
        assert_int_equal(f->state, BLOCK_IDLE);
        assert_true(tlsf_contains(&h->idle, f));
        assert_ptr_equal(f->next_phys, m);
    } else {
        assert_ptr_equal(m, b);
    }
    if (back) {
        block *k = m->next_phys;
        assert_int_equal(k->start, at + size);
        assert_int_equal(block_end(k), r->hi);
        assert_int_equal(k->state, BLOCK_IDLE);
        assert_true(tlsf_contains(&h->idle, k));
        assert_ptr_equal(k->prev_phys, m);
    } else {
        assert_true(!m->next_phys || m->next_phys->state != BLOCK_IDLE);
    }

    (void)block_release_free(h, m, BLOCK_IDLE); /* merges back into one run */
    assert_int_equal(h->idle.blocks, 1);
    assert_int_equal(h->block_pool.in_use, records);
    heap_unlock(h);
    CHECK_HEAP(h);
}

static void test_carve_at_start(void **state) {
    (void)state;
    run r = run_open();
    carve_and_check(&r, r.lo, r.e[0]->size);
    carve_and_check(&r, r.lo, QUANTUM);
    run_close(&r);
}

static void test_carve_in_middle(void **state) {
    (void)state;
    run r = run_open();
    carve_and_check(&r, r.e[1]->va, r.e[1]->size);            /* a whole extent, as trim cuts */
    carve_and_check(&r, r.lo + 3 * QUANTUM, 16 * QUANTUM); /* a piece inside one extent */
    carve_and_check(&r, r.e[0]->va + r.g, 3 * r.g);             /* across extent boundaries */
    run_close(&r);
}

static void test_carve_at_end(void **state) {
    (void)state;
    run r = run_open();
    carve_and_check(&r, r.e[3]->va, r.e[3]->size);
    carve_and_check(&r, r.hi - QUANTUM, QUANTUM);
    run_close(&r);
}

static void test_carve_whole_block(void **state) {
    (void)state;
    run r = run_open();
    carve_and_check(&r, r.lo, r.hi - r.lo);
    run_close(&r);
}

/* Vacant VA: the remainders stay vacant and in the vacant index. */
static void test_carve_vacant(void **state) {
    (void)state;
    test_thread_cache = 0;
    gpu_heap_t *h = HEAP_NEW(0);
    heap_lock(h);
    assert_int_equal(heap_reserve_records(h), GPU_OK);
    block *v = h->first;
    assert_int_equal(v->state, BLOCK_VACANT);
    assert_int_equal(h->vacant.blocks, 1);
    size_t whole = v->size;
    tlsf_remove(&h->vacant, v);
    uintptr_t at = v->start + 4 * h->gran;
    block *m = block_carve(h, v, at, h->gran, &h->vacant);
    assert_int_equal(m->start, at);
    assert_int_equal(m->size, h->gran);
    assert_int_equal(h->vacant.blocks, 2);
    assert_int_equal(h->vacant.bytes, whole - h->gran);
    assert_int_equal(m->prev_phys->state, BLOCK_VACANT);
    assert_int_equal(m->next_phys->state, BLOCK_VACANT);
    assert_true(tlsf_contains(&h->vacant, m->prev_phys));
    assert_true(tlsf_contains(&h->vacant, m->next_phys));
    (void)block_release_free(h, m, BLOCK_VACANT);
    assert_int_equal(h->vacant.blocks, 1);
    assert_int_equal(h->first->size, whole);
    heap_unlock(h);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* ---- the whole-extent walk ---------------------------------------------------- */

/* Walks [lo, hi) and checks that it yields exactly the run's extents first..last
 * (none when first > last). */
static void walk_check(run *r, uintptr_t lo, uintptr_t hi, int first, int last) {
    const extmap *m = &r->h->extents;
    heap_lock(r->h);
    int i = first;
    for (extent *e = extmap_first_whole(m, lo, hi); e; e = extmap_next_whole(m, e, hi)) {
        assert_true(i <= last);
        assert_ptr_equal(e, r->e[i]);
        assert_true(e->va >= lo && e->va + e->size <= hi);
        i++;
    }
    assert_int_equal(i, last + 1);
    heap_unlock(r->h);
}

static void test_walk_many_extents(void **state) {
    (void)state;
    run r = run_open();
    /* The whole run: the walk stops at its end without looking past it (the
     * VA after the run is unmapped). */
    walk_check(&r, r.lo, r.hi, 0, 3);
    walk_check(&r, r.e[1]->va, r.e[3]->va, 1, 2); /* ends on a boundary */
    walk_check(&r, r.e[2]->va, r.e[2]->va + r.e[2]->size, 2, 2);
    run_close(&r);
}

static void test_walk_starts_and_ends_inside(void **state) {
    (void)state;
    run r = run_open();
    walk_check(&r, r.lo + QUANTUM, r.hi, 1, 3);                /* starts inside the first */
    walk_check(&r, r.lo, r.e[3]->va + r.g / 2, 0, 2);             /* ends inside the last */
    walk_check(&r, r.lo + r.g, r.e[2]->va + r.g, 1, 1);           /* both */
    walk_check(&r, r.e[1]->va + QUANTUM, r.e[3]->va + QUANTUM, 2, 2);
    run_close(&r);
}

static void test_walk_no_extent(void **state) {
    (void)state;
    run r = run_open();
    walk_check(&r, r.lo + QUANTUM, r.e[1]->va - QUANTUM, 0, -1); /* inside one extent */
    walk_check(&r, r.lo + QUANTUM, r.e[1]->va + QUANTUM, 0, -1); /* the next one runs past the end */
    walk_check(&r, r.e[2]->va, r.e[2]->va + r.g, 0, -1);               /* the first one runs past the end */
    run_close(&r);
}

/* The walk's two halves, as the fit search uses them. */
static void test_walk_halves(void **state) {
    (void)state;
    run r = run_open();
    const extmap *m = &r.h->extents;
    heap_lock(r.h);
    assert_int_equal(extmap_boundary(m, r.lo), r.lo);
    assert_int_equal(extmap_boundary(m, r.lo + QUANTUM), r.e[1]->va);
    assert_int_equal(extmap_boundary(m, r.e[3]->va - QUANTUM), r.e[3]->va);
    assert_ptr_equal(extmap_whole_at(m, r.e[2]->va, r.hi), r.e[2]);
    assert_null(extmap_whole_at(m, r.e[2]->va, r.e[3]->va - QUANTUM));
    assert_null(extmap_whole_at(m, r.hi, r.hi)); /* at the end: nothing is looked up */
    heap_unlock(r.h);
    run_close(&r);
}

/* ---- the whole-extent search remembers a miss ------------------------------------ */

/* A live block of the test's making goes back idle (lock held): out of the
 * address map and the live counts, merged with its idle neighbours. */
static block *give_back_idle(gpu_heap_t *h, block *b) {
    blockmap_remove(&h->live, b->start);
    heap_unlive_locked(h, b);
    return block_release_free(h, b, BLOCK_IDLE);
}

/* An idle block remembers the need a whole-extent search missed in it, and
 * forgets it once its range changes: the last quantum of the run taken, the rest
 * holds no window of whole extents for the run's size less a quantum (the last
 * extent is not wholly idle); given back, it merges into that same record, and
 * the search must find the run. */
static void test_fit_miss_forgotten_when_block_grows(void **state) {
    (void)state;
    run r = run_open();
    gpu_heap_t *h = r.h;
    size_t need = (r.hi - r.lo) - QUANTUM;
    heap_lock(h);
    assert_int_equal(heap_reserve_records(h), GPU_OK);
    block *b = run_block(&r);
    tlsf_remove(&h->idle, b);
    block *last = block_carve(h, b, r.hi - QUANTUM, QUANTUM, &h->idle);
    heap_make_live_locked(h, last);
    assert_null(fit_take_whole(h, need, QUANTUM));
    assert_int_equal(b->fit_need, need); /* remembered */
    assert_true(fit_memo_holds(h, b));
    assert_null(fit_take_whole(h, need, QUANTUM)); /* the same miss, remembered */
    heap_unlock(h);
    CHECK_HEAP(h);

    heap_lock(h);
    block *merged = give_back_idle(h, last);
    assert_ptr_equal(merged, b); /* the remembering record, grown */
    assert_int_equal(block_end(b), r.hi);
    block *got = fit_take_whole(h, need, QUANTUM);
    assert_non_null(got);
    assert_int_equal(got->start, r.lo);
    (void)give_back_idle(h, got);
    heap_unlock(h);
    run_close(&r);
}

/* ---- a run of small blocks ------------------------------------------------------ */

/* Two heaps with the same history: idle memory cut into holes of several sizes. */
static gpu_heap_t *holed_heap(void) {
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    cfg.thread_cache = 0; /* the heap core alone */
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    void *p[600];
    for (int i = 0; i < 600; i++) assert_non_null(p[i] = gpu_heap_malloc(h, (size_t)(1 + i % 7) * 768));
    for (int i = 0; i < 600; i += 3) assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK); /* the quarantine becomes idle holes */
    return h;
}

/* heap_alloc_run_locked gives the blocks, in order, that single allocations would. */
static void test_run_matches_singles(void **state) {
    (void)state;
    for (size_t need = GPU_MIN_ALIGNMENT; need <= 4 * KiB; need += 3 * GPU_MIN_ALIGNMENT) {
        gpu_heap_t *a = holed_heap(), *b = holed_heap();
        block *run[400], *one[400];
        heap_lock(a);
        size_t got = heap_alloc_run_locked(a, need, 400, run);
        heap_unlock(a);
        assert_int_equal(got, 400);
        heap_lock(b);
        for (int i = 0; i < 400; i++) {
            assert_int_equal(heap_reserve_records(b), GPU_OK);
            assert_int_equal(heap_alloc_locked(b, need, GPU_MIN_ALIGNMENT, 0, 0, &one[i]), GPU_OK);
        }
        heap_unlock(b);
        for (int i = 0; i < 400; i++) {
            assert_int_equal(run[i]->start - a->base, one[i]->start - b->base);
            assert_int_equal(run[i]->size, need);
        }
        gpu_stats_t sa = STATS(a), sb = STATS(b);
        assert_int_equal(sa.idle_bytes, sb.idle_bytes);
        assert_int_equal(sa.mapped_bytes, sb.mapped_bytes);
        CHECK_HEAP(a);
        CHECK_HEAP(b);
        HEAP_DESTROY(a);
        HEAP_DESTROY(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_carve_at_start),
        cmocka_unit_test(test_carve_in_middle),
        cmocka_unit_test(test_carve_at_end),
        cmocka_unit_test(test_carve_whole_block),
        cmocka_unit_test(test_carve_vacant),
        cmocka_unit_test(test_walk_many_extents),
        cmocka_unit_test(test_walk_starts_and_ends_inside),
        cmocka_unit_test(test_walk_no_extent),
        cmocka_unit_test(test_walk_halves),
        cmocka_unit_test(test_fit_miss_forgotten_when_block_grows),
        cmocka_unit_test(test_run_matches_singles),
    };
    return cmocka_run_group_tests_name("carve", tests, NULL, NULL);
}
