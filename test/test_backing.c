/*
 * test_backing.c — the give-back door's one policy (lib/core/backing.c), on the
 * host backend behind the fault wrapper.
 *
 * When the driver refuses to release a handle it has just unmapped, the handle is
 * mapped back and the extent kept — idle after a trim, committed after a decommit,
 * idle heap memory after a reservation's release — with its bytes intact. When it
 * then refuses to map it back too, the extent is forgotten and counted in
 * extents_lost. Either way the heap's books stay sound and agree with what the
 * backend holds (a lost handle is the one thing the backend holds beyond them).
 */
#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

#define G (64 * KiB) /* the test heap's granularity */

typedef struct fheap {
    vmm_fault_report rep;
    vmm_backend *inner, *outer;
    gpu_heap_t *h;
    bool armed; /* refuse_after_unmap's one shot */
} fheap;

static fheap *fheap_open(void) {
    fheap *f = calloc(1, sizeof *f);
    assert_non_null(f);
    gpu_config_t cfg = host_config(1 * GiB, G, 0);
    cfg.verbose = 0;
    assert_int_equal(vmm_host_open(&cfg, &f->inner), GPU_OK);
    assert_int_equal(vmm_fault_open(f->inner, &f->rep, &f->outer), GPU_OK);
    assert_int_equal(gh_heap_create_on(&cfg, f->outer, &f->h), GPU_OK);
    return f;
}

static void fheap_close(fheap *f) {
    vmm_fault_hook(f->outer, NULL, NULL);
    vmm_fault_arm(f->outer, 0, false, 0);
    HEAP_DESTROY(f->h);
    free(f);
}

static gpu_stats_t fstats(fheap *f) {
    gpu_stats_t s;
    assert_int_equal(gpu_heap_stats(f->h, &s), GPU_OK);
    return s;
}

/* The heap checks, and the backend holds one mapping per extent and, beyond the
 * extents' handles, exactly `lost` handles. */
static void agree_at(fheap *f, size_t lost, const char *file, int line) {
    heap_check_at(f->h, file, line);
    gpu_stats_t s = fstats(f);
    vmm_host_counts c;
    vmm_host_counts_get(f->inner, &c);
    if (c.mappings != s.extents || c.handles != s.extents + lost || s.extents_lost != lost)
        fail_at(file, line, "backend: %zu mappings, %zu handles; heap: %llu extents, %llu lost (expected %zu)", c.mappings,
                c.handles, (unsigned long long)s.extents, (unsigned long long)s.extents_lost, lost);
}
#define AGREE(f, lost) agree_at((f), (lost), __FILE__, __LINE__)

/* A hook that, at the first unmap, makes every later call fail: the release after
 * it, and both tries to map the handle back. The test disarms after its call. */
static void refuse_after_unmap(int op, void *arg) {
    fheap *f = arg;
    if (op != VMM_OP_UNMAP || f->armed) return;
    f->armed = true;
    vmm_fault_arm(f->outer, 1, true, GPU_ERR_BACKEND);
}

static void disarm(fheap *f) {
    vmm_fault_hook(f->outer, NULL, NULL);
    vmm_fault_arm(f->outer, 0, false, 0);
}

/* An idle extent of 2 granules holding pattern seed, the quarantine drained. */
static char *idle_extent(fheap *f, uint64_t seed) {
    char *p = gpu_heap_malloc(f->h, 2 * G);
    BLOCK_VALID(f->h, p, 2 * G);
    pattern_fill(p, 0, 2 * G, seed);
    ASSERT_OK(gpu_heap_free(f->h, p));
    ASSERT_OK(gpu_heap_trim(f->h, SIZE_MAX)); /* a fence: the block is idle, nothing given back */
    assert_int_equal(fstats(f).idle_bytes, 2 * G);
    return p;
}

static void test_trim_release_refused_keeps_idle(void **state) {
    (void)state;
    fheap *f = fheap_open();
    char *p = idle_extent(f, 1);
    vmm_fault_arm_op(f->outer, VMM_OP_RELEASE, 1, GPU_ERR_BACKEND);
    ASSERT_ERROR(gpu_heap_trim(f->h, 0), GPU_ERR_BACKEND);
    assert_int_equal(f->rep.injected, 1);
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.mapped_bytes, 2 * G);
    assert_int_equal(s.idle_bytes, 2 * G);
    assert_int_equal(s.extents, 1);
    AGREE(f, 0);
    PATTERN_CHECK(p, 0, 2 * G, 1); /* mapped back: the same handle, the same bytes */
    char *q = gpu_heap_malloc(f->h, 2 * G); /* idle memory serves again, mapped and writable */
    assert_ptr_equal(q, p);
    pattern_fill(q, 0, 2 * G, 2);
    PATTERN_CHECK(q, 0, 2 * G, 2);
    ASSERT_OK(gpu_heap_free(f->h, q));
    ASSERT_OK(gpu_heap_trim(f->h, 0)); /* the later trim gives it back */
    assert_int_equal(fstats(f).mapped_bytes, 0);
    AGREE(f, 0);
    fheap_close(f);
}

static void test_trim_release_and_remap_refused_loses(void **state) {
    (void)state;
    fheap *f = fheap_open();
    (void)idle_extent(f, 3);
    vmm_fault_hook(f->outer, refuse_after_unmap, f);
    ASSERT_ERROR(gpu_heap_trim(f->h, 0), GPU_ERR_BACKEND);
    disarm(f);
    assert_true(f->rep.injected >= 2); /* the release and the map back */
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.mapped_bytes, 0);
    assert_int_equal(s.idle_bytes, 0);
    assert_int_equal(s.extents, 0);
    assert_int_equal(s.extents_lost, 1);
    AGREE(f, 1); /* the handle leaks in the backend, and only there */
    char *q = gpu_heap_malloc(f->h, 2 * G); /* its addresses are vacant and can be backed anew */
    BLOCK_VALID(f->h, q, 2 * G);
    pattern_fill(q, 0, 2 * G, 4);
    PATTERN_CHECK(q, 0, 2 * G, 4);
    ASSERT_OK(gpu_heap_free(f->h, q));
    ASSERT_OK(gpu_heap_trim(f->h, 0));
    AGREE(f, 1);
    fheap_close(f);
}

/* A reservation of n granules, committed as the given pieces (granule counts),
 * each piece patterned with seed + its first granule. */
static char *reserve_committed(fheap *f, size_t n, const int *pieces, int npieces, uint64_t seed) {
    char *r = gpu_heap_reserve(f->h, n * G);
    assert_non_null(r);
    size_t at = 0;
    for (int i = 0; i < npieces; i++) {
        ASSERT_OK(gpu_heap_commit(f->h, r + at * G, (size_t)pieces[i] * G));
        at += (size_t)pieces[i];
    }
    pattern_fill(r, 0, at * G, seed);
    return r;
}

static void test_decommit_release_refused_keeps_committed(void **state) {
    (void)state;
    fheap *f = fheap_open();
    static const int one[] = {4};
    char *r = reserve_committed(f, 4, one, 1, 5);
    vmm_fault_arm_op(f->outer, VMM_OP_RELEASE, 1, GPU_ERR_BACKEND);
    ASSERT_ERROR(gpu_heap_decommit(f->h, r, 4 * G), GPU_ERR_BACKEND); /* nothing went: nothing changed */
    assert_int_equal(fstats(f).sparse_committed_bytes, 4 * G);
    AGREE(f, 0);
    PATTERN_CHECK(r, 0, 4 * G, 5);
    ASSERT_OK(gpu_heap_decommit(f->h, r, 4 * G));
    assert_int_equal(fstats(f).mapped_bytes, 0);
    ASSERT_OK(gpu_heap_release(f->h, r));
    AGREE(f, 0);
    fheap_close(f);
}

static void test_decommit_some_kept(void **state) {
    (void)state;
    fheap *f = fheap_open();
    static const int two[] = {2, 2};
    char *r = reserve_committed(f, 4, two, 2, 6);
    vmm_fault_arm_op(f->outer, VMM_OP_RELEASE, 2, GPU_ERR_BACKEND); /* the second extent's release */
    ASSERT_OK(gpu_heap_decommit(f->h, r, 4 * G)); /* the first went; the second stays committed */
    assert_int_equal(f->rep.injected, 1);
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.sparse_committed_bytes, 2 * G);
    assert_int_equal(s.extents, 1);
    AGREE(f, 0);
    PATTERN_CHECK(r, 2 * G, 2 * G, 6); /* patterned from r */
    ASSERT_OK(gpu_heap_release(f->h, r));
    assert_int_equal(fstats(f).mapped_bytes, 0);
    AGREE(f, 0);
    fheap_close(f);
}

static void test_decommit_release_and_remap_refused_loses(void **state) {
    (void)state;
    fheap *f = fheap_open();
    static const int one[] = {2};
    char *r = reserve_committed(f, 2, one, 1, 7);
    vmm_fault_hook(f->outer, refuse_after_unmap, f);
    ASSERT_OK(gpu_heap_decommit(f->h, r, 2 * G)); /* the extent is gone from the range, if not from the driver */
    disarm(f);
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.sparse_committed_bytes, 0);
    assert_int_equal(s.extents, 0);
    assert_int_equal(s.extents_lost, 1);
    AGREE(f, 1);
    ASSERT_OK(gpu_heap_commit(f->h, r, 2 * G)); /* committed anew */
    pattern_fill(r, 0, 2 * G, 8);
    PATTERN_CHECK(r, 0, 2 * G, 8);
    ASSERT_OK(gpu_heap_release(f->h, r));
    AGREE(f, 1);
    fheap_close(f);
}

static void test_release_kept_extent_becomes_idle(void **state) {
    (void)state;
    fheap *f = fheap_open();
    static const int two[] = {2, 2};
    char *r = reserve_committed(f, 6, two, 2, 9);
    ASSERT_OK(gpu_heap_protect(f->h, r + 2 * G, 2 * G, GPU_PROT_READ)); /* kept memory comes back read-write */
    assert_int_equal(fstats(f).protected_extents, 1);
    vmm_fault_arm_op(f->outer, VMM_OP_RELEASE, 2, GPU_ERR_BACKEND);
    ASSERT_OK(gpu_heap_release(f->h, r));
    assert_int_equal(f->rep.injected, 1);
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.sparse_reserved_bytes, 0);
    assert_int_equal(s.sparse_committed_bytes, 0);
    assert_int_equal(s.mapped_bytes, 2 * G);
    assert_int_equal(s.idle_bytes, 2 * G);
    assert_int_equal(s.protected_extents, 0);
    AGREE(f, 0);
    PATTERN_CHECK(r, 2 * G, 2 * G, 9);
    pattern_fill(r + 2 * G, 0, 2 * G, 10); /* idle memory is read-write */
    char *q = gpu_heap_malloc(f->h, 2 * G);
    assert_ptr_equal(q, r + 2 * G);
    ASSERT_OK(gpu_heap_free(f->h, q));
    ASSERT_OK(gpu_heap_trim(f->h, 0));
    assert_int_equal(fstats(f).mapped_bytes, 0);
    AGREE(f, 0);
    char *r2 = gpu_heap_reserve(f->h, 6 * G); /* the whole range is free VA again */
    assert_ptr_equal(r2, r);
    ASSERT_OK(gpu_heap_release(f->h, r2));
    fheap_close(f);
}

static void test_cut_release_refused_changes_nothing(void **state) {
    (void)state;
    fheap *f = fheap_open();
    static const int one[] = {4};
    char *r = reserve_committed(f, 4, one, 1, 11);
    vmm_fault_arm_op(f->outer, VMM_OP_RELEASE, 1, GPU_ERR_BACKEND); /* the cut extent's own release */
    ASSERT_ERROR(gpu_heap_decommit(f->h, r + G, G), GPU_ERR_BACKEND);
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.sparse_committed_bytes, 4 * G);
    assert_int_equal(s.extents, 1);
    AGREE(f, 0);
    PATTERN_CHECK(r, 0, 4 * G, 11);
    ASSERT_OK(gpu_heap_decommit(f->h, r + G, G)); /* and it works the second time */
    assert_int_equal(fstats(f).extents, 2);
    PATTERN_CHECK(r, 0, G, 11);
    PATTERN_CHECK(r, 2 * G, 2 * G, 11);
    AGREE(f, 0);
    ASSERT_OK(gpu_heap_release(f->h, r));
    fheap_close(f);
}

/* A large block past the budget that would extend an idle tail (alloc.c's
 * extend rung) meets a refused create: the tail stays idle where it was, the
 * vacant VA after it stays vacant, and the block is mapped whole elsewhere; the
 * heap's books agree with the backend's. */
static void test_extend_refused_maps_whole(void **state) {
    (void)state;
    fheap *f = fheap_open();
    char *x = gpu_heap_malloc(f->h, 480 * MiB); /* one extent (from 512 MiB a range is backed in chunks) */
    assert_non_null(x);
    ASSERT_OK(gpu_heap_free(f->h, x));
    ASSERT_OK(gpu_heap_trim(f->h, SIZE_MAX));
    char *y = gpu_heap_malloc(f->h, 128 * MiB); /* past the budget: the front of the idle extent */
    assert_ptr_equal(y, x);
    gpu_stats_t before = fstats(f);
    vmm_fault_arm_op(f->outer, VMM_OP_CREATE, 1, GPU_ERR_OUT_OF_MEMORY); /* the extension's create */
    char *z = gpu_heap_malloc(f->h, 450 * MiB); /* more than the 352 MiB tail */
    assert_non_null(z);
    if (z >= x && z < x + 480 * MiB) fail_msg("block %p placed over the refused extension at %p", z, x + 128 * MiB);
    gpu_stats_t after = fstats(f);
    assert_int_equal(after.mapped_bytes, before.mapped_bytes + 450 * MiB);
    assert_int_equal(after.idle_bytes, 352 * MiB); /* the tail, untouched */
    AGREE(f, 0);
    ASSERT_OK(gpu_heap_free(f->h, z));
    ASSERT_OK(gpu_heap_free(f->h, y));
    ASSERT_OK(gpu_heap_trim(f->h, 0));
    assert_int_equal(fstats(f).mapped_bytes, 0);
    AGREE(f, 0);
    fheap_close(f);
}

/* A large range is backed in chunks (vacant.c; here 512 MiB, in eighths: this
 * heap's granule is 64 KiB, so the chunks' 64-granule floor is 4 MiB): when the
 * driver refuses the third chunk's create, the two chunks mapped before it go
 * back with the range (nothing kept, nothing leaked), and the out-of-memory
 * answer sends the request to the reclaim rung, which tries once more: eight
 * chunks, every byte usable across their seams. */
static void test_chunked_backing_refused_midway(void **state) {
    (void)state;
    fheap *f = fheap_open();
    char *w = gpu_heap_malloc(f->h, 64 * MiB); /* a large block freed: later large ranges come in chunks */
    assert_non_null(w);
    ASSERT_OK(gpu_heap_free(f->h, w));
    ASSERT_OK(gpu_heap_trim(f->h, 0));
    gpu_stats_t s0 = fstats(f);
    vmm_fault_arm_op(f->outer, VMM_OP_CREATE, 3, GPU_ERR_OUT_OF_MEMORY);
    char *p = gpu_heap_malloc(f->h, 512 * MiB);
    assert_non_null(p);
    gpu_stats_t s = fstats(f);
    assert_int_equal(s.backend_create - s0.backend_create, 3 + 8); /* the refused one counted too */
    assert_int_equal(s.backend_release - s0.backend_release, 2); /* the two chunks mapped before the refusal */
    assert_int_equal(s.extents, 8);
    assert_int_equal(s.mapped_bytes, 512 * MiB);
    AGREE(f, 0);
    pattern_fill(p, 0, 512 * MiB, 5);
    PATTERN_CHECK(p, 0, 512 * MiB, 5);
    ASSERT_OK(gpu_heap_free(f->h, p));
    ASSERT_OK(gpu_heap_trim(f->h, 0));
    assert_int_equal(fstats(f).mapped_bytes, 0);
    AGREE(f, 0);
    fheap_close(f);
}

int main(void) {
    test_thread_cache = 0; /* the heap core's own calls */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trim_release_refused_keeps_idle),
        cmocka_unit_test(test_trim_release_and_remap_refused_loses),
        cmocka_unit_test(test_decommit_release_refused_keeps_committed),
        cmocka_unit_test(test_decommit_some_kept),
        cmocka_unit_test(test_decommit_release_and_remap_refused_loses),
        cmocka_unit_test(test_release_kept_extent_becomes_idle),
        cmocka_unit_test(test_cut_release_refused_changes_nothing),
        cmocka_unit_test(test_extend_refused_maps_whole),
        cmocka_unit_test(test_chunked_backing_refused_midway),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
