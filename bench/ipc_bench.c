/*
 * ipc_bench.c — sharing a block with another process: gpuheap's IPC
 * (gpu_ipc_get_mem_handle / open / close on gpu_malloc memory) against CUDA's
 * legacy IPC (cudaIpcGetMemHandle / cudaIpcOpenMemHandle / cudaIpcCloseMemHandle
 * on cudaMalloc memory), in one run, between the same two processes.
 *
 * The exporter (this process) allocates N blocks of a size, takes a handle of
 * each (timed one by one) and sends the handles through a pipe to the importer
 * — itself again, started once with fork + exec, since a CUDA context does not
 * survive a fork — which opens every handle (timed), then closes every one
 * (timed), and sends its timings back. The exporter then frees the blocks. Per
 * size the two kinds run back to back, after a warm-up round of each that is
 * not counted (the first export starts gpuheap's IPC server; the first CUDA
 * open sets up the driver's side). A handle's cost is get + open + close: the
 * mean of each over N, and their sum; the ratio is CUDA's sum over gpuheap's
 * (above 1: gpuheap is faster).
 *
 *   gpuheap-ipc-bench [--n N] [--json FILE] [--gpuheap-only]   (N: 200 by default)
 *
 * Run it without gpuheap-run: it compares against the real cudaMalloc. It needs
 * a GPU; without one it exits 77. --gpuheap-only leaves CUDA out (no cudart is
 * loaded, no cudaIpc round): with GPUHEAP_BACKEND=host it measures gpuheap's
 * own IPC path (the transport, the lookup, the mapping) on a machine without a
 * GPU, e.g. under strace -c -f or perf stat. With GPUHEAP_TRACE=/tmp/t.%p.trace
 * both processes record their phases (bench/ipc_phases.py reads them).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "cudart_util.h"
#include "gpuheap.h"

enum kind { KIND_GPUHEAP, KIND_CUDA, KIND_QUIT };
static const char *const kind_name[] = {"gpuheap", "cudaIpc"};

struct round { /* exporter -> importer, then n handles */
    int kind, n;
    uint64_t size;
};
struct reply { /* importer -> exporter, then n open and n close times (ns) */
    int failures;
    char message[160];
};

_Static_assert(sizeof(gpu_ipc_mem_handle_t) == sizeof(cudart_ipc_handle), "both handles are 64 bytes");

static void die(const char *fmt, const char *detail) {
    fprintf(stderr, "ipc_bench: ");
    fprintf(stderr, fmt, detail);
    fprintf(stderr, "\n");
    exit(1);
}

static void put(int fd, const void *p, size_t n) {
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, (const char *)p + done, n - done);
        if (w <= 0) die("pipe write: %s", strerror(errno));
        done += (size_t)w;
    }
}

/* false at end of file before the first byte (the other side is gone). */
static bool get(int fd, void *p, size_t n) {
    for (size_t done = 0; done < n;) {
        ssize_t r = read(fd, (char *)p + done, n - done);
        if (r <= 0) {
            if (done == 0 && r == 0) return false;
            die("pipe read: %s", r ? strerror(errno) : "the other side closed mid-message");
        }
        done += (size_t)r;
    }
    return true;
}

/* ---- the importer ------------------------------------------------------------------ */

static int importer(int in, int out, bool cuda) {
    if (cuda && cudart.cudaSetDevice(0) != CUDART_SUCCESS) die("importer: %s", "cudaSetDevice(0) failed");
    struct round r;
    while (get(in, &r, sizeof r) && r.kind != KIND_QUIT) {
        cudart_ipc_handle *h = malloc((size_t)r.n * sizeof *h);
        void **p = calloc((size_t)r.n, sizeof *p);
        double *t = malloc(2 * (size_t)r.n * sizeof *t);
        if (!h || !p || !t) die("importer: %s", "out of host memory");
        get(in, h, (size_t)r.n * sizeof *h);
        struct reply rep = {0};
        for (int i = 0; i < r.n; i++) {
            uint64_t t0 = now_ns();
            int rc;
            if (r.kind == KIND_GPUHEAP) {
                gpu_ipc_mem_handle_t g;
                memcpy(&g, &h[i], sizeof g);
                rc = gpu_ipc_open_mem_handle(&p[i], g, 1);
            } else {
                rc = cudart.cudaIpcOpenMemHandle(&p[i], h[i], CUDART_IPC_LAZY_ENABLE_PEER_ACCESS);
            }
            t[i] = (double)(now_ns() - t0);
            if (rc && !rep.failures++)
                snprintf(rep.message, sizeof rep.message, "open #%d: %s", i,
                         r.kind == KIND_GPUHEAP ? gpu_strerror(rc) : cudart_strerror(rc));
            if (rc) p[i] = NULL;
        }
        for (int i = 0; i < r.n; i++) {
            uint64_t t0 = now_ns();
            int rc = !p[i] ? 0 : r.kind == KIND_GPUHEAP ? gpu_ipc_close_mem_handle(p[i]) : cudart.cudaIpcCloseMemHandle(p[i]);
            t[r.n + i] = (double)(now_ns() - t0);
            if (rc && !rep.failures++) snprintf(rep.message, sizeof rep.message, "close #%d failed (%d)", i, rc);
        }
        put(out, &rep, sizeof rep);
        put(out, t, 2 * (size_t)r.n * sizeof *t);
        free(h), free(p), free(t);
    }
    return 0;
}

/* ---- the exporter ------------------------------------------------------------------ */

typedef struct result {
    double get_us, open_us, close_us, total_us; /* means per handle */
    double get_med_us, open_med_us, close_med_us;
} result;

static double mean_of(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return n ? s / n : 0;
}

/* One round of n handles of size bytes of kind; false (reason printed) on failure. */
static bool round_trip(int to, int from, enum kind kind, int n, size_t size, result *res) {
    void **blocks = calloc((size_t)n, sizeof *blocks);
    cudart_ipc_handle *h = malloc((size_t)n * sizeof *h);
    double *tg = malloc((size_t)n * sizeof *tg), *tt = malloc(2 * (size_t)n * sizeof *tt);
    if (!blocks || !h || !tg || !tt) die("%s", "out of host memory");
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        if (kind == KIND_GPUHEAP) blocks[i] = gpu_malloc(size);
        else if (cudart.cudaMalloc(&blocks[i], size) != CUDART_SUCCESS) blocks[i] = NULL;
        if (!blocks[i]) {
            printf("ipc_bench: %s: allocation %d of %zu bytes failed\n", kind_name[kind], i, size);
            ok = false;
            break;
        }
        uint64_t t0 = now_ns();
        int rc;
        if (kind == KIND_GPUHEAP) {
            gpu_ipc_mem_handle_t g;
            rc = gpu_ipc_get_mem_handle(&g, blocks[i]);
            memcpy(&h[i], &g, sizeof g);
        } else {
            rc = cudart.cudaIpcGetMemHandle(&h[i], blocks[i]);
        }
        tg[i] = (double)(now_ns() - t0);
        if (rc) {
            printf("ipc_bench: %s: get #%d failed: %s\n", kind_name[kind], i,
                   kind == KIND_GPUHEAP ? gpu_strerror(rc) : cudart_strerror(rc));
            ok = false;
        }
    }
    if (ok) {
        struct round r = {kind, n, size};
        put(to, &r, sizeof r);
        put(to, h, (size_t)n * sizeof *h);
        struct reply rep;
        if (!get(from, &rep, sizeof rep)) die("%s", "the importer is gone");
        get(from, tt, 2 * (size_t)n * sizeof *tt);
        if (rep.failures) {
            printf("ipc_bench: %s: the importer failed %d times (first: %s)\n", kind_name[kind], rep.failures, rep.message);
            ok = false;
        }
    }
    for (int i = 0; i < n; i++)
        if (blocks[i]) (void)(kind == KIND_GPUHEAP ? gpu_free(blocks[i]) : cudart.cudaFree(blocks[i]));
    if (ok && res) {
        res->get_us = mean_of(tg, n) / 1e3;
        res->open_us = mean_of(tt, n) / 1e3;
        res->close_us = mean_of(tt + n, n) / 1e3;
        res->total_us = res->get_us + res->open_us + res->close_us;
        res->get_med_us = bench_quantiles(tg, (size_t)n, NULL) / 1e3;
        res->open_med_us = bench_quantiles(tt, (size_t)n, NULL) / 1e3;
        res->close_med_us = bench_quantiles(tt + n, (size_t)n, NULL) / 1e3;
    }
    free(blocks), free(h), free(tg), free(tt);
    return ok;
}

int main(int argc, char **argv) {
    int n = 200;
    const char *json = NULL;
    bool cuda = true; /* false: --gpuheap-only */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--importer") && i + 3 < argc) {
            char why[256];
            cuda = strcmp(argv[i + 3], "cuda") == 0;
            if (cuda && cudart_load(why, sizeof why)) die("importer: %s", why);
            return importer(atoi(argv[i + 1]), atoi(argv[i + 2]), cuda);
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc) {
            n = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
            json = argv[++i];
        } else if (!strcmp(argv[i], "--gpuheap-only")) {
            cuda = false;
        } else {
            fprintf(stderr, "usage: %s [--n N] [--json FILE] [--gpuheap-only]\n", argv[0]);
            return 2;
        }
    }
    char why[256], card[256];
    if (n < 1) {
        fprintf(stderr, "ipc_bench: --n must be at least 1\n");
        return 2;
    }
    if (!cuda) {
        const char *b = getenv("GPUHEAP_BACKEND");
        snprintf(card, sizeof card, "gpuheap only (GPUHEAP_BACKEND=%s)", b && *b ? b : "auto");
    } else if (cudart_load(why, sizeof why)) {
        printf("ipc_bench: no CUDA runtime (%s): skipped\n", why);
        return 77;
    } else {
        cudart_error e = cudart.cudaSetDevice(0);
        if (e != CUDART_SUCCESS) {
            printf("ipc_bench: no GPU (cudaSetDevice(0): %s): skipped\n", cudart_strerror(e));
            return 77;
        }
        cudart_device_name(0, card, sizeof card);
    }
    int to[2], from[2];
    if (pipe(to) || pipe(from)) die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(to[1]), close(from[0]);
        char a[16], b[16];
        snprintf(a, sizeof a, "%d", to[0]);
        snprintf(b, sizeof b, "%d", from[1]);
        execl("/proc/self/exe", argv[0], "--importer", a, b, cuda ? "cuda" : "gpuheap-only", (char *)NULL);
        _exit(127);
    }
    close(to[0]), close(from[1]);

    static const size_t sizes[] = {1 << 20, 64 << 20};
    enum { NSIZES = sizeof sizes / sizeof sizes[0] };
    result res[NSIZES][2];
    const int last_kind = cuda ? KIND_CUDA : KIND_GPUHEAP;
    bool ok = round_trip(to[1], from[0], KIND_GPUHEAP, 8, sizes[0], NULL) && /* warm-up, not counted */
              (!cuda || round_trip(to[1], from[0], KIND_CUDA, 8, sizes[0], NULL));
    printf("IPC per handle on %s, two processes, N=%d, us (mean; median in brackets)\n", card, n);
    printf("%8s %-8s %18s %18s %18s %10s\n", "size", "kind", "get", "open", "close", "total");
    for (int k = 0; k < NSIZES && ok; k++) {
        for (int kind = KIND_GPUHEAP; kind <= last_kind && ok; kind++) {
            result *r = &res[k][kind];
            ok = round_trip(to[1], from[0], (enum kind)kind, n, sizes[k], r);
            if (!ok) break;
            char label[32];
            printf("%8s %-8s %9.1f [%6.1f] %9.1f [%6.1f] %9.1f [%6.1f] %10.1f\n", size_label(sizes[k], label, sizeof label),
                   kind_name[kind], r->get_us, r->get_med_us, r->open_us, r->open_med_us, r->close_us, r->close_med_us,
                   r->total_us);
        }
        if (ok && cuda) printf("%8s ratio cudaIpc / gpuheap per handle: %.2fx (get %.2fx, open %.2fx, close %.2fx)\n", "",
                       res[k][1].total_us / res[k][0].total_us, res[k][1].get_us / res[k][0].get_us,
                       res[k][1].open_us / res[k][0].open_us, res[k][1].close_us / res[k][0].close_us);
    }
    struct round quit = {KIND_QUIT, 0, 0};
    put(to[1], &quit, sizeof quit);
    close(to[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (ok && json) {
        FILE *f = fopen(json, "w");
        if (!f) die("cannot write %s", json);
        fprintf(f, "{\"benchmark\":\"ipc\",\"device\":\"%s\",\"n\":%d,\"unit\":\"us per handle\",\"rows\":[", card, n);
        for (int k = 0; k < NSIZES; k++) {
            fprintf(f, "%s{\"size\":%zu", k ? "," : "", sizes[k]);
            for (int kind = 0; kind <= last_kind; kind++) {
                result *r = &res[k][kind];
                fprintf(f, ",\"%s\":{\"get\":%.2f,\"open\":%.2f,\"close\":%.2f,\"total\":%.2f,"
                           "\"get_median\":%.2f,\"open_median\":%.2f,\"close_median\":%.2f}",
                        kind_name[kind], r->get_us, r->open_us, r->close_us, r->total_us, r->get_med_us, r->open_med_us,
                        r->close_med_us);
            }
            if (cuda) fprintf(f, ",\"ratio_cuda_over_gpuheap\":%.3f", res[k][1].total_us / res[k][0].total_us);
            fprintf(f, "}");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!child_ok) printf("ipc_bench: the importer ended badly (status %#x)\n", status);
    return ok && child_ok ? 0 : 1;
}
