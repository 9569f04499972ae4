/*
 * test_stream.c — stream-ordered allocation and graph-capture rules on the host
 * backend.
 *
 * The host backend has no GPU work to wait for, so it lets a test decide when an
 * event completes (after N queries) and which streams are "being captured". That
 * is enough to check the rules the GPU suite checks with real kernels: a block
 * freed on stream S is reused by S at once and by anyone else only after S's event
 * completes; out of memory waits for the events; during a capture the heap never
 * fences, refuses frees on the captured stream, and defers trimming.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

#define S1 ((void *)0x1001)
#define S2 ((void *)0x2002)

/* The backend behind a heap: white-box, for the host backend's test knobs. */
static vmm_backend *backend_of(gpu_heap_t *h) { return h->door.b; }

static void test_same_stream_reuses_at_once(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_host_set_event_delay(backend_of(h), 1000000); /* events never complete in this test */
    void *p = gpu_heap_malloc_async(h, 4096, S1);
    assert_non_null(p);
    memset(p, 0x5a, 4096);
    assert_int_equal(gpu_heap_free_async(h, p, S1), GPU_OK);
    CHECK_HEAP(h);
    assert_int_equal(STATS(h).stream_free_blocks, 1);
    void *q = gpu_heap_malloc_async(h, 4096, S1);
    assert_ptr_equal(q, p); /* stream order makes reuse on S1 safe */
    assert_int_equal(gpu_heap_free_async(h, q, S1), GPU_OK);
    for (int i = 0; i < 100; i++) {
        q = gpu_heap_malloc_async(h, 4096, S1);
        assert_ptr_equal(q, p);
        assert_int_equal(gpu_heap_free_async(h, q, S1), GPU_OK);
    }
    /* One event covers the first batch; while it is in flight no more are recorded. */
    assert_int_equal(STATS(h).stream_events, 1);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

/* A block taken from a stream's pool in part leaves the rest in that pool,
 * waiting for the same event (a remainder once lost its pool and crashed a reap). */
static void test_pool_split_keeps_the_rest(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_host_set_event_delay(backend_of(h), 1);
    void *big = gpu_heap_malloc_async(h, 8 * MiB, S1);
    assert_int_equal(gpu_heap_free_async(h, big, S1), GPU_OK);
    void *small = gpu_heap_malloc_async(h, 4096, S1);
    assert_ptr_equal(small, big); /* from the pool, split */
    CHECK_HEAP(h);
    /* Other streams now reap S1's events; the remainder must go idle cleanly. */
    for (int i = 0; i < 8; i++) {
        void *x = gpu_heap_malloc_async(h, 8 * MiB, S2);
        assert_non_null(x);
        CHECK_HEAP(h);
        assert_int_equal(gpu_heap_free(h, x), GPU_OK);
    }
    assert_int_equal(gpu_heap_free_async(h, small, S1), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

static void test_other_stream_waits_for_event(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_host_set_event_delay(backend_of(h), 3);
    /* Fill one shared extent exactly, so that the next block has to come from S1's pool or new memory. */
    void *p = gpu_heap_malloc_async(h, 1 * MiB, S1);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free_async(h, p, S1), GPU_OK);
    /* S2 cannot have it while S1's event has not completed: it gets other memory. */
    void *seen[16];
    int hit = -1;
    for (int i = 0; i < 16; i++) {
        seen[i] = gpu_heap_malloc_async(h, 1 * MiB, S2);
        assert_non_null(seen[i]);
        CHECK_HEAP(h);
        if (seen[i] == p) {
            hit = i;
            break;
        }
    }
    gpu_stats_t s = STATS(h);
    print_message("S2 got S1's block after %d allocations; %llu events recorded\n", hit, (unsigned long long)s.stream_events);
    assert_true(hit > 0);                   /* never the first time: the event had not completed */
    assert_true(s.stream_events >= 1);
    for (int i = 0; i <= hit; i++) assert_int_equal(gpu_heap_free_async(h, seen[i], S2), GPU_OK);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

static void test_plain_malloc_waits_too_and_mixing_works(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_host_set_event_delay(backend_of(h), 1000000);
    void *p = gpu_heap_malloc(h, 8192);             /* plain malloc, */
    assert_int_equal(gpu_heap_free_async(h, p, S1), GPU_OK); /* freed on a stream */
    void *q = gpu_heap_malloc(h, 8192);
    assert_ptr_not_equal(q, p);                     /* gpu_malloc does not take S1's block */
    void *r = gpu_heap_malloc_async(h, 8192, S2);   /* allocated on S2, */
    assert_int_equal(gpu_heap_free_async(h, r, S1), GPU_OK); /* freed on S1: allowed */
    void *t = gpu_heap_malloc_async(h, 8192, S1);
    assert_true(t == p || t == r);                  /* S1 reuses what was freed on it */
    assert_int_equal(gpu_heap_free(h, t), GPU_OK);  /* and a stream block may go with gpu_free */
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    /* A fence (trim) makes every stream-freed block idle. */
    assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.stream_free_blocks, 0);
    assert_int_equal(s.live_blocks, 0);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

static void test_bad_input(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    void *p = gpu_heap_malloc_async(h, 512, S1);
    assert_int_equal(gpu_heap_free_async(h, (char *)p + 256, S1), GPU_ERR_NOT_LIVE);
    assert_int_equal(gpu_heap_free_async(h, p, S1), GPU_OK);
    assert_int_equal(gpu_heap_free_async(h, p, S1), GPU_ERR_NOT_LIVE); /* double free */
    int x;
    assert_int_equal(gpu_heap_free_async(h, &x, S1), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_heap_free_async(h, NULL, S1), GPU_OK);
    assert_null(gpu_heap_malloc_async(h, SIZE_MAX, S1));
    assert_int_equal(gpu_last_error(), GPU_ERR_INVALID);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

static void test_out_of_memory_waits_for_stream_events(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(64 * MiB);
    vmm_host_set_event_delay(backend_of(h), 1000000); /* a query never sees them complete */
    void *b[8];
    int n = 0;
    while (n < 8 && (b[n] = gpu_heap_malloc_async(h, 16 * MiB, S1)) != NULL) n++;
    assert_true(n >= 3);
    for (int i = 0; i < n; i++) assert_int_equal(gpu_heap_free_async(h, b[i], S1), GPU_OK);
    /* S2 needs all of it: only waiting for S1's events can give it. */
    void *big = gpu_heap_malloc_async(h, (size_t)n * 16 * MiB - 16 * MiB, S2);
    if (!big) fail_msg("out of memory with stream-freed blocks waiting: %s", gpu_strerror(gpu_last_error()));
    CHECK_HEAP(h);
    assert_int_equal(gpu_heap_free_async(h, big, S2), GPU_OK);
    gpu_heap_destroy(h);
}

static void test_capture_rules(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_backend *b = backend_of(h);
    void *keep = gpu_heap_malloc_async(h, 4096, S1);
    void *gone = gpu_heap_malloc(h, 4 * MiB);
    assert_int_equal(gpu_heap_free(h, gone), GPU_OK); /* quarantined */

    vmm_host_set_capturing(b, (uintptr_t)S1, true);
    /* A free on the captured stream is refused and changes nothing. */
    assert_int_equal(gpu_heap_free_async(h, keep, S1), GPU_ERR_CAPTURING);
    assert_int_equal(gpu_heap_malloc_usable_size(h, keep), 4096);
    /* Allocation during the capture works and never fences. */
    uint64_t fences = STATS(h).fences;
    void *during = gpu_heap_malloc_async(h, 8 * MiB, S1);
    assert_non_null(during);
    vmm_host_set_capturing(b, 0, true); /* "a blocking stream is being captured" */
    for (int i = 0; i < 4; i++) {
        void *x = gpu_heap_malloc(h, 64 * MiB);
        assert_non_null(x);
        assert_int_equal(gpu_heap_free(h, x), GPU_OK);
    }
    assert_int_equal(STATS(h).fences, fences);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_ERR_CAPTURING);
    CHECK_HEAP(h);
    vmm_host_set_capturing(b, 0, false);
    vmm_host_set_capturing(b, (uintptr_t)S1, false);

    /* gpu_capture_begin/end announce a capture the heap cannot see. */
    gpu_capture_begin();
    assert_int_equal(gpu_heap_trim(h, 0), GPU_ERR_CAPTURING);
    gpu_capture_end();
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    assert_true(STATS(h).fences > fences);

    assert_int_equal(gpu_heap_free_async(h, keep, S1), GPU_OK);
    assert_int_equal(gpu_heap_free_async(h, during, S1), GPU_OK);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

/* gpu_free's quarantine is sealed with one context-wide event instead of a
 * device sync when memory is under budget: the blocks stay out of reach until the
 * event completes, and then come back without any thread waiting. */
static void test_quarantine_sealed_by_event(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_host_set_event_delay(backend_of(h), 2);
    void *a = gpu_heap_malloc(h, 4 * MiB); /* its own extent */
    assert_int_equal(gpu_heap_free(h, a), GPU_OK);
    uint64_t fences = STATS(h).fences;
    void *b = gpu_heap_malloc(h, 4 * MiB); /* a miss: seals the quarantine, maps new memory */
    assert_non_null(b);
    assert_ptr_not_equal(b, a);
    assert_int_equal(h->nsealed, 1);
    CHECK_HEAP(h);
    void *seen[4];
    int hit = -1;
    for (int i = 0; i < 4 && hit < 0; i++) {
        seen[i] = gpu_heap_malloc(h, 4 * MiB);
        assert_non_null(seen[i]);
        if (seen[i] == a) hit = i;
        CHECK_HEAP(h);
    }
    assert_true(hit > 0);                          /* not before the event completed, */
    assert_int_equal(STATS(h).fences, fences);     /* and no device sync on the way */
    for (int i = 0; i <= hit; i++) assert_int_equal(gpu_heap_free(h, seen[i]), GPU_OK);
    assert_int_equal(gpu_heap_free(h, b), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK); /* a fence releases sealed batches too */
    assert_int_equal(h->nsealed, 0);
    assert_int_equal(STATS(h).quarantine_blocks, 0);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

/* Four threads, each on its own stream, allocate and free with patterns
 * checked; a quarter of the frees go through another thread's stream or through
 * gpu_free, and plain gpu_malloc mixes in. Events complete after two queries. */
#include <pthread.h>
#include <stdlib.h>

typedef struct worker {
    gpu_heap_t *h;
    uintptr_t stream;
    unsigned seed;
    int errors;
} worker;

static void *worker_main(void *arg) {
    worker *w = arg;
    enum { LIVE = 64 };
    unsigned char *blk[LIVE] = {0};
    size_t len[LIVE] = {0};
    for (int op = 0; op < 20000; op++) {
        int i = (int)(rand_r(&w->seed) % LIVE);
        if (blk[i]) {
            for (size_t k = 0; k < len[i]; k += 997)
                if (blk[i][k] != (unsigned char)(i + (uintptr_t)w->stream)) w->errors++;
            unsigned how = rand_r(&w->seed) % 4;
            int rc = how == 0 ? gpu_heap_free(w->h, blk[i])
                              : gpu_heap_free_async(w->h, blk[i], (void *)(how == 1 ? w->stream ^ 0x10 : w->stream));
            w->errors += rc != GPU_OK;
            blk[i] = NULL;
        } else {
            len[i] = 1 + rand_r(&w->seed) % (rand_r(&w->seed) % 8 ? 65536 : 8 << 20);
            blk[i] = rand_r(&w->seed) % 4 ? gpu_heap_malloc_async(w->h, len[i], (void *)w->stream)
                                           : gpu_heap_malloc(w->h, len[i]);
            if (!blk[i]) {
                w->errors++;
                continue;
            }
            memset(blk[i], (unsigned char)(i + w->stream), len[i]);
        }
    }
    for (int i = 0; i < LIVE; i++)
        if (blk[i]) w->errors += gpu_heap_free_async(w->h, blk[i], (void *)w->stream) != GPU_OK;
    return NULL;
}

static void test_threads_on_streams(void **state) {
    (void)state;
    gpu_heap_t *h = open_heap(0);
    vmm_host_set_event_delay(backend_of(h), 2);
    worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.h = h, .stream = 0x100 * (uintptr_t)(i + 1), .seed = 77u + (unsigned)i};
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    int errors = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        errors += w[i].errors;
    }
    assert_int_equal(errors, 0);
    CHECK_HEAP(h);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.live_blocks, 0);
    assert_int_equal(s.stream_free_blocks, 0);
    print_message("4 threads on streams: %llu events, %llu fences\n", (unsigned long long)s.stream_events,
                  (unsigned long long)s.fences);
    CHECK_HEAP(h);
    gpu_heap_destroy(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_stream_reuses_at_once),
        cmocka_unit_test(test_pool_split_keeps_the_rest),
        cmocka_unit_test(test_other_stream_waits_for_event),
        cmocka_unit_test(test_plain_malloc_waits_too_and_mixing_works),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_out_of_memory_waits_for_stream_events),
        cmocka_unit_test(test_capture_rules),
        cmocka_unit_test(test_quarantine_sealed_by_event),
        cmocka_unit_test(test_threads_on_streams),
    };
    return cmocka_run_group_tests_name("stream", tests, NULL, NULL);
}
