/*
 * test_tlsf.c — the segregated-fit index (lib/tlsf.c) on its own, white-box.
 *
 * The index links block records by size class: a first level of powers of two
 * (in quanta of 256 bytes) and sixteen equal steps inside each; sizes below
 * sixteen quanta have a class each. Records are built by hand in test memory
 * (they are host structs: the index only reads start/size and writes the free
 * links), so every case is exact: which list and which bitmap bits a size lands
 * in, which block a search returns (the head of the first class whose every
 * member is large enough; failing that, one of the first few entries of the
 * size's own class), the order of a walk, and the counters. A randomized run
 * checks find, walk and walk_from against a model that knows only the classes'
 * lower bounds and the lists' last-in-first-out order.
 */
#include <signal.h>
#include <stdlib.h>

#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"
#include "records.h"

#define Q ((size_t)GH_QUANTUM)

/* ---- the classes, as the index's comment states them ---------------------------- */

/* The smallest size (in quanta) of the class that holds u quanta: u itself below
 * 16, else u rounded down to a sixteenth of its power of two. Classes are ordered
 * by this bound. */
static uint64_t class_lb(size_t size) {
    uint64_t u = size / Q;
    if (u < TLSF_SL_COUNT) return u;
    unsigned l = 63u - (unsigned)__builtin_clzll(u);
    uint64_t step = (uint64_t)1 << (l - TLSF_SL_LOG2);
    return u & ~(step - 1);
}

/* The one list that holds b: fails unless exactly heads[fl][sl] (and nothing
 * else) reaches it. */
static void expect_in_list(const tlsf_index *t, const block *b, unsigned fl, unsigned sl) {
    for (unsigned f = 0; f < TLSF_FL_COUNT; f++)
        for (unsigned s = 0; s < TLSF_SL_COUNT; s++)
            for (const block *x = t->heads[f][s]; x; x = x->next_free)
                if (x == b && (f != fl || s != sl))
                    fail_msg("block of %zu bytes in list [%u][%u], expected [%u][%u]", b->size, f, s, fl, sl);
    const block *x = t->heads[fl][sl];
    while (x && x != b) x = x->next_free;
    if (!x) fail_msg("block of %zu bytes not in list [%u][%u]", b->size, fl, sl);
}

/* ---- class boundaries and bitmaps -------------------------------------------------- */

static void test_init_empty(void **state) {
    (void)state;
    tlsf_index t;
    memset(&t, 0xa5, sizeof t);
    tlsf_init(&t);
    assert_int_equal(t.fl_bitmap, 0);
    assert_int_equal(t.bytes, 0);
    assert_int_equal(t.blocks, 0);
    for (unsigned f = 0; f < TLSF_FL_COUNT; f++) {
        assert_int_equal(t.sl_bitmap[f], 0);
        for (unsigned s = 0; s < TLSF_SL_COUNT; s++) assert_null(t.heads[f][s]);
    }
    assert_null(tlsf_find(&t, Q));
    assert_null(tlsf_find(&t, 1 * GiB));
}

/* Each size lands in the list its class names, sets exactly that list's bits,
 * and is alone there. */
static void test_class_boundaries(void **state) {
    (void)state;
    static const struct {
        size_t size;
        unsigned fl, sl;
    } cases[] = {
        {1 * Q, 0, 1},           /* exact classes below 16 quanta */
        {2 * Q, 0, 2},
        {15 * Q, 0, 15},
        {16 * Q, 1, 0},          /* 16..31 quanta: still one quantum a step */
        {17 * Q, 1, 1},
        {31 * Q, 1, 15},
        {32 * Q, 2, 0},          /* 32..63: two quanta a step */
        {33 * Q, 2, 0},
        {34 * Q, 2, 1},
        {63 * Q, 2, 15},
        {64 * Q, 3, 0},          /* 64..127: four */
        {67 * Q, 3, 0},
        {68 * Q, 3, 1},
        {1 * MiB, 9, 0},         /* 4096 quanta = 2^12 */
        {1 * MiB + 255 * Q, 9, 0},
        {1 * MiB + 256 * Q, 9, 1},
        {2 * MiB - Q, 9, 15},
        {2 * MiB, 10, 0},
        {(size_t)1 << 58, 47, 0}, /* the largest first level: 2^50 quanta */
        {((size_t)1 << 59) - Q, 47, 15},
    };
    block *b = records(1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tlsf_index t;
        tlsf_init(&t);
        tlsf_insert(&t, rec(b, 1 * MiB, cases[i].size));
        if (t.fl_bitmap != (uint64_t)1 << cases[i].fl)
            fail_msg("size %zu: fl_bitmap %#llx, expected bit %u", cases[i].size, (unsigned long long)t.fl_bitmap,
                     cases[i].fl);
        for (unsigned f = 0; f < TLSF_FL_COUNT; f++)
            if (t.sl_bitmap[f] != (f == cases[i].fl ? 1u << cases[i].sl : 0u))
                fail_msg("size %zu: sl_bitmap[%u] = %#x, expected %#x", cases[i].size, f, t.sl_bitmap[f],
                         f == cases[i].fl ? 1u << cases[i].sl : 0u);
        assert_ptr_equal(t.heads[cases[i].fl][cases[i].sl], b);
        expect_in_list(&t, b, cases[i].fl, cases[i].sl);
        assert_null(b->prev_free);
        assert_null(b->next_free);
        assert_int_equal(t.bytes, cases[i].size);
        assert_int_equal(t.blocks, 1);
        assert_true(tlsf_contains(&t, b));
        assert_ptr_equal(tlsf_find(&t, cases[i].size), b);
        tlsf_remove(&t, b);
        assert_int_equal(t.fl_bitmap, 0);
        assert_int_equal(t.sl_bitmap[cases[i].fl], 0);
        assert_null(t.heads[cases[i].fl][cases[i].sl]);
        assert_int_equal(t.bytes, 0);
        assert_int_equal(t.blocks, 0);
    }
    free(b);
}

/* Bits go when their list empties, and only then: a second-level bit with its
 * list, a first-level bit with the last list of its level. */
static void test_bitmaps_follow_lists(void **state) {
    (void)state;
    block *b = records(4);
    tlsf_index t;
    tlsf_init(&t);
    tlsf_insert(&t, rec(&b[0], 0x10000, 16 * Q)); /* [1][0] */
    tlsf_insert(&t, rec(&b[1], 0x20000, 16 * Q)); /* [1][0] again */
    tlsf_insert(&t, rec(&b[2], 0x30000, 20 * Q)); /* [1][4] */
    tlsf_insert(&t, rec(&b[3], 0x40000, 3 * Q));  /* [0][3] */
    assert_int_equal(t.fl_bitmap, 0x3);
    assert_int_equal(t.sl_bitmap[0], 1u << 3);
    assert_int_equal(t.sl_bitmap[1], (1u << 0) | (1u << 4));
    assert_int_equal(t.blocks, 4);
    assert_int_equal(t.bytes, (16 + 16 + 20 + 3) * Q);

    tlsf_remove(&t, &b[0]); /* [1][0] keeps b[1] */
    assert_int_equal(t.sl_bitmap[1], (1u << 0) | (1u << 4));
    assert_ptr_equal(t.heads[1][0], &b[1]);
    tlsf_remove(&t, &b[1]); /* [1][0] empty; level 1 keeps [1][4] */
    assert_int_equal(t.sl_bitmap[1], 1u << 4);
    assert_int_equal(t.fl_bitmap, 0x3);
    tlsf_remove(&t, &b[2]); /* level 1 empty */
    assert_int_equal(t.sl_bitmap[1], 0);
    assert_int_equal(t.fl_bitmap, 0x1);
    tlsf_remove(&t, &b[3]);
    assert_int_equal(t.fl_bitmap, 0);
    assert_int_equal(t.sl_bitmap[0], 0);
    assert_int_equal(t.blocks, 0);
    assert_int_equal(t.bytes, 0);
    free(b);
}

/* Lists are last-in-first-out; removing the head, a middle or the tail keeps the
 * links of the rest and clears the removed record's. */
static void test_list_links(void **state) {
    (void)state;
    block *b = records(4);
    tlsf_index t;
    tlsf_init(&t);
    for (int i = 0; i < 4; i++) tlsf_insert(&t, rec(&b[i], 0x100000 * (uintptr_t)(i + 1), 40 * Q)); /* all [2][4] */
    /* head b3 -> b2 -> b1 -> b0 */
    assert_ptr_equal(t.heads[2][4], &b[3]);
    assert_null(b[3].prev_free);
    assert_ptr_equal(b[3].next_free, &b[2]);
    assert_ptr_equal(b[2].prev_free, &b[3]);
    assert_ptr_equal(b[0].prev_free, &b[1]);
    assert_null(b[0].next_free);

    tlsf_remove(&t, &b[2]); /* a middle */
    assert_null(b[2].prev_free);
    assert_null(b[2].next_free);
    assert_ptr_equal(b[3].next_free, &b[1]);
    assert_ptr_equal(b[1].prev_free, &b[3]);
    assert_false(tlsf_contains(&t, &b[2]));

    tlsf_remove(&t, &b[0]); /* the tail */
    assert_null(b[1].next_free);
    assert_false(tlsf_contains(&t, &b[0]));

    tlsf_remove(&t, &b[3]); /* the head */
    assert_ptr_equal(t.heads[2][4], &b[1]);
    assert_null(b[1].prev_free);
    assert_true(tlsf_contains(&t, &b[1]));
    assert_int_equal(t.blocks, 1);
    assert_int_equal(t.bytes, 40 * Q);
    assert_int_equal(t.sl_bitmap[2], 1u << 4);
    free(b);
}

/* contains looks in b's own list, by identity: a record of the same size that is
 * not linked, or a linked record whose size no longer names its list, is not
 * found. */
static void test_contains(void **state) {
    (void)state;
    block *b = records(3);
    tlsf_index t, other;
    tlsf_init(&t);
    tlsf_init(&other);
    tlsf_insert(&t, rec(&b[0], 0x100000, 100 * Q));
    rec(&b[1], 0x100000, 100 * Q); /* the same start and size, never inserted */
    tlsf_insert(&other, rec(&b[2], 0x200000, 100 * Q));
    assert_true(tlsf_contains(&t, &b[0]));
    assert_false(tlsf_contains(&t, &b[1]));
    assert_false(tlsf_contains(&t, &b[2])); /* another index's */
    assert_true(tlsf_contains(&other, &b[2]));
    b[0].size = 200 * Q; /* its list is [3][9]; 200 quanta names [4][9] */
    assert_false(tlsf_contains(&t, &b[0]));
    b[0].size = 100 * Q;
    assert_true(tlsf_contains(&t, &b[0]));
    tlsf_remove(&t, &b[0]);
    assert_false(tlsf_contains(&t, &b[0]));
    tlsf_remove(&other, &b[2]);
    free(b);
}

/* ---- find: good fit ------------------------------------------------------------------ */

static void test_find_good_fit(void **state) {
    (void)state;
    block *b = records(8);
    tlsf_index t;
    tlsf_init(&t);
    block *s20 = rec(&b[0], 0x1000000, 20 * Q), *s100 = rec(&b[1], 0x2000000, 100 * Q),
          *s1000 = rec(&b[2], 0x3000000, 1000 * Q);
    tlsf_insert(&t, s1000);
    tlsf_insert(&t, s100);
    tlsf_insert(&t, s20);

    assert_ptr_equal(tlsf_find(&t, 1 * Q), s20);   /* the smallest class that has a block */
    assert_ptr_equal(tlsf_find(&t, 17 * Q), s20);
    assert_ptr_equal(tlsf_find(&t, 20 * Q), s20);  /* exact class */
    assert_ptr_equal(tlsf_find(&t, 21 * Q), s100);
    assert_ptr_equal(tlsf_find(&t, 100 * Q), s100); /* [3][9] holds 100..103: its own class fits */
    /* 101 quanta: [3][9] may hold 100, so the search starts at [3][10] and skips
     * the 100-quanta block, even though it is "closer". */
    assert_ptr_equal(tlsf_find(&t, 101 * Q), s1000);
    /* 999 quanta: no class above [6][15] (992..1023) has a block; the class's own
     * list is scanned and holds 1000. */
    assert_ptr_equal(tlsf_find(&t, 999 * Q), s1000);
    assert_ptr_equal(tlsf_find(&t, 1000 * Q), s1000);
    assert_null(tlsf_find(&t, 1001 * Q));           /* 1000 < 1001, and nothing larger */
    assert_null(tlsf_find(&t, 1 * GiB));
    /* find does not take the block out. */
    assert_int_equal(t.blocks, 3);
    assert_true(tlsf_contains(&t, s20));

    /* Several in the first fitting class: its head, the last one inserted. */
    block *s21 = rec(&b[3], 0x4000000, 21 * Q), *s21b = rec(&b[4], 0x5000000, 21 * Q);
    tlsf_insert(&t, s21);
    tlsf_insert(&t, s21b);
    assert_ptr_equal(tlsf_find(&t, 21 * Q), s21b);
    tlsf_remove(&t, s21b);
    assert_ptr_equal(tlsf_find(&t, 21 * Q), s21);
    tlsf_remove(&t, s21);

    /* A class that may hold smaller blocks is passed over for the next one up
     * that holds any: 34 quanta wanted, [2][1] (34..35) empty, [2][0] has 33. */
    block *s33 = rec(&b[5], 0x6000000, 33 * Q), *s36 = rec(&b[6], 0x7000000, 36 * Q);
    tlsf_insert(&t, s33);
    /* 33's own class [2][0] holds a fitting block, but it is scanned only when
     * no class above has one: 100 quanta wins. */
    assert_ptr_equal(tlsf_find(&t, 33 * Q), s100);
    assert_ptr_equal(tlsf_find(&t, 32 * Q), s33); /* [2][0] wholly fits 32 */
    assert_ptr_equal(tlsf_find(&t, 34 * Q), s100);
    tlsf_insert(&t, s36);
    assert_ptr_equal(tlsf_find(&t, 34 * Q), s36);
    assert_ptr_equal(tlsf_find(&t, 33 * Q), s36); /* the classes above win over the scan */
    free(b);
}

/* The scan of the size's own class looks at the first 16 entries only
 * (TLSF_SCAN_LIMIT in tlsf.c): a fitting block behind 16 that do not fit is not
 * found; behind 15 it is. */
static void test_find_scan_limit(void **state) {
    (void)state;
    for (int misses = 15; misses <= 16; misses++) {
        block *b = records(17);
        tlsf_index t;
        tlsf_init(&t);
        block *fit = rec(&b[0], 0x1000000, 1000 * Q); /* [6][15]: 992..1023 */
        tlsf_insert(&t, fit);                          /* inserted first: the tail */
        for (int i = 1; i <= misses; i++) tlsf_insert(&t, rec(&b[i], 0x1000000 + (uintptr_t)i * MiB, 992 * Q));
        block *got = tlsf_find(&t, 999 * Q);
        if (misses == 15)
            assert_ptr_equal(got, fit);
        else
            assert_null(got);
        assert_ptr_equal(tlsf_find(&t, 992 * Q), &b[misses]); /* the class fits 992 whole: its head */
        free(b);
    }
}

/* ---- walks ---------------------------------------------------------------------------- */

typedef struct seen {
    block *v[64];
    size_t n, stop_after;
    tlsf_index *remove_from; /* when set, each visited block is removed during the walk */
} seen;

static bool visit(block *b, void *arg) {
    seen *s = arg;
    s->v[s->n++] = b;
    if (s->remove_from) tlsf_remove(s->remove_from, b);
    return s->n != s->stop_after;
}

static void test_walk_order(void **state) {
    (void)state;
    block *b = records(6);
    tlsf_index t;
    tlsf_init(&t);
    tlsf_insert(&t, rec(&b[0], 0x1000000, 1 * MiB)); /* [9][0] */
    tlsf_insert(&t, rec(&b[1], 0x2000000, 32 * Q));  /* [2][0] */
    tlsf_insert(&t, rec(&b[2], 0x3000000, 5 * Q));   /* [0][5] */
    tlsf_insert(&t, rec(&b[3], 0x4000000, 33 * Q));  /* [2][0], in front of b1 */
    tlsf_insert(&t, rec(&b[4], 0x5000000, 40 * Q));  /* [2][4] */
    tlsf_insert(&t, rec(&b[5], 0x6000000, 2 * Q));   /* [0][2] */

    /* Classes upward; inside a class, the list's order (newest first). */
    block *all[] = {&b[5], &b[2], &b[3], &b[1], &b[4], &b[0]};
    seen s = {.n = 0};
    tlsf_walk(&t, visit, &s);
    assert_int_equal(s.n, 6);
    for (size_t i = 0; i < 6; i++) assert_ptr_equal(s.v[i], all[i]);

    /* walk_from starts at the class that holds the size: 33 quanta is [2][0],
     * whose blocks may be smaller (32). */
    s = (seen){.n = 0};
    tlsf_walk_from(&t, 33 * Q, visit, &s);
    assert_int_equal(s.n, 4);
    assert_ptr_equal(s.v[0], &b[3]);
    assert_ptr_equal(s.v[1], &b[1]);
    assert_ptr_equal(s.v[2], &b[4]);
    assert_ptr_equal(s.v[3], &b[0]);
    s = (seen){.n = 0};
    tlsf_walk_from(&t, 34 * Q, visit, &s); /* [2][1]: from 40 up */
    assert_int_equal(s.n, 2);
    assert_ptr_equal(s.v[0], &b[4]);
    s = (seen){.n = 0};
    tlsf_walk_from(&t, 0, visit, &s); /* 0: the whole index */
    assert_int_equal(s.n, 6);
    s = (seen){.n = 0};
    tlsf_walk_from(&t, 2 * MiB, visit, &s);
    assert_int_equal(s.n, 0);

    /* fn returning false stops the walk there. */
    s = (seen){.n = 0, .stop_after = 3};
    tlsf_walk(&t, visit, &s);
    assert_int_equal(s.n, 3);
    assert_ptr_equal(s.v[2], &b[3]);

    /* fn may remove the block it is given: the walk goes on to the rest. */
    s = (seen){.n = 0, .remove_from = &t};
    tlsf_walk(&t, visit, &s);
    assert_int_equal(s.n, 6);
    for (size_t i = 0; i < 6; i++) assert_ptr_equal(s.v[i], all[i]);
    assert_int_equal(t.blocks, 0);
    assert_int_equal(t.bytes, 0);
    assert_int_equal(t.fl_bitmap, 0);
    free(b);
}

/* ---- contract violations stop the process ------------------------------------------ */

static int insert_size(void *arg) {
    if (!freopen("/dev/null", "w", stderr)) return 2; /* the invariant's message is expected */
    signal(SIGABRT, SIG_DFL);
    tlsf_index t;
    tlsf_init(&t);
    block *b = records(1);
    tlsf_insert(&t, rec(b, 0x100000, *(size_t *)arg));
    return 0; /* not reached when the size breaks the contract */
}

static void test_insert_contract(void **state) {
    (void)state;
    size_t ok = 7 * Q, bad[] = {0, Q + 1, 100, (size_t)1 << 59};
    assert_true(exited_ok(run_in_child(insert_size, &ok)));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = run_in_child(insert_size, &bad[i]);
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT))
            fail_msg("inserting a block of %zu bytes: child status %#x, expected an abort", bad[i], st);
    }
}

/* ---- randomized, against a model ------------------------------------------------------ */

#define MODEL_N 400

typedef struct model {
    block *rec;
    bool in[MODEL_N];
    uint64_t seq[MODEL_N]; /* when it was inserted: the newest of a class heads its list */
    uint64_t clock;
} model;

/* What tlsf_find(size) must return, from the classes' bounds and the lists' order. */
static block *model_find(const model *m, size_t size) {
    uint64_t want = size / Q;
    int best = -1;
    for (int i = 0; i < MODEL_N; i++) { /* the lowest class whose bound is at least the size: its newest block */
        if (!m->in[i] || class_lb(m->rec[i].size) < want) continue;
        if (best < 0) {
            best = i;
            continue;
        }
        uint64_t a = class_lb(m->rec[i].size), c = class_lb(m->rec[best].size);
        if (a < c || (a == c && m->seq[i] > m->seq[best])) best = i;
    }
    if (best >= 0) return &m->rec[best];
    /* The size's own class, newest first, its first 16 entries. */
    int order[MODEL_N], n = 0;
    for (int i = 0; i < MODEL_N; i++)
        if (m->in[i] && class_lb(m->rec[i].size) == class_lb(size)) order[n++] = i;
    for (int a = 0; a < n; a++)
        for (int c = a + 1; c < n; c++)
            if (m->seq[order[c]] > m->seq[order[a]]) {
                int x = order[a];
                order[a] = order[c];
                order[c] = x;
            }
    for (int k = 0; k < n && k < 16; k++)
        if (m->rec[order[k]].size >= size) return &m->rec[order[k]];
    return NULL;
}

typedef struct walk_check {
    const model *m;
    size_t n;
    uint64_t last_lb, last_seq;
    size_t from_lb;
    bool bad;
    char why[200];
} walk_check;

static bool walk_step(block *b, void *arg) {
    walk_check *w = arg;
    int i = (int)(b - w->m->rec);
    uint64_t lb = class_lb(b->size);
    if (i < 0 || i >= MODEL_N || !w->m->in[i]) {
        snprintf(w->why, sizeof w->why, "visited a block that is not in the index");
        w->bad = true;
    } else if (lb < w->from_lb) {
        snprintf(w->why, sizeof w->why, "visited class %llu below the start %zu", (unsigned long long)lb, w->from_lb);
        w->bad = true;
    } else if (w->n && (lb < w->last_lb || (lb == w->last_lb && w->m->seq[i] > w->last_seq))) {
        snprintf(w->why, sizeof w->why, "out of order: class %llu after %llu", (unsigned long long)lb,
                 (unsigned long long)w->last_lb);
        w->bad = true;
    }
    w->last_lb = lb;
    w->last_seq = w->m->seq[i];
    w->n++;
    return !w->bad;
}

static size_t random_size(rng *r) {
    switch (rng_below(r, 3)) {
    case 0: return (1 + rng_below(r, 80)) * Q;                       /* the exact and fine classes */
    case 1: return (1 + rng_below(r, 4096)) * Q;                     /* up to 1 MiB */
    default: return gh_align_up(rng_log_size(r, Q, (size_t)1 << 44), Q); /* up to 16 TiB */
    }
}

static void test_random_against_model(void **state) {
    (void)state;
    model m = {.rec = records(MODEL_N)};
    tlsf_index t;
    tlsf_init(&t);
    rng r = rng_seeded(20240611);
    size_t bytes = 0, blocks = 0;
    for (int op = 0; op < 60000; op++) {
        int i = (int)rng_below(&r, MODEL_N);
        if (!m.in[i]) {
            tlsf_insert(&t, rec(&m.rec[i], 0x100000 + (uintptr_t)i * 4096, random_size(&r)));
            m.in[i] = true;
            m.seq[i] = ++m.clock;
            bytes += m.rec[i].size;
            blocks++;
        } else if (rng_below(&r, 3)) {
            assert_true(tlsf_contains(&t, &m.rec[i]));
            tlsf_remove(&t, &m.rec[i]);
            assert_false(tlsf_contains(&t, &m.rec[i]));
            m.in[i] = false;
            bytes -= m.rec[i].size;
            blocks--;
        }
        assert_int_equal(t.bytes, bytes);
        assert_int_equal(t.blocks, blocks);
        size_t want = random_size(&r);
        block *got = tlsf_find(&t, want), *exp = model_find(&m, want);
        if (got != exp)
            fail_msg("op %d: find(%zu) gave %p (%zu bytes), the model %p (%zu bytes)", op, want, (void *)got,
                     got ? got->size : 0, (void *)exp, exp ? exp->size : 0);
        if (got) assert_true(got->size >= want);
        if (op % 500 == 0) {
            walk_check w = {.m = &m};
            tlsf_walk(&t, walk_step, &w);
            if (w.bad) fail_msg("op %d: walk: %s", op, w.why);
            assert_int_equal(w.n, blocks);
            size_t from = random_size(&r);
            w = (walk_check){.m = &m, .from_lb = class_lb(from)};
            tlsf_walk_from(&t, from, walk_step, &w);
            if (w.bad) fail_msg("op %d: walk_from(%zu): %s", op, from, w.why);
            size_t expect = 0;
            for (int k = 0; k < MODEL_N; k++) expect += m.in[k] && class_lb(m.rec[k].size) >= class_lb(from);
            assert_int_equal(w.n, expect);
            /* The bitmaps say exactly which lists are non-empty. */
            for (unsigned f = 0; f < TLSF_FL_COUNT; f++) {
                uint32_t sl = 0;
                for (unsigned s = 0; s < TLSF_SL_COUNT; s++) sl |= (t.heads[f][s] != NULL) << s;
                assert_int_equal(t.sl_bitmap[f], sl);
                assert_int_equal(!!(t.fl_bitmap & ((uint64_t)1 << f)), sl != 0);
            }
        }
    }
    free(m.rec);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),
        cmocka_unit_test(test_class_boundaries),
        cmocka_unit_test(test_bitmaps_follow_lists),
        cmocka_unit_test(test_list_links),
        cmocka_unit_test(test_contains),
        cmocka_unit_test(test_find_good_fit),
        cmocka_unit_test(test_find_scan_limit),
        cmocka_unit_test(test_walk_order),
        cmocka_unit_test(test_insert_contract),
        cmocka_unit_test(test_random_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
