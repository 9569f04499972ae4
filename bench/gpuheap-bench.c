/*
 * gpuheap-bench — gpuheap against cudaMalloc and cudaMallocAsync, scenario by
 * scenario, all in one process and one run, so that every figure can be given as
 * a ratio to its peers on the same card.
 *
 * Scenarios (--only picks some, comma-separated):
 *   pairs    warm malloc+free, 256 B .. 4 GiB: per-pair time in a loop (median and
 *            p99 of batches of 32 pairs) and each pair timed alone (median)
 *   trace    the same loop with gpu_trace_start on and off: what tracing costs
 *   threads  warm pairs on 1, 2, 4, 8, 16 threads: aggregate pairs per second (4 KiB beside
 *            the peers; 64 KiB and 1 MiB, gpuheap alone)
 *   growth   realloc doubling 1 MiB .. 8 GiB, against cudaMalloc + cudaMemcpy +
 *            cudaFree (and the async forms); device bytes copied counted (gpuheap:
 *            its backend door's copy count and bytes)
 *   cold     the first allocation of N bytes, 2 MiB .. 8 GiB, on an empty heap,
 *            against cudaMalloc(N) and a trimmed cudaMallocAsync pool, each round
 *            in a fresh process (--cold-child) where the heap is the program's
 *            first; on a second heap beside this process's default heap; and a
 *            program's first gpu_malloc, its default heap made inside it, beside a
 *            first cudaMalloc in a fresh process of their own
 *   random   RMM's random_allocations workload (allocate with p = 0.73, else free a
 *            random live block; sizes uniform in 1 B .. max; live bytes capped at
 *            16 GiB): time per call, peak physical memory held, peak live
 *   replay   a recorded trace (--trace FILE[.gz]) replayed against each allocator
 * cudaMallocAsync uses the device's default pool with its release threshold at
 * its maximum; its calls are timed without a sync (the cost to the calling
 * thread), and the stream is synchronized, untimed, after each cell. The tables
 * come last; --json writes every figure.
 *
 * Without a GPU it runs gpuheap alone on its host backend, labelled as such:
 * those numbers measure the heap's bookkeeping, not a GPU.
 *
 *   gpuheap-bench [--quick] [--only LIST] [--trace FILE] [--json FILE]
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "cudart_util.h"
#include "gpuheap.h"
#include "replay_peers.h"
#include "trace_replay.h"

static bool gpu, quick;
static char device[256] = "host backend (no GPU)";
static cudart_stream main_stream;
static cudart_mempool pool;
static FILE *json;       /* --json, or NULL */
static FILE *tables;     /* the tables, printed at the end */
static char *tables_text;
static size_t tables_len;
static const char *only;

static bool wanted(const char *name) {
    if (!only) return true;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}

/* ---- the allocators as malloc+free pairs --------------------------------------------- */

typedef int (*pair_fn)(void *ctx, size_t size);

static int heap_pair(void *ctx, size_t size) {
    void *p = gpu_heap_malloc(ctx, size);
    return p && gpu_heap_free(ctx, p) == GPU_OK ? 0 : -1;
}
static int cm_pair(void *ctx, size_t size) {
    (void)ctx;
    void *p;
    return cudart.cudaMalloc(&p, size) == CUDART_SUCCESS && cudart.cudaFree(p) == CUDART_SUCCESS ? 0 : -1;
}
static int cma_pair(void *ctx, size_t size) {
    void *p;
    return cudart.cudaMallocAsync(&p, size, ctx) == CUDART_SUCCESS && cudart.cudaFreeAsync(p, ctx) == CUDART_SUCCESS
               ? 0 : -1;
}

typedef struct lat {
    bool ran, failed;
    size_t samples, batch;
    double median, p99; /* ns per pair */
} lat;

/* warm untimed pairs, then samples of `batch` pairs each timed together, until
 * max_samples or the budget is spent (at least 5). */
static void time_pairs(pair_fn fn, void *ctx, size_t size, size_t batch, size_t warm, size_t max_samples,
                       double budget_s, lat *out) {
    memset(out, 0, sizeof *out);
    out->ran = true;
    out->batch = batch;
    for (size_t i = 0; i < warm; i++)
        if (fn(ctx, size) != 0) {
            out->failed = true;
            return;
        }
    double *v = malloc(max_samples * sizeof *v);
    if (!v) {
        out->failed = true;
        return;
    }
    uint64_t deadline = now_ns() + (uint64_t)(budget_s * 1e9);
    size_t n = 0;
    while (n < max_samples) {
        uint64_t t0 = now_ns();
        for (size_t k = 0; k < batch; k++)
            if (fn(ctx, size) != 0) {
                out->failed = true;
                break;
            }
        uint64_t t1 = now_ns();
        if (out->failed) break;
        v[n++] = (double)(t1 - t0) / (double)batch;
        if (n >= 5 && t1 > deadline) break;
    }
    out->samples = n;
    out->median = bench_quantiles(v, n, &out->p99);
    free(v);
}

static void sync_stream(void) {
    if (gpu) cudart.cudaStreamSynchronize(main_stream);
}

static void json_lat(const char *name, const lat *l) {
    if (!json) return;
    if (!l->ran) {
        fprintf(json, "\"%s\": null", name);
        return;
    }
    fprintf(json, "\"%s\": {\"median_ns\": %.1f, \"p99_ns\": %.1f, \"samples\": %zu, \"batch\": %zu, \"failed\": %s}",
            name, l->median, l->p99, l->samples, l->batch, l->failed ? "true" : "false");
}

/* ---- pairs --------------------------------------------------------------------------- */

static void scenario_pairs(void) {
    static const size_t sizes[] = {256, 4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB, 4 * GiB};
    enum { N = sizeof sizes / sizeof sizes[0], BATCH = 32 };
    size_t samples = quick ? 300 : 2000;
    double budget = quick ? 0.15 : 0.4;
    lat gh[N], gh1[N], cma[N], cma1[N], cm[N], ghx[N], ghh[N];
    memset(cma, 0, sizeof cma), memset(cma1, 0, sizeof cma1), memset(cm, 0, sizeof cm);
    memset(ghx, 0, sizeof ghx), memset(ghh, 0, sizeof ghh);
    /* Where the time goes: the same loop on an explicit heap (no default-heap
     * lookup) and on a host-backend heap (bookkeeping alone, no driver). */
    gpu_heap_t *explicit_heap = NULL, *host_heap = NULL;
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    if (gpu) gpu_heap_create(&cfg, &explicit_heap);
    cfg.backend = GPU_BACKEND_HOST;
    gpu_heap_create(&cfg, &host_heap);
    /* The first size's 2,000 batches take ~3 ms, right after the process starts:
     * with the CPU still ramping up, the default heap's 256 B loop measured 47 ns
     * where the explicit heap timed just after it at the same size took 27
     * (H200, b4d0cce). So the CPU is kept busy with pairs for a moment first. */
    for (uint64_t until = now_ns() + (uint64_t)(quick ? 20e6 : 100e6); now_ns() < until;)
        for (int k = 0; k < 256; k++) (void)heap_pair(NULL, 256);
    for (size_t i = 0; i < N; i++) {
        size_t s = sizes[i];
        time_pairs(heap_pair, NULL, s, BATCH, 200, samples, budget, &gh[i]);
        time_pairs(heap_pair, NULL, s, 1, 50, samples * 4, budget / 2, &gh1[i]);
        if (explicit_heap) time_pairs(heap_pair, explicit_heap, s, BATCH, 200, samples, budget / 2, &ghx[i]);
        if (host_heap && s <= 1 * GiB) time_pairs(heap_pair, host_heap, s, BATCH, 200, samples, budget / 2, &ghh[i]);
        if (!gpu) continue;
        time_pairs(cma_pair, main_stream, s, BATCH, 200, samples, budget, &cma[i]);
        sync_stream();
        time_pairs(cma_pair, main_stream, s, 1, 50, samples * 4, budget / 2, &cma1[i]);
        sync_stream();
        time_pairs(cm_pair, NULL, s, 1, 2, s >= 256 * MiB ? 30 : 300, budget, &cm[i]);
    }
    gpu_heap_trim(NULL, 0);
    if (explicit_heap) gpu_heap_destroy(explicit_heap);
    if (host_heap) gpu_heap_destroy(host_heap);
    fprintf(tables, "\n== pairs: warm malloc+free, ns per pair (%s) ==\n", device);
    fprintf(tables, "loop = median (p99) over batches of %d pairs timed together; alone = each pair timed by itself\n",
            BATCH);
    fprintf(tables, "%8s | %16s %7s | %16s %7s | %10s | %9s %9s\n", "size", "gpuheap loop", "alone",
                    "cudaMallocAsync", "alone", "cudaMalloc", "vs Async", "vs cudaM");
    if (json) fprintf(json, ",\n\"pairs\": [");
    for (size_t i = 0; i < N; i++) {
        char lab[32], r1[16], r2[16];
        fprintf(tables, "%8s | %7.0f (%6.0f) %7.0f | %7.0f (%6.0f) %7.0f | %10.0f | %9s %9s\n",
                size_label(sizes[i], lab, sizeof lab), gh[i].median, gh[i].p99, gh1[i].median, cma[i].median,
                cma[i].p99, cma1[i].median, cm[i].median, bench_fmt_ratio(bench_ratio(cma[i].median, gh[i].median), r1, sizeof r1),
                bench_fmt_ratio(bench_ratio(cm[i].median, gh[i].median), r2, sizeof r2));
        if (json) {
            fprintf(json, "%s\n {\"size\": %zu, ", i ? "," : "", sizes[i]);
            json_lat("gpuheap_loop", &gh[i]), fprintf(json, ", ");
            json_lat("gpuheap_alone", &gh1[i]), fprintf(json, ", ");
            json_lat("cudaMallocAsync_loop", &cma[i]), fprintf(json, ", ");
            json_lat("cudaMallocAsync_alone", &cma1[i]), fprintf(json, ", ");
            json_lat("cudaMalloc_alone", &cm[i]), fprintf(json, ", ");
            json_lat("gpuheap_explicit_heap_loop", &ghx[i]), fprintf(json, ", ");
            json_lat("gpuheap_host_backend_loop", &ghh[i]);
            fprintf(json, ", \"ratio_cudaMallocAsync\": %.3f, \"ratio_cudaMalloc\": %.3f}",
                    bench_ratio(cma[i].median, gh[i].median), bench_ratio(cm[i].median, gh[i].median));
        }
    }
    if (json) fprintf(json, "]");
    fprintf(tables, "(vs X = X's loop median / gpuheap's loop median; cudaMalloc: alone)\n");
    fprintf(tables, "gpuheap loop median on an explicit CUDA heap / on a host-backend heap (same machine):\n");
    for (size_t i = 0; i < N; i++) {
        char lab[32];
        fprintf(tables, "  %s: %.0f / %.0f ns", size_label(sizes[i], lab, sizeof lab), ghx[i].median, ghh[i].median);
    }
    fprintf(tables, "\n");
}

/* ---- trace overhead ------------------------------------------------------------------- */

static void scenario_trace(void) {
    static const size_t sizes[] = {256, 64 * KiB, 1 * MiB};
    enum { N = sizeof sizes / sizeof sizes[0] };
    char path[] = "/tmp/gpuheap-bench-trace-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return;
    close(fd);
    fprintf(tables, "\n== trace: what recording costs, ns per warm pair, same run (%s) ==\n", device);
    fprintf(tables, "sustained = back-to-back pairs (the writer thread formats beside them); bursts = rounds of\n"
                    "1000 pairs with 3 ms between them (the writer catches up in between, as in a program that computes)\n");
    fprintf(tables, "%8s | %10s %10s %10s %9s | %10s %10s %9s\n", "size", "off", "on", "off again", "overhead",
            "burst off", "burst on", "overhead");
    if (json) fprintf(json, ",\n\"trace_overhead\": [");
    for (size_t i = 0; i < N; i++) {
        lat off, on, off2;
        size_t samples = quick ? 300 : 2000;
        time_pairs(heap_pair, NULL, sizes[i], 32, 200, samples, 0.2, &off);
        if (gpu_trace_start(path) != GPU_OK) return;
        time_pairs(heap_pair, NULL, sizes[i], 32, 200, samples, 0.2, &on);
        gpu_trace_stop();
        time_pairs(heap_pair, NULL, sizes[i], 32, 200, samples, 0.2, &off2);
        double base = (off.median + off2.median) / 2;
        /* Bursts: the median round, off and on. */
        enum { ROUNDS = 30, PAIRS = 1000 };
        double b_off[ROUNDS], b_on[ROUNDS], m_off, m_on;
        for (int tr = 0; tr < 2; tr++) {
            if (tr && gpu_trace_start(path) != GPU_OK) return;
            for (int r = 0; r < ROUNDS; r++) {
                usleep(3000);
                uint64_t t0 = now_ns();
                for (int k = 0; k < PAIRS; k++) heap_pair(NULL, sizes[i]);
                (tr ? b_on : b_off)[r] = (double)(now_ns() - t0) / PAIRS;
            }
            if (tr) gpu_trace_stop();
        }
        m_off = bench_quantiles(b_off, ROUNDS, NULL);
        m_on = bench_quantiles(b_on, ROUNDS, NULL);
        char lab[32];
        fprintf(tables, "%8s | %10.1f %10.1f %10.1f %+8.1f | %10.1f %10.1f %+8.1f\n", size_label(sizes[i], lab, sizeof lab),
                off.median, on.median, off2.median, on.median - base, m_off, m_on, m_on - m_off);
        if (json)
            fprintf(json, "%s\n {\"size\": %zu, \"off_ns\": %.1f, \"on_ns\": %.1f, \"off_again_ns\": %.1f, \"overhead_ns\": %.1f, "
                          "\"burst_off_ns\": %.1f, \"burst_on_ns\": %.1f, \"burst_overhead_ns\": %.1f}",
                    i ? "," : "", sizes[i], off.median, on.median, off2.median, on.median - base, m_off, m_on, m_on - m_off);
    }
    if (json) fprintf(json, "]");
    unlink(path);
}

/* ---- threads --------------------------------------------------------------------------- */

typedef struct thread_arg {
    int kind;            /* PEER_* */
    size_t size;
    double seconds;
    pthread_barrier_t *start;
    uint64_t pairs;
    bool failed;
} thread_arg;

static void *pairs_worker(void *arg) {
    thread_arg *t = arg;
    cudart_stream s = NULL;
    if (t->kind == PEER_CUDA_MALLOC_ASYNC && cudart.cudaStreamCreate(&s) != CUDART_SUCCESS) t->failed = true;
    if (gpu) cudart.cudaSetDevice(0);
    pair_fn fn = t->kind == PEER_GPUHEAP ? heap_pair : t->kind == PEER_CUDA_MALLOC ? cm_pair : cma_pair;
    void *ctx = t->kind == PEER_CUDA_MALLOC_ASYNC ? s : NULL;
    for (int i = 0; i < 100 && !t->failed; i++) t->failed = fn(ctx, t->size) != 0; /* warm */
    pthread_barrier_wait(t->start);
    uint64_t end = now_ns() + (uint64_t)(t->seconds * 1e9), n = 0;
    while (!t->failed) {
        for (int k = 0; k < 64; k++)
            if (fn(ctx, t->size) != 0) t->failed = true;
        n += 64;
        if (now_ns() >= end) break;
    }
    t->pairs = n;
    if (s) {
        cudart.cudaStreamSynchronize(s);
        cudart.cudaStreamDestroy(s);
    }
    return NULL;
}

/* Aggregate pairs per second of n threads. */
static double run_threads(int kind, int n, size_t size, double seconds, bool *failed) {
    pthread_t th[16];
    thread_arg a[16];
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        a[i] = (thread_arg){kind, size, seconds, &b, 0, false};
        pthread_create(&th[i], NULL, pairs_worker, &a[i]);
    }
    pthread_barrier_wait(&b);
    uint64_t t0 = now_ns();
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += a[i].pairs;
        *failed |= a[i].failed;
    }
    double el = (double)(now_ns() - t0) * 1e-9;
    pthread_barrier_destroy(&b);
    return (double)total / el;
}

static void scenario_threads(void) {
    static const int counts[] = {1, 2, 4, 8, 16};
    enum { N = sizeof counts / sizeof counts[0] };
    const size_t size = 4 * KiB;
    double sec = quick ? 0.1 : 0.25;
    double r[3][N];
    bool failed[3] = {0};
    memset(r, 0, sizeof r);
    for (int k = 0; k < 3; k++) {
        if (!gpu && k) continue;
        for (int i = 0; i < N; i++) r[k][i] = run_threads(k, counts[i], size, k == PEER_CUDA_MALLOC ? sec / 2 : sec, &failed[k]);
    }
    fprintf(tables, "\n== threads: warm 4 KiB pairs, aggregate million pairs/s (%s) ==\n", device);
    fprintf(tables, "%7s | %10s %8s | %15s %8s | %10s | %9s\n", "threads", "gpuheap", "scaling", "cudaMallocAsync",
            "scaling", "cudaMalloc", "vs Async");
    if (json) fprintf(json, ",\n\"threads\": {\"size\": %zu, \"rows\": [", size);
    for (int i = 0; i < N; i++) {
        char r1[16];
        fprintf(tables, "%7d | %10.2f %7.2fx | %15.3f %7.2fx | %10.4f | %9s\n", counts[i], r[0][i] / 1e6,
                r[0][0] > 0 ? r[0][i] / r[0][0] : 0, r[2][i] / 1e6, r[2][0] > 0 ? r[2][i] / r[2][0] : 0, r[1][i] / 1e6,
                bench_fmt_ratio(bench_ratio(r[0][i], r[2][i]), r1, sizeof r1));
        if (json)
            fprintf(json, "%s\n {\"threads\": %d, \"gpuheap_pairs_per_s\": %.0f, \"cudaMallocAsync_pairs_per_s\": %.0f, "
                          "\"cudaMalloc_pairs_per_s\": %.0f}",
                    i ? "," : "", counts[i], r[0][i], r[2][i], r[1][i]);
    }
    if (json) fprintf(json, "], \"failed\": [%s, %s, %s]}", failed[0] ? "true" : "false", failed[1] ? "true" : "false",
                      failed[2] ? "true" : "false");
    fprintf(tables, "(scaling = throughput / one thread's; vs Async = gpuheap's throughput / cudaMallocAsync's)\n");

    /* The larger sizes issue 15 names (64 KiB and 1 MiB: the thread caches' mid
     * slots), gpuheap alone. */
    static const size_t more[] = {64 * KiB, 1 * MiB};
    fprintf(tables, "\n== threads: gpuheap's warm pairs at 64 KiB and 1 MiB, aggregate million pairs/s (%s) ==\n", device);
    fprintf(tables, "%7s | %10s %8s | %10s %8s\n", "threads", "64 KiB", "scaling", "1 MiB", "scaling");
    double m[2][N];
    bool mfailed = false;
    for (int z = 0; z < 2; z++)
        for (int i = 0; i < N; i++) m[z][i] = run_threads(PEER_GPUHEAP, counts[i], more[z], sec, &mfailed);
    if (json) fprintf(json, ",\n\"threads_larger\": {\"sizes\": [%zu, %zu], \"rows\": [", more[0], more[1]);
    for (int i = 0; i < N; i++) {
        fprintf(tables, "%7d | %10.2f %7.2fx | %10.2f %7.2fx\n", counts[i], m[0][i] / 1e6, m[0][0] > 0 ? m[0][i] / m[0][0] : 0,
                m[1][i] / 1e6, m[1][0] > 0 ? m[1][i] / m[1][0] : 0);
        if (json)
            fprintf(json, "%s\n {\"threads\": %d, \"gpuheap_pairs_per_s\": [%.0f, %.0f]}", i ? "," : "", counts[i], m[0][i],
                    m[1][i]);
    }
    if (json) fprintf(json, "], \"failed\": %s}", mfailed ? "true" : "false");
}

/* ---- growth ----------------------------------------------------------------------------- */

static void scenario_growth(void) {
    size_t top = 8 * GiB;
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    if (!gpu) cfg.backend = GPU_BACKEND_HOST;
    gpu_heap_t *h;
    if (gpu_heap_create(&cfg, &h) != GPU_OK) return;
    gpu_stats_t s0, s1;
    double gh_s = 0, cm_s = 0, cma_s = 0;
    uint64_t cm_copied = 0, cma_copied = 0;
    int steps = 0;
    bool gh_ok = true, cm_ok = gpu, cma_ok = gpu;
    void *p = gpu_heap_malloc(h, 1 * MiB);
    gpu_heap_stats(h, &s0);
    gh_ok = p != NULL;
    for (size_t n = 2 * MiB; n <= top && gh_ok; n *= 2, steps++) {
        uint64_t t0 = now_ns();
        void *q = gpu_heap_realloc(h, p, n);
        gh_s += (double)(now_ns() - t0) * 1e-9;
        if (!q) gh_ok = false;
        else p = q;
    }
    gpu_heap_stats(h, &s1);
    gpu_heap_free(h, p);
    gpu_heap_destroy(h);
    if (gpu) {
        void *c = NULL;
        cm_ok = cudart.cudaMalloc(&c, 1 * MiB) == CUDART_SUCCESS;
        for (size_t n = 2 * MiB; n <= top && cm_ok; n *= 2) {
            void *d = NULL;
            uint64_t t0 = now_ns();
            cm_ok = cudart.cudaMalloc(&d, n) == CUDART_SUCCESS &&
                    cudart.cudaMemcpy(d, c, n / 2, CUDART_MEMCPY_DEVICE_TO_DEVICE) == CUDART_SUCCESS &&
                    cudart.cudaFree(c) == CUDART_SUCCESS;
            cm_s += (double)(now_ns() - t0) * 1e-9;
            cm_copied += n / 2;
            c = d;
        }
        cudart.cudaFree(c);
        cudart.cudaMemPoolTrimTo(pool, 0);
        c = NULL;
        uint64_t t0 = now_ns();
        cma_ok = cudart.cudaMallocAsync(&c, 1 * MiB, main_stream) == CUDART_SUCCESS;
        for (size_t n = 2 * MiB; n <= top && cma_ok; n *= 2) {
            void *d = NULL;
            cma_ok = cudart.cudaMallocAsync(&d, n, main_stream) == CUDART_SUCCESS &&
                     cudart.cudaMemcpyAsync(d, c, n / 2, CUDART_MEMCPY_DEVICE_TO_DEVICE, main_stream) == CUDART_SUCCESS &&
                     cudart.cudaFreeAsync(c, main_stream) == CUDART_SUCCESS;
            cma_copied += n / 2;
            c = d;
        }
        cma_ok = cma_ok && cudart.cudaStreamSynchronize(main_stream) == CUDART_SUCCESS;
        cma_s = (double)(now_ns() - t0) * 1e-9;
        cudart.cudaFreeAsync(c, main_stream);
        sync_stream();
        cudart.cudaMemPoolTrimTo(pool, 0);
    }
    uint64_t gh_copies = s1.backend_copy - s0.backend_copy, gh_bytes = s1.copy_bytes - s0.copy_bytes;
    fprintf(tables, "\n== growth: realloc doubling 1 MiB -> 8 GiB, %d steps (%s) ==\n", steps, device);
    fprintf(tables, "%-34s | %10s | %14s | %s\n", "", "total ms", "bytes copied", "status");
    fprintf(tables, "%-34s | %10.3f | %14llu | %s (%llu copy calls; %llu maps, %llu unmaps)\n", "gpuheap gpu_realloc",
            gh_s * 1e3, (unsigned long long)gh_bytes, gh_ok ? "ok" : "FAILED", (unsigned long long)gh_copies,
            (unsigned long long)(s1.backend_map - s0.backend_map), (unsigned long long)(s1.backend_unmap - s0.backend_unmap));
    if (gpu) {
        char r1[16], r2[16];
        fprintf(tables, "%-34s | %10.3f | %14llu | %s (%s gpuheap's time)\n", "cudaMalloc+cudaMemcpy+cudaFree",
                cm_s * 1e3, (unsigned long long)cm_copied, cm_ok ? "ok" : "FAILED", bench_fmt_ratio(bench_ratio(cm_s, gh_s), r1, sizeof r1));
        fprintf(tables, "%-34s | %10.3f | %14llu | %s (%s gpuheap's time)\n", "cudaMallocAsync+MemcpyAsync+Free",
                cma_s * 1e3, (unsigned long long)cma_copied, cma_ok ? "ok" : "FAILED",
                bench_fmt_ratio(bench_ratio(cma_s, gh_s), r2, sizeof r2));
    }
    if (json)
        fprintf(json, ",\n\"growth\": {\"from\": %zu, \"to\": %zu, \"gpuheap\": {\"seconds\": %.6f, \"copied_bytes\": %llu, "
                      "\"copy_calls\": %llu, \"ok\": %s}, \"cudaMalloc\": {\"seconds\": %.6f, \"copied_bytes\": %llu, \"ok\": %s}, "
                      "\"cudaMallocAsync\": {\"seconds\": %.6f, \"copied_bytes\": %llu, \"ok\": %s}}",
                (size_t)MiB, top, gh_s, (unsigned long long)gh_bytes, (unsigned long long)gh_copies,
                gh_ok ? "true" : "false", cm_s, (unsigned long long)cm_copied, cm_ok ? "true" : "false", cma_s,
                (unsigned long long)cma_copied, cma_ok ? "true" : "false");
}

/* ---- cold --------------------------------------------------------------------------------- */

/* One cold measurement of each allocator, in ns (0: it failed). */
static double cold_gpuheap(const gpu_config_t *cfg, size_t size) {
    gpu_heap_t *h;
    if (gpu_heap_create(cfg, &h) != GPU_OK) return 0;
    if (gpu) cudart.cudaDeviceSynchronize();
    uint64_t t0 = now_ns();
    void *p = gpu_heap_malloc(h, size);
    double t = p ? (double)(now_ns() - t0) : 0;
    gpu_heap_free(h, p);
    gpu_heap_destroy(h);
    return t;
}

static double cold_cudamalloc(size_t size) {
    void *p = NULL;
    cudart.cudaDeviceSynchronize();
    uint64_t t0 = now_ns();
    bool ok = cudart.cudaMalloc(&p, size) == CUDART_SUCCESS;
    double t = ok ? (double)(now_ns() - t0) : 0;
    if (ok) cudart.cudaFree(p);
    return t;
}

static double cold_async(size_t size) {
    void *p = NULL;
    cudart.cudaMemPoolTrimTo(pool, 0);
    sync_stream();
    uint64_t t0 = now_ns();
    bool ok = cudart.cudaMallocAsync(&p, size, main_stream) == CUDART_SUCCESS &&
              cudart.cudaStreamSynchronize(main_stream) == CUDART_SUCCESS;
    double t = ok ? (double)(now_ns() - t0) : 0;
    if (ok) cudart.cudaFreeAsync(p, main_stream);
    sync_stream();
    cudart.cudaMemPoolTrimTo(pool, 0);
    return t;
}

/* One round of cold measurements of the three, in an order turned by round:
 * whoever follows a trimmed pool or a freed allocation may pay for the driver's
 * deferred work. */
static void cold_round(const gpu_config_t *cfg, size_t size, size_t round, double out[3]) {
    size_t n = gpu ? 3 : 1; /* without a GPU, gpuheap alone */
    out[0] = out[1] = out[2] = 0;
    for (size_t k = 0; k < n; k++) {
        switch ((k + round) % n) {
        case 0: out[0] = cold_gpuheap(cfg, size); break;
        case 1: out[1] = cold_cudamalloc(size); break;
        default: out[2] = cold_async(size); break;
        }
    }
}

/* A program's first gpu_malloc, in ns (0: it failed): the default heap is made
 * inside it, as it is inside the first cudaMalloc under gpuheap-run. */
static double cold_default(size_t size) {
    if (gpu) cudart.cudaDeviceSynchronize();
    uint64_t t0 = now_ns();
    void *p = gpu_malloc(size);
    double t = p ? (double)(now_ns() - t0) : 0;
    gpu_free(p);
    return t;
}

/* gpuheap-bench --cold-child SIZE ROUND [default]: one round in a fresh process,
 * where the heap is the process's first, as a program's first gpu_malloc finds
 * it: gpu_heap_malloc on a heap made beforehand, cudaMalloc and cudaMallocAsync;
 * with "default", gpu_malloc (its heap made inside) and cudaMalloc, in an order
 * turned by round. */
static int cold_child(size_t size, size_t round, bool with_default) {
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    if (!gpu) cfg.backend = GPU_BACKEND_HOST;
    double t[3] = {0, 0, 0};
    if (!with_default) {
        cold_round(&cfg, size, round, t);
    } else {
        bool malloc_first = round % 2 == 0;
        if (gpu && !malloc_first) t[1] = cold_cudamalloc(size);
        t[0] = cold_default(size);
        if (gpu && malloc_first) t[1] = cold_cudamalloc(size);
    }
    printf("cold %.0f %.0f %.0f\n", t[0], t[1], t[2]);
    return 0;
}

/* Runs one round in a child process; false if it could not. */
static bool cold_in_child(size_t size, size_t round, bool with_default, double out[3]) {
    char args[96];
    snprintf(args, sizeof args, "--cold-child %zu %zu%s", size, round, with_default ? " default" : "");
    FILE *f = bench_popen_self(args);
    if (!f) return false;
    char line[256];
    bool ok = false;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "cold %lf %lf %lf", &out[0], &out[1], &out[2]) == 3) ok = true;
    return pclose(f) == 0 && ok;
}

static void scenario_cold(void) {
    static const size_t sizes[] = {2 * MiB, 16 * MiB, 128 * MiB, 1 * GiB, 4 * GiB, 8 * GiB};
    enum { N = sizeof sizes / sizeof sizes[0], REPS = 9 };
    double gh[N], cm[N], cma[N], gh2[N], ghd[N], cmd[N];
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    if (!gpu) cfg.backend = GPU_BACKEND_HOST;
    for (size_t i = 0; i < N; i++) {
        double a[REPS], b[REPS], c[REPS], d[REPS], e[REPS], f[REPS];
        size_t reps = quick ? 3 : REPS;
        for (size_t r = 0; r < reps; r++) {
            double t[3];
            if (!cold_in_child(sizes[i], r, false, t)) t[0] = t[1] = t[2] = 0;
            a[r] = t[0], b[r] = t[1], c[r] = t[2];
            if (!cold_in_child(sizes[i], r, true, t)) t[0] = t[1] = 0;
            e[r] = t[0], f[r] = t[1];
            d[r] = cold_gpuheap(&cfg, sizes[i]); /* beside this process's default heap */
        }
        gh[i] = bench_quantiles(a, reps, NULL);
        cm[i] = bench_quantiles(b, reps, NULL);
        cma[i] = bench_quantiles(c, reps, NULL);
        gh2[i] = bench_quantiles(d, reps, NULL);
        ghd[i] = bench_quantiles(e, reps, NULL);
        cmd[i] = bench_quantiles(f, reps, NULL);
    }
    fprintf(tables, "\n== cold: first allocation on an empty heap / trimmed pool, in a fresh process, median us (%s) ==\n",
            device);
    fprintf(tables, "%8s | %10s | %10s | %16s | %9s %9s | %14s %9s | %12s %10s %9s\n", "size", "gpuheap", "cudaMalloc",
            "cudaMallocAsync*", "vs cudaM", "vs Async", "2nd heap**", "vs cudaM", "gpu_malloc***", "cudaMalloc", "vs cudaM");
    if (json) fprintf(json, ",\n\"cold\": [");
    for (size_t i = 0; i < N; i++) {
        char lab[32], r1[16], r2[16], r3[16];
        char r4[16];
        fprintf(tables, "%8s | %10.1f | %10.1f | %16.1f | %9s %9s | %14.1f %9s | %12.1f %10.1f %9s\n",
                size_label(sizes[i], lab, sizeof lab), gh[i] / 1e3, cm[i] / 1e3, cma[i] / 1e3,
                bench_fmt_ratio(bench_ratio(cm[i], gh[i]), r1, sizeof r1), bench_fmt_ratio(bench_ratio(cma[i], gh[i]), r2, sizeof r2), gh2[i] / 1e3,
                bench_fmt_ratio(bench_ratio(cm[i], gh2[i]), r3, sizeof r3), ghd[i] / 1e3, cmd[i] / 1e3,
                bench_fmt_ratio(bench_ratio(cmd[i], ghd[i]), r4, sizeof r4));
        if (json)
            fprintf(json,
                    "%s\n {\"size\": %zu, \"gpuheap_ns\": %.0f, \"cudaMalloc_ns\": %.0f, \"cudaMallocAsync_ns\": %.0f, "
                    "\"gpuheap_second_heap_ns\": %.0f, \"gpu_malloc_default_heap_ns\": %.0f, \"cudaMalloc_beside_default_ns\": %.0f}",
                    i ? "," : "", sizes[i], gh[i], cm[i], cma[i], gh2[i], ghd[i], cmd[i]);
    }
    if (json) fprintf(json, "]");
    fprintf(tables, "(** a heap made while another heap's reservation exists -- this process's default heap: its first\n"
                    "  mapping costs the driver ~20 us more on an H200, page tables for a new VA region)\n");
    fprintf(tables, "(*** a program's first gpu_malloc, the default heap made inside it (as under gpuheap-run), and a\n"
                    "  first cudaMalloc, in a fresh process of their own, in an order turned by round)\n");
    fprintf(tables, "(* cudaMallocAsync + a stream sync; vs X = X's time / gpuheap's: above 1 means gpuheap is faster)\n");
}

/* ---- random (RMM's random_allocations) ---------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The workload as a trace: ops calls (allocations and frees), then the frees of
 * what is left. Addresses are made-up ids; the replay maps them. */
static int random_trace(size_t max_size, size_t ops, uint64_t cap, uint64_t seed, tr_trace *t) {
    memset(t, 0, sizeof *t);
    uint64_t *live = malloc(ops * sizeof *live), *sizes = malloc(ops * sizeof *sizes);
    if (!live || !sizes) return free(live), free(sizes), -1;
    size_t nlive = 0;
    uint64_t live_bytes = 0, next_id = 1, s = seed;
    for (size_t i = 0; i < ops; i++) {
        bool alloc = nlive == 0 || rng_next(&s) % 100 < 73;
        uint64_t size = 1 + rng_next(&s) % max_size;
        if (alloc && live_bytes + size > cap) alloc = false;
        tr_event e = {0};
        e.t_ns = i;
        if (alloc) {
            e.op = TR_MALLOC;
            e.size = size;
            e.arg = 256;
            e.result = (next_id++) << 8;
            live[nlive] = e.result;
            sizes[nlive++] = size;
            live_bytes += size;
        } else {
            size_t k = rng_next(&s) % nlive;
            e.op = TR_FREE;
            e.addr = live[k];
            live_bytes -= sizes[k];
            live[k] = live[--nlive];
            sizes[k] = sizes[nlive];
        }
        if (tr_push(t, &e) != 0) return free(live), free(sizes), -1;
    }
    for (size_t k = 0; k < nlive; k++) {
        tr_event e = {.t_ns = ops + k, .op = TR_FREE, .addr = live[k]};
        if (tr_push(t, &e) != 0) return free(live), free(sizes), -1;
    }
    free(live), free(sizes);
    return 0;
}

typedef struct peer_run {
    bool ran, counted; /* counted: a gpuheap peer, with the driver work the replay cost it */
    tr_result r;
    uint64_t peak_phys;
    peer_work work;
} peer_run;

/* Replays t on every peer; a fresh heap / a trimmed pool for each. */
static void run_peers(peer *peers, size_t npeers, const tr_trace *t, peer_run *out) {
    for (size_t k = 0; k < npeers; k++) {
        char err[256];
        memset(&out[k], 0, sizeof out[k]);
        if (!peers[k].a.alloc || peer_reset(&peers[k], err, sizeof err) != 0) continue;
        if (tr_replay(t, &peers[k].a, &out[k].r) != 0) continue;
        out[k].ran = true;
        out[k].peak_phys = peer_peak_physical(&peers[k]);
        out[k].counted = peer_driver_work(&peers[k], &out[k].work); /* the reset made a fresh heap */
        if (peers[k].kind == PEER_GPUHEAP) gpu_heap_trim(peers[k].heap, 0);
    }
}

enum { NPEERS = 4 }; /* gpuheap, gpuheap with release threshold 0, cudaMalloc, cudaMallocAsync */

static size_t open_peers(peer *peers) {
    char err[256];
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    if (!gpu) cfg.backend = GPU_BACKEND_HOST;
    memset(peers, 0, NPEERS * sizeof *peers);
    peer_open(&peers[0], PEER_GPUHEAP, &cfg, err, sizeof err);
    cfg.release_threshold = 0;
    if (peer_open(&peers[1], PEER_GPUHEAP, &cfg, err, sizeof err) == 0)
        snprintf(peers[1].name, sizeof peers[1].name, "gpuheap-rt0");
    if (gpu) {
        if (peer_open(&peers[2], PEER_CUDA_MALLOC, NULL, err, sizeof err) != 0) fprintf(stderr, "%s\n", err);
        if (peer_open(&peers[3], PEER_CUDA_MALLOC_ASYNC, NULL, err, sizeof err) != 0) fprintf(stderr, "%s\n", err);
    }
    return NPEERS;
}

static void close_peers(peer *peers) {
    for (size_t k = 0; k < NPEERS; k++)
        if (peers[k].a.alloc) peer_close(&peers[k]);
}

static void print_peer_rows(const char *label, const peer *peers, const peer_run *runs, bool first) {
    const peer_run *gh = &runs[0];
    for (size_t k = 0; k < NPEERS; k++) {
        if (!runs[k].ran) continue;
        const peer_run *x = &runs[k];
        double us = x->r.calls ? x->r.seconds * 1e6 / (double)x->r.calls : 0;
        double gh_us = gh->ran && gh->r.calls ? gh->r.seconds * 1e6 / (double)gh->r.calls : 0;
        char r1[16], r2[16];
        char work[96] = "";
        if (x->counted)
            snprintf(work, sizeof work, " (%llu maps, %llu new, %llu unmaps, %llu fences)", (unsigned long long)x->work.maps,
                     (unsigned long long)x->work.creates, (unsigned long long)x->work.unmaps,
                     (unsigned long long)x->work.fences);
        fprintf(tables, "%-18s %-16s | %9.3f %8s | %9.1f %9.1f %7.3f %8s | %s%s%s\n", k == 0 ? label : "", peers[k].name, us,
                k == 0 ? "" : bench_fmt_ratio(bench_ratio(us, gh_us), r1, sizeof r1), (double)x->r.peak_live / (double)MiB,
                (double)x->peak_phys / (double)MiB,
                x->r.peak_live ? (double)x->peak_phys / (double)x->r.peak_live : 0,
                k == 0 ? "" : bench_fmt_ratio(bench_ratio((double)x->peak_phys, (double)gh->peak_phys), r2, sizeof r2),
                x->r.failed ? "FAILED: " : "ok", x->r.failed ? x->r.first_error : "", work);
        if (json)
            fprintf(json, "%s\n  {\"allocator\": \"%s\", \"seconds\": %.6f, \"calls\": %zu, \"us_per_call\": %.4f, "
                          "\"peak_live\": %llu, \"peak_physical\": %llu, \"fragmentation\": %.4f, \"failed\": %zu, "
                          "\"conflicts\": %zu, \"copied_bytes\": %llu",
                    first ? "" : ",", peers[k].name, x->r.seconds, x->r.calls, us, (unsigned long long)x->r.peak_live,
                    (unsigned long long)x->peak_phys,
                    x->r.peak_live ? (double)x->peak_phys / (double)x->r.peak_live : 0, x->r.failed, x->r.conflicts,
                    (unsigned long long)x->r.copied_bytes);
        if (json && x->counted) {
            fputs(", ", json);
            peer_work_json(json, &x->work);
        }
        if (json) fputc('}', json);
        first = false;
    }
}

static const char *peer_header =
    "%-18s %-16s | %9s %8s | %9s %9s %7s %8s | %s\n";

static void scenario_random(void) {
    static const size_t max_mib[] = {1, 4, 64, 256, 1024, 4096};
    static const size_t ops_full[][3] = {{1000, 10000, 100000}, {1000, 10000, 100000}, {1000, 10000, 100000},
                                         {1000, 10000, 0},      {1000, 10000, 0},      {1000, 0, 0}};
    static const size_t ops_quick[][3] = {{1000, 10000, 0}, {1000, 10000, 0}, {1000, 10000, 0},
                                          {1000, 0, 0},     {1000, 0, 0},     {1000, 0, 0}};
    peer peers[NPEERS];
    open_peers(peers);
    fprintf(tables, "\n== random: RMM random_allocations (p(alloc) = 0.73, sizes 1 B..max, live <= 16 GiB) (%s) ==\n",
            device);
    fprintf(tables, peer_header, "max size, ops", "allocator", "us/call", "vs gh", "live MiB", "phys MiB", "phys/live",
            "vs gh", "status");
    if (json) fprintf(json, ",\n\"random\": [");
    bool first = true;
    for (size_t i = 0; i < sizeof max_mib / sizeof max_mib[0]; i++) {
        for (size_t j = 0; j < 3; j++) {
            size_t ops = quick ? ops_quick[i][j] : ops_full[i][j];
            if (!ops) continue;
            tr_trace t;
            if (random_trace(max_mib[i] * MiB, ops, 16 * (uint64_t)GiB, 1234 + i * 10 + j, &t) != 0) continue;
            peer_run runs[NPEERS];
            run_peers(peers, NPEERS, &t, runs);
            char label[64];
            snprintf(label, sizeof label, "%zu MiB, %zuk", max_mib[i], ops / 1000);
            if (json)
                fprintf(json, "%s\n {\"max_size\": %zu, \"ops\": %zu, \"results\": [", first ? "" : ",", max_mib[i] * MiB,
                        ops);
            print_peer_rows(label, peers, runs, true);
            if (json) fprintf(json, "]}");
            first = false;
            tr_free(&t);
            fflush(stdout);
        }
    }
    if (json) fprintf(json, "]");
    fprintf(tables, "(us/call: time of the calls / calls made; phys: peak physical held -- gpuheap peak_mapped_bytes,\n"
                    " cudaMalloc device memory used at each live peak, cudaMallocAsync the pool's reserved high-water\n"
                    " mark; gpuheap-rt0: GPUHEAP_RELEASE_THRESHOLD=0; vs gh = peer / gpuheap)\n");
    close_peers(peers);
}

/* ---- replay --------------------------------------------------------------------------------- */

static void scenario_replay(const char *path) {
    char err[512];
    tr_trace t;
    if (tr_load(path, &t, err, sizeof err) != 0) {
        fprintf(tables, "\n== replay: %s ==\n", err);
        return;
    }
    tr_summary s;
    tr_summarize(&t, &s);
    peer peers[NPEERS];
    open_peers(peers);
    peer_run runs[NPEERS];
    run_peers(peers, NPEERS, &t, runs);
    fprintf(tables, "\n== replay: %s (%zu mallocs, %zu frees, %zu reallocs, %zu threads; recorded peak live %.1f MiB) (%s) ==\n",
            path, s.mallocs, s.frees, s.reallocs, s.threads, (double)s.peak_live / (double)MiB, device);
    fprintf(tables, peer_header, "", "allocator", "us/call", "vs gh", "live MiB", "phys MiB", "frag", "vs gh", "status");
    if (json) fprintf(json, ",\n\"replay\": {\"trace\": \"%s\", \"events\": %zu, \"results\": [", path, s.events);
    print_peer_rows("", peers, runs, true);
    if (json) fprintf(json, "]}");
    fprintf(tables, "(frag = peak physical / peak live)\n");
    close_peers(peers);
    tr_free(&t);
}

/* ---- main ----------------------------------------------------------------------------------- */

static bool find_gpu(char *why, size_t len) {
    if (cudart_load(why, len) != 0) return false;
    cudart_error e = cudart.cudaSetDevice(0);
    if (e == CUDART_SUCCESS) e = cudart.cudaDeviceSynchronize();
    if (e != CUDART_SUCCESS) {
        snprintf(why, len, "CUDA device 0: %s", cudart_strerror(e));
        return false;
    }
    cudart_device_name(0, device, sizeof device);
    e = cudart_keep_all_pool(&main_stream, &pool);
    if (e != CUDART_SUCCESS) {
        snprintf(why, len, "cudaMallocAsync setup: %s", cudart_strerror(e));
        return false;
    }
    return true;
}

int main(int argc, char **argv) {
    const char *json_path = NULL, *trace = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--trace") && i + 1 < argc) trace = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--cold-child") && i + 2 < argc) {
            char why[384];
            gpu = find_gpu(why, sizeof why);
            bool with_default = i + 3 < argc && !strcmp(argv[i + 3], "default");
            return cold_child(strtoull(argv[i + 1], NULL, 10), strtoull(argv[i + 2], NULL, 10), with_default);
        } else {
            fprintf(stderr, "usage: gpuheap-bench [--quick] [--only pairs,trace,threads,growth,cold,random,replay]\n"
                            "                     [--trace FILE[.gz]] [--json FILE]\n");
            return 2;
        }
    }
    char why[384] = "";
    gpu = find_gpu(why, sizeof why);
    if (!gpu) {
        setenv("GPUHEAP_BACKEND", "host", 1); /* the default heap, too */
        printf("no GPU (%s): gpuheap alone, on its host backend -- not GPU numbers\n", why);
    }
    tables = open_memstream(&tables_text, &tables_len);
    if (json_path && !(json = fopen(json_path, "w"))) {
        fprintf(stderr, "gpuheap-bench: cannot write %s: %s\n", json_path, strerror(errno));
        return 1;
    }
    if (!gpu_heap_default()) {
        fprintf(stderr, "gpuheap-bench: no default heap: %s\n", gpu_strerror(gpu_last_error()));
        return 1;
    }
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", gmtime(&now));
    printf("gpuheap-bench on %s, %s UTC%s\n", device, date, quick ? " (--quick)" : "");
    if (json)
        fprintf(json, "{\"benchmark\": \"gpuheap-bench\", \"device\": \"%s\", \"gpu\": %s, \"quick\": %s, \"date\": \"%s\"",
                device, gpu ? "true" : "false", quick ? "true" : "false", date);
    struct {
        const char *name;
        void (*fn)(void);
    } scen[] = {{"pairs", scenario_pairs}, {"trace", scenario_trace}, {"threads", scenario_threads},
                {"growth", scenario_growth}, {"cold", scenario_cold}, {"random", scenario_random}};
    for (size_t i = 0; i < sizeof scen / sizeof scen[0]; i++) {
        if (!wanted(scen[i].name)) continue;
        uint64_t t0 = now_ns();
        printf("running %s ...", scen[i].name);
        fflush(stdout);
        scen[i].fn();
        printf(" %.1f s\n", (double)(now_ns() - t0) * 1e-9);
        fflush(tables);
    }
    if (trace && wanted("replay")) {
        uint64_t t0 = now_ns();
        printf("running replay ...");
        fflush(stdout);
        scenario_replay(trace);
        printf(" %.1f s\n", (double)(now_ns() - t0) * 1e-9);
    }
    fclose(tables);
    fputs(tables_text, stdout);
    if (json) {
        fprintf(json, "\n}\n");
        fclose(json);
    }
    free(tables_text);
    return 0;
}
