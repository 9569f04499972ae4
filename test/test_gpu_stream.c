/*
 * test_gpu_stream.c — stream-ordered allocation, graph capture and sparse
 * reservations on a real GPU, contents checked by kernels.
 *
 *  - A block freed on stream S while a long kernel on S still writes it is reused
 *    by S at once (stream order makes that safe) and by another stream only after
 *    the kernel: blocks the other stream fills meanwhile must keep their contents.
 *  - A graph captured on one thread while other threads allocate, free and force
 *    the heap's fences stays valid, and its replays compute the right results.
 *  - Commit and decommit keep the data of committed ranges, checked by a kernel.
 *
 * Exits 77 (skip) without a driver or GPU.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "backend/cuda/loader.h"
#include "cuda_util.h"
#include "gpuheap.h"

#define MiB ((size_t)1 << 20)

#define CU_OK(call)                                                               \
    do {                                                                          \
        CUresult r_ = (call);                                                     \
        if (r_ != CUDA_SUCCESS) fail_msg("%s: %s", #call, cu_util_errname(r_)); \
    } while (0)

static CUdeviceptr dptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }

static void heap_ok(gpu_heap_t *h) {
    char msg[256];
    if (gpu_heap_check(h, msg, sizeof msg) != GPU_OK) fail_msg("heap check: %s", msg);
}

static int heap_setup(void **state) {
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_CUDA;
    cfg.reserve_bytes = (size_t)256 << 30;
    gpu_heap_t *h = NULL;
    if (gpu_heap_create(&cfg, &h) != GPU_OK) return -1;
    *state = h;
    return 0;
}

static int heap_teardown(void **state) {
    cu.cuCtxSynchronize();
    return gpu_heap_destroy(*state) == GPU_OK ? 0 : -1;
}

static gpu_stats_t stats_of(gpu_heap_t *h) {
    gpu_stats_t s;
    gpu_heap_stats(h, &s);
    return s;
}

/* ---- stream reuse ------------------------------------------------------------ */

static void test_stream_reuse_with_running_kernel(void **state) {
    gpu_heap_t *h = *state;
    const size_t size = 64 * MiB, words = size / 4;
    CUstream s1, s2;
    CU_OK(cu.cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CU_OK(cu.cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    void *a = gpu_heap_malloc_async(h, size, s1);
    assert_non_null(a);
    /* ~600 ms of spinning, then the kernel writes a with seed 11: stream 2's
     * work below is done long before. */
    CU_OK(cu_spin_fill(dptr(a), words, 11, 600 * cu_util_cycles_per_ms(), 4, s1));
    assert_int_equal(gpu_heap_free_async(h, a, s1), GPU_OK);
    /* S1 may have it back at once: its next work runs after the kernel. */
    void *again = gpu_heap_malloc_async(h, size, s1);
    assert_ptr_equal(again, a);
    CU_OK(cu_fill(dptr(again), words, 13, s1));
    assert_int_equal(gpu_heap_free_async(h, again, s1), GPU_OK);
    /* S2 must not get it while the kernel runs: whatever it gets, it fills now. */
    void *b[6];
    for (int i = 0; i < 6; i++) {
        b[i] = gpu_heap_malloc_async(h, size, s2);
        assert_non_null(b[i]);
        CU_OK(cu_fill(dptr(b[i]), words, 100 + i, s2));
    }
    CU_OK(cu.cuStreamSynchronize(s2));
    bool running = cu.cuStreamQuery(s1) == CUDA_ERROR_NOT_READY;
    print_message("stream 2 finished its fills %s stream 1's kernel ended\n", running ? "before" : "after");
    assert_true(running); /* else the test proves nothing */
    CU_OK(cu.cuCtxSynchronize());
    for (int i = 0; i < 6; i++) {
        uint64_t bad = cu_check(dptr(b[i]), words, 100 + i, s2);
        if (bad) fail_msg("block %d of stream 2 lost %llu words: stream 1's kernel wrote memory it had freed", i,
                          (unsigned long long)bad);
        assert_int_equal(gpu_heap_free_async(h, b[i], s2), GPU_OK);
    }
    gpu_stats_t s = stats_of(h);
    print_message("stream reuse: %llu events recorded, %llu bytes waiting on streams\n",
                  (unsigned long long)s.stream_events, (unsigned long long)s.stream_free_bytes);
    heap_ok(h);
    /* And once S1's kernel is done, S2 does get the memory back. */
    assert_int_equal(gpu_heap_trim(h, SIZE_MAX), GPU_OK);
    assert_int_equal(stats_of(h).stream_free_blocks, 0);
    CU_OK(cu.cuStreamDestroy(s1));
    CU_OK(cu.cuStreamDestroy(s2));
}

/* ---- graph capture ------------------------------------------------------------ */

typedef struct churn {
    gpu_heap_t *h;
    volatile int stop;
    int errors;
    unsigned long ops;
} churn;

/* Allocates and frees in a loop, big enough to make the heap want fences. */
static void *churn_main(void *arg) {
    churn *c = arg;
    cu_util_init(0);
    CUstream s;
    cu.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
    while (!c->stop) {
        void *p = gpu_heap_malloc(c->h, 96 * MiB);
        void *q = gpu_heap_malloc_async(c->h, 1 * MiB, s);
        if (!p || !q) c->errors++;
        if (p) c->errors += gpu_heap_free(c->h, p) != GPU_OK;
        if (q) c->errors += gpu_heap_free_async(c->h, q, s) != GPU_OK;
        (void)gpu_heap_trim(c->h, 0); /* refused while capturing, works otherwise */
        c->ops++;
    }
    cu.cuStreamSynchronize(s);
    cu.cuStreamDestroy(s);
    return NULL;
}

static void capture_once(gpu_heap_t *h, bool blocking) {
    CUresult (*begin)(CUstream, CUstreamCaptureMode) = (CUresult(*)(CUstream, CUstreamCaptureMode))cuda_loader_proc("cuStreamBeginCapture");
    CUresult (*end)(CUstream, CUgraph *) = (CUresult(*)(CUstream, CUgraph *))cuda_loader_proc("cuStreamEndCapture");
    CUresult (*inst)(CUgraphExec *, CUgraph, unsigned long long) =
        (CUresult(*)(CUgraphExec *, CUgraph, unsigned long long))cuda_loader_proc("cuGraphInstantiateWithFlags");
    CUresult (*launch)(CUgraphExec, CUstream) = (CUresult(*)(CUgraphExec, CUstream))cuda_loader_proc("cuGraphLaunch");
    assert_non_null(begin);
    assert_non_null(end);
    assert_non_null(inst);
    assert_non_null(launch);

    churn c = {.h = h};
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, churn_main, &c);
    CUstream s;
    CU_OK(cu.cuStreamCreate(&s, blocking ? CU_STREAM_DEFAULT : CU_STREAM_NON_BLOCKING));
    const size_t words = 4 * MiB / 4;
    void *out = gpu_heap_malloc(h, 4 * MiB); /* allocated before: its address is baked into the graph */
    if (!blocking) gpu_capture_begin();      /* a non-blocking capture the heap cannot see by itself */
    CU_OK(begin(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    void *tmp = gpu_heap_malloc_async(h, 4 * MiB, s); /* during the capture: allocated at once */
    assert_non_null(tmp);
    for (int k = 0; k < 50; k++) { /* long enough for the other threads to run into the heap's slow paths */
        CU_OK(cu_fill(dptr(tmp), words, 40 + k, s));
        CU_OK(cu_fill(dptr(out), words, 41 + k, s));
    }
    assert_int_equal(gpu_heap_free_async(h, tmp, s), GPU_ERR_CAPTURING);
    CUgraph g = NULL;
    CUresult re = end(s, &g);
    if (!blocking) gpu_capture_end();
    c.stop = 1;
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    if (re != CUDA_SUCCESS) fail_msg("the capture was invalidated: %s (other threads made %lu rounds)", cu_util_errname(re), c.ops);
    CUgraphExec ge;
    CU_OK(inst(&ge, g, 0));
    for (int rep = 0; rep < 3; rep++) CU_OK(launch(ge, s));
    CU_OK(cu.cuStreamSynchronize(s));
    assert_int_equal(cu_check(dptr(tmp), words, 40 + 49, s), 0);
    assert_int_equal(cu_check(dptr(out), words, 41 + 49, s), 0);
    print_message("%s capture: valid; other threads made %lu rounds with %d errors meanwhile\n",
                  blocking ? "blocking-stream" : "non-blocking-stream", c.ops, c.errors);
    assert_int_equal(c.errors, 0);
    assert_int_equal(gpu_heap_free_async(h, tmp, s), GPU_OK); /* after the capture: fine */
    assert_int_equal(gpu_heap_free(h, out), GPU_OK);
    CU_OK(cu.cuStreamSynchronize(s));
    CU_OK(cu.cuStreamDestroy(s));
    heap_ok(h);
}

/* Legacy free order and a non-blocking stream — listed before (what gpuheap-run
 * does for the streams a program creates), listed after the kernel below began,
 * or never listed: a kernel on the legacy stream still writes block A, A is freed
 * and comes back at once as B, and B is filled on the non-blocking stream, which
 * the context wait at the release orders after the kernel whether listed or not
 * (the list only lets the fence ask it about captures). Without that wait the
 * fill would run beside the kernel and lose words to its late writes. */
static void test_legacy_order_listed_stream(void **state) {
    gpu_heap_t *h = *state;
    const size_t size = 64 * MiB, words = size / 4;
    const long long cycles = 200 * cu_util_cycles_per_ms();
    static const char *const how[] = {"listed before", "listed after the kernel began", "never listed"};
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_LEGACY), GPU_OK);
    for (int k = 0; k < 3; k++) {
        CUstream nb = NULL;
        CU_OK(cu.cuStreamCreate(&nb, CU_STREAM_NON_BLOCKING));
        if (k == 0) assert_int_equal(vmm_cuda_order_track((uintptr_t)nb), GPU_OK);
        void *a = gpu_heap_malloc(h, size);
        assert_non_null(a);
        CU_OK(cu_fill(dptr(a), words, 1, NULL));
        CU_OK(cu_spin_fill(dptr(a), words, 0xF0000000u, cycles, 8, NULL));
        if (k == 1) assert_int_equal(vmm_cuda_order_track((uintptr_t)nb), GPU_OK);
        assert_int_equal(gpu_heap_free(h, a), GPU_OK);
        void *b = gpu_heap_malloc(h, size);
        int running = cu.cuStreamQuery(NULL) == CUDA_ERROR_NOT_READY;
        assert_ptr_equal(b, a);
        CU_OK(cu_fill(dptr(b), words, 0x0F000000u, nb));
        CU_OK(cu.cuStreamSynchronize(nb));
        uint64_t bad = cu_check(dptr(b), words, 0x0F000000u, 0);
        print_message("%s: kernel running when A came back: %s; words lost: %llu\n", how[k], running ? "yes" : "no",
                      (unsigned long long)bad);
        if (bad) fail_msg("%s: B lost %llu words to the kernel still using freed A", how[k], (unsigned long long)bad);
        if (k < 2) vmm_cuda_order_untrack((uintptr_t)nb);
        CU_OK(cu.cuStreamDestroy(nb));
        assert_int_equal(gpu_heap_free(h, b), GPU_OK);
        heap_ok(h);
    }
    assert_int_equal(gpu_set_free_order(GPU_FREE_ORDER_EVENT), GPU_OK);
}

static void test_capture_while_others_allocate(void **state) {
    capture_once(*state, true);
    capture_once(*state, false);
}

/* ---- sparse ----------------------------------------------------------------------- */

static void test_commit_decommit_contents(void **state) {
    gpu_heap_t *h = *state;
    char *r = gpu_heap_reserve(h, 4ull << 30);
    assert_non_null(r);
    const size_t w = MiB / 4; /* words per MiB */
    assert_int_equal(gpu_heap_commit(h, r, 64 * MiB), GPU_OK);
    CU_OK(cu_fill(dptr(r), 16 * w, 7, 0));
    CU_OK(cu_fill(dptr(r + 16 * MiB), 32 * w, 70, 0));
    CU_OK(cu_fill(dptr(r + 48 * MiB), 16 * w, 71, 0));
    assert_int_equal(gpu_heap_commit(h, r + 32 * MiB, 96 * MiB), GPU_OK); /* partly committed */
    CU_OK(cu_fill(dptr(r + 64 * MiB), 64 * w, 8, 0));
    assert_int_equal(gpu_heap_decommit(h, r + 16 * MiB, 32 * MiB), GPU_OK); /* cuts the first commit */
    heap_ok(h);
    assert_int_equal(cu_check(dptr(r), 16 * w, 7, 0), 0);
    assert_int_equal(cu_check(dptr(r + 48 * MiB), 16 * w, 71, 0), 0);
    assert_int_equal(cu_check(dptr(r + 64 * MiB), 64 * w, 8, 0), 0);
    /* The hole is unmapped: a driver memset there fails instead of writing. */
    assert_int_not_equal(cu.cuMemsetD8(dptr(r + 20 * MiB), 0, MiB), CUDA_SUCCESS);
    assert_int_equal(gpu_heap_protect(h, r + 64 * MiB, 64 * MiB, GPU_PROT_READ), GPU_OK);
    assert_int_not_equal(cu.cuMemsetD8(dptr(r + 64 * MiB), 0, MiB), CUDA_SUCCESS);
    assert_int_equal(cu_check(dptr(r + 64 * MiB), 64 * w, 8, 0), 0);
    gpu_stats_t s = stats_of(h);
    assert_int_equal(s.sparse_committed_bytes, 96 * MiB);
    assert_int_equal(gpu_heap_release(h, r), GPU_OK);
    heap_ok(h);
}

int main(void) {
    int rc = cu_util_init(0);
    if (rc) return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_reuse_with_running_kernel, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_legacy_order_listed_stream, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_capture_while_others_allocate, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_commit_decommit_contents, heap_setup, heap_teardown),
    };
    return cmocka_run_group_tests_name("gpu-stream", tests, NULL, NULL);
}
