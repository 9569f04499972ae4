/*
 * test_trace.c — the trace format, written, read back and replayed, on the host
 * backend.
 *
 * A trace is only useful if it is complete and replays to the same heap: every
 * call appears once with the arguments and results the caller saw, the backend
 * events match the heap's own counts, and replaying the calls on a fresh heap of
 * the same configuration leads it through the same states (same peaks, same
 * maps). Threads record into their own buffers and a writer thread formats them,
 * so a multi-threaded run must lose nothing either, including what a thread
 * recorded just before it exited.
 */
#include <pthread.h>

#include "util.h"

#include "trace_replay.h"

static char trace_path[64];

static int setup(void **state) {
    (void)state;
    snprintf(trace_path, sizeof trace_path, "/tmp/gpuheap-trace-XXXXXX");
    int fd = mkstemp(trace_path);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    (void)gpu_trace_stop(); /* a failed test may leave its trace running */
    unlink(trace_path);
    return 0;
}

static tr_trace load(void) {
    tr_trace t;
    char err[256];
    if (tr_load(trace_path, &t, err, sizeof err) != 0) fail_msg("tr_load: %s", err);
    assert_int_equal(t.bad_lines, 0);
    return t;
}

/* gpuheap as a replay allocator, on a heap the test owns. */
static void *heap_alloc(void *ctx, size_t size, size_t align, unsigned flags) {
    if (flags) return gpu_heap_malloc_flags(ctx, size, flags);
    if (align > GPU_MIN_ALIGNMENT) return gpu_heap_malloc_aligned(ctx, size, align);
    return gpu_heap_malloc(ctx, size);
}
static int heap_free_fn(void *ctx, void *p) { return gpu_heap_free(ctx, p); }
static void *heap_realloc_fn(void *ctx, void *p, size_t old, size_t size) {
    (void)old;
    return gpu_heap_realloc(ctx, p, size);
}
static int heap_trim_fn(void *ctx, size_t keep) { return gpu_heap_trim(ctx, keep); }
static int heap_protect_fn(void *ctx, void *p, size_t size, int prot) { return gpu_heap_protect(ctx, p, size, prot); }

static tr_allocator heap_allocator(gpu_heap_t *h) {
    return (tr_allocator){.name = "gpuheap", .ctx = h, .alloc = heap_alloc, .free = heap_free_fn,
                          .realloc = heap_realloc_fn, .trim = heap_trim_fn,
                          .protect = heap_protect_fn};
}

/* ---- the line format ------------------------------------------------------------- */

static void test_parse_line(void **state) {
    (void)state;
    tr_event e;
    assert_int_equal(tr_parse_line("# gpuheap trace 1\n", &e), 0);
    assert_int_equal(tr_parse_line("\n", &e), 0);
    assert_int_equal(tr_parse_line("1200 77 malloc 0x7f0000000000 0x0 0x0 1000 256 1 0x7f0000200000 0 85\n", &e), 1);
    assert_int_equal(e.t_ns, 1200);
    assert_int_equal(e.tid, 77);
    assert_int_equal(e.op, TR_MALLOC);
    assert_int_equal(e.heap, 0x7f0000000000ull);
    assert_int_equal(e.size, 1000);
    assert_int_equal(e.arg, 256);
    assert_int_equal(e.flags, 1);
    assert_int_equal(e.result, 0x7f0000200000ull);
    assert_int_equal(e.rc, 0);
    assert_int_equal(e.dur_ns, 85);
    assert_int_equal(tr_parse_line("5 1 free 0x10 0x0 0x7f00 0 0 0 0x0 -3 9", &e), 1);
    assert_int_equal(e.op, TR_FREE);
    assert_int_equal(e.rc, -3);
    /* A later version's op is kept, as unknown; a broken line is refused. */
    assert_int_equal(tr_parse_line("5 1 commit 0x10 0x0 0x7f00 4096 0 0 0x0 0 9", &e), 1);
    assert_int_equal(e.op, TR_UNKNOWN);
    assert_int_equal(tr_parse_line("5 1 free 0x10 0x0", &e), -1);
    assert_int_equal(tr_parse_line("5 1 free 0x10 0x0 0x7f00 0 0 0 0x0 0 9 extra", &e), -1);
}

static void test_start_stop_errors(void **state) {
    (void)state;
    assert_int_equal(gpu_trace_stop(), GPU_OK); /* none running */
    assert_int_equal(gpu_trace_start(NULL), GPU_ERR_INVALID);
    assert_int_equal(gpu_trace_start("/nonexistent-dir/x.trace"), GPU_ERR_INVALID);
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    assert_int_equal(gpu_trace_start(trace_path), GPU_ERR_INVALID);
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    tr_trace t = load();
    assert_int_equal(t.n, 0);
    tr_free(&t);
}

/* ---- record, read, replay ---------------------------------------------------------------- */

/* Every kind of call, failures included. Returns the number of application calls. */
static size_t workload(gpu_heap_t *h, uint64_t seed) {
    enum { SLOTS = 64 };
    void *p[SLOTS] = {0};
    size_t calls = 0;
    uint64_t rng = seed;
    for (int step = 0; step < 4000; step++) {
        rng = mix64(rng);
        size_t i = rng % SLOTS;
        unsigned kind = (unsigned)(rng >> 8) % 16;
        if (!p[i]) {
            size_t size = kind < 8 ? (rng >> 16) % (40 * KiB) : kind < 13 ? (rng >> 16) % (5 * MiB) : 1 + (rng >> 16) % 1000;
            if (kind == 13) p[i] = gpu_heap_malloc_aligned(h, size, 64 * KiB);
            else if (kind == 14) p[i] = gpu_heap_calloc(h, 1, size);
            else if (kind == 15) p[i] = gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED);
            else p[i] = gpu_heap_malloc(h, size);
            assert_non_null(p[i]);
            calls++;
            if (kind == 15) {
                assert_int_equal(gpu_heap_protect(h, p[i], gpu_heap_malloc_usable_size(h, p[i]), GPU_PROT_READ), GPU_OK);
                calls++;
            }
        } else if (kind < 7) {
            assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
            p[i] = NULL;
            calls++;
        } else if (kind < 12) {
            void *q = gpu_heap_realloc(h, p[i], 1 + (rng >> 24) % (6 * MiB));
            assert_non_null(q);
            p[i] = q;
            calls++;
        } else if (kind == 12) {
            assert_int_equal(gpu_heap_trim(h, (rng >> 24) % (8 * MiB)), GPU_OK);
            calls++;
        } else if (kind == 13) { /* failures are recorded too */
            assert_int_equal(gpu_heap_free(h, (char *)p[i] + 1), GPU_ERR_NOT_LIVE);
            calls++;
        }
    }
    for (size_t k = 0; k < SLOTS; k++)
        if (p[k]) assert_int_equal(gpu_heap_free(h, p[k]), GPU_OK), calls++;
    return calls;
}

static void test_record_and_replay(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    size_t calls = workload(h, 7);
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    gpu_stats_t rec = STATS(h);

    tr_trace t = load();
    tr_summary s;
    tr_summarize(&t, &s);
    /* Every application call once; backend events as the heap counted them. */
    size_t app = 0, failed = 0;
    uint64_t heap_id = t.n ? t.ev[0].heap : 0;
    for (size_t i = 0; i < t.n; i++) {
        const tr_event *e = &t.ev[i];
        assert_int_equal(e->heap, heap_id); /* one heap: its reservation's base */
        if (e->result && (e->op == TR_MALLOC || e->op == TR_REALLOC))
            assert_true(e->result >= heap_id && e->result - heap_id < rec.reserved_bytes);
        if (e->op <= TR_TRIM) {
            app++;
            failed += e->rc != 0;
        }
        if (i) assert_true(t.ev[i - 1].t_ns <= e->t_ns + e->dur_ns); /* sorted */
    }
    assert_int_equal(app, calls);
    assert_true(failed > 0);
    size_t creates = 0, accesses = 0;
    for (size_t i = 0; i < t.n; i++) creates += t.ev[i].op == TR_CREATE, accesses += t.ev[i].op == TR_ACCESS;
    assert_int_equal(creates, rec.backend_create);
    assert_int_equal(accesses, rec.backend_set_access);
    assert_int_equal(s.maps, rec.backend_map);
    assert_int_equal(s.unmaps, rec.backend_unmap);
    assert_int_equal(s.fences, rec.backend_fence);
    assert_int_equal(s.peak_mapped, rec.peak_mapped_bytes);
    assert_int_equal(s.threads, 1);

    /* The replay on a fresh heap of the same configuration goes the same way. */
    gpu_heap_t *h2 = HEAP_NEW(0);
    tr_allocator a = heap_allocator(h2);
    tr_result r;
    assert_int_equal(tr_replay(&t, &a, &r), 0);
    assert_int_equal(r.failed, 0);
    assert_int_equal(r.conflicts, 0);
    assert_int_equal(r.peak_live, s.peak_live);
    gpu_stats_t rep = STATS(h2);
    assert_int_equal(rep.peak_live_bytes, rec.peak_live_bytes);
    assert_int_equal(rep.peak_mapped_bytes, rec.peak_mapped_bytes);
    assert_int_equal(rep.backend_map, rec.backend_map);
    assert_int_equal(rep.backend_copy, rec.backend_copy);
    assert_int_equal(rep.copy_bytes, rec.copy_bytes);
    assert_int_equal(rep.live_blocks, 0);
    tr_free(&t);
    HEAP_DESTROY(h2);
    HEAP_DESTROY(h);
}

/* ---- threads --------------------------------------------------------------------------- */

enum { THREADS = 4, PAIRS = 20000, SHORT_PAIRS = 100 };

typedef struct worker {
    gpu_heap_t *h;
    size_t pairs;
} worker;

static void *pairs_thread(void *arg) {
    worker *w = arg;
    for (size_t i = 0; i < w->pairs; i++) {
        void *p = gpu_heap_malloc(w->h, 256 + (i % 64) * 512);
        if (!p || gpu_heap_free(w->h, p) != GPU_OK) return (void *)1;
    }
    return NULL;
}

/* 4 threads fill many buffers each; 2 more record a few events and exit before
 * the trace stops. Nothing is lost, and the replay matches every free. */
static void test_threads_lose_nothing(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    pthread_t th[THREADS + 2];
    worker w[THREADS + 2];
    for (int i = 0; i < THREADS + 2; i++) {
        w[i] = (worker){h, i < THREADS ? PAIRS : SHORT_PAIRS};
        assert_int_equal(pthread_create(&th[i], NULL, pairs_thread, &w[i]), 0);
    }
    for (int i = 0; i < THREADS + 2; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    tr_trace t = load();
    tr_summary s;
    tr_summarize(&t, &s);
    assert_int_equal(s.mallocs, THREADS * PAIRS + 2 * SHORT_PAIRS);
    assert_int_equal(s.frees, THREADS * PAIRS + 2 * SHORT_PAIRS);
    assert_int_equal(s.threads, THREADS + 2);
    gpu_heap_t *h2 = HEAP_NEW(0);
    tr_allocator a = heap_allocator(h2);
    tr_result r;
    assert_int_equal(tr_replay(&t, &a, &r), 0);
    assert_int_equal(r.failed, 0);
    assert_int_equal(r.skipped, 0); /* every free found its malloc */
    assert_int_equal(STATS(h2).live_blocks, 0);
    tr_free(&t);
    HEAP_DESTROY(h2);

    /* A second session in the same process starts clean. */
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    void *p = gpu_heap_malloc(h, 10);
    gpu_heap_free(h, p);
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    t = load();
    tr_summarize(&t, &s);
    assert_int_equal(s.mallocs, 1);
    assert_int_equal(s.frees, 1);
    tr_free(&t);
    HEAP_DESTROY(h);
}


/* One thread records a few calls and exits before any buffer filled: no writer
 * ran yet, and its records must still reach the file (a PyTorch trace once lost
 * its autograd thread's calls this way). */
static void test_thread_exits_before_any_batch(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    pthread_t th;
    worker w = {h, SHORT_PAIRS};
    void *ret;
    assert_int_equal(pthread_create(&th, NULL, pairs_thread, &w), 0);
    pthread_join(th, &ret);
    assert_null(ret);
    void *p = gpu_heap_malloc(h, 10); /* and the main thread a call of its own */
    gpu_heap_free(h, p);
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    tr_trace t = load();
    tr_summary s;
    tr_summarize(&t, &s);
    assert_int_equal(s.mallocs, SHORT_PAIRS + 1);
    assert_int_equal(s.frees, SHORT_PAIRS + 1);
    assert_int_equal(s.threads, 2);
    tr_free(&t);
    HEAP_DESTROY(h);
}
/* A child of fork records nothing and leaves the parent's file intact. */
static void test_fork(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    for (int i = 0; i < 3000; i++) gpu_heap_free(h, gpu_heap_malloc(h, 512)); /* some buffered, some written */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 5000; i++) gpu_heap_free(h, gpu_heap_malloc(h, 512));
        exit(gpu_trace_stop() == GPU_OK ? 0 : 1); /* at exit too: nothing to write */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < 1000; i++) gpu_heap_free(h, gpu_heap_malloc(h, 512));
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    tr_trace t = load();
    tr_summary s;
    tr_summarize(&t, &s);
    assert_int_equal(s.mallocs, 4000);
    assert_int_equal(s.frees, 4000);
    assert_int_equal(s.threads, 1);
    tr_free(&t);
    HEAP_DESTROY(h);
}

/* GPUHEAP_TRACE's %p becomes the process id: a fresh process (this program again,
 * as env_child below) writes its own file under the expanded name. */
static void test_env_pid(void **state) {
    (void)state;
    char spec[96], path[96];
    snprintf(spec, sizeof spec, "%s.%%p", trace_path);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("GPUHEAP_TRACE", spec, 1);
        execl("/proc/self/exe", "test_trace", "--env-child", (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    snprintf(path, sizeof path, "%s.%d", trace_path, (int)pid);
    tr_trace t;
    char err[256];
    if (tr_load(path, &t, err, sizeof err) != 0) fail_msg("%s: %s", path, err);
    unlink(path);
    tr_summary sum;
    tr_summarize(&t, &sum);
    assert_int_equal(sum.mallocs, 3);
    assert_int_equal(sum.frees, 3);
    tr_free(&t);
}

/* The child of test_env_pid: a heap's first calls, traced by GPUHEAP_TRACE alone. */
static int env_child(void) {
    gpu_config_t cfg = host_config(1 * GiB, 0, 0);
    gpu_heap_t *h;
    if (gpu_heap_create(&cfg, &h) != GPU_OK) return 1;
    for (int i = 0; i < 3; i++)
        if (gpu_heap_free(h, gpu_heap_malloc(h, 4096)) != GPU_OK) return 1;
    return gpu_heap_destroy(h) == GPU_OK ? 0 : 1;
}

/* A gzip-compressed trace reads the same. */
static void test_gzip(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    assert_int_equal(gpu_trace_start(trace_path), GPU_OK);
    workload(h, 11);
    assert_int_equal(gpu_trace_stop(), GPU_OK);
    HEAP_DESTROY(h);
    tr_trace plain = load();
    char cmd[256], gz[80];
    snprintf(gz, sizeof gz, "%s.gz", trace_path);
    snprintf(cmd, sizeof cmd, "gzip -c '%s' > '%s'", trace_path, gz);
    if (system(cmd) != 0) skip();
    tr_trace t;
    char err[256];
    assert_int_equal(tr_load(gz, &t, err, sizeof err), 0);
    unlink(gz);
    assert_int_equal(t.n, plain.n);
    for (size_t i = 0; i < t.n; i++) {
        assert_int_equal(t.ev[i].op, plain.ev[i].op);
        assert_int_equal(t.ev[i].result, plain.ev[i].result);
    }
    tr_free(&t);
    tr_free(&plain);
}

/* The summary's physical peak counts handles (created less released), not mapped
 * bytes: a handle mapped at two addresses (a paged heap's lingering page) counts
 * once. It names the call that first reached the peak — the one on the thread
 * whose span holds the create, not another thread's call at the same moment —
 * and what the backend did in it. The trace is test/data/lingering-page.trace. */
static const char *lingering_trace; /* its path: the program's first argument */

/* The fixture copied to trace_path, without its lines that contain skip (NULL: all). */
static void copy_fixture(const char *skip) {
    FILE *in = fopen(lingering_trace, "r"), *out = fopen(trace_path, "w");
    assert_non_null(in);
    assert_non_null(out);
    char line[512];
    while (fgets(line, sizeof line, in))
        if (!skip || !strstr(line, skip)) fputs(line, out);
    fclose(in);
    fclose(out);
}

static void test_summary_physical_peak(void **state) {
    (void)state;
    if (!lingering_trace) skip();
    copy_fixture(NULL);
    tr_trace t = load();
    tr_summary s;
    tr_summarize(&t, &s);
    assert_int_equal(s.peak_physical, 3 * 2 * MiB);
    assert_int_equal(s.peak_mapped, 4 * 2 * MiB); /* the lingering page twice */
    assert_true(s.peak_call < t.n);
    const tr_event *c = &t.ev[s.peak_call];
    assert_int_equal(c->op, TR_MALLOC);
    assert_int_equal(c->tid, 7);
    assert_int_equal(c->result, 0x2000000);
    assert_int_equal(s.peak_call_nth, 4); /* after the first malloc, its free and thread 9's malloc, which ends first */
    assert_int_equal(s.calls, 4);
    assert_int_equal(s.peak_work.creates, 1);
    assert_int_equal(s.peak_work.releases, 1);
    assert_int_equal(s.peak_work.maps, 2);
    assert_int_equal(s.peak_work.unmaps, 1);
    assert_int_equal(s.peak_work.fences, 0);
    tr_free(&t);

    /* Without its creates (a heap made before the trace started): no physical peak, no call. */
    copy_fixture(" create ");
    t = load();
    tr_summarize(&t, &s);
    assert_int_equal(s.peak_physical, 0);
    assert_int_equal(s.peak_call, SIZE_MAX);
    tr_free(&t);
}

/* ---- the replay's halfway hook ------------------------------------------------------ */

/* An allocator that hands out addresses from a counter and counts its calls. */
typedef struct counting {
    uintptr_t next;
    size_t calls, at_half, halves;
} counting;
static void *count_alloc(void *ctx, size_t size, size_t align, unsigned flags) {
    (void)size, (void)align, (void)flags;
    counting *c = ctx;
    c->calls++;
    return (void *)(c->next += 4096);
}
static int count_free(void *ctx, void *p) {
    (void)p;
    ((counting *)ctx)->calls++;
    return 0;
}
static void count_halfway(void *ctx) {
    counting *c = ctx;
    c->at_half = c->calls;
    c->halves++;
}

static void test_replay_halfway(void **state) {
    (void)state;
    tr_trace t = {0};
    /* 5 pairs, then a failed malloc (skipped), then 5 more pairs: 21 calls; the
     * hook comes before the 11th (the failed one), with 10 replayed. */
    uint64_t at = 1000;
    for (int i = 0; i < 11; i++) {
        bool failed = i == 5;
        tr_event m = {.t_ns = at, .op = TR_MALLOC, .size = 4096, .result = failed ? 0 : 0x100000 + (uint64_t)i * 4096,
                      .rc = failed ? GPU_ERR_OUT_OF_MEMORY : 0, .line = at};
        assert_int_equal(tr_push(&t, &m), 0);
        at += 10;
        if (failed) continue;
        tr_event f = {.t_ns = at, .op = TR_FREE, .addr = m.result, .line = at};
        assert_int_equal(tr_push(&t, &f), 0);
        at += 10;
    }
    counting c = {.next = 1 << 20};
    tr_allocator a = {.name = "counting", .ctx = &c, .alloc = count_alloc, .free = count_free, .halfway = count_halfway};
    tr_result r;
    assert_int_equal(tr_replay(&t, &a, &r), 0);
    assert_int_equal(c.halves, 1);
    assert_int_equal(c.at_half, 10);
    assert_int_equal(c.calls, 20);
    assert_int_equal(r.skipped, 1);
    /* Without the hook the replay goes the same way. */
    counting c2 = {.next = 1 << 20};
    a.ctx = &c2;
    a.halfway = NULL;
    assert_int_equal(tr_replay(&t, &a, &r), 0);
    assert_int_equal(c2.calls, 20);
    assert_int_equal(c2.halves, 0);
    tr_free(&t);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--env-child")) return env_child();
    if (argc > 1) lingering_trace = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_line),
        cmocka_unit_test_setup_teardown(test_start_stop_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_and_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_lose_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thread_exits_before_any_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gzip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_pid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_summary_physical_peak, setup, teardown),
        cmocka_unit_test(test_replay_halfway),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
