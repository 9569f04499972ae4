/*
 * test_sparse.c — gpu_reserve / gpu_commit / gpu_decommit / gpu_release on the
 * host backend, where the bytes can be read back directly.
 *
 * The rules checked: data in committed ranges survives commits and decommits
 * elsewhere, also when a decommit cuts inside an earlier commit; committing a
 * partly committed range commits the rest; decommitting an uncommitted range is a
 * no-op; bad ranges and pointers are refused and change nothing; a commit the
 * backend cannot back fails and leaves what was committed intact; protection works
 * on whole commits; and a growing array commits in place without a byte copied.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"
#include "util.h"

/* A test heap on the host backend: 64 GiB of VA, 2 MiB granularity, the given budget. */
static gpu_heap_t *open_heap(size_t budget) {
    gpu_config_t cfg = host_config(64 * GiB, 0, budget);
    return HEAP_CREATE(&cfg);
}


/* A byte that depends on the offset, so moved or lost data shows. */
static inline unsigned char pat(size_t off, unsigned seed) { return (unsigned char)((off >> 12) * 31 + seed); }

static void fill(char *base, size_t lo, size_t hi, unsigned seed) {
    for (size_t o = lo; o < hi; o += 4096) memset(base + o, pat(o, seed), 4096);
}

static void expect(const char *base, size_t lo, size_t hi, unsigned seed) {
    for (size_t o = lo; o < hi; o += 4096)
        if ((unsigned char)base[o] != pat(o, seed) || (unsigned char)base[o + 4095] != pat(o, seed))
            fail_msg("byte at offset %zu lost (%#x, expected %#x)", o, (unsigned char)base[o], pat(o, seed));
}

/* True when writing one byte at p kills a child with SIGSEGV. */
static bool write_faults(volatile char *p) {
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* cmocka catches it in the parent's tests */
        *p = 1;
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

static void test_commit_decommit_keeps_data(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    char *r = gpu_heap_reserve(h, 1ull << 30);
    assert_non_null(r);
    assert_int_equal((uintptr_t)r % (2 * MiB), 0);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.sparse_reserved_bytes, 1ull << 30);
    assert_int_equal(s.sparse_committed_bytes, 0);
    assert_int_equal(s.mapped_bytes, 0);

    assert_int_equal(gpu_heap_commit(h, r, 8 * MiB), GPU_OK);
    fill(r, 0, 8 * MiB, 1);
    assert_int_equal(gpu_heap_commit(h, r + 4 * MiB, 12 * MiB), GPU_OK); /* partly committed: commits the rest */
    CHECK_HEAP(h);
    expect(r, 0, 8 * MiB, 1);
    fill(r, 8 * MiB, 16 * MiB, 2);
    assert_int_equal(STATS(h).sparse_committed_bytes, 16 * MiB);

    /* Cut out the middle of the first commit: both sides survive. */
    assert_int_equal(gpu_heap_decommit(h, r + 2 * MiB, 4 * MiB), GPU_OK);
    CHECK_HEAP(h);
    expect(r, 0, 2 * MiB, 1);
    expect(r, 6 * MiB, 8 * MiB, 1);
    expect(r, 8 * MiB, 16 * MiB, 2);
    assert_int_equal(STATS(h).sparse_committed_bytes, 12 * MiB);
    assert_true(write_faults(r + 3 * MiB)); /* the hole is really gone */

    /* Decommitting an uncommitted range does nothing. */
    assert_int_equal(gpu_heap_decommit(h, r + 64 * MiB, 8 * MiB), GPU_OK);
    assert_int_equal(STATS(h).sparse_committed_bytes, 12 * MiB);

    /* Commit the hole again: new memory there, the rest untouched. */
    assert_int_equal(gpu_heap_commit(h, r, 16 * MiB), GPU_OK);
    expect(r, 0, 2 * MiB, 1);
    expect(r, 6 * MiB, 8 * MiB, 1);
    expect(r, 8 * MiB, 16 * MiB, 2);
    CHECK_HEAP(h);

    assert_int_equal(gpu_heap_release(h, r), GPU_OK);
    s = STATS(h);
    assert_int_equal(s.sparse_reserved_bytes, 0);
    assert_int_equal(s.sparse_committed_bytes, 0);
    assert_int_equal(s.mapped_bytes, 0);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

/* A decommit's fence (and a release's) covers every block freed before it: the
 * quarantine becomes idle there and then, with no fence of its own. */
static void test_decommit_fence_releases_quarantine(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    cfg.thread_cache = 0; /* the block goes to the heap's quarantine, not to this thread's cache */
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    char *r = gpu_heap_reserve(h, 64 * MiB);
    assert_non_null(r);
    assert_int_equal(gpu_heap_commit(h, r, 8 * MiB), GPU_OK);
    void *b = gpu_heap_malloc(h, 16 * MiB);
    assert_non_null(b);
    assert_int_equal(gpu_heap_free(h, b), GPU_OK);
    gpu_stats_t before = STATS(h);
    assert_true(before.quarantine_bytes >= 16 * MiB);
    assert_int_equal(gpu_heap_decommit(h, r, 4 * MiB), GPU_OK);
    gpu_stats_t after = STATS(h);
    assert_int_equal(after.fences, before.fences + 1);
    assert_int_equal(after.quarantine_bytes, 0);
    assert_true(after.idle_bytes >= before.idle_bytes + 16 * MiB);

    b = gpu_heap_malloc(h, 16 * MiB);
    assert_non_null(b);
    assert_int_equal(gpu_heap_free(h, b), GPU_OK);
    assert_true(STATS(h).quarantine_bytes >= 16 * MiB);
    assert_int_equal(gpu_heap_release(h, r), GPU_OK);
    assert_int_equal(STATS(h).quarantine_bytes, 0);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

static void test_bad_input(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    char *r = gpu_heap_reserve(h, 64 * MiB);
    assert_int_equal(gpu_heap_commit(h, r, 4 * MiB), GPU_OK);
    fill(r, 0, 4 * MiB, 7);
    char *blk = gpu_heap_malloc(h, 4096);
    int local;
    assert_int_equal(gpu_heap_commit(h, r + 4096, 2 * MiB), GPU_ERR_INVALID);      /* unaligned start */
    assert_int_equal(gpu_heap_commit(h, r, 3 * MiB), GPU_ERR_INVALID);             /* unaligned length */
    assert_int_equal(gpu_heap_commit(h, r, 0), GPU_ERR_INVALID);                   /* empty */
    assert_int_equal(gpu_heap_commit(h, r + 62 * MiB, 4 * MiB), GPU_ERR_INVALID);  /* past the end */
    assert_int_equal(gpu_heap_commit(h, blk, 2 * MiB), GPU_ERR_NOT_RESERVATION);   /* a block, not a reservation */
    assert_int_equal(gpu_heap_commit(h, &local, 2 * MiB), GPU_ERR_NOT_OWNED);     /* foreign */
    assert_int_equal(gpu_heap_release(h, blk), GPU_ERR_NOT_RESERVATION);
    assert_int_equal(gpu_heap_release(h, r + 2 * MiB), GPU_ERR_NOT_RESERVATION);   /* interior */
    assert_int_equal(gpu_heap_free(h, r), GPU_ERR_INVALID);                        /* not with gpu_free */
    assert_int_equal(gpu_heap_commit(h, NULL, 2 * MiB), GPU_ERR_NOT_RESERVATION);
    assert_null(gpu_heap_reserve(h, SIZE_MAX));
    assert_int_equal(gpu_last_error(), GPU_ERR_INVALID);
    expect(r, 0, 4 * MiB, 7); /* nothing changed */
    assert_int_equal(STATS(h).sparse_committed_bytes, 4 * MiB);
    CHECK_HEAP(h);
    assert_int_equal(gpu_heap_release(h, r), GPU_OK);
    assert_int_equal(gpu_heap_release(h, r), GPU_ERR_NOT_RESERVATION);            /* twice */
    assert_int_equal(gpu_heap_free(h, blk), GPU_OK);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

static void test_out_of_memory_keeps_commits(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(32 * MiB);
    char *r = gpu_heap_reserve(h, 1ull << 30);
    assert_int_equal(gpu_heap_commit(h, r, 16 * MiB), GPU_OK);
    fill(r, 0, 16 * MiB, 3);
    /* Two gaps: the first fits the budget, the second does not; the call takes both back. */
    assert_int_equal(gpu_heap_commit(h, r + 32 * MiB, 8 * MiB), GPU_OK);
    assert_int_equal(gpu_heap_decommit(h, r + 32 * MiB, 8 * MiB), GPU_OK);
    assert_int_equal(gpu_heap_commit(h, r, 64 * MiB), GPU_ERR_OUT_OF_MEMORY);
    CHECK_HEAP(h);
    assert_int_equal(STATS(h).sparse_committed_bytes, 16 * MiB);
    expect(r, 0, 16 * MiB, 3);
    assert_int_equal(gpu_heap_commit(h, r + 16 * MiB, 8 * MiB), GPU_OK); /* what fits still works */
    assert_int_equal(gpu_heap_release(h, r), GPU_OK);
    gpu_heap_destroy(h);
}

static void test_protect_committed_range(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    char *r = gpu_heap_reserve(h, 64 * MiB);
    assert_int_equal(gpu_heap_commit(h, r + 8 * MiB, 4 * MiB), GPU_OK);
    fill(r, 8 * MiB, 12 * MiB, 5);
    assert_int_equal(gpu_heap_protect(h, r + 8 * MiB, 4 * MiB, GPU_PROT_READ), GPU_OK);
    assert_true(write_faults(r + 9 * MiB));
    expect(r, 8 * MiB, 12 * MiB, 5); /* still readable */
    assert_int_equal(gpu_heap_protect(h, r, 4 * MiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT);     /* not committed */
    assert_int_equal(gpu_heap_protect(h, r + 8 * MiB, 8 * MiB, GPU_PROT_READ), GPU_ERR_NOT_WHOLE_EXTENT); /* runs into a gap */
    CHECK_HEAP(h);
    assert_int_equal(gpu_heap_protect(h, r + 8 * MiB, 4 * MiB, GPU_PROT_READ_WRITE), GPU_OK);
    assert_false(write_faults(r + 9 * MiB));
    assert_int_equal(gpu_heap_release(h, r), GPU_OK);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

/* The growable-array pattern: commit in place as it doubles; the pointer never
 * changes and the backend never copies a byte. */
static void test_growable_array_commits_in_place(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    const size_t cap = 1ull << 30;
    char *a = gpu_heap_reserve(h, cap);
    size_t have = 0;
    for (size_t want = 2 * MiB; want <= 256 * MiB; want *= 2) {
        assert_int_equal(gpu_heap_commit(h, a + have, want - have), GPU_OK);
        memset(a + want - 4096, (int)(want >> 20), 4096);
        have = want;
    }
    for (size_t want = 2 * MiB; want <= 256 * MiB; want *= 2)
        assert_int_equal((unsigned char)a[want - 1], (unsigned char)(want >> 20));
    assert_int_equal(h->door.counts.calls[VMM_OP_COPY], 0);
    assert_int_equal(STATS(h).sparse_committed_bytes, 256 * MiB);
    CHECK_HEAP(h);
    assert_int_equal(gpu_heap_release(h, a), GPU_OK);
    gpu_heap_destroy(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_decommit_keeps_data),
        cmocka_unit_test(test_decommit_fence_releases_quarantine),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_out_of_memory_keeps_commits),
        cmocka_unit_test(test_protect_committed_range),
        cmocka_unit_test(test_growable_array_commits_in_place),
    };
    return cmocka_run_group_tests_name("sparse", tests, NULL, NULL);
}
