/*
 * test_errors.c — the error convention itself (lib/error.c, error.h).
 *
 * A failed call returns its code, leaves it as the thread's last error and hands
 * it to the error handler; the handler may call gpuheap (gpuheap.h allows it),
 * and whatever those calls do, the caller still sees the failure. Backend
 * failure messages belong to the thread that failed, never to another thread's
 * failure. Answers between layers that are not errors (a cache miss, an event
 * not yet complete) have names of their own and never look like a public code.
 */
#include <pthread.h>
#include <string.h>

#include "util.h"

#include "api/api.h"
#include "backend/door.h"
#include "error.h"

/* ---- a handler that calls gpuheap -------------------------------------------- */

static int handler_calls;
static int handler_last_code;

/* The handler of the first report: a gpuheap call that succeeds, and one that fails. */
static void calling_handler(int err, const char *msg, void *arg) {
    (void)msg;
    (void)arg;
    handler_calls++;
    handler_last_code = err;
    assert_int_equal(gpu_free(NULL), GPU_OK);                       /* clears the last error */
    assert_int_equal(gpu_free((void *)0x2000), GPU_ERR_NOT_OWNED); /* fails inside the handler */
}

static void test_handler_that_calls_gpuheap(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    gpu_error_handler_t old = gpu_set_error_handler(calling_handler, NULL);
    handler_calls = 0;

    assert_int_equal(gpu_free((void *)0x1000), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_last_error(), GPU_ERR_NOT_OWNED);
    assert_int_equal(handler_calls, 1); /* the failure inside the handler is not handed to it again */
    assert_int_equal(handler_last_code, GPU_ERR_NOT_OWNED);

    int on_stack = 0;
    assert_int_equal(gpu_protect(&on_stack, 4096, GPU_PROT_READ), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_last_error(), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_commit(&on_stack, 4096), GPU_ERR_NOT_OWNED);
    assert_int_equal(gpu_last_error(), GPU_ERR_NOT_OWNED);

    void *p = gpu_heap_malloc(h, 1000);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    assert_int_equal(gpu_heap_free(h, p), GPU_ERR_NOT_LIVE); /* double free */
    assert_int_equal(gpu_last_error(), GPU_ERR_NOT_LIVE);

    assert_null(gpu_heap_malloc(h, SIZE_MAX));
    assert_int_equal(gpu_last_error(), GPU_ERR_INVALID);

    gpu_heap_t *gone = HEAP_NEW(0);
    HEAP_DESTROY(gone);
    gpu_stats_t s;
    memset(&s, 0xab, sizeof s);
    assert_int_equal(gpu_heap_stats(gone, &s), GPU_ERR_DESTROYED);
    assert_int_equal(gpu_last_error(), GPU_ERR_DESTROYED);
    char json[64];
    assert_int_equal(gpu_heap_stats_json(gone, json, sizeof json), GPU_ERR_DESTROYED);
    assert_int_equal(gpu_heap_trim(gone, 0), GPU_ERR_DESTROYED);
    assert_int_equal(gpu_last_error(), GPU_ERR_DESTROYED);

    assert_int_equal(handler_calls, 8);
    gpu_set_error_handler(old, NULL);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* ---- backend messages are per thread ------------------------------------------ */

#define RACE_ROUNDS 20000

typedef struct racer {
    vmm_backend *b;
    uintptr_t va;
    size_t size;
    int mismatches;
    pthread_barrier_t *start;
} racer;

/* Fails one backend call again and again, each time a different way from the
 * other racer (an unaligned map against an unaligned unmap), and checks that
 * the message it reads names its own call. */
static void *race(void *arg) {
    racer *r = arg;
    pthread_barrier_wait(r->start);
    for (int i = 0; i < RACE_ROUNDS; i++) {
        int rc = r->size == 1 ? r->b->ops->map(r->b, r->va + 4096, 2 * MiB, 0)
                              : r->b->ops->unmap(r->b, r->va + 4096, 2 * MiB);
        const char *want = r->size == 1 ? "map(" : "unmap(";
        const char *msg = vmm_error();
        bool own = rc != GPU_OK && strstr(msg, want) && (r->size == 1 ? !strstr(msg, "unmap(") : true);
        r->mismatches += !own;
    }
    return NULL;
}

static void test_backend_messages_per_thread(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    vmm_backend *b;
    assert_int_equal(vmm_host_open(&cfg, &b), GPU_OK);
    uintptr_t va;
    assert_int_equal(b->ops->reserve(b, 64 * MiB, b->caps.granularity, &va), GPU_OK);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    racer r[2] = {{b, va, 1, 0, &start}, {b, va, 2, 0, &start}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    assert_int_equal(r[0].mismatches, 0);
    assert_int_equal(r[1].mismatches, 0);
    assert_int_equal(b->ops->unreserve(b, va, 64 * MiB), GPU_OK);
    b->ops->close(b);
}

/* ---- internal answers are not public codes ------------------------------------ */

static void test_internal_answers(void **state) {
    (void)state;
    /* No public code is one of the internal answers. */
    for (int e = GPU_ERR_PAUSED; e <= GPU_OK; e++) {
        assert_int_not_equal(e, GH_MISS);
        assert_int_not_equal(e, GH_PENDING);
    }
    /* An event not yet complete is pending, not "busy". */
    gpu_config_t cfg = host_config(64 * GiB, 0, 0);
    vmm_backend *b;
    assert_int_equal(vmm_host_open(&cfg, &b), GPU_OK);
    vmm_host_set_event_delay(b, 2);
    vmm_event ev;
    assert_int_equal(b->ops->event_record(b, 0, &ev), GPU_OK);
    assert_int_equal(b->ops->event_query(b, ev), GH_PENDING);
    assert_int_equal(b->ops->event_query(b, ev), GH_PENDING);
    assert_int_equal(b->ops->event_query(b, ev), GPU_OK);
    b->ops->event_release(b, ev);
    b->ops->close(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handler_that_calls_gpuheap),
        cmocka_unit_test(test_backend_messages_per_thread),
        cmocka_unit_test(test_internal_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
