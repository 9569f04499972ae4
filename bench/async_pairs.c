/*
 * async_pairs.c — stream-ordered malloc+free pairs: gpuheap against
 * cudaMallocAsync, side by side in one process on one stream.
 *
 * For each size from 256 B to 1 GiB: a warm loop of N pairs of
 * gpu_malloc_async+gpu_free_async on a stream, then one stream sync, against the
 * same loop of cudaMallocAsync+cudaFreeAsync on the device's default pool with its
 * release threshold at the maximum (so the pool keeps its memory, as gpuheap does).
 * The loop time over N is the figure: the cost to the calling thread, the sync
 * included. Five rounds, alternating the allocators; the median round is kept.
 * Goal (issue 3): gpuheap at least 5x faster at every size.
 *
 *   gpuheap-async-pairs [--json FILE]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "cudart_util.h"
#include "gpuheap.h"

/* ns per pair of n gpuheap pairs on stream s, the final sync included. */
static double heap_loop(size_t size, int n, cudart_stream s) {
    double t0 = (double)now_ns();
    for (int i = 0; i < n; i++) {
        void *p = gpu_malloc_async(size, s);
        if (!p || gpu_free_async(p, s) != GPU_OK) {
            fprintf(stderr, "gpuheap failed at %zu bytes: %s\n", size, gpu_strerror(gpu_last_error()));
            exit(1);
        }
    }
    cudart.cudaStreamSynchronize(s);
    return ((double)now_ns() - t0) / n;
}

static double cuda_loop(size_t size, int n, cudart_stream s) {
    double t0 = (double)now_ns();
    for (int i = 0; i < n; i++) {
        void *p = NULL;
        if (cudart.cudaMallocAsync(&p, size, s) != CUDART_SUCCESS || cudart.cudaFreeAsync(p, s) != CUDART_SUCCESS) {
            fprintf(stderr, "cudaMallocAsync failed at %zu bytes\n", size);
            exit(1);
        }
    }
    cudart.cudaStreamSynchronize(s);
    return ((double)now_ns() - t0) / n;
}

int main(int argc, char **argv) {
    const char *json = argc > 2 && !strcmp(argv[1], "--json") ? argv[2] : NULL;
    char why[256] = "cudaSetDevice(0) failed", name[128] = "?";
    if (cudart_load(why, sizeof why) != 0 || cudart.cudaSetDevice(0) != CUDART_SUCCESS) {
        printf("no GPU (%s): this benchmark compares against cudaMallocAsync and needs one\n", why);
        return 0;
    }
    cudart_device_name(0, name, sizeof name);
    cudart_mempool pool;
    cudart_stream s;
    cudart_error e = cudart_keep_all_pool(&s, &pool);
    if (e != CUDART_SUCCESS) {
        printf("cudaMallocAsync setup: %s\n", cudart_strerror(e));
        return 1;
    }
    static const size_t sizes[] = {256, 4096, 65536, 1 << 20, 16 << 20, 256 << 20, 1 << 30};
    FILE *out = json ? fopen(json, "w") : NULL;
    if (out) fprintf(out, "{\"benchmark\":\"async_pairs\",\"device\":\"%s\",\"unit\":\"ns per pair\",\"rows\":[", name);
    printf("stream-ordered malloc+free pairs on %s, one stream, ns per pair (loop of N pairs + one sync, median of 5 rounds)\n", name);
    printf("%10s %12s %16s %10s\n", "size", "gpuheap", "cudaMallocAsync", "speed-up");
    double worst = 1e30;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t size = sizes[k];
        int n = 20000;
        heap_loop(size, 1000, s); /* warm both */
        cuda_loop(size, 1000, s);
        double a[5], b[5];
        for (int r = 0; r < 5; r++) {
            a[r] = heap_loop(size, n, s);
            b[r] = cuda_loop(size, n, s);
        }
        double ma = bench_quantiles(a, 5, NULL), mb = bench_quantiles(b, 5, NULL);
        double ratio = mb / ma;
        if (ratio < worst) worst = ratio;
        printf("%10zu %12.1f %16.1f %9.1fx\n", size, ma, mb, ratio);
        if (out) fprintf(out, "%s{\"size\":%zu,\"gpuheap_ns\":%.1f,\"cudaMallocAsync_ns\":%.1f,\"speedup\":%.2f}", k ? "," : "", size, ma, mb, ratio);
    }
    gpu_stats_t st;
    gpu_heap_stats(NULL, &st);
    printf("slowest ratio %.1fx (goal: 5x at every size); gpuheap events %llu, fences %llu, extents %llu\n", worst,
           (unsigned long long)st.stream_events, (unsigned long long)st.fences, (unsigned long long)st.extents);
    if (out) {
        fprintf(out, "],\"min_speedup\":%.2f}\n", worst);
        fclose(out);
    }
    return 0;
}
