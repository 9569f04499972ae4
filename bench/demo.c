/*
 * demo.c — gpuheap-demo: how long a warm malloc+free pair takes, beside the
 * allocators a GPU program would otherwise call.
 *
 * For each size from 256 B to 1 GiB it times many gpu_malloc+gpu_free pairs on
 * the default heap, the stream-ordered gpu_malloc_async+gpu_free_async pairs on
 * one stream beside them (the fast path for a caller who knows its stream: a
 * block freed on a stream is reused by that stream at once, where a plain free
 * waits until the GPU has passed it), cudaMalloc+cudaFree pairs, and
 * cudaMallocAsync+cudaFreeAsync pairs on the same stream with the device's
 * default pool told to keep everything (release threshold UINT64_MAX), and
 * prints the median and 99th percentile of each and gpuheap's speed-ups. Every pair is timed alone with the host's
 * monotonic clock, after untimed warm-up pairs, so these are the latencies a
 * caller sees on a warm allocator, not throughput.
 *
 * The CUDA runtime is opened at run time (cudart_util.c), so the demo builds and
 * runs anywhere. Without a GPU it says so and times gpuheap on its host backend
 * alone; those numbers measure the heap's bookkeeping, not a GPU.
 *
 * --free-order legacy times the plain pair in legacy free order
 * (gpu_set_free_order), as gpuheap-run runs a program: the freed block comes back
 * at once, the context made to wait for the work before the free.
 *
 *   gpuheap-demo [--quick] [--free-order event|legacy] [--json FILE]
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "cudart_util.h"
#include "gpuheap.h"


static const size_t sizes[] = {256, 4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB};
enum { NSIZES = sizeof sizes / sizeof sizes[0] };

/* How many pairs to time; a cell also stops once it has spent its time budget. */
typedef struct plan {
    size_t warm, iters;     /* gpuheap and cudaMallocAsync */
    size_t cm_warm, cm_iters, cm_iters_big; /* cudaMalloc (big: 256 MiB and more) */
    double budget_s;        /* per cell */
} plan;

static const plan full_plan = {200, 10000, 5, 1000, 200, 1.5};
static const plan quick_plan = {20, 1000, 2, 100, 20, 0.5};

/* One allocator at one size. */
typedef struct cell {
    bool ran;               /* false: n/a */
    bool failed;
    char error[160];
    size_t n;               /* pairs timed */
    double median_ns, p99_ns, mean_ns;
    double final_sync_ns;   /* cudaMallocAsync: the stream sync after the loop */
} cell;

typedef struct row {
    size_t size;
    cell heap, heap_async, cm, cma; /* heap_async: gpu_malloc_async + gpu_free_async on one stream */
} row;

/* ---- timing ------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Median, 99th percentile (nearest rank) and mean of t[0..n). Sorts t. */
static void summarize(uint64_t *t, size_t n, cell *c) {
    c->n = n;
    if (n == 0) return;
    qsort(t, n, sizeof *t, cmp_u64);
    c->median_ns = n % 2 ? (double)t[n / 2] : ((double)t[n / 2 - 1] + (double)t[n / 2]) / 2;
    size_t rank = (size_t)((double)n * 0.99 + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    c->p99_ns = (double)t[rank - 1];
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)t[i];
    c->mean_ns = sum / (double)n;
}

/* One malloc+free pair of `size` bytes; 0, or -1 with the reason in err. */
typedef int (*pair_fn)(void *ctx, size_t size, char *err, size_t err_len);

/* Runs `warm` untimed pairs, then up to `iters` timed ones (fewer if the budget
 * runs out, but at least a few). */
static void run_cell(pair_fn fn, void *ctx, size_t size, size_t warm, size_t iters, double budget_s, cell *c) {
    memset(c, 0, sizeof *c);
    c->ran = true;
    uint64_t *t = malloc(iters * sizeof *t);
    if (t == NULL) {
        c->failed = true;
        snprintf(c->error, sizeof c->error, "out of host memory");
        return;
    }
    for (size_t i = 0; i < warm; i++) {
        if (fn(ctx, size, c->error, sizeof c->error) != 0) {
            c->failed = true;
            free(t);
            return;
        }
    }
    const uint64_t deadline = now_ns() + (uint64_t)(budget_s * 1e9);
    size_t n = 0;
    while (n < iters) {
        uint64_t t0 = now_ns();
        int rc = fn(ctx, size, c->error, sizeof c->error);
        uint64_t t1 = now_ns();
        if (rc != 0) {
            c->failed = true;
            break;
        }
        t[n++] = t1 - t0;
        if (n >= 20 && t1 > deadline) break;
    }
    summarize(t, n, c);
    free(t);
}

/* ---- the allocators ------------------------------------------------------------- */

static int heap_pair(void *ctx, size_t size, char *err, size_t err_len) {
    gpu_heap_t *heap = ctx; /* NULL: the default heap */
    void *p = gpu_heap_malloc(heap, size);
    if (p == NULL) {
        snprintf(err, err_len, "gpu_malloc(%zu): %s", size, gpu_strerror(gpu_last_error()));
        return -1;
    }
    int rc = gpu_heap_free(heap, p);
    if (rc != GPU_OK) {
        snprintf(err, err_len, "gpu_free: %s", gpu_strerror(rc));
        return -1;
    }
    return 0;
}

/* The stream-ordered pair on the demo's stream (heap_stream). */
static gpu_heap_t *async_heap; /* NULL: the default heap */
static int heap_async_pair(void *ctx, size_t size, char *err, size_t err_len) {
    void *p = gpu_heap_malloc_async(async_heap, size, ctx);
    if (p == NULL) {
        snprintf(err, err_len, "gpu_malloc_async(%zu): %s", size, gpu_strerror(gpu_last_error()));
        return -1;
    }
    int rc = gpu_heap_free_async(async_heap, p, ctx);
    if (rc != GPU_OK) {
        snprintf(err, err_len, "gpu_free_async: %s", gpu_strerror(rc));
        return -1;
    }
    return 0;
}

static int cm_pair(void *ctx, size_t size, char *err, size_t err_len) {
    (void)ctx;
    void *p = NULL;
    cudart_error e = cudart.cudaMalloc(&p, size);
    if (e != CUDART_SUCCESS) {
        snprintf(err, err_len, "cudaMalloc(%zu): %s", size, cudart_strerror(e));
        return -1;
    }
    if ((e = cudart.cudaFree(p)) != CUDART_SUCCESS) {
        snprintf(err, err_len, "cudaFree: %s", cudart_strerror(e));
        return -1;
    }
    return 0;
}

static int cma_pair(void *ctx, size_t size, char *err, size_t err_len) {
    cudart_stream s = ctx;
    void *p = NULL;
    cudart_error e = cudart.cudaMallocAsync(&p, size, s);
    if (e != CUDART_SUCCESS) {
        snprintf(err, err_len, "cudaMallocAsync(%zu): %s", size, cudart_strerror(e));
        return -1;
    }
    if ((e = cudart.cudaFreeAsync(p, s)) != CUDART_SUCCESS) {
        snprintf(err, err_len, "cudaFreeAsync: %s", cudart_strerror(e));
        return -1;
    }
    return 0;
}

/* An empty pair: what the clock itself adds to every figure. */
static int empty_pair(void *ctx, size_t size, char *err, size_t err_len) {
    (void)ctx, (void)size, (void)err, (void)err_len;
    return 0;
}

/* ---- output --------------------------------------------------------------------- */

/* "   12345" or "     n/a" / "  failed" in a field of `width`. */
static void put_ns(FILE *f, const cell *c, double v, int width) {
    if (!c->ran) fprintf(f, "%*s", width, "n/a");
    else if (c->failed || c->n == 0) fprintf(f, "%*s", width, "failed");
    else fprintf(f, "%*.0f", width, v);
}

static void put_speedup(FILE *f, const cell *heap, const cell *peer, int width) {
    if (!heap->ran || !peer->ran || heap->failed || peer->failed || heap->n == 0 || peer->n == 0 ||
        heap->median_ns <= 0)
        fprintf(f, "%*s", width, "n/a");
    else
        fprintf(f, "%*.1fx", width - 1, peer->median_ns / heap->median_ns);
}

static void print_table(const row *rows, size_t nrows) {
    printf("\n%9s | %-17s | %-17s | %-17s | %-17s | %s\n", "", "gpuheap (plain)", "gpuheap (stream)", "    cudaMalloc",
           " cudaMallocAsync", "speed-up: plain vs       stream vs");
    printf("%9s | %8s %8s | %8s %8s | %8s %8s | %8s %8s | %10s %8s %8s\n", "size", "median", "p99", "median", "p99",
           "median", "p99", "median", "p99", "cudaMalloc", "Async", "Async");
    for (size_t i = 0; i < nrows; i++) {
        char label[32];
        const row *r = &rows[i];
        printf("%9s |", size_label(r->size, label, sizeof label));
        const cell *cells[] = {&r->heap, &r->heap_async, &r->cm, &r->cma};
        for (size_t k = 0; k < 4; k++) {
            put_ns(stdout, cells[k], cells[k]->median_ns, 9);
            put_ns(stdout, cells[k], cells[k]->p99_ns, 9);
            printf(" |");
        }
        put_speedup(stdout, &r->heap, &r->cm, 11);
        put_speedup(stdout, &r->heap, &r->cma, 9);
        put_speedup(stdout, &r->heap_async, &r->cma, 9);
        printf("\n");
    }
    for (size_t i = 0; i < nrows; i++) {
        const cell *cells[] = {&rows[i].heap, &rows[i].heap_async, &rows[i].cm, &rows[i].cma};
        for (size_t k = 0; k < 4; k++)
            if (cells[k]->failed) printf("  failed at %zu bytes: %s\n", rows[i].size, cells[k]->error);
    }
}

/* A JSON string literal. */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void json_cell(FILE *f, const cell *c, bool with_sync) {
    if (!c->ran) {
        fprintf(f, "null");
        return;
    }
    fprintf(f, "{\"n\": %zu, \"median_ns\": %.1f, \"p99_ns\": %.1f, \"mean_ns\": %.1f", c->n, c->median_ns,
            c->p99_ns, c->mean_ns);
    if (with_sync && c->n > 0)
        fprintf(f, ", \"final_sync_ns\": %.1f, \"amortized_ns\": %.1f", c->final_sync_ns,
                c->mean_ns + c->final_sync_ns / (double)c->n);
    fprintf(f, ", \"failed\": %s", c->failed ? "true" : "false");
    if (c->failed) {
        fprintf(f, ", \"error\": ");
        json_str(f, c->error);
    }
    fprintf(f, "}");
}

static void json_speedup(FILE *f, const cell *heap, const cell *peer) {
    if (!heap->ran || !peer->ran || heap->failed || peer->failed || heap->n == 0 || peer->n == 0 ||
        heap->median_ns <= 0)
        fprintf(f, "null");
    else
        fprintf(f, "%.3f", peer->median_ns / heap->median_ns);
}

typedef struct run_info {
    bool gpu;
    bool quick;
    char device[256];
    char note[512];      /* why there is no GPU, or the versions */
    double timer_ns;
    gpu_stats_t stats;
} run_info;

static int write_json(const char *path, const run_info *info, const row *rows, size_t nrows) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "gpuheap-demo: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  \"benchmark\": \"gpuheap-demo\",\n  \"gpu\": %s,\n  \"device\": ", info->gpu ? "true" : "false");
    json_str(f, info->device);
    fprintf(f, ",\n  \"backend\": \"%s\",\n  \"note\": ", info->gpu ? "cuda" : "host");
    json_str(f, info->note);
    fprintf(f, ",\n  \"quick\": %s,\n  \"unit\": \"ns per malloc+free pair, host CLOCK_MONOTONIC\",\n",
            info->quick ? "true" : "false");
    fprintf(f, "  \"timer_overhead_ns\": %.1f,\n", info->timer_ns);
    fprintf(f, "  \"cudaMallocAsync_timing\": \"each pair timed without a sync; the stream is synchronized once "
               "after each size's loop: final_sync_ns, and amortized_ns = mean_ns + final_sync_ns / n\",\n");
    fprintf(f, "  \"gpuheap_stream_ordered_timing\": \"gpu_malloc_async + gpu_free_async on the cudaMallocAsync "
               "stream, each pair timed without a sync\",\n");
    fprintf(f, "  \"rows\": [\n");
    for (size_t i = 0; i < nrows; i++) {
        char label[32];
        const row *r = &rows[i];
        fprintf(f, "    {\"size\": %zu, \"label\": \"%s\",\n     \"gpuheap\": ", r->size,
                size_label(r->size, label, sizeof label));
        json_cell(f, &r->heap, false);
        fprintf(f, ",\n     \"gpuheap_stream_ordered\": ");
        json_cell(f, &r->heap_async, false);
        fprintf(f, ",\n     \"cudaMalloc\": ");
        json_cell(f, &r->cm, false);
        fprintf(f, ",\n     \"cudaMallocAsync\": ");
        json_cell(f, &r->cma, true);
        fprintf(f, ",\n     \"speedup_vs_cudaMalloc\": ");
        json_speedup(f, &r->heap, &r->cm);
        fprintf(f, ", \"speedup_vs_cudaMallocAsync\": ");
        json_speedup(f, &r->heap, &r->cma);
        fprintf(f, ", \"stream_ordered_speedup_vs_cudaMallocAsync\": ");
        json_speedup(f, &r->heap_async, &r->cma);
        fprintf(f, "}%s\n", i + 1 < nrows ? "," : "");
    }
    fprintf(f, "  ],\n  \"gpuheap_stats\": {");
    const char *sep = "";
#define DEMO_JSON_STAT(name, doc) \
    fprintf(f, "%s\n    \"%s\": %llu", sep, #name, (unsigned long long)info->stats.name); \
    sep = ",";
    GPU_STATS_FIELDS(DEMO_JSON_STAT)
#undef DEMO_JSON_STAT
    fprintf(f, "\n  }\n}\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "gpuheap-demo: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- main ----------------------------------------------------------------------- */

static void usage(FILE *f) {
    fprintf(f, "usage: gpuheap-demo [--quick] [--free-order event|legacy] [--json FILE]\n"
               "  Times warm malloc+free pairs of gpuheap (plain and stream-ordered),\n"
               "  cudaMalloc and cudaMallocAsync\n"
               "  for sizes from 256 B to 1 GiB on GPU 0 (gpuheap alone on its host\n"
               "  backend when there is no GPU).\n"
               "  --quick      fewer pairs per size\n"
               "  --free-order legacy: plain pairs in legacy free order (gpu_set_free_order)\n"
               "  --json FILE  also write the results as JSON to FILE\n");
}

/* Finds GPU 0 through the runtime; false with the reason in why. Without
 * libcuda.so.1 at all the runtime can only say that "the driver version is
 * insufficient", so the driver is looked for first. */
static bool find_gpu(run_info *info, char *why, size_t why_len) {
    if (!dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) {
        snprintf(why, why_len, "no CUDA driver: libcuda.so.1 cannot be loaded");
        return false;
    }
    if (cudart_load(why, why_len) != 0) return false;
    cudart_error e = cudart.cudaSetDevice(0);
    if (e != CUDART_SUCCESS) {
        snprintf(why, why_len, "cudaSetDevice(0): %s", cudart_strerror(e));
        return false;
    }
    /* cudaSetDevice is lazy about some failures; a sync surfaces them. */
    if ((e = cudart.cudaDeviceSynchronize()) != CUDART_SUCCESS) {
        snprintf(why, why_len, "cudaDeviceSynchronize: %s", cudart_strerror(e));
        return false;
    }
    cudart_device_name(0, info->device, sizeof info->device);
    int rt = 0, drv = 0;
    cudart.cudaRuntimeGetVersion(&rt);
    cudart.cudaDriverGetVersion(&drv);
    snprintf(info->note, sizeof info->note, "CUDA runtime %d.%d, driver API %d.%d", rt / 1000, rt % 1000 / 10,
             drv / 1000, drv % 1000 / 10);
    return true;
}

int main(int argc, char **argv) {
    const char *json_path = NULL;
    bool legacy = false;
    run_info info;
    memset(&info, 0, sizeof info);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            info.quick = true;
        } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            json_path = argv[++i];
        } else if (strcmp(argv[i], "--free-order") == 0 && i + 1 < argc) {
            const char *o = argv[++i];
            if (strcmp(o, "event") && strcmp(o, "legacy")) {
                usage(stderr);
                return 2;
            }
            legacy = !strcmp(o, "legacy");
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    const plan *pl = info.quick ? &quick_plan : &full_plan;

    char why[384] = "";
    info.gpu = find_gpu(&info, why, sizeof why);
    if (legacy) (void)gpu_set_free_order(GPU_FREE_ORDER_LEGACY);

    gpu_heap_t *heap = NULL; /* NULL: the default heap of GPU 0 */
    cudart_stream stream = NULL;
    printf("gpuheap demo: latency of one warm malloc+free pair, in nanoseconds\n");
    if (info.gpu) {
        if (gpu_heap_default() == NULL) {
            fprintf(stderr, "gpuheap-demo: a GPU is present (%s) but gpuheap's default heap failed: %s\n",
                    info.device, gpu_strerror(gpu_last_error()));
            return 1;
        }
        cudart_mempool pool = NULL;
        cudart_error e = cudart_keep_all_pool(&stream, &pool);
        if (e != CUDART_SUCCESS) {
            fprintf(stderr, "gpuheap-demo: setting up cudaMallocAsync: %s\n", cudart_strerror(e));
            return 1;
        }
        printf("device: %s (GPU 0); %s\n", info.device, info.note);
        printf("gpuheap: the default heap of GPU 0 (CUDA backend); plain = gpu_malloc + gpu_free (%s);\n"
               "  stream = gpu_malloc_async + gpu_free_async on the cudaMallocAsync stream (reused by that stream\n"
               "  at once, as cudaMallocAsync does)\n",
               legacy ? "legacy free order: a freed block is reused at once, the context made to wait for\n"
                        "  the work before the free"
                      : "a freed block is reused once the GPU has passed the free");
        printf("cudaMalloc: each pair is cudaMalloc + cudaFree (cudaFree synchronizes the device)\n");
        printf("cudaMallocAsync: the device's default pool, release threshold UINT64_MAX, one stream;\n"
               "  each pair is timed WITHOUT a sync (the cost to the calling thread); the stream is\n"
               "  synchronized once after each size's loop (in the JSON: final_sync_ns, amortized_ns)\n");
    } else {
        printf("no GPU found (%s); running on the HOST backend -- these numbers are not GPU numbers\n", why);
        gpu_config_t cfg;
        gpu_config_init(&cfg);
        cfg.backend = GPU_BACKEND_HOST;
        int rc = gpu_heap_create(&cfg, &heap);
        if (rc != GPU_OK) {
            fprintf(stderr, "gpuheap-demo: cannot create a host heap: %s\n", gpu_strerror(rc));
            return 1;
        }
        snprintf(info.device, sizeof info.device, "host (no GPU)");
        async_heap = heap;
        stream = (cudart_stream)(uintptr_t)0x5157; /* the host backend takes any handle as a stream */
        snprintf(info.note, sizeof info.note, "no GPU found (%s); host backend, not GPU numbers", why);
    }

    cell timer;
    run_cell(empty_pair, NULL, 0, 100, 10000, 1.0, &timer);
    info.timer_ns = timer.median_ns;
    printf("the clock adds about %.0f ns to each figure (median of empty pairs); not subtracted\n", info.timer_ns);
    fflush(stdout);

    row rows[NSIZES];
    memset(rows, 0, sizeof rows);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t size = sizes[i];
        rows[i].size = size;
        run_cell(heap_pair, heap, size, pl->warm, pl->iters, pl->budget_s, &rows[i].heap);
        run_cell(heap_async_pair, stream, size, pl->warm, pl->iters, pl->budget_s, &rows[i].heap_async);
        if (!info.gpu) continue;
        size_t cm_iters = size >= 256 * MiB ? pl->cm_iters_big : pl->cm_iters;
        run_cell(cm_pair, NULL, size, pl->cm_warm, cm_iters, pl->budget_s, &rows[i].cm);
        run_cell(cma_pair, stream, size, pl->warm, pl->iters, pl->budget_s, &rows[i].cma);
        uint64_t t0 = now_ns();
        cudart_error e = cudart.cudaStreamSynchronize(stream);
        rows[i].cma.final_sync_ns = (double)(now_ns() - t0);
        if (e != CUDART_SUCCESS && !rows[i].cma.failed) {
            rows[i].cma.failed = true;
            snprintf(rows[i].cma.error, sizeof rows[i].cma.error, "cudaStreamSynchronize: %s", cudart_strerror(e));
        }
    }

    print_table(rows, NSIZES);
    printf("(median and p99 of each cell's timed pairs; speed-up = the other allocator's median / gpuheap's;\n"
           " stream vs Async compares the two stream-ordered paths on the same stream)\n");

    if (gpu_heap_stats(heap, &info.stats) == GPU_OK)
        printf("gpuheap: %llu extents, %llu MiB mapped, %llu fences, backend calls: %llu create, %llu map, "
               "%llu unmap\n",
               (unsigned long long)info.stats.extents, (unsigned long long)(info.stats.mapped_bytes >> 20),
               (unsigned long long)info.stats.fences, (unsigned long long)info.stats.backend_create,
               (unsigned long long)info.stats.backend_map, (unsigned long long)info.stats.backend_unmap);

    int status = 0;
    for (size_t i = 0; i < NSIZES; i++)
        if (rows[i].heap.failed || rows[i].heap_async.failed || rows[i].cm.failed || rows[i].cma.failed) status = 1;
    if (json_path != NULL && write_json(json_path, &info, rows, NSIZES) != 0) status = 1;
    if (heap != NULL) gpu_heap_destroy(heap);
    return status;
}
