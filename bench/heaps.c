/*
 * heaps.c — a process's first heap and the ones after it: what making each one
 * and its first allocation cost, gpuheap against the CUDA runtime's pools.
 *
 * A program that keeps memory apart — per component, per stream, per tenant —
 * makes several heaps. gpu_heap_create reserves the heap's VA (a default-size
 * heap asks up to 64 TiB, the next half the last one's) and asks the backend
 * about the device (its description once per process: lib/backend/cuda/known.c). Each round runs
 * in a fresh process (--child) whose CUDA context exists already and makes
 * HEAPS heaps of the default size one after another, timing each
 * gpu_heap_create and each heap's first 2 MiB gpu_heap_malloc; and as many
 * pools with cudaMemPoolCreate (pinned memory on device 0), timing each and its
 * first 2 MiB cudaMallocFromPoolAsync with its stream sync. Nothing is given
 * back until the round ends: the k-th heap or pool is made beside the ones
 * before it, as a program holds them. Rounds turn which of the two goes first;
 * the figures are medians over the rounds.
 *
 *   gpuheap-heaps [--rounds N] [--json FILE]
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "cudart_util.h"
#include "gpuheap.h"

enum { HEAPS = 6 };
#define FIRST_ALLOC ((size_t)2 << 20)

/* One round's figures, µs: making the k-th heap / pool, and its first allocation. */
typedef struct round_times {
    double heap[HEAPS], heap_alloc[HEAPS], pool[HEAPS], pool_alloc[HEAPS];
} round_times;

static void time_heaps(round_times *t) {
    gpu_heap_t *h[HEAPS] = {0};
    for (int k = 0; k < HEAPS; k++) {
        gpu_config_t cfg;
        gpu_config_init(&cfg);
        cfg.backend = GPU_BACKEND_CUDA;
        uint64_t t0 = now_ns();
        int rc = gpu_heap_create(&cfg, &h[k]);
        uint64_t t1 = now_ns();
        void *p = rc == GPU_OK ? gpu_heap_malloc(h[k], FIRST_ALLOC) : NULL;
        uint64_t t2 = now_ns();
        t->heap[k] = rc == GPU_OK ? (double)(t1 - t0) / 1e3 : 0;
        t->heap_alloc[k] = p ? (double)(t2 - t1) / 1e3 : 0;
    }
    for (int k = HEAPS; k-- > 0;)
        if (h[k]) gpu_heap_destroy(h[k]); /* its blocks with it */
}

static void time_pools(round_times *t, cudart_stream s) {
    cudart_mempool pool[HEAPS] = {0};
    cudart_mempool_props props;
    memset(&props, 0, sizeof props);
    props.alloc_type = CUDART_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CUDART_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    for (int k = 0; k < HEAPS; k++) {
        uint64_t t0 = now_ns();
        bool made = cudart.cudaMemPoolCreate(&pool[k], &props) == CUDART_SUCCESS;
        uint64_t t1 = now_ns();
        void *p = NULL;
        bool got = made && cudart.cudaMallocFromPoolAsync(&p, FIRST_ALLOC, pool[k], s) == CUDART_SUCCESS &&
                   cudart.cudaStreamSynchronize(s) == CUDART_SUCCESS;
        uint64_t t2 = now_ns();
        t->pool[k] = made ? (double)(t1 - t0) / 1e3 : 0;
        t->pool_alloc[k] = got ? (double)(t2 - t1) / 1e3 : 0;
        if (got) cudart.cudaFreeAsync(p, s);
    }
    cudart.cudaStreamSynchronize(s);
    for (int k = 0; k < HEAPS; k++)
        if (pool[k]) cudart.cudaMemPoolDestroy(pool[k]);
}

/* gpuheap-heaps --child ROUND: one round, its figures on one line. */
static int child(int round) {
    char why[256] = "cudaSetDevice(0) failed";
    cudart_stream s;
    if (cudart_load(why, sizeof why) != 0 || cudart.cudaSetDevice(0) != CUDART_SUCCESS ||
        cudart.cudaFree(NULL) != CUDART_SUCCESS || cudart.cudaStreamCreate(&s) != CUDART_SUCCESS)
        return 1;
    round_times t;
    memset(&t, 0, sizeof t);
    if (round % 2 == 0) time_heaps(&t), time_pools(&t, s);
    else time_pools(&t, s), time_heaps(&t);
    printf("round");
    for (int k = 0; k < HEAPS; k++) printf(" %.1f %.1f %.1f %.1f", t.heap[k], t.heap_alloc[k], t.pool[k], t.pool_alloc[k]);
    printf("\n");
    return 0;
}

/* Runs round r in a fresh process; false if it could not. */
static bool run_child(int r, round_times *t) {
    char args[32];
    snprintf(args, sizeof args, "--child %d", r);
    FILE *f = bench_popen_self(args);
    if (!f) return false;
    char line[2048];
    bool ok = false;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "round", 5)) continue;
        char *p = line + 5;
        ok = true;
        for (int k = 0; k < HEAPS && ok; k++) {
            double *v[4] = {&t->heap[k], &t->heap_alloc[k], &t->pool[k], &t->pool_alloc[k]};
            for (int j = 0; j < 4 && ok; j++) {
                char *end;
                *v[j] = strtod(p, &end);
                ok = end != p;
                p = end;
            }
        }
    }
    return pclose(f) == 0 && ok;
}

int main(int argc, char **argv) {
    int rounds = 9;
    const char *json_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--child") && i + 1 < argc) return child(atoi(argv[i + 1]));
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else {
            fprintf(stderr, "usage: gpuheap-heaps [--rounds N] [--json FILE]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > 99) rounds = 9;
    char why[256] = "cudaSetDevice(0) failed", name[128] = "?";
    if (cudart_load(why, sizeof why) != 0 || cudart.cudaSetDevice(0) != CUDART_SUCCESS) {
        printf("no GPU (%s): this benchmark compares against cudaMemPoolCreate and needs one\n", why);
        return 0;
    }
    cudart_device_name(0, name, sizeof name);
    round_times all[99];
    int got = 0;
    for (int r = 0; r < rounds; r++)
        if (run_child(r, &all[got])) got++;
    if (!got) {
        fprintf(stderr, "gpuheap-heaps: no round ran\n");
        return 1;
    }
    double med[4][HEAPS];
    for (int k = 0; k < HEAPS; k++) {
        double v[4][99];
        for (int r = 0; r < got; r++) {
            v[0][r] = all[r].heap[k], v[1][r] = all[r].heap_alloc[k];
            v[2][r] = all[r].pool[k], v[3][r] = all[r].pool_alloc[k];
        }
        for (int j = 0; j < 4; j++) med[j][k] = bench_quantiles(v[j], (size_t)got, NULL);
    }
    printf("heaps made one after another in a fresh process, on %s, median of %d rounds, us\n", name, got);
    printf("%6s | %16s %14s | %18s %16s | %9s %9s\n", "k-th", "gpu_heap_create", "first malloc", "cudaMemPoolCreate",
           "first FromPool", "make vs", "alloc vs");
    for (int k = 0; k < HEAPS; k++) {
        char r1[16], r2[16];
        printf("%6d | %16.1f %14.1f | %18.1f %16.1f | %9s %9s\n", k + 1, med[0][k], med[1][k], med[2][k], med[3][k],
               bench_fmt_ratio(bench_ratio(med[2][k], med[0][k]), r1, sizeof r1), bench_fmt_ratio(bench_ratio(med[3][k], med[1][k]), r2, sizeof r2));
    }
    printf("(first malloc: 2 MiB; first FromPool: cudaMallocFromPoolAsync of 2 MiB and a stream sync; vs = the\n"
           " pool's time / gpuheap's: above 1 means gpuheap is faster)\n");
    if (json_path) {
        FILE *j = fopen(json_path, "w");
        if (!j) return 1;
        fprintf(j, "{\"benchmark\": \"gpuheap-heaps\", \"device\": \"%s\", \"rounds\": %d, \"heaps\": [", name, got);
        for (int k = 0; k < HEAPS; k++)
            fprintf(j, "%s\n {\"k\": %d, \"gpu_heap_create_us\": %.1f, \"first_malloc_us\": %.1f, \"cudaMemPoolCreate_us\": %.1f, "
                       "\"first_pool_alloc_us\": %.1f}", k ? "," : "", k + 1, med[0][k], med[1][k], med[2][k], med[3][k]);
        fprintf(j, "]}\n");
        fclose(j);
    }
    return 0;
}
