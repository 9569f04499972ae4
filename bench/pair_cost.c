/*
 * pair_cost.c — gpuheap-pair-cost: what one warm gpu_malloc+gpu_free pair costs,
 * in the counts that do not depend on a noisy machine.
 *
 * For each size it runs warm pairs on the default heap (or, with --explicit, on
 * a heap of its own, or with --async on one stream with gpu_malloc_async and
 * gpu_free_async) and prints, per pair, the driver calls the heap's backend door
 * counted (event records, event queries, fences, maps, unmaps), the seal events
 * and the time, and then which of those records and queries the mallocs made
 * and which the frees. The pairs run inside one function, run_pairs, so that
 * `valgrind --tool=callgrind --toggle-collect=run_pairs` counts the instructions
 * of the pairs alone (bench/pair_cost.sh does that and divides): a figure that
 * two builds can be compared by on a machine that other builds share.
 *
 * It reads the door's counters through the internal headers (linked like the
 * white-box tests). On a machine without a GPU, run it with GPUHEAP_BACKEND=host.
 *
 *   gpuheap-pair-cost [--explicit | --async] [--pairs N] [SIZE ...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "bench_util.h"
#include "core/heap.h"
#include "gpuheap.h"

/* The pairs themselves. */
static int pairs_loop(gpu_heap_t *heap, size_t size, size_t n, void *stream, bool async) {
    for (size_t i = 0; i < n; i++) {
        void *p = async ? gpu_heap_malloc_async(heap, size, stream) : gpu_heap_malloc(heap, size);
        if (!p) return -1;
        if ((async ? gpu_heap_free_async(heap, p, stream) : gpu_heap_free(heap, p)) != GPU_OK) return -1;
    }
    return 0;
}

/* The same pairs, with the door's event records and queries counted apart for
 * the mallocs and the frees: where a pair's driver calls are made. */
static int pairs_split(gpu_heap_t *h, gpu_heap_t *heap, size_t size, size_t n, void *stream, bool async, uint64_t out[4]) {
    _Atomic uint64_t *calls = h->door.counts.calls;
    for (size_t i = 0; i < n; i++) {
        uint64_t r0 = calls[VMM_OP_EVENT_RECORD], q0 = calls[VMM_OP_EVENT_QUERY];
        void *p = async ? gpu_heap_malloc_async(heap, size, stream) : gpu_heap_malloc(heap, size);
        if (!p) return -1;
        uint64_t r1 = calls[VMM_OP_EVENT_RECORD], q1 = calls[VMM_OP_EVENT_QUERY];
        if ((async ? gpu_heap_free_async(heap, p, stream) : gpu_heap_free(heap, p)) != GPU_OK) return -1;
        out[0] += r1 - r0, out[1] += q1 - q0;
        out[2] += calls[VMM_OP_EVENT_RECORD] - r1, out[3] += calls[VMM_OP_EVENT_QUERY] - q1;
    }
    return 0;
}

/* The measured pairs and the warm-up, out of line, so that callgrind's
 * --toggle-collect=run_pairs counts the measured ones alone. */
__attribute__((noipa)) int run_pairs(gpu_heap_t *heap, size_t size, size_t n, void *stream, bool async) {
    return pairs_loop(heap, size, n, stream, async);
}
__attribute__((noipa)) int warm_pairs(gpu_heap_t *heap, size_t size, size_t n, void *stream, bool async) {
    return pairs_loop(heap, size, n, stream, async);
}

typedef struct snap {
    uint64_t calls[VMM_OP_COUNT];
    uint64_t seals;
} snap;

static void take(gpu_heap_t *h, snap *s) {
    for (int i = 0; i < VMM_OP_COUNT; i++) s->calls[i] = atomic_load(&h->door.counts.calls[i]);
    gpu_stats_t st;
    gpu_heap_stats(h, &st);
    s->seals = st.seal_events;
}

static size_t parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K' || *end == 'k') v *= (double)KiB;
    else if (*end == 'M' || *end == 'm') v *= (double)MiB;
    else if (*end == 'G' || *end == 'g') v *= (double)GiB;
    return (size_t)v;
}

int main(int argc, char **argv) {
    static const size_t defaults[] = {256, 4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB};
    size_t sizes[32], nsizes = 0, pairs = 20000;
    bool explicit_heap = false, async = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--explicit")) explicit_heap = true;
        else if (!strcmp(argv[i], "--async")) async = true;
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc) pairs = strtoull(argv[++i], NULL, 10);
        else if (nsizes < 32 && parse_size(argv[i])) sizes[nsizes++] = parse_size(argv[i]);
        else {
            fprintf(stderr, "usage: gpuheap-pair-cost [--explicit | --async] [--pairs N] [SIZE[K|M|G] ...]\n");
            return 2;
        }
    }
    if (!nsizes) {
        nsizes = sizeof defaults / sizeof defaults[0];
        memcpy(sizes, defaults, sizeof defaults);
    }
    gpu_heap_t *heap = NULL;
    if (explicit_heap && gpu_heap_create(NULL, &heap) != GPU_OK) {
        fprintf(stderr, "gpuheap-pair-cost: %s\n", gpu_strerror(gpu_last_error()));
        return 1;
    }
    gpu_heap_t *h = heap ? heap : gpu_heap_default();
    if (!h) {
        fprintf(stderr, "gpuheap-pair-cost: no default heap: %s\n", gpu_strerror(gpu_last_error()));
        return 1;
    }
    void *stream = NULL; /* --async: the device's legacy default stream, a real stream on any backend */
    printf("%s heap, %s pairs, %zu pairs a size; per pair:\n", heap ? "explicit" : "default",
           async ? "stream-ordered" : "plain", pairs);
    printf("%8s | %8s | %7s %7s %7s %7s %7s %7s | %15s %15s\n", "size", "ns", "seals", "records", "queries", "fences", "maps",
           "unmaps", "malloc: rec qry", "free: rec qry");
    for (size_t i = 0; i < nsizes; i++) {
        size_t warm = pairs / 10 + 10;
        if (warm_pairs(heap, sizes[i], warm, stream, async) != 0) {
            fprintf(stderr, "gpuheap-pair-cost: %zu bytes: %s\n", sizes[i], gpu_strerror(gpu_last_error()));
            return 1;
        }
        snap a, b;
        take(h, &a);
        uint64_t t0 = now_ns();
        if (run_pairs(heap, sizes[i], pairs, stream, async) != 0) return 1;
        double ns = (double)(now_ns() - t0) / (double)pairs;
        take(h, &b);
        double n = (double)pairs;
        uint64_t where[4] = {0};
        size_t split = pairs < 2000 ? pairs : 2000;
        if (pairs_split(h, heap, sizes[i], split, stream, async, where) != 0) return 1;
        char lab[32];
        printf("%8s | %8.1f | %7.3f %7.3f %7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f %7.3f\n", size_label(sizes[i], lab, sizeof lab), ns,
               (double)(b.seals - a.seals) / n, (double)(b.calls[VMM_OP_EVENT_RECORD] - a.calls[VMM_OP_EVENT_RECORD]) / n,
               (double)(b.calls[VMM_OP_EVENT_QUERY] - a.calls[VMM_OP_EVENT_QUERY]) / n,
               (double)(b.calls[VMM_OP_FENCE] - a.calls[VMM_OP_FENCE]) / n,
               (double)(b.calls[VMM_OP_MAP] - a.calls[VMM_OP_MAP]) / n,
               (double)(b.calls[VMM_OP_UNMAP] - a.calls[VMM_OP_UNMAP]) / n, (double)where[0] / (double)split,
               (double)where[1] / (double)split, (double)where[2] / (double)split, (double)where[3] / (double)split);
    }
    if (heap) gpu_heap_destroy(heap);
    return 0;
}
