/*
 * test_extent.c — the granule map of extents (lib/extent.c) on its own, white-box.
 *
 * The map answers "which extent is mapped at this address?" with one slot per
 * granule of the reservation, in leaves of 4096 slots made on demand. Extent
 * records are built by hand in test memory (the map only reads va and size), over
 * a reservation of 64 KiB granules that is two and a bit leaves long, so that
 * extents can cross leaf boundaries and sit at either end. Checked: init (the
 * first leaf made at once, the others not), set/find/clear granule by granule
 * and across leaves, clear leaving neighbours and making no leaf, walk (each
 * extent once, in address order, stopping when asked), prepare (the leaves and
 * nothing else), addresses outside the reservation, and aborts for extents that
 * do not fit in it.
 */
#include <signal.h>
#include <stdlib.h>

#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

#define G ((size_t)64 << 10)                     /* granularity */
#define LEAF ((size_t)1 << EXTMAP_LEAF_LOG2)     /* granules per leaf */
#define GRANULES (2 * LEAF + 1000)               /* three leaves, the last one partly used */
#define BASE ((uintptr_t)0x7f0000000000)
#define VA(g) (BASE + (uintptr_t)(g) * G)        /* the address of granule g */

static extent mk(uintptr_t va, size_t size) {
    extent e;
    memset(&e, 0, sizeof e);
    e.va = va;
    e.size = size;
    e.prot = GPU_PROT_READ_WRITE;
    return e;
}

static void map_init(extmap *m) {
    memset(m, 0xa5, sizeof *m);
    assert_int_equal(extmap_init(m, BASE, GRANULES * G, G), GPU_OK);
}

/* Fails unless every granule of [g0, g1) maps to e (NULL: to nothing), checking
 * each granule's first, middle and last byte. */
static void expect_range_at(const extmap *m, size_t g0, size_t g1, const extent *e, const char *file, int line) {
    for (size_t g = g0; g < g1; g++) {
        uintptr_t at[] = {VA(g), VA(g) + G / 2, VA(g) + G - 1};
        for (int k = 0; k < 3; k++) {
            extent *got = extmap_find(m, at[k]);
            if (got != e)
                fail_at(file, line, "granule %zu (+%#lx): found %p, expected %p", g, (unsigned long)(at[k] - VA(g)),
                        (void *)got, (const void *)e);
        }
    }
}
#define EXPECT_RANGE(m, g0, g1, e) expect_range_at((m), (g0), (g1), (e), __FILE__, __LINE__)

/* ---- init -------------------------------------------------------------------------------- */

static void test_init(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    assert_int_equal(m.base, BASE);
    assert_int_equal(m.granularity, G);
    assert_int_equal(m.granules, GRANULES);
    assert_int_equal(m.nleaves, 3);
    assert_non_null(m.leaves[0]); /* made at once: a heap's first extents go at its base */
    assert_null(m.leaves[1]);
    assert_null(m.leaves[2]);
    EXPECT_RANGE(&m, 0, 8, NULL);
    assert_null(extmap_find(&m, VA(GRANULES - 1)));
    extmap_free(&m);
    assert_null(m.leaves);

    /* An empty reservation: no leaves, nothing found. */
    assert_int_equal(extmap_init(&m, BASE, 0, G), GPU_OK);
    assert_int_equal(m.granules, 0);
    assert_int_equal(m.nleaves, 0);
    assert_null(extmap_find(&m, BASE));
    extmap_free(&m);
}

/* ---- set, find, clear ------------------------------------------------------------------- */

static void test_set_find_clear(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    extent a = mk(VA(5), 3 * G), b = mk(VA(8), G), c = mk(VA(20), 2 * G);
    assert_int_equal(extmap_set(&m, &a), GPU_OK);
    assert_int_equal(extmap_set(&m, &b), GPU_OK);
    assert_int_equal(extmap_set(&m, &c), GPU_OK);
    EXPECT_RANGE(&m, 0, 5, NULL);
    EXPECT_RANGE(&m, 5, 8, &a);
    EXPECT_RANGE(&m, 8, 9, &b);   /* a neighbour right after */
    EXPECT_RANGE(&m, 9, 20, NULL);
    EXPECT_RANGE(&m, 20, 22, &c);
    EXPECT_RANGE(&m, 22, 40, NULL);
    assert_null(m.leaves[1]);     /* nothing there: no leaf made */

    extmap_clear(&m, &a);         /* only a's granules */
    EXPECT_RANGE(&m, 5, 8, NULL);
    EXPECT_RANGE(&m, 8, 9, &b);
    EXPECT_RANGE(&m, 20, 22, &c);
    /* The same addresses can take another extent (unmapped, then mapped anew). */
    extent a2 = mk(VA(4), 4 * G);
    assert_int_equal(extmap_set(&m, &a2), GPU_OK);
    EXPECT_RANGE(&m, 4, 8, &a2);
    EXPECT_RANGE(&m, 8, 9, &b);
    extmap_free(&m);
}

/* Extents that cross leaf boundaries: the leaves they need are made, every
 * granule on both sides finds them, and clearing empties them all. */
static void test_across_leaves(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    extent e = mk(VA(LEAF - 2), 4 * G); /* granules 4094..4097 */
    assert_int_equal(extmap_set(&m, &e), GPU_OK);
    assert_non_null(m.leaves[1]);
    assert_null(m.leaves[2]);
    EXPECT_RANGE(&m, LEAF - 3, LEAF - 2, NULL);
    EXPECT_RANGE(&m, LEAF - 2, LEAF + 2, &e);
    EXPECT_RANGE(&m, LEAF + 2, LEAF + 3, NULL);

    /* Over all of leaf 1 into leaf 2. */
    extent big = mk(VA(LEAF + 100), (LEAF + 200) * G); /* 4196 .. 8491 */
    assert_int_equal(extmap_set(&m, &big), GPU_OK);
    assert_non_null(m.leaves[2]);
    EXPECT_RANGE(&m, LEAF + 2, LEAF + 100, NULL);
    assert_ptr_equal(extmap_find(&m, VA(LEAF + 100)), &big);
    assert_ptr_equal(extmap_find(&m, VA(2 * LEAF - 1)), &big);
    assert_ptr_equal(extmap_find(&m, VA(2 * LEAF)), &big);
    EXPECT_RANGE(&m, 2 * LEAF + 290, 2 * LEAF + 300, &big);
    EXPECT_RANGE(&m, 2 * LEAF + 300, 2 * LEAF + 310, NULL);
    EXPECT_RANGE(&m, LEAF - 2, LEAF + 2, &e); /* untouched */

    extmap_clear(&m, &e);
    EXPECT_RANGE(&m, LEAF - 2, LEAF + 2, NULL);
    extmap_clear(&m, &big);
    EXPECT_RANGE(&m, LEAF + 100, 2 * LEAF + 300, NULL);
    extmap_free(&m);
}

/* Clearing where no leaf was ever made leaves it unmade (and finds nothing). */
static void test_clear_makes_no_leaf(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    extent e = mk(VA(2 * LEAF + 10), 2 * G);
    extmap_clear(&m, &e);
    assert_null(m.leaves[2]);
    assert_null(extmap_find(&m, VA(2 * LEAF + 10)));
    extmap_free(&m);
}

/* ---- the reservation's ends ------------------------------------------------------------- */

static void test_reservation_ends(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    extent first = mk(BASE, G), last = mk(VA(GRANULES - 3), 3 * G); /* ends exactly at the end */
    assert_int_equal(extmap_set(&m, &first), GPU_OK);
    assert_int_equal(extmap_set(&m, &last), GPU_OK);
    assert_ptr_equal(extmap_find(&m, BASE), &first);
    assert_ptr_equal(extmap_find(&m, BASE + G - 1), &first);
    EXPECT_RANGE(&m, GRANULES - 3, GRANULES, &last);
    assert_ptr_equal(extmap_find(&m, VA(GRANULES) - 1), &last); /* the reservation's last byte */
    EXPECT_RANGE(&m, GRANULES - 4, GRANULES - 3, NULL);
    /* Outside the reservation: nothing, on either side and far away. */
    uintptr_t outside[] = {BASE - 1, BASE - G, VA(GRANULES), VA(GRANULES) + G - 1, VA(3 * LEAF), 0, UINTPTR_MAX};
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++)
        if (extmap_find(&m, outside[i])) fail_msg("%#lx outside the reservation found an extent", (unsigned long)outside[i]);

    /* One extent over the whole reservation. */
    extmap_clear(&m, &first);
    extmap_clear(&m, &last);
    extent all = mk(BASE, GRANULES * G);
    assert_int_equal(extmap_set(&m, &all), GPU_OK);
    assert_ptr_equal(extmap_find(&m, BASE), &all);
    assert_ptr_equal(extmap_find(&m, VA(LEAF)), &all);
    assert_ptr_equal(extmap_find(&m, VA(GRANULES) - 1), &all);
    assert_null(extmap_find(&m, VA(GRANULES)));
    extmap_free(&m);
}

/* ---- walk ---------------------------------------------------------------------------------- */

typedef struct visits {
    extent *v[16];
    size_t n, stop_after;
} visits;

static bool visit(extent *e, void *arg) {
    visits *s = arg;
    if (s->n < 16) s->v[s->n] = e;
    s->n++;
    return s->n != s->stop_after;
}

static void test_walk(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    visits s = {.n = 0};
    extmap_walk(&m, visit, &s);
    assert_int_equal(s.n, 0);

    extent a = mk(BASE, G);                                /* the first granule */
    extent b = mk(VA(100), (LEAF + 100 - 100) * G);        /* 100 .. 4195, across leaves 0 and 1 */
    extent c = mk(VA(LEAF + 100), G);                      /* right after b */
    extent d = mk(VA(2 * LEAF - 50), 600 * G);             /* across leaves 1 and 2 */
    extent e = mk(VA(GRANULES - 1), G);                    /* the last granule */
    extent *set_order[] = {&d, &e, &a, &c, &b};            /* set out of order */
    for (int i = 0; i < 5; i++) assert_int_equal(extmap_set(&m, set_order[i]), GPU_OK);

    extent *addr_order[] = {&a, &b, &c, &d, &e};
    s = (visits){.n = 0};
    extmap_walk(&m, visit, &s);
    assert_int_equal(s.n, 5); /* each once, however many granules */
    for (int i = 0; i < 5; i++)
        if (s.v[i] != addr_order[i]) fail_msg("walk visit %d: extent at %#lx, expected %#lx", i, (unsigned long)s.v[i]->va,
                                              (unsigned long)addr_order[i]->va);

    s = (visits){.n = 0, .stop_after = 2};
    extmap_walk(&m, visit, &s);
    assert_int_equal(s.n, 2);
    assert_ptr_equal(s.v[1], &b);

    extmap_clear(&m, &b);
    extmap_clear(&m, &e);
    s = (visits){.n = 0};
    extmap_walk(&m, visit, &s);
    assert_int_equal(s.n, 3);
    assert_ptr_equal(s.v[0], &a);
    assert_ptr_equal(s.v[1], &c);
    assert_ptr_equal(s.v[2], &d);
    extmap_free(&m);
}

/* ---- prepare --------------------------------------------------------------------------------- */

/* prepare makes exactly the leaves a range needs and sets no slot; a set there
 * afterwards cannot need memory. */
static void test_prepare(void **state) {
    (void)state;
    extmap m;
    map_init(&m);
    assert_int_equal(extmap_prepare(&m, VA(2 * LEAF + 10), 5 * G), GPU_OK);
    assert_null(m.leaves[1]);
    assert_non_null(m.leaves[2]);
    EXPECT_RANGE(&m, 2 * LEAF + 10, 2 * LEAF + 15, NULL);
    extent *leaf2 = m.leaves[2][10];
    assert_null(leaf2);
    extent e = mk(VA(2 * LEAF + 10), 5 * G);
    extent **before = m.leaves[2];
    assert_int_equal(extmap_set(&m, &e), GPU_OK);
    assert_ptr_equal(m.leaves[2], before); /* the prepared leaf, not a new one */
    EXPECT_RANGE(&m, 2 * LEAF + 10, 2 * LEAF + 15, &e);
    extmap_free(&m);

    /* A range across all three leaves; and the reservation's last granule. */
    map_init(&m);
    assert_int_equal(extmap_prepare(&m, VA(LEAF - 1), (LEAF + 2) * G), GPU_OK);
    assert_non_null(m.leaves[1]);
    assert_non_null(m.leaves[2]);
    extmap_free(&m);
    map_init(&m);
    assert_int_equal(extmap_prepare(&m, VA(GRANULES - 1), G), GPU_OK);
    assert_null(m.leaves[1]);
    assert_non_null(m.leaves[2]);
    extmap_free(&m);
}

/* ---- contract violations stop the process ------------------------------------------------ */

enum { SET_PAST_END, SET_BEFORE_BASE, PREPARE_EMPTY, PREPARE_PAST_END, SET_LAST, N_CASES };

static int violate(void *arg) {
    if (!freopen("/dev/null", "w", stderr)) return 2; /* the invariant's message is expected */
    signal(SIGABRT, SIG_DFL);
    extmap m;
    if (extmap_init(&m, BASE, GRANULES * G, G) != GPU_OK) return 3;
    extent e;
    switch (*(int *)arg) {
    case SET_PAST_END: e = mk(VA(GRANULES - 1), 2 * G), (void)extmap_set(&m, &e); break;
    case SET_BEFORE_BASE: e = mk(BASE - G, G), (void)extmap_set(&m, &e); break;
    case PREPARE_EMPTY: (void)extmap_prepare(&m, BASE, 0); break;
    case PREPARE_PAST_END: (void)extmap_prepare(&m, VA(GRANULES - 1), 2 * G); break;
    case SET_LAST: e = mk(VA(GRANULES - 1), G); return extmap_set(&m, &e) == GPU_OK ? 0 : 4;
    }
    return 0;
}

static void test_contract(void **state) {
    (void)state;
    int ok = SET_LAST;
    assert_true(exited_ok(run_in_child(violate, &ok)));
    static const char *names[] = {"set past the end", "set before the base", "prepare 0 bytes", "prepare past the end"};
    for (int what = SET_PAST_END; what < SET_LAST; what++) {
        int st = run_in_child(violate, &what);
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT))
            fail_msg("%s: child status %#x, expected an abort", names[what], st);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_set_find_clear),
        cmocka_unit_test(test_across_leaves),
        cmocka_unit_test(test_clear_makes_no_leaf),
        cmocka_unit_test(test_reservation_ends),
        cmocka_unit_test(test_walk),
        cmocka_unit_test(test_prepare),
        cmocka_unit_test(test_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
