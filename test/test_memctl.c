/*
 * test_memctl.c — memory control (issue 14): tags and regions, gpu_pause and
 * gpu_resume, the cap of physical memory per device, on the host backend.
 *
 * White-box where the public calls cannot see far enough: a tagged block's heap
 * is found from its pointer (registry_find_ptr) to read its extents and its host
 * backend's own books (physical bytes, handles); the refusals inside a resume
 * come from the fault wrapper under a heap paused through the core's calls.
 * Every step checks the heaps it touched; contents are patterns (util.h) read
 * directly, since host-backend memory is CPU memory.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

#define HOST_BUDGET ((size_t)1 << 30) /* GPUHEAP_HOST_BUDGET, set by main */

/* The heap a pointer lives in. */
static gpu_heap_t *heap_of(const void *p) {
    gpu_heap_t *h = registry_find_ptr((uintptr_t)p);
    assert_non_null(h);
    return h;
}

/* Physical bytes a heap's host backend holds. */
static size_t physical(gpu_heap_t *h) {
    vmm_host_counts c;
    vmm_host_counts_get(h->door.b, &c);
    return c.physical_bytes;
}

static gpu_stats_t tag_stats(const char *tag) {
    gpu_stats_t s;
    ASSERT_OK(gpu_tag_stats(tag, &s));
    assert_null(stats_broken(&s));
    return s;
}

/* Every lasting heap (the default heaps, the tags' heaps) gives its idle memory
 * back, so that the count of physical memory is a baseline that out of memory's
 * reclaim across heaps (backing.c) cannot lower: tags of earlier tests keep
 * idle memory otherwise. Returns heap_cap_held(0). */
static void trim_one(gpu_heap_t *h, void *arg) {
    (void)arg;
    assert_int_equal(heap_trim(h, 0), GPU_OK);
}
static size_t held_baseline(void) {
    registry_each_lasting(trim_one, NULL);
    return heap_cap_held(0);
}

/* The last error message the handler saw. */
static char last_message[512];
static void keep_message(int err, const char *msg, void *arg) {
    (void)err, (void)arg;
    snprintf(last_message, sizeof last_message, "%s", msg);
}

/* ---- configuration -------------------------------------------------------------- */

/* main sets GPUHEAP_LIMIT=3G before the first heap opens. */
static void test_limit_from_environment(void **state) {
    (void)state;
    assert_int_equal(gpu_limit(), 3 * GiB);
    ASSERT_OK(gpu_set_limit(0));
    assert_int_equal(gpu_limit(), SIZE_MAX);
    ASSERT_OK(gpu_set_limit(5 * GiB));
    assert_int_equal(gpu_limit(), 5 * GiB);
    ASSERT_OK(gpu_set_limit(SIZE_MAX));
    assert_int_equal(gpu_limit(), SIZE_MAX);
}

static void test_bad_names_and_flags(void **state) {
    (void)state;
    char longest[GPU_TAG_MAX + 1], too_long[GPU_TAG_MAX + 2];
    memset(longest, 'x', GPU_TAG_MAX);
    longest[GPU_TAG_MAX] = '\0';
    memset(too_long, 'y', GPU_TAG_MAX + 1);
    too_long[GPU_TAG_MAX + 1] = '\0';
    const char *bad[] = {NULL, "", too_long};
    gpu_stats_t s;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_ERROR(gpu_region_begin(bad[i]), GPU_ERR_INVALID);
        assert_null(gpu_malloc_tagged(256, bad[i]));
        ASSERT_LAST_ERROR(GPU_ERR_INVALID);
        ASSERT_ERROR(gpu_tag_stats(bad[i], &s), GPU_ERR_INVALID);
        if (bad[i]) { /* NULL means every tag to these two */
            ASSERT_ERROR(gpu_pause(bad[i], 0), GPU_ERR_INVALID);
            ASSERT_ERROR(gpu_resume(bad[i]), GPU_ERR_INVALID);
        }
    }
    ASSERT_ERROR(gpu_region_end(), GPU_ERR_INVALID); /* none open */
    ASSERT_ERROR(gpu_pause("names", 2), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_tag_stats("never-used", &s), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_tag_stats("names", NULL), GPU_ERR_INVALID);
    void *p = gpu_malloc_tagged(256, longest);
    assert_non_null(p);
    ASSERT_OK(gpu_tag_stats(longest, &s));
    assert_int_equal(s.live_bytes, 256);
    ASSERT_OK(gpu_free(p));
    ASSERT_OK(gpu_resume("never-used")); /* a tag that runs: nothing to do */
}

/* ---- regions -------------------------------------------------------------------- */

typedef struct region_probe {
    const char *tag; /* the region the thread opens, or NULL */
    gpu_heap_t *got;
} region_probe;

static void *probe_thread(void *arg) {
    region_probe *r = arg;
    if (r->tag) assert_int_equal(gpu_region_begin(r->tag), GPU_OK);
    void *p = gpu_malloc(1000);
    r->got = registry_find_ptr((uintptr_t)p);
    gpu_free(p);
    if (r->tag) assert_int_equal(gpu_region_end(), GPU_OK);
    return NULL;
}

static void test_regions_nest_per_thread(void **state) {
    (void)state;
    gpu_heap_t *dflt = gpu_heap_default();
    void *a0 = gpu_malloc_tagged(512, "ra"), *b0 = gpu_malloc_tagged(512, "rb");
    gpu_heap_t *ha = heap_of(a0), *hb = heap_of(b0);
    assert_ptr_not_equal(ha, dflt);
    assert_ptr_not_equal(hb, dflt);
    assert_ptr_not_equal(ha, hb);
    ASSERT_OK(gpu_region_begin("ra"));
    void *p1 = gpu_malloc(4096);
    ASSERT_OK(gpu_region_begin("rb"));
    void *p2 = gpu_calloc(10, 100), *p3 = gpu_malloc_aligned(5000, 64 * KiB), *p4 = gpu_malloc_flags(3 * MiB, GPU_ALLOC_OWNED);
    void *p5 = gpu_realloc(NULL, 700), *p6 = gpu_malloc_async(300, NULL);
    /* Another thread is in no region of ours; one that opens its own uses its own. */
    region_probe none = {0}, own = {.tag = "rc"};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, probe_thread, &none);
    pthread_create(&t2, NULL, probe_thread, &own);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_ptr_equal(none.got, dflt);
    assert_ptr_not_equal(own.got, dflt);
    assert_ptr_not_equal(own.got, ha);
    assert_ptr_not_equal(own.got, hb);
    void *reserved = gpu_reserve(4 * MiB); /* gpu_reserve keeps the default heap */
    ASSERT_OK(gpu_region_end());
    void *p7 = gpu_malloc(4096);
    ASSERT_OK(gpu_region_end());
    void *p8 = gpu_malloc(4096);
    ASSERT_ERROR(gpu_region_end(), GPU_ERR_INVALID);
    assert_ptr_equal(heap_of(p1), ha);
    assert_ptr_equal(heap_of(p2), hb);
    assert_ptr_equal(heap_of(p3), hb);
    assert_ptr_equal(heap_of(p4), hb);
    assert_ptr_equal(heap_of(p5), hb);
    assert_ptr_equal(heap_of(p6), hb);
    assert_ptr_equal(heap_of(p7), ha);
    assert_ptr_equal(heap_of(p8), dflt);
    assert_ptr_equal(heap_of(reserved), dflt);
    assert_int_equal((uintptr_t)p3 % (64 * KiB), 0);
    ZERO_CHECK(p2, 0, 1000);
    /* Every call on a pointer finds the tag's heap. */
    assert_int_equal(gpu_malloc_usable_size(p5), 768);
    void *p5b = gpu_realloc(p5, 9000);
    assert_ptr_equal(heap_of(p5b), hb);
    void *all[] = {a0, b0, p1, p2, p3, p4, p5b, p7, p8};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ASSERT_OK(gpu_free(all[i]));
    ASSERT_OK(gpu_free_async(p6, NULL));
    ASSERT_OK(gpu_release(reserved));
    CHECK_ALL(ha);
    CHECK_ALL(hb);
    CHECK_ALL(dflt);
}

/* A tagged block never shares an extent with an untagged one, nor with another tag's. */
static void test_tagged_blocks_own_their_extents(void **state) {
    (void)state;
    enum { N = 64 };
    void *plain[N], *tagged[N], *other[N];
    rng r = rng_seeded(14);
    for (int i = 0; i < N; i++) { /* interleaved, small enough to share extents within a heap */
        size_t n = rng_log_size(&r, 1, 256 * KiB);
        plain[i] = gpu_malloc(n);
        tagged[i] = gpu_malloc_tagged(n, "own-a");
        other[i] = gpu_malloc_tagged(n, "own-b");
        assert_non_null(plain[i]);
        assert_non_null(tagged[i]);
        assert_non_null(other[i]);
    }
    gpu_heap_t *dflt = heap_of(plain[0]), *ta = heap_of(tagged[0]), *tb = heap_of(other[0]);
    for (int i = 0; i < N; i++) {
        assert_ptr_equal(heap_of(plain[i]), dflt);
        assert_ptr_equal(heap_of(tagged[i]), ta);
        assert_ptr_equal(heap_of(other[i]), tb);
        /* The extent behind a tagged block lies in its tag's reservation, where no
         * other heap has blocks. */
        heap_lock(ta);
        extent *e = extmap_find(&ta->extents, (uintptr_t)tagged[i]);
        assert_non_null(e);
        uintptr_t lo = e->va, hi = e->va + e->size;
        heap_unlock(ta);
        assert_true(heap_owns(ta, lo) && heap_owns(ta, hi - 1));
        assert_false(heap_owns(dflt, lo) || heap_owns(dflt, hi - 1));
        assert_false(heap_owns(tb, lo) || heap_owns(tb, hi - 1));
        for (int j = 0; j < N; j++) {
            assert_false((uintptr_t)plain[j] >= lo && (uintptr_t)plain[j] < hi);
            assert_false((uintptr_t)other[j] >= lo && (uintptr_t)other[j] < hi);
        }
    }
    for (int i = 0; i < N; i++) {
        ASSERT_OK(gpu_free(plain[i]));
        ASSERT_OK(gpu_free(tagged[i]));
        ASSERT_OK(gpu_free(other[i]));
    }
    CHECK_ALL(ta);
    CHECK_ALL(tb);
}

/* ---- pause and resume ----------------------------------------------------------- */

typedef struct blk {
    void *p;
    size_t size;
    bool owned; /* GPU_ALLOC_OWNED, protected with prot */
    int prot;
} blk;

/* Writes a child's access to p: 0 read, 1 write. */
static int read_child(void *p) { return ((volatile uint8_t *)p)[0] == 0x5a ? 3 : 0; }
static int write_child(void *p) {
    ((volatile uint8_t *)p)[0] = 1;
    return 0;
}

static void test_pause_with_backup_restores_every_byte(void **state) {
    (void)state;
    const char *T = "backup";
    blk b[] = {
        {.size = 256},           {.size = 4 * KiB},  {.size = 100 * KiB}, {.size = 1 * MiB + 512},
        {.size = 3 * MiB},       {.size = 9 * MiB},  {.size = 2 * MiB, .owned = true, .prot = GPU_PROT_READ},
        {.size = 4 * MiB, .owned = true, .prot = GPU_PROT_NONE},
    };
    size_t n = sizeof b / sizeof b[0];
    for (size_t i = 0; i < n; i++) {
        b[i].p = b[i].owned ? NULL : gpu_malloc_tagged(b[i].size, T);
        if (b[i].owned) { /* protected blocks own their extents */
            ASSERT_OK(gpu_region_begin(T));
            b[i].p = gpu_malloc_flags(b[i].size, GPU_ALLOC_OWNED);
            ASSERT_OK(gpu_region_end());
        }
        BLOCK_VALID(heap_of(b[i].p), b[i].p, b[i].size);
        block_fill(b[i].p, b[i].size, 100 + i);
    }
    /* A block over more than one extent: grown by a new extent behind it
     * (in place, or moved by remapping). */
    b[5].p = gpu_realloc(b[5].p, 30 * MiB);
    void *grown = b[5].p;
    assert_non_null(grown);
    block_fill(b[5].p, 30 * MiB, 105);
    b[5].size = 30 * MiB;
    gpu_heap_t *h = heap_of(b[0].p);
    heap_lock(h);
    extent *first = extmap_find(&h->extents, (uintptr_t)grown);
    assert_true(first->va + first->size < (uintptr_t)grown + 30 * MiB); /* two extents at least */
    heap_unlock(h);
    /* An inaccessible block's bytes survive too (the backup opens it to read). */
    for (size_t i = 0; i < n; i++)
        if (b[i].owned) ASSERT_OK(gpu_protect(b[i].p, b[i].size, b[i].prot));
    gpu_stats_t before = tag_stats(T);
    assert_int_equal(before.protected_extents, 2);

    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    gpu_stats_t paused = tag_stats(T);
    CHECK_HEAP(h);
    assert_int_equal(paused.mapped_bytes, 0);
    assert_int_equal(physical(h), 0);
    assert_true(paused.paused_bytes <= before.mapped_bytes); /* wholly idle extents went as a trim's */
    assert_true(paused.paused_bytes >= before.live_bytes);
    assert_true(paused.backup_bytes >= before.live_bytes);
    assert_int_equal(paused.live_bytes, before.live_bytes);
    assert_int_equal(paused.protected_extents, 2);

    ASSERT_OK(gpu_resume(T));
    gpu_stats_t after = tag_stats(T);
    CHECK_HEAP(h);
    assert_int_equal(after.paused_bytes, 0);
    assert_int_equal(after.backup_bytes, 0);
    assert_int_equal(after.mapped_bytes, paused.paused_bytes);
    assert_int_equal(physical(h), after.mapped_bytes);
    assert_int_equal(after.protected_extents, 2);
    for (size_t i = 0; i < n; i++) {
        assert_ptr_equal(heap_of(b[i].p), h);
        if (!b[i].owned || b[i].prot != GPU_PROT_NONE) BLOCK_CHECK(b[i].p, b[i].size, 100 + i);
    }
    /* Protection came back: the read-only block refuses a write, the
     * inaccessible one a read. */
    for (size_t i = 0; i < n; i++) {
        if (b[i].owned && b[i].prot == GPU_PROT_READ) {
            assert_true(died_of_fault(run_in_child(write_child, b[i].p)));
            assert_true(WIFEXITED(run_in_child(read_child, b[i].p)));
        }
        if (b[i].owned && b[i].prot == GPU_PROT_NONE) {
            assert_true(died_of_fault(run_in_child(read_child, b[i].p)));
            ASSERT_OK(gpu_protect(b[i].p, b[i].size, GPU_PROT_READ_WRITE));
            BLOCK_CHECK(b[i].p, b[i].size, 100 + i);
        }
    }
    for (size_t i = 0; i < n; i++) ASSERT_OK(gpu_free(b[i].p));
    CHECK_ALL(h);
}

static void test_pause_without_backup_gives_memory_back(void **state) {
    (void)state;
    const char *T = "nobackup";
    enum { N = 200 };
    void *p[N];
    rng r = rng_seeded(7);
    for (int i = 0; i < N; i++) assert_non_null(p[i] = gpu_malloc_tagged(rng_log_size(&r, 1, 4 * MiB), T));
    for (int i = 0; i < N; i += 3) ASSERT_OK(gpu_free(p[i])); /* some idle memory too */
    gpu_heap_t *h = heap_of(p[1]);
    gpu_stats_t before = tag_stats(T);
    size_t phys = physical(h);
    assert_int_equal(phys, before.mapped_bytes);
    ASSERT_OK(gpu_pause(T, 0));
    gpu_stats_t s = tag_stats(T);
    CHECK_HEAP(h);
    assert_true(s.mapped_bytes * 100 <= before.mapped_bytes); /* >= 99% given back */
    assert_true(physical(h) * 100 <= phys);
    assert_int_equal(s.backup_bytes, 0);
    assert_true(s.paused_bytes >= s.live_bytes);
    ASSERT_OK(gpu_resume(T));
    gpu_stats_t back = tag_stats(T);
    CHECK_HEAP(h);
    assert_int_equal(back.mapped_bytes, s.paused_bytes + s.mapped_bytes);
    assert_int_equal(physical(h), back.mapped_bytes);
    assert_int_equal(back.live_bytes, before.live_bytes);
    for (int i = 0; i < N; i++) /* the memory is there and writable again */
        if (i % 3) {
            size_t u = gpu_malloc_usable_size(p[i]);
            memset(p[i], 0x33, u < 4096 ? u : 4096);
            ASSERT_OK(gpu_free(p[i]));
        }
    CHECK_ALL(h);
}

static void test_paused_tag_refuses_and_frees(void **state) {
    (void)state;
    const char *T = "refuse";
    void *small = gpu_malloc_tagged(1000, T), *big = gpu_malloc_tagged(6 * MiB, T);
    ASSERT_OK(gpu_region_begin(T));
    void *owned = gpu_malloc_flags(2 * MiB, GPU_ALLOC_OWNED), *other = gpu_malloc(50 * KiB), *async = gpu_malloc_async(3000, NULL);
    ASSERT_OK(gpu_region_end());
    ASSERT_OK(gpu_protect(owned, 2 * MiB, GPU_PROT_READ));
    block_fill(big, 6 * MiB, 1);
    gpu_heap_t *h = heap_of(small);
    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    gpu_stats_t s0 = tag_stats(T);
    /* Everything that needs memory or changes it is refused, and changes nothing. */
    assert_null(gpu_malloc_tagged(100, T));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    ASSERT_OK(gpu_region_begin(T));
    assert_null(gpu_malloc(100));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    assert_null(gpu_calloc(4, 100));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    assert_null(gpu_malloc_flags(2 * MiB, GPU_ALLOC_OWNED));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    assert_null(gpu_malloc_async(100, NULL));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    ASSERT_OK(gpu_region_end());
    assert_null(gpu_realloc(big, 20 * MiB));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    assert_null(gpu_realloc(big, 1 * MiB));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    ASSERT_ERROR(gpu_protect(owned, 2 * MiB, GPU_PROT_READ_WRITE), GPU_ERR_PAUSED);
    gpu_ipc_mem_handle_t handle; /* paused memory has nothing to share with another process */
    ASSERT_ERROR(gpu_ipc_get_mem_handle(&handle, big), GPU_ERR_PAUSED);
    assert_int_equal(gpu_malloc_usable_size(big), 6 * MiB);
    gpu_stats_t s1 = tag_stats(T);
    assert_memory_equal(&s0, &s1, offsetof(gpu_stats_t, fences)); /* the books before the counters */
    CHECK_HEAP(h);
    /* Pausing again changes nothing, backup included. */
    ASSERT_OK(gpu_pause(T, 0));
    gpu_stats_t s2 = tag_stats(T);
    assert_int_equal(s2.paused_bytes, s0.paused_bytes);
    assert_int_equal(s2.backup_bytes, s0.backup_bytes);
    /* Frees work: the books alone. A protected block freed while paused is read-write at resume. */
    ASSERT_OK(gpu_free(small));
    ASSERT_OK(gpu_free(owned));
    ASSERT_OK(gpu_free_async(async, NULL));
    ASSERT_ERROR(gpu_free(small), GPU_ERR_NOT_LIVE);
    gpu_stats_t s3 = tag_stats(T);
    assert_int_equal(s3.protected_extents, 0);
    assert_true(s3.live_bytes < s0.live_bytes);
    CHECK_HEAP(h);
    ASSERT_OK(gpu_resume(T));
    ASSERT_OK(gpu_resume(T)); /* a running tag: nothing to do */
    gpu_stats_t s4 = tag_stats(T);
    assert_int_equal(s4.paused_bytes, 0);
    assert_true(s4.mapped_bytes < s0.paused_bytes); /* the freed owned block's extent was not mapped again */
    BLOCK_CHECK(big, 6 * MiB, 1);
    void *again = gpu_malloc_tagged(100, T);
    assert_non_null(again);
    void *grown = gpu_realloc(big, 20 * MiB);
    assert_non_null(grown);
    BLOCK_CHECK_CLIP(grown, 6 * MiB, 6 * MiB, 1);
    ASSERT_OK(gpu_free(again));
    ASSERT_OK(gpu_free(grown));
    ASSERT_OK(gpu_free(other));
    CHECK_ALL(h);
}

static void test_pause_of_a_tag_never_used(void **state) {
    (void)state;
    ASSERT_OK(gpu_pause("later", GPU_PAUSE_BACKUP));
    assert_null(gpu_malloc_tagged(4096, "later"));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    ASSERT_OK(gpu_resume("later"));
    void *p = gpu_malloc_tagged(4096, "later");
    assert_non_null(p);
    ASSERT_OK(gpu_free(p));
}

static void test_untagged_heap_is_not_affected(void **state) {
    (void)state;
    void *u = gpu_malloc(8 * MiB), *t = gpu_malloc_tagged(8 * MiB, "side");
    block_fill(u, 8 * MiB, 42);
    gpu_heap_t *dflt = heap_of(u);
    gpu_stats_t d0 = STATS(dflt);
    ASSERT_OK(gpu_pause("side", 0));
    gpu_stats_t d1 = STATS(dflt);
    assert_int_equal(d1.mapped_bytes, d0.mapped_bytes);
    assert_int_equal(d1.paused_bytes, 0);
    BLOCK_CHECK(u, 8 * MiB, 42);
    void *u2 = gpu_malloc(3 * MiB);
    assert_non_null(u2);
    block_fill(u2, 3 * MiB, 43);
    ASSERT_OK(gpu_free(u2));
    ASSERT_OK(gpu_resume("side"));
    BLOCK_CHECK(u, 8 * MiB, 42);
    ASSERT_OK(gpu_free(u));
    ASSERT_OK(gpu_free(t));
    CHECK_ALL(dflt);
}

/* ---- out of memory at resume ---------------------------------------------------- */

static void test_resume_out_of_memory_keeps_paused(void **state) {
    (void)state;
    const char *T = "oom";
    void *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = gpu_malloc_tagged(8 * MiB, T);
        block_fill(p[i], 8 * MiB, 70 + i);
    }
    gpu_heap_t *h = heap_of(p[0]);
    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    gpu_stats_t s0 = tag_stats(T);
    size_t held = held_baseline();
    ASSERT_OK(gpu_set_limit(held + 10 * MiB)); /* room for one extent of three */
    gpu_set_error_handler(keep_message, NULL);
    ASSERT_ERROR(gpu_resume(T), GPU_ERR_OUT_OF_MEMORY);
    gpu_set_error_handler(NULL, NULL);
    assert_non_null(strstr(last_message, "limit"));
    gpu_stats_t s1 = tag_stats(T);
    CHECK_HEAP(h);
    assert_int_equal(s1.paused_bytes, s0.paused_bytes);
    assert_int_equal(s1.backup_bytes, s0.backup_bytes);
    assert_int_equal(s1.mapped_bytes, 0);
    assert_int_equal(physical(h), 0);         /* what the resume mapped went back */
    assert_int_equal(heap_cap_held(0), held); /* and its count with it */
    assert_null(gpu_malloc_tagged(256, T));
    ASSERT_LAST_ERROR(GPU_ERR_PAUSED);
    ASSERT_OK(gpu_set_limit(0));
    ASSERT_OK(gpu_resume(T));
    for (int i = 0; i < 3; i++) {
        BLOCK_CHECK(p[i], 8 * MiB, 70 + i);
        ASSERT_OK(gpu_free(p[i]));
    }
    CHECK_ALL(h);
}

/* ---- out of memory gives other heaps' idle memory back ------------------------- */

/* What memctl_torch met on the H200: a tag paused, its memory used by the
 * default heap and freed there (quarantined, idle: the default heap keeps it),
 * then the resume. Under a cap with room for one of them, the resume has the
 * default heap give that memory back and takes it. */
static void test_resume_takes_back_what_the_default_heap_freed_under_the_cap(void **state) {
    (void)state;
    const char *T = "cross-cap";
    enum { S = 24 * MiB };
    void *t = gpu_malloc_tagged(S, T);
    assert_non_null(t);
    block_fill(t, S, 81);
    gpu_heap_t *th = heap_of(t), *dflt = gpu_heap_default();
    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    size_t held = held_baseline();
    ASSERT_OK(gpu_set_limit(held + S + 2 * MiB)); /* room for one of the two blocks */
    void *u = gpu_malloc(S);                      /* in the memory the pause gave back */
    assert_non_null(u);
    assert_ptr_equal(heap_of(u), dflt);
    block_fill(u, S, 82);
    ASSERT_OK(gpu_free(u));
    gpu_stats_t d0 = STATS(dflt);
    assert_true(d0.idle_bytes + d0.quarantine_bytes >= S); /* the default heap keeps it */
    assert_int_equal(heap_cap_held(0), held + S);
    ASSERT_OK(gpu_resume(T));
    gpu_stats_t d1 = STATS(dflt), s = tag_stats(T);
    assert_true(d1.mapped_bytes + S <= d0.mapped_bytes); /* given back to make room */
    assert_int_equal(s.paused_bytes, 0);
    assert_int_equal(heap_cap_held(0), held + s.mapped_bytes);
    BLOCK_CHECK(t, S, 81);
    /* Both at once still do not fit: the cap refuses, naming itself. */
    gpu_set_error_handler(keep_message, NULL);
    assert_null(gpu_malloc(S));
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    gpu_set_error_handler(NULL, NULL);
    assert_non_null(strstr(last_message, "limit"));
    ASSERT_OK(gpu_set_limit(0));
    ASSERT_OK(gpu_free(t));
    CHECK_ALL(th);
    CHECK_ALL(dflt);
}

/* The same with the driver out of memory instead of the cap: the host budget
 * (GPUHEAP_HOST_BUDGET, main sets it) is the device's memory, shared by every
 * heap of the device, as on a GPU. Without backup, as memctl_torch's kv. */
static void test_resume_takes_back_what_the_default_heap_freed_under_the_budget(void **state) {
    (void)state;
    const char *T = "cross-budget";
    gpu_heap_t *dflt = gpu_heap_default();
    size_t held = held_baseline();
    vmm_host_counts c;
    vmm_host_counts_get(dflt->door.b, &c);
    assert_int_equal(c.device_bytes, held); /* every host heap of device 0 creates through the door */
    assert_true(held < HOST_BUDGET / 4);
    size_t S = (HOST_BUDGET - held) / 3 * 2 / (2 * MiB) * (2 * MiB); /* one fits beside what is held, two do not */
    void *t = gpu_malloc_tagged(S, T);
    assert_non_null(t);
    gpu_heap_t *th = heap_of(t);
    ASSERT_OK(gpu_pause(T, 0));
    void *u = gpu_malloc(S);
    assert_non_null(u);
    ((volatile char *)u)[0] = 1, ((volatile char *)u)[S - 1] = 2;
    ASSERT_OK(gpu_free(u));
    vmm_host_counts_get(dflt->door.b, &c);
    assert_int_equal(c.device_bytes, held + S);
    size_t kept = STATS(dflt).mapped_bytes;
    ASSERT_OK(gpu_resume(T)); /* the driver (the budget) refuses it first */
    assert_true(STATS(dflt).mapped_bytes + S <= kept); /* given back to make room */
    assert_int_equal(tag_stats(T).paused_bytes, 0);
    ((volatile char *)t)[0] = 3, ((volatile char *)t)[S - 1] = 4; /* mapped again, writable */
    vmm_host_counts_get(th->door.b, &c);
    assert_true(c.device_bytes <= HOST_BUDGET);
    ASSERT_OK(gpu_free(t));
    CHECK_ALL(th);
    CHECK_ALL(dflt);
}

/* The same through the core's own calls, with the driver refusing a map, an
 * upload, a protection: each undone, each retried. */
static void test_resume_refusals_undo(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(4 * GiB, 0, 0);
    vmm_backend *inner, *outer;
    vmm_fault_report rep;
    assert_int_equal(vmm_host_open(&cfg, &inner), GPU_OK);
    assert_int_equal(vmm_fault_open(inner, &rep, &outer), GPU_OK);
    gpu_heap_t *h;
    ASSERT_OK(gh_heap_create_on(&cfg, outer, &h));
    void *a = gpu_heap_malloc(h, 8 * MiB), *b = gpu_heap_malloc_flags(h, 4 * MiB, GPU_ALLOC_OWNED), *c = gpu_heap_malloc(h, 3000);
    block_fill(a, 8 * MiB, 1);
    block_fill(b, 4 * MiB, 2);
    block_fill(c, 3000, 3);
    ASSERT_OK(gpu_heap_protect(h, b, 4 * MiB, GPU_PROT_READ));
    size_t bytes;
    assert_int_equal(heap_pause(h, true, &bytes), GPU_OK);
    assert_true(bytes >= 12 * MiB);
    size_t paused = bytes;
    /* (The wrapper lets transfers through: it does not count them.) The lasting
     * heaps hold no idle memory, so a refused create is not tried again after
     * they give theirs back (backing.c). */
    (void)held_baseline();
    const int ops[] = {VMM_OP_CREATE, VMM_OP_MAP, VMM_OP_SET_ACCESS, VMM_OP_SET_ACCESS};
    const uint64_t nth[] = {2, 3, 2, 4}; /* the last: the protection set after the copies */
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        vmm_fault_arm_op(outer, ops[i], nth[i], 0);
        if (heap_resume(h, &bytes) == GPU_OK) fail_msg("resume succeeded with %s call %d refused", vmm_op_name(ops[i]), (int)nth[i]);
        vmm_fault_arm_op(outer, ops[i], 0, 0);
        CHECK_HEAP(h);
        gpu_stats_t s = STATS(h);
        vmm_host_counts hc;
        vmm_host_counts_get(inner, &hc);
        assert_int_equal(s.paused_bytes, paused);
        assert_int_equal(s.mapped_bytes, 0);
        assert_int_equal(hc.physical_bytes, 0);
        assert_int_equal(hc.mappings, 0);
        assert_true(s.backup_bytes > 0);
        assert_int_equal(s.extents_lost, 0);
    }
    assert_int_equal(heap_resume(h, &bytes), GPU_OK);
    BLOCK_CHECK(a, 8 * MiB, 1);
    BLOCK_CHECK(b, 4 * MiB, 2);
    BLOCK_CHECK(c, 3000, 3);
    assert_true(died_of_fault(run_in_child(write_child, b)));
    /* A pause whose unmaps the driver refuses changes nothing. */
    vmm_fault_arm_op(outer, VMM_OP_UNMAP, 2, 0);
    assert_int_not_equal(heap_pause(h, true, &bytes), GPU_OK);
    vmm_fault_arm_op(outer, VMM_OP_UNMAP, 0, 0);
    assert_true(heap_is_running(h));
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.paused_bytes, 0);
    assert_int_equal(s.backup_bytes, 0);
    BLOCK_CHECK(a, 8 * MiB, 1);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* ---- the backup's pinned buffer ------------------------------------------------------ */

/* Pinned memory took ~600 ms per GiB to allocate on the H200, 30x the copy: the
 * buffer a backup used is kept for the heap's next pause, replaced only by a
 * larger one, freed by a trim. The host backend counts its staging allocations. */
static vmm_host_counts counts_of(gpu_heap_t *h) {
    vmm_host_counts c;
    vmm_host_counts_get(h->door.b, &c);
    return c;
}

static void test_pinned_buffer_serves_every_pause_until_trimmed(void **state) {
    (void)state;
    const char *T = "pinned";
    enum { N = 40 };
    void *small[N];
    for (int i = 0; i < N; i++) { /* live pieces with gaps, small and large (joined into fewer copies) */
        small[i] = gpu_malloc_tagged(i % 5 == 4 ? 300 * KiB : (size_t)(1000 + 37 * i), T);
        assert_non_null(small[i]);
    }
    for (int i = 0; i < N; i += 2) ASSERT_OK(gpu_free(small[i]));
    void *big = gpu_malloc_tagged(9 * MiB, T);
    assert_non_null(big);
    gpu_heap_t *h = heap_of(big);
    for (int i = 1; i < N; i += 2) block_fill(small[i], gpu_malloc_usable_size(small[i]), 300 + i);
    block_fill(big, 9 * MiB, 299);
    size_t allocs = counts_of(h).staging_allocs;
    size_t pinned = 0;
    for (int cycle = 0; cycle < 3; cycle++) {
        ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
        gpu_stats_t p = tag_stats(T);
        assert_true(p.backup_bytes >= p.live_bytes);
        assert_true(p.backup_pinned_bytes >= p.backup_bytes);
        if (!cycle) pinned = p.backup_pinned_bytes;
        assert_int_equal(p.backup_pinned_bytes, pinned);
        assert_int_equal(counts_of(h).staging_allocs, allocs + 1); /* one buffer, allocated by the first pause */
        CHECK_HEAP(h);
        ASSERT_OK(gpu_resume(T));
        gpu_stats_t r = tag_stats(T);
        assert_int_equal(r.backup_bytes, 0);                /* it holds no contents */
        assert_int_equal(r.backup_pinned_bytes, pinned);    /* but stays for the next pause */
        assert_int_equal(counts_of(h).staging_bytes, pinned);
        for (int i = 1; i < N; i += 2) BLOCK_CHECK(small[i], gpu_malloc_usable_size(small[i]), 300 + i);
        BLOCK_CHECK(big, 9 * MiB, 299);
        CHECK_HEAP(h);
    }
    /* A pause without backup leaves the buffer alone. */
    ASSERT_OK(gpu_pause(T, 0));
    ASSERT_OK(gpu_resume(T));
    assert_int_equal(tag_stats(T).backup_pinned_bytes, pinned);
    for (int i = 1; i < N; i += 2) block_fill(small[i], gpu_malloc_usable_size(small[i]), 300 + i); /* lost: again */
    block_fill(big, 9 * MiB, 299);
    /* A trim while paused keeps the backup; one while running frees the buffer. */
    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    ASSERT_OK(gpu_tag_trim(T, 0));
    assert_int_equal(tag_stats(T).backup_pinned_bytes, pinned);
    ASSERT_OK(gpu_resume(T));
    BLOCK_CHECK(big, 9 * MiB, 299);
    ASSERT_OK(gpu_tag_trim(T, 0));
    assert_int_equal(tag_stats(T).backup_pinned_bytes, 0);
    assert_int_equal(counts_of(h).staging_bytes, 0);
    assert_int_equal(counts_of(h).staging_allocs, allocs + 1);
    /* A larger backup replaces the buffer: the old one goes first. */
    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    ASSERT_OK(gpu_resume(T));
    void *more = gpu_malloc_tagged(20 * MiB, T);
    assert_non_null(more);
    block_fill(more, 20 * MiB, 298);
    ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
    gpu_stats_t p = tag_stats(T);
    assert_true(p.backup_pinned_bytes >= pinned + 20 * MiB);
    assert_int_equal(counts_of(h).staging_allocs, allocs + 3);
    assert_int_equal(counts_of(h).staging_bytes, p.backup_pinned_bytes); /* the smaller one was freed */
    ASSERT_OK(gpu_resume(T));
    BLOCK_CHECK(more, 20 * MiB, 298);
    BLOCK_CHECK(big, 9 * MiB, 299);
    for (int i = 1; i < N; i += 2) BLOCK_CHECK(small[i], gpu_malloc_usable_size(small[i]), 300 + i);
    ASSERT_OK(gpu_free(more));
    ASSERT_OK(gpu_free(big));
    for (int i = 1; i < N; i += 2) ASSERT_OK(gpu_free(small[i]));
    ASSERT_ERROR(gpu_tag_trim("", 0), GPU_ERR_INVALID);
    ASSERT_OK(gpu_tag_trim("never-named-for-trim", 0)); /* nothing to trim */
    ASSERT_OK(gpu_tag_trim(NULL, 0));                   /* every tag */
    assert_int_equal(counts_of(h).staging_bytes, 0);
    CHECK_ALL(h);
}

/* ---- the cap ----------------------------------------------------------------------- */

static void test_cap_gives_idle_back_then_refuses(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(16 * GiB, 0, 0);
    cfg.thread_cache = 0;
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    size_t held = held_baseline();
    ASSERT_OK(gpu_set_limit(held + 64 * MiB));
    void *a = gpu_heap_malloc(h, 32 * MiB);
    assert_non_null(a);
    ASSERT_OK(gpu_heap_free(h, a));
    /* 32 MiB idle + 48 MiB new passes the cap: the idle memory goes back first. */
    void *b = gpu_heap_malloc(h, 48 * MiB);
    assert_non_null(b);
    gpu_stats_t s = STATS(h);
    assert_true(s.mapped_bytes <= 64 * MiB);
    assert_true(heap_cap_held(0) <= held + 64 * MiB);
    gpu_set_error_handler(keep_message, NULL);
    assert_null(gpu_heap_malloc(h, 32 * MiB));
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    gpu_set_error_handler(NULL, NULL);
    assert_non_null(strstr(last_message, "limit"));
    CHECK_ALL(h);
    ASSERT_OK(gpu_heap_free(h, b));
    void *c = gpu_heap_malloc(h, 32 * MiB);
    assert_non_null(c);
    /* A lowered cap keeps what is held and refuses more. */
    ASSERT_OK(gpu_set_limit(held + 2 * MiB));
    assert_null(gpu_heap_malloc(h, 40 * MiB));
    ASSERT_LAST_ERROR(GPU_ERR_OUT_OF_MEMORY);
    BLOCK_VALID(h, c, 32 * MiB);
    ASSERT_OK(gpu_set_limit(0));
    void *d = gpu_heap_malloc(h, 40 * MiB);
    assert_non_null(d);
    ASSERT_OK(gpu_heap_free(h, c));
    ASSERT_OK(gpu_heap_free(h, d));
    CHECK_ALL(h);
    HEAP_DESTROY(h);
    assert_int_equal(heap_cap_held(0), held);
}

/* ---- cycles and threads ---------------------------------------------------------- */

static void test_twenty_cycles_stay_flat(void **state) {
    (void)state;
    const char *T = "cycles";
    enum { N = 40 };
    void *p[N];
    size_t size[N];
    rng r = rng_seeded(20);
    for (int i = 0; i < N; i++) {
        size[i] = rng_log_size(&r, 1, 6 * MiB);
        p[i] = gpu_malloc_tagged(size[i], T);
        block_fill(p[i], size[i], 500 + i);
    }
    gpu_heap_t *h = heap_of(p[0]);
    size_t phys = 0, held = 0, backup = 0; /* as the first cycle leaves them (its pause trims idle memory) */
    for (int cycle = 0; cycle < 20; cycle++) {
        ASSERT_OK(gpu_pause(T, GPU_PAUSE_BACKUP));
        gpu_stats_t s = tag_stats(T);
        if (!cycle) backup = s.backup_bytes;
        assert_int_equal(s.backup_bytes, backup);
        assert_int_equal(physical(h), 0);
        ASSERT_OK(gpu_resume(T));
        gpu_stats_t t = tag_stats(T);
        assert_int_equal(t.backup_bytes, 0);
        if (!cycle) phys = physical(h), held = heap_cap_held(0);
        assert_int_equal(physical(h), phys);
        assert_int_equal(t.mapped_bytes, phys);
        assert_int_equal(heap_cap_held(0), held);
        for (int i = 0; i < N; i++) BLOCK_CHECK(p[i], size[i], 500 + i);
    }
    for (int i = 0; i < N; i++) ASSERT_OK(gpu_free(p[i]));
    CHECK_ALL(h);
}

/* Threads allocate and free in the tag while another pauses and resumes it. */
typedef struct churn {
    _Atomic bool stop;
    _Atomic unsigned long ok, refused;
    _Atomic int bad; /* the first unexpected answer (cmocka's asserts belong to the main thread) */
} churn;

static void churn_bad(churn *c, int err) {
    int none = 0;
    atomic_compare_exchange_strong(&c->bad, &none, err ? err : 1);
}

static void *churn_thread(void *arg) {
    churn *c = arg;
    void *held[16] = {0};
    for (unsigned i = 0; !atomic_load(&c->stop); i++) {
        unsigned k = i % 16;
        if (held[k]) {
            int rc = gpu_free(held[k]);
            if (rc != GPU_OK) churn_bad(c, rc);
            held[k] = NULL;
        }
        held[k] = gpu_malloc_tagged((i % 7 + 1) * 1000, "churn");
        if (held[k]) {
            atomic_fetch_add(&c->ok, 1);
        } else {
            int e = gpu_last_error();
            if (e != GPU_ERR_PAUSED && e != GPU_ERR_BUSY) churn_bad(c, e);
            atomic_fetch_add(&c->refused, 1);
        }
    }
    for (unsigned k = 0; k < 16; k++)
        if (gpu_free(held[k]) != GPU_OK) churn_bad(c, gpu_last_error());
    return NULL;
}

static void test_pause_beside_threads(void **state) {
    (void)state;
    churn c = {0};
    void *keep = gpu_malloc_tagged(5 * MiB, "churn");
    block_fill(keep, 5 * MiB, 9);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, churn_thread, &c);
    for (int cycle = 0; cycle < 30; cycle++) {
        ASSERT_OK(gpu_pause("churn", GPU_PAUSE_BACKUP));
        CHECK_HEAP(heap_of(keep));
        ASSERT_OK(gpu_resume("churn"));
        BLOCK_CHECK(keep, 5 * MiB, 9);
        /* The churners get some allocations through before the next pause. */
        unsigned long seen = atomic_load(&c.ok);
        for (int wait = 0; wait < 10000 && atomic_load(&c.ok) < seen + 8; wait++) usleep(100);
    }
    atomic_store(&c.stop, true);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    if (c.bad) fail_msg("a churning thread got %d (%s)", (int)c.bad, gpu_strerror(c.bad));
    assert_true(c.ok > 0);
    ASSERT_OK(gpu_free(keep));
    CHECK_ALL(heap_of(keep));
}

/* ---- every tag at once, peers, the trace ---------------------------------------- */

static void test_every_tag_and_peers(void **state) {
    (void)state;
    void *a = gpu_malloc_tagged(4 * MiB, "all-a"), *b = gpu_malloc_tagged(4 * MiB, "all-b");
    block_fill(a, 4 * MiB, 11);
    block_fill(b, 4 * MiB, 12);
    gpu_heap_t *ha = heap_of(a);
    char path[] = "/tmp/gpuheap-memctl-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ASSERT_OK(gpu_trace_start(path));
    ASSERT_OK(gpu_pause(NULL, GPU_PAUSE_BACKUP));
    assert_int_equal(tag_stats("all-a").mapped_bytes, 0);
    assert_int_equal(tag_stats("all-b").mapped_bytes, 0);
    /* A peer added while paused is granted the extents when they come back. */
    vmm_host_counts c0, c1;
    vmm_host_counts_get(ha->door.b, &c0);
    assert_int_equal(heap_peer_add(ha, 1), GPU_OK);
    ASSERT_OK(gpu_resume(NULL));
    ASSERT_OK(gpu_trace_stop());
    vmm_host_counts_get(ha->door.b, &c1);
    assert_true(c1.grants > c0.grants);
    assert_true(c1.granted_devices & 2);
    BLOCK_CHECK(a, 4 * MiB, 11);
    BLOCK_CHECK(b, 4 * MiB, 12);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    int pauses = 0, resumes = 0;
    while (fgets(line, sizeof line, f)) {
        char op[32];
        unsigned long long heap, stream, addr, size, arg, flags;
        if (line[0] == '#' || sscanf(line, "%*s %*s %31s %llx %llx %llx %llu %llu %llu", op, &heap, &stream, &addr, &size, &arg, &flags) != 7)
            continue;
        if (!strcmp(op, "pause")) {
            pauses++;
            assert_int_equal(flags, GPU_PAUSE_BACKUP);
            assert_int_equal(addr, heap);
            if (heap == ha->base) assert_true(size >= 4 * MiB);
        }
        if (!strcmp(op, "resume")) resumes++;
    }
    fclose(f);
    unlink(path);
    assert_true(pauses >= 2);
    assert_int_equal(pauses, resumes);
    (void)heap_peer_remove(ha, 1);
    ASSERT_OK(gpu_free(a));
    ASSERT_OK(gpu_free(b));
    CHECK_ALL(ha);
}

int main(void) {
    /* Every heap on the host backend, the cap and the device's memory from the
     * environment, small tag heaps. */
    setenv("GPUHEAP_BACKEND", "host", 1);
    setenv("GPUHEAP_LIMIT", "3G", 1);
    setenv("GPUHEAP_HOST_BUDGET", "1G", 1); /* HOST_BUDGET */
    setenv("GPUHEAP_RESERVE", "64G", 1);
    setenv("GPUHEAP_TAG_RESERVE", "64G", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit_from_environment),
        cmocka_unit_test(test_bad_names_and_flags),
        cmocka_unit_test(test_regions_nest_per_thread),
        cmocka_unit_test(test_tagged_blocks_own_their_extents),
        cmocka_unit_test(test_pause_with_backup_restores_every_byte),
        cmocka_unit_test(test_pause_without_backup_gives_memory_back),
        cmocka_unit_test(test_paused_tag_refuses_and_frees),
        cmocka_unit_test(test_pause_of_a_tag_never_used),
        cmocka_unit_test(test_untagged_heap_is_not_affected),
        cmocka_unit_test(test_resume_out_of_memory_keeps_paused),
        cmocka_unit_test(test_resume_takes_back_what_the_default_heap_freed_under_the_cap),
        cmocka_unit_test(test_resume_takes_back_what_the_default_heap_freed_under_the_budget),
        cmocka_unit_test(test_resume_refusals_undo),
        cmocka_unit_test(test_pinned_buffer_serves_every_pause_until_trimmed),
        cmocka_unit_test(test_cap_gives_idle_back_then_refuses),
        cmocka_unit_test(test_twenty_cycles_stay_flat),
        cmocka_unit_test(test_pause_beside_threads),
        cmocka_unit_test(test_every_tag_and_peers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
