/*
 * test_events.c — no driver call is made with the heap's lock held.
 *
 * DESIGN.md §2: driver VMM calls take microseconds to milliseconds and serialize,
 * so the heap never holds its lock across one. This suite puts a backend of its
 * own between the heap and the host backend: before every call it forwards — the
 * counted ones and the uncounted ones alike (event release, capture state), which
 * the fault wrapper's hook does not see — it tries the heap's lock, which must be
 * free. The workload seals the quarantine on events that complete only after a
 * few queries, fences with sealed batches waiting (the fence retires them, and
 * their events must be given back later, without the lock: events.c), reaps,
 * frees on streams, trims, and closes the heap.
 */
#include "util.h"

#include "api/api.h"
#include "core/internal.h"

#define G (64 * KiB)

/* The wrapper: forwards every op the heap uses to the host backend. */
typedef struct watch {
    vmm_backend base; /* first: a vmm_backend * is a watch * */
    vmm_ops ops;
    vmm_backend *inner;
} watch;

static gpu_heap_t *watched;  /* the heap whose lock is tried; NULL while it opens or after it closed */
static uint64_t calls_seen[VMM_OP_COUNT + 2], held_calls;
static const char *held_op;
enum { OP_RELEASE_EVENT = VMM_OP_COUNT, OP_CAPTURING };

static const char *op_name(int op) {
    static const char *const names[] = {[VMM_OP_CREATE] = "create", [VMM_OP_RELEASE] = "release", [VMM_OP_MAP] = "map",
                                        [VMM_OP_UNMAP] = "unmap", [VMM_OP_SET_ACCESS] = "set_access",
                                        [VMM_OP_FENCE] = "fence", [VMM_OP_EVENT_RECORD] = "event_record",
                                        [VMM_OP_EVENT_QUERY] = "event_query", [VMM_OP_EVENT_WAIT] = "event_wait",
                                        [OP_RELEASE_EVENT] = "event_release", [OP_CAPTURING] = "capturing"};
    return op < (int)(sizeof names / sizeof names[0]) && names[op] ? names[op] : "other";
}

/* Before a backend call: the heap's lock must be free. */
static void enter(int op) {
    calls_seen[op]++;
    if (!watched) return;
    if (heap_trylock(watched)) {
        heap_unlock(watched);
        return;
    }
    held_calls++;
    held_op = op_name(op);
}

#define IN(b) (((watch *)(b))->inner)
static int w_reserve(vmm_backend *b, size_t s, size_t a, uintptr_t *va) { enter(VMM_OP_RESERVE); return IN(b)->ops->reserve(IN(b), s, a, va); }
static int w_unreserve(vmm_backend *b, uintptr_t va, size_t s) { enter(VMM_OP_UNRESERVE); return IN(b)->ops->unreserve(IN(b), va, s); }
static int w_create(vmm_backend *b, size_t s, vmm_handle *o) { enter(VMM_OP_CREATE); return IN(b)->ops->create(IN(b), s, o); }
static int w_release(vmm_backend *b, vmm_handle hd) { enter(VMM_OP_RELEASE); return IN(b)->ops->release(IN(b), hd); }
static int w_map(vmm_backend *b, uintptr_t va, size_t s, vmm_handle hd) { enter(VMM_OP_MAP); return IN(b)->ops->map(IN(b), va, s, hd); }
static int w_unmap(vmm_backend *b, uintptr_t va, size_t s) { enter(VMM_OP_UNMAP); return IN(b)->ops->unmap(IN(b), va, s); }
static int w_set_access(vmm_backend *b, uintptr_t va, size_t s, gpu_prot_t p) {
    enter(VMM_OP_SET_ACCESS);
    return IN(b)->ops->set_access(IN(b), va, s, p);
}
static int w_fence(vmm_backend *b) { enter(VMM_OP_FENCE); return IN(b)->ops->fence(IN(b)); }
static int w_memset(vmm_backend *b, uintptr_t va, int c, size_t s) { enter(VMM_OP_MEMSET); return IN(b)->ops->memset(IN(b), va, c, s); }
static int w_copy(vmm_backend *b, uintptr_t d, uintptr_t s, size_t n) { enter(VMM_OP_COPY); return IN(b)->ops->copy(IN(b), d, s, n); }
static int w_event_record(vmm_backend *b, uintptr_t st, vmm_event *o) {
    enter(VMM_OP_EVENT_RECORD);
    return IN(b)->ops->event_record(IN(b), st, o);
}
static int w_fence_record(vmm_backend *b, uintptr_t s, vmm_event *o) { enter(VMM_OP_EVENT_RECORD); return IN(b)->ops->fence_record(IN(b), s, o); }
static int w_event_query(vmm_backend *b, vmm_event ev) { enter(VMM_OP_EVENT_QUERY); return IN(b)->ops->event_query(IN(b), ev); }
static int w_event_wait(vmm_backend *b, vmm_event ev) { enter(VMM_OP_EVENT_WAIT); return IN(b)->ops->event_wait(IN(b), ev); }
static void w_event_release(vmm_backend *b, vmm_event ev) { enter(OP_RELEASE_EVENT); IN(b)->ops->event_release(IN(b), ev); }
static int w_capturing(vmm_backend *b, uintptr_t st) { enter(OP_CAPTURING); return IN(b)->ops->capturing(IN(b), st); }
static void w_close(vmm_backend *b) {
    IN(b)->ops->close(IN(b));
    free(b);
}

/* A heap on the host backend behind the wrapper (file-backed ops left out: the
 * door refuses what a backend does not offer). */
static gpu_heap_t *open_watched(vmm_backend **host) {
    gpu_config_t cfg = host_config(1 * GiB, G, 0);
    vmm_backend *inner;
    assert_int_equal(vmm_host_open(&cfg, &inner), GPU_OK);
    watch *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->ops = (vmm_ops){.reserve = w_reserve, .unreserve = w_unreserve, .create = w_create, .release = w_release,
                       .map = w_map, .unmap = w_unmap, .set_access = w_set_access, .fence = w_fence,
                       .memset = w_memset, .copy = w_copy, .event_record = w_event_record,
                       .fence_record = w_fence_record, .event_query = w_event_query, .event_wait = w_event_wait,
                       .event_release = w_event_release, .capturing = w_capturing, .close = w_close};
    w->base.ops = &w->ops;
    w->base.caps = inner->caps;
    w->inner = inner;
    gpu_heap_t *h;
    assert_int_equal(gh_heap_create_on(&cfg, &w->base, &h), GPU_OK);
    *host = inner;
    return h;
}

#define S1 ((void *)0x1001)
#define S2 ((void *)0x2002)

static void test_no_backend_call_under_the_lock(void **state) {
    (void)state;
    vmm_backend *host;
    gpu_heap_t *h = open_watched(&host);
    watched = h;
    vmm_host_set_event_delay(host, 3); /* events complete after three queries: seals wait */
    unsigned most_spent = 0;
    void *p[16] = {0};
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < 16; i++) { /* frees into the quarantine, then misses that seal and reap */
            size_t size = (size_t)(1 + (round * 7 + i * 13) % 48) * KiB * (i % 4 == 3 ? 16 : 1);
            if (p[i]) ASSERT_OK(gpu_heap_free(h, p[i]));
            p[i] = gpu_heap_malloc(h, size);
            assert_non_null(p[i]);
        }
        void *a = gpu_heap_malloc_async(h, 3 * G, round % 2 ? S1 : S2); /* stream frees: events, reaps */
        assert_non_null(a);
        ASSERT_OK(gpu_heap_free_async(h, a, round % 2 ? S1 : S2));
        if (round % 10 == 9) {
            ASSERT_OK(gpu_heap_trim(h, SIZE_MAX)); /* a fence while batches are sealed: it retires them */
            heap_lock(h);
            if (h->nspent > most_spent) most_spent = h->nspent;
            heap_unlock(h);
        }
        if (round % 50 == 49) ASSERT_OK(gpu_heap_trim(h, 0)); /* extents given back */
        CHECK_HEAP(h);
    }
    for (int i = 0; i < 16; i++) ASSERT_OK(gpu_heap_free(h, p[i]));
    gpu_stats_t s = STATS(h);
    print_message("%llu seals, %llu stream events, %llu fences; %llu event releases, %llu queries; at most %u spent events\n",
                  (unsigned long long)s.seal_events, (unsigned long long)s.stream_events, (unsigned long long)s.fences,
                  (unsigned long long)calls_seen[OP_RELEASE_EVENT], (unsigned long long)calls_seen[VMM_OP_EVENT_QUERY],
                  most_spent);
    HEAP_DESTROY(h);
    watched = NULL;
    assert_true(s.seal_events > 0 && s.stream_events > 0 && s.fences > 0);
    assert_true(most_spent > 0); /* the fence path that used to destroy events under the lock ran */
    assert_true(calls_seen[OP_RELEASE_EVENT] > 0 && calls_seen[VMM_OP_RELEASE] > 0);
    if (held_calls) fail_msg("%llu backend calls made with the heap's lock held (the last: %s)", (unsigned long long)held_calls, held_op);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_backend_call_under_the_lock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
