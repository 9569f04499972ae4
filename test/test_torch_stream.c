/*
 * test_torch_stream.c — why gpu_torch_free does not reuse a block in stream
 * order on the stream PyTorch passes (README.md, "Frameworks that take an
 * allocator").
 *
 * PyTorch's CUDAPluggableAllocator hands the free function the stream the block
 * was allocated on, and drops Tensor.record_stream (it calls the allocator's
 * record-stream hook only when one was set from C++, which the Python
 * constructor never does). So a block allocated on stream A and used by a kernel
 * on stream B (record_stream(B): NCCL's stream, a copy stream) is freed "on A"
 * while B may still read it. Stream-ordered reuse on A would hand it to A's next
 * allocation at once: the hazard, shown here on the host backend with events
 * that stay incomplete (the kernel on B still running). A plain gpu_free — what
 * gpu_torch_free does — quarantines the block until a context-wide event, which
 * covers B's work too, has completed. White-box for the event knob.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gpuheap.h"
#include "core/internal.h"
#include "util.h"

#define SIZE (1 * MiB)
static void *const stream_a = (void *)(uintptr_t)0xA; /* the allocation stream PyTorch passes */

/* The hazard: freed on A (as PyTorch names it) and reused by A at once, while
 * the work recorded on B has not finished. */
static void test_stream_order_reuses_under_running_work(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    vmm_host_set_event_delay(h->door.b, 1000000); /* nothing the GPU was given has finished: B's kernel runs */
    void *p = gpu_heap_malloc_async(h, SIZE, stream_a);
    assert_non_null(p);
    /* x.record_stream(B); a kernel on B reads p; del x: PyTorch frees p on A */
    assert_int_equal(gpu_heap_free_async(h, p, stream_a), GPU_OK);
    void *q = gpu_heap_malloc_async(h, SIZE, stream_a); /* A's next tensor */
    assert_ptr_equal(q, p); /* handed out while B may still read it */
    assert_int_equal(STATS(h).fences, 0);
    vmm_host_set_event_delay(h->door.b, 0);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* What gpu_torch_free does: a plain free waits for a context-wide cover, which
 * B's work must pass too, before the block is reused on any stream (here it
 * never completes, and the block stays away). */
static void test_plain_free_waits_for_every_stream(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    vmm_host_set_event_delay(h->door.b, 1000000);
    void *p = gpu_heap_malloc(h, SIZE);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    void *q = gpu_heap_malloc_async(h, SIZE, stream_a), *r = gpu_heap_malloc(h, SIZE);
    assert_non_null(q);
    assert_non_null(r);
    assert_ptr_not_equal(q, p);
    assert_ptr_not_equal(r, p);
    assert_int_equal(STATS(h).fences, 0);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    assert_int_equal(gpu_heap_free(h, r), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

/* And during a graph capture of A a stream-ordered free is refused outright
 * (the graph's replays still use the block): a plugin freeing on A would have
 * to fall back to the plain free anyway. */
static void test_stream_free_refused_while_capturing(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *p = gpu_heap_malloc_async(h, SIZE, stream_a);
    assert_non_null(p);
    vmm_host_set_capturing(h->door.b, (uintptr_t)stream_a, true);
    assert_int_equal(gpu_heap_free_async(h, p, stream_a), GPU_ERR_CAPTURING);
    vmm_host_set_capturing(h->door.b, (uintptr_t)stream_a, false);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_order_reuses_under_running_work),
        cmocka_unit_test(test_plain_free_waits_for_every_stream),
        cmocka_unit_test(test_stream_free_refused_while_capturing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
