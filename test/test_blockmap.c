/*
 * test_blockmap.c — the live-block map (lib/blockmap.c) on its own, white-box.
 *
 * gpu_free(ptr) finds its block record through this map, keyed by block start;
 * an interior pointer or a freed block must find nothing. The map is an open-
 * addressing table with linear probing and backward-shift deletion, so a removal
 * leaves no deleted marker behind: the slot is emptied and later entries of the
 * probe run move up. Records are built by hand in test memory. Colliding keys are
 * found by watching where the table itself puts them (no copy of its hash), and
 * the tests check the exact slots before and after removals, wrap-around at the
 * table's end, growth through blockmap_reserve, 200,000 keys against a model, and
 * that a broken contract (no room reserved, a key of 0 or 1, removing a key that
 * is not there) stops the process.
 */
#include <signal.h>
#include <stdlib.h>

#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"
#include "records.h"

#define BASE ((uintptr_t)0x7f0000000000)
#define INIT_CAP 1024 /* BLOCKMAP_MIN_CAP in blockmap.c */

/* The slot that holds key, or SIZE_MAX. */
static size_t slot_holding(const blockmap *m, uintptr_t key) {
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] == key) return i;
    return SIZE_MAX;
}

/* No slot holds a deleted marker (1), every value sits with a key, and the
 * counts match the keys present. */
static void map_sound(const blockmap *m) {
    size_t n = 0;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == 1) fail_msg("slot %zu holds a deleted marker", i);
        if (!m->keys[i] && m->vals[i]) fail_msg("empty slot %zu holds a value", i);
        if (m->keys[i]) {
            n++;
            if (!m->vals[i] || m->vals[i]->start != m->keys[i]) fail_msg("slot %zu: key and record disagree", i);
        }
    }
    assert_int_equal(m->used, n);
    assert_int_equal(m->live, n);
}

/* The slot an empty table of INIT_CAP slots puts key in: its home. */
static size_t home_of(uintptr_t key) {
    static blockmap scratch;
    static block r;
    if (!scratch.keys) assert_int_equal(blockmap_init(&scratch), GPU_OK);
    assert_int_equal(scratch.cap, INIT_CAP);
    blockmap_insert(&scratch, rec(&r, key, GH_QUANTUM));
    size_t i = slot_holding(&scratch, key);
    blockmap_remove(&scratch, key);
    return i;
}

/* Keys 256 bytes apart from start on: the first n whose home is `home`. */
static void keys_with_home(size_t home, uintptr_t start, uintptr_t *out, size_t n) {
    size_t got = 0;
    for (uintptr_t k = start; got < n; k += GH_QUANTUM) {
        assert_true(k - start < ((uintptr_t)1 << 40)); /* found long before */
        if (home_of(k) == home) out[got++] = k;
    }
}

/* ---- basics -------------------------------------------------------------------------- */

static void test_init_free(void **state) {
    (void)state;
    blockmap m;
    memset(&m, 0xa5, sizeof m);
    assert_int_equal(blockmap_init(&m), GPU_OK);
    assert_int_equal(m.cap, INIT_CAP);
    assert_int_equal(m.used, 0);
    assert_int_equal(m.live, 0);
    for (size_t i = 0; i < m.cap; i++) {
        assert_int_equal(m.keys[i], 0);
        assert_null(m.vals[i]);
    }
    assert_null(blockmap_find(&m, BASE));
    assert_null(blockmap_find(&m, 0)); /* the empty key is no block */
    assert_null(blockmap_find(&m, 1));
    blockmap_free(&m);
    assert_null(m.keys);
    assert_null(m.vals);
    assert_int_equal(m.cap, 0);
    assert_int_equal(m.used, 0);
    assert_int_equal(m.live, 0);
}

static void test_insert_find_remove(void **state) {
    (void)state;
    blockmap m;
    assert_int_equal(blockmap_init(&m), GPU_OK);
    block *b = records(3);
    rec(&b[0], BASE, 4 * KiB);
    rec(&b[1], BASE + 4 * KiB, 2 * MiB);
    rec(&b[2], BASE + 64 * MiB, 256);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(blockmap_reserve(&m, 1), GPU_OK);
        blockmap_insert(&m, &b[i]);
    }
    assert_int_equal(m.used, 3);
    assert_int_equal(m.live, 3);
    map_sound(&m);
    for (int i = 0; i < 3; i++) assert_ptr_equal(blockmap_find(&m, b[i].start), &b[i]);

    /* Only starts are keys: interior and nearby addresses find nothing. */
    uintptr_t near[] = {BASE + 256, BASE + 1, BASE - 256, BASE + 4 * KiB - 256, BASE + 4 * KiB + 256,
                        BASE + 4 * KiB + 2 * MiB - 256, BASE + 4 * KiB + MiB, BASE + 64 * MiB + 128};
    for (size_t i = 0; i < sizeof near / sizeof near[0]; i++)
        if (blockmap_find(&m, near[i])) fail_msg("interior or nearby address %#lx found a block", (unsigned long)near[i]);

    blockmap_remove(&m, b[1].start);
    assert_null(blockmap_find(&m, b[1].start));
    assert_ptr_equal(blockmap_find(&m, b[0].start), &b[0]);
    assert_ptr_equal(blockmap_find(&m, b[2].start), &b[2]);
    assert_int_equal(m.used, 2); /* no deleted marker counts as used */
    assert_int_equal(m.live, 2);
    assert_int_equal(slot_holding(&m, b[1].start), SIZE_MAX);
    map_sound(&m);

    /* A start can come back with another record (a block freed, another allocated there). */
    block *again = records(1);
    rec(again, b[1].start, 8 * KiB);
    assert_int_equal(blockmap_reserve(&m, 1), GPU_OK);
    blockmap_insert(&m, again);
    assert_ptr_equal(blockmap_find(&m, b[1].start), again);
    blockmap_remove(&m, b[0].start);
    blockmap_remove(&m, b[2].start);
    blockmap_remove(&m, again->start);
    assert_int_equal(m.used, 0);
    map_sound(&m);
    blockmap_free(&m);
    free(again);
    free(b);
}

/* ---- probe runs and removal by backward shift ------------------------------------------ */

/* A, B share a home H; X's home is H+1. Inserted A, B, X they sit at H, H+1, H+2.
 * Removing B pulls X back to its home H+1 (the hole is at or after X's home);
 * removing A then leaves X where it is (its home is after the hole) and empties H. */
static void test_backward_shift(void **state) {
    (void)state;
    uintptr_t ab[2], x;
    size_t h = home_of(BASE);
    keys_with_home(h, BASE, ab, 2);
    if (h + 2 >= INIT_CAP) fail_msg("home %zu too near the end for this case", h);
    keys_with_home(h + 1, BASE, &x, 1);

    blockmap m;
    assert_int_equal(blockmap_init(&m), GPU_OK);
    block *b = records(3);
    blockmap_insert(&m, rec(&b[0], ab[0], GH_QUANTUM));
    blockmap_insert(&m, rec(&b[1], ab[1], GH_QUANTUM));
    blockmap_insert(&m, rec(&b[2], x, GH_QUANTUM));
    assert_int_equal(slot_holding(&m, ab[0]), h);
    assert_int_equal(slot_holding(&m, ab[1]), h + 1);
    assert_int_equal(slot_holding(&m, x), h + 2);
    for (int i = 0; i < 3; i++) assert_ptr_equal(blockmap_find(&m, b[i].start), &b[i]);

    blockmap_remove(&m, ab[1]);
    assert_int_equal(m.keys[h], ab[0]);
    assert_int_equal(m.keys[h + 1], x); /* moved back home */
    assert_int_equal(m.keys[h + 2], 0);
    assert_null(m.vals[h + 2]);
    assert_ptr_equal(blockmap_find(&m, x), &b[2]);
    assert_null(blockmap_find(&m, ab[1]));
    map_sound(&m);

    blockmap_remove(&m, ab[0]);
    assert_int_equal(m.keys[h], 0);
    assert_int_equal(m.keys[h + 1], x); /* stays: its home is after the hole */
    assert_ptr_equal(blockmap_find(&m, x), &b[2]);
    assert_null(blockmap_find(&m, ab[0]));
    map_sound(&m);

    /* A run of three at one home: removing the first moves both up by one. */
    uintptr_t three[3];
    keys_with_home(h, BASE + GiB, three, 3);
    blockmap_remove(&m, x);
    block *c = records(3);
    for (int i = 0; i < 3; i++) blockmap_insert(&m, rec(&c[i], three[i], GH_QUANTUM));
    blockmap_remove(&m, three[0]);
    assert_int_equal(m.keys[h], three[1]);
    assert_int_equal(m.keys[h + 1], three[2]);
    assert_int_equal(m.keys[h + 2], 0);
    assert_ptr_equal(blockmap_find(&m, three[2]), &c[2]);
    map_sound(&m);
    blockmap_free(&m);
    free(b);
    free(c);
}

/* A run that passes the table's last slot goes on at slot 0, and a removal there
 * shifts across the end too. */
static void test_wrap_around(void **state) {
    (void)state;
    uintptr_t ab[2], c;
    keys_with_home(INIT_CAP - 1, BASE, ab, 2);
    keys_with_home(0, BASE, &c, 1);
    blockmap m;
    assert_int_equal(blockmap_init(&m), GPU_OK);
    block *b = records(3);
    blockmap_insert(&m, rec(&b[0], ab[0], GH_QUANTUM));
    blockmap_insert(&m, rec(&b[1], ab[1], GH_QUANTUM));
    blockmap_insert(&m, rec(&b[2], c, GH_QUANTUM));
    assert_int_equal(slot_holding(&m, ab[0]), INIT_CAP - 1);
    assert_int_equal(slot_holding(&m, ab[1]), 0);
    assert_int_equal(slot_holding(&m, c), 1);
    assert_ptr_equal(blockmap_find(&m, c), &b[2]);
    assert_null(blockmap_find(&m, c + GH_QUANTUM));

    blockmap_remove(&m, ab[0]);
    assert_int_equal(m.keys[INIT_CAP - 1], ab[1]); /* back across the end */
    assert_int_equal(m.keys[0], c);
    assert_int_equal(m.keys[1], 0);
    assert_ptr_equal(blockmap_find(&m, ab[1]), &b[1]);
    assert_ptr_equal(blockmap_find(&m, c), &b[2]);
    assert_null(blockmap_find(&m, ab[0]));
    map_sound(&m);
    blockmap_free(&m);
    free(b);
}

/* ---- growth ---------------------------------------------------------------------------- */

/* The load stays at most one half: reserve(n) doubles the table until used + n
 * keys fit that, and keeps every key. */
static void test_growth_via_reserve(void **state) {
    (void)state;
    blockmap m;
    assert_int_equal(blockmap_init(&m), GPU_OK);
    block *b = records(600);
    for (size_t i = 0; i < 512; i++) {
        assert_int_equal(blockmap_reserve(&m, 1), GPU_OK);
        blockmap_insert(&m, rec(&b[i], BASE + i * 512, 256));
    }
    assert_int_equal(m.cap, INIT_CAP); /* 512 keys: exactly half */
    assert_int_equal(blockmap_reserve(&m, 0), GPU_OK);
    assert_int_equal(m.cap, INIT_CAP);
    assert_int_equal(blockmap_reserve(&m, 1), GPU_OK); /* 513 would pass half */
    assert_int_equal(m.cap, 2 * INIT_CAP);
    assert_int_equal(m.used, 512);
    assert_int_equal(m.live, 512);
    map_sound(&m);
    for (size_t i = 0; i < 512; i++) assert_ptr_equal(blockmap_find(&m, b[i].start), &b[i]);
    blockmap_insert(&m, rec(&b[512], BASE + 512 * 512, 256));
    assert_int_equal(blockmap_reserve(&m, 5000), GPU_OK); /* (513 + 5000) * 2 = 11026: 16384 slots */
    assert_int_equal(m.cap, 16 * INIT_CAP);
    for (size_t i = 0; i <= 512; i++) assert_ptr_equal(blockmap_find(&m, b[i].start), &b[i]);
    /* Removing does not shrink it. */
    for (size_t i = 0; i <= 512; i++) blockmap_remove(&m, b[i].start);
    assert_int_equal(m.cap, 16 * INIT_CAP);
    assert_int_equal(m.used, 0);
    map_sound(&m);
    blockmap_free(&m);
    free(b);
}

/* ---- many keys, against a model ----------------------------------------------------------- */

#define MANY 200000

static void test_many_keys(void **state) {
    (void)state;
    blockmap m;
    assert_int_equal(blockmap_init(&m), GPU_OK);
    block *b = records(MANY);
    bool *in = calloc(MANY, sizeof *in);
    assert_non_null(in);
    /* Keys 512 bytes apart in two distant areas, so key + 256 is never a key. */
    for (size_t i = 0; i < MANY; i++) rec(&b[i], (i & 1 ? BASE + 16 * GiB : BASE) + (i >> 1) * 512, 256);
    rng r = rng_seeded(77);
    /* Insert in a shuffled order. */
    size_t *order = malloc(MANY * sizeof *order);
    assert_non_null(order);
    for (size_t i = 0; i < MANY; i++) order[i] = i;
    for (size_t i = MANY - 1; i > 0; i--) {
        size_t j = (size_t)rng_below(&r, i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t k = 0; k < MANY; k++) {
        assert_int_equal(blockmap_reserve(&m, 1), GPU_OK);
        blockmap_insert(&m, &b[order[k]]);
        in[order[k]] = true;
    }
    assert_int_equal(m.live, MANY);
    assert_true(m.cap >= 2 * MANY && m.cap < 4 * MANY + 2 * INIT_CAP);
    for (size_t i = 0; i < MANY; i++) {
        if (blockmap_find(&m, b[i].start) != &b[i]) fail_msg("key %zu not found after inserting all", i);
        if (blockmap_find(&m, b[i].start + 256)) fail_msg("interior address of key %zu found a block", i);
    }
    /* Random removals and re-inserts, checked against the model. */
    for (int op = 0; op < 300000; op++) {
        size_t i = (size_t)rng_below(&r, MANY);
        if (in[i]) {
            blockmap_remove(&m, b[i].start);
            in[i] = false;
        } else {
            assert_int_equal(blockmap_reserve(&m, 1), GPU_OK);
            blockmap_insert(&m, &b[i]);
            in[i] = true;
        }
        size_t j = (size_t)rng_below(&r, MANY);
        if (blockmap_find(&m, b[j].start) != (in[j] ? &b[j] : NULL))
            fail_msg("op %d: key %zu (%s) looked up wrong", op, j, in[j] ? "present" : "removed");
    }
    size_t live = 0;
    for (size_t i = 0; i < MANY; i++) {
        live += in[i];
        if (blockmap_find(&m, b[i].start) != (in[i] ? &b[i] : NULL)) fail_msg("key %zu looked up wrong at the end", i);
    }
    assert_int_equal(m.live, live);
    map_sound(&m);
    blockmap_free(&m);
    free(order);
    free(in);
    free(b);
}

/* ---- contract violations stop the process ------------------------------------------------ */

enum { INSERT_NO_ROOM, INSERT_ZERO, INSERT_ONE, REMOVE_ABSENT, NO_VIOLATION };

static int violate(void *arg) {
    if (!freopen("/dev/null", "w", stderr)) return 2; /* the invariant's message is expected */
    signal(SIGABRT, SIG_DFL);
    int what = *(int *)arg;
    blockmap m;
    if (blockmap_init(&m) != GPU_OK) return 3;
    block *b = records(INIT_CAP);
    for (size_t i = 0; i < INIT_CAP / 2; i++) blockmap_insert(&m, rec(&b[i], BASE + i * 256, 256)); /* half: no room left */
    switch (what) {
    case INSERT_NO_ROOM: blockmap_insert(&m, rec(&b[INIT_CAP / 2], BASE + GiB, 256)); break;
    case INSERT_ZERO: blockmap_remove(&m, BASE), blockmap_insert(&m, rec(&b[INIT_CAP / 2], 0, 256)); break;
    case INSERT_ONE: blockmap_remove(&m, BASE), blockmap_insert(&m, rec(&b[INIT_CAP / 2], 1, 256)); break;
    case REMOVE_ABSENT: blockmap_remove(&m, BASE + GiB); break;
    case NO_VIOLATION: blockmap_remove(&m, BASE), blockmap_insert(&m, rec(&b[INIT_CAP / 2], BASE + GiB, 256)); break;
    }
    return 0;
}

static void test_contract(void **state) {
    (void)state;
    int ok = NO_VIOLATION;
    assert_true(exited_ok(run_in_child(violate, &ok)));
    static const char *names[] = {"insert without reserved room", "insert key 0", "insert key 1", "remove an absent key"};
    for (int what = INSERT_NO_ROOM; what < NO_VIOLATION; what++) {
        int st = run_in_child(violate, &what);
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT))
            fail_msg("%s: child status %#x, expected an abort", names[what], st);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_free),
        cmocka_unit_test(test_insert_find_remove),
        cmocka_unit_test(test_backward_shift),
        cmocka_unit_test(test_wrap_around),
        cmocka_unit_test(test_growth_via_reserve),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
