/*
 * file_load.c — gpuheap-file-load: how fast a file in the page cache gets into a
 * GPU kernel's reach, by every route a program has, measured side by side.
 *
 * For files of 256 MiB to 8 GiB (written under --dir, then read once so they sit
 * in the page cache; mincore confirms it) each route is timed from "the path is
 * known" to "the bytes are usable by a kernel":
 *   map_file   gpu_map_file, the default loaded mapping: pipelined read() on
 *              several threads into pinned staging buffers, async copies to a
 *              heap block, then protection (read-only)
 *   naive      read() the whole file into a malloc'ed buffer, then cuMemcpyHtoD
 *              (pageable) into cuMemAlloc'ed memory — buffers allocated and
 *              touched beforehand, so only the read and the copy are timed
 *   zerocopy   gpu_map_file(GPU_MAP_ZEROCOPY) — mmap + cuMemHostRegister
 *              READ_ONLY — plus one kernel pass reading every word over the bus
 *              (the cost of touching the data once; each later pass pays again)
 *   cufile     gpu_map_file(GPU_MAP_CUFILE), where libcufile is installed
 * against the bandwidth that bounds them all, measured in the same run: plain
 * cuMemcpyHtoD from pinned memory (512 MiB copies). Every route's first result
 * is checked on the device by a kernel (cuda_util.c's check) against the
 * pattern the file was written with. On the 1 GiB file, map_file is also run
 * with 1..16 threads and 2..32 MiB chunks (GPUHEAP_FILE_THREADS / _CHUNK).
 *
 * Results: a table printed last, and JSON with --json. Ratios are map_file's
 * throughput over each peer's, and over the pinned H2D bandwidth. Without a GPU
 * it says so and exits 77.
 *
 *   gpuheap-file-load [--dir DIR] [--sizes 256M,1G,4G,8G] [--reps N] [--json FILE] [--keep]
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "backend/cuda/loader.h"
#include "cuda_util.h"
#include "gpuheap.h"

#define MAX_SIZES 8
#define MAX_REPS 16

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


static double gbps(size_t bytes, double s) { return s > 0 ? (double)bytes / s / 1e9 : 0; }

/* The last gpuheap error message, for the report. */
static char last_msg[512];
static void on_error(int err, const char *msg, void *arg) {
    (void)arg;
    snprintf(last_msg, sizeof last_msg, "%s: %s", gpu_strerror(err), msg);
}

#define CU_CHECK(call)                                                                   \
    do {                                                                                 \
        CUresult r_ = (call);                                                            \
        if (r_ != CUDA_SUCCESS) {                                                        \
            fprintf(stderr, "file_load: %s: %s\n", #call, cu_util_errname(r_));          \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

/* ---- files ------------------------------------------------------------------------ */

typedef struct writer {
    int fd;
    size_t size;
    uint32_t seed;
    size_t next_chunk, nchunks;
    pthread_mutex_t lock;
    bool failed;
} writer;

#define WRITE_CHUNK (64 * MiB)

static void *write_worker(void *arg) {
    writer *w = arg;
    uint32_t *buf = malloc(WRITE_CHUNK);
    if (!buf) {
        w->failed = true;
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&w->lock);
        size_t c = w->next_chunk++;
        pthread_mutex_unlock(&w->lock);
        if (c >= w->nchunks) break;
        size_t off = c * WRITE_CHUNK, n = w->size - off < WRITE_CHUNK ? w->size - off : WRITE_CHUNK;
        for (size_t i = 0; i < n / 4; i++) buf[i] = cu_pattern(w->seed, off / 4 + i);
        if (pwrite(w->fd, buf, n, (off_t)off) != (ssize_t)n) w->failed = true;
    }
    free(buf);
    return NULL;
}

/* Writes size bytes of seed's words to path with 8 threads and syncs it, unless it is there already. */
static int make_file(const char *path, size_t size, uint32_t seed, double *secs) {
    struct stat st;
    uint32_t first = 0;
    int fd = open(path, O_RDONLY);
    if (fd >= 0 && fstat(fd, &st) == 0 && (size_t)st.st_size == size && pread(fd, &first, 4, 0) == 4 &&
        first == cu_pattern(seed, 0)) {
        close(fd);
        *secs = 0;
        return 0;
    }
    if (fd >= 0) close(fd);
    double t0 = now_s();
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    writer w = {.fd = fd, .size = size, .seed = seed, .nchunks = (size + WRITE_CHUNK - 1) / WRITE_CHUNK};
    pthread_mutex_init(&w.lock, NULL);
    pthread_t t[8];
    for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, write_worker, &w);
    for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
    /* Written back before any timing: the pages stay cached but clean, so that
     * no route competes with the file system's writeback of what was just
     * written (the smallest file, timed first, would pay for the others). */
    if (fsync(fd) != 0) w.failed = 1;
    close(fd);
    *secs = now_s() - t0;
    return w.failed ? -1 : 0;
}

/* Reads the file once (page cache warm-up) and returns the fraction of its pages resident. */
static double warm_and_measure(const char *path, size_t size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    char *buf = malloc(64 * MiB);
    for (size_t off = 0; off < size; off += 64 * MiB) {
        size_t n = size - off < 64 * MiB ? size - off : 64 * MiB;
        if (pread(fd, buf, n, (off_t)off) != (ssize_t)n) break;
    }
    free(buf);
    double frac = -1;
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
        size_t pages = (size + 4095) / 4096;
        unsigned char *vec = malloc(pages);
        if (vec && mincore(m, size, vec) == 0) {
            size_t in = 0;
            for (size_t i = 0; i < pages; i++) in += vec[i] & 1;
            frac = (double)in / (double)pages;
        }
        free(vec);
        munmap(m, size);
    }
    close(fd);
    return frac;
}

/* ---- the routes ----------------------------------------------------------------------- */

typedef struct result {
    bool ran, ok;
    char note[512];
    int n;
    double s[MAX_REPS];   /* seconds per rep */
    double med_s;
    double extra_med_s;   /* zerocopy: the kernel pass alone; map_file: unmap */
} result;

static void finish(result *r) {
    double tmp[MAX_REPS];
    memcpy(tmp, r->s, sizeof tmp);
    r->med_s = bench_quantiles(tmp, (size_t)(r->n), NULL);
}

/* Checks a device range against the file's pattern; notes a mismatch. */
static bool verify(result *r, const void *p, size_t size, uint32_t seed) {
    uint64_t bad = cu_check((CUdeviceptr)(uintptr_t)p, size / 4, seed, 0);
    if (bad != 0) {
        snprintf(r->note, sizeof r->note, "CONTENTS WRONG: %llu words differ", (unsigned long long)bad);
        r->ok = false;
        return false;
    }
    return true;
}

static void run_map_file(result *r, gpu_heap_t *h, const char *path, size_t size, uint32_t seed, unsigned flags,
                         int reps) {
    double unmap_s[MAX_REPS];
    r->ran = r->ok = true;
    for (int i = 0; i < reps; i++) {
        void *p = NULL;
        double t0 = now_s();
        int rc = gpu_heap_map_file(h, path, 0, 0, flags, &p);
        double t1 = now_s();
        if (rc != GPU_OK) {
            r->ok = false;
            snprintf(r->note, sizeof r->note, "%s", last_msg);
            return;
        }
        if (i == 0 && !verify(r, p, size, seed)) {
            gpu_unmap_file(p, 0);
            return;
        }
        double t2 = now_s();
        gpu_unmap_file(p, 0);
        unmap_s[i] = now_s() - t2;
        r->s[r->n++] = t1 - t0;
    }
    finish(r);
    r->extra_med_s = bench_quantiles(unmap_s, (size_t)(r->n), NULL);
}

static void run_zerocopy(result *r, gpu_heap_t *h, const char *path, size_t size, uint32_t seed, int reps) {
    double kernel_s[MAX_REPS];
    r->ran = r->ok = true;
    for (int i = 0; i < reps; i++) {
        void *p = NULL;
        double t0 = now_s();
        int rc = gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY, &p);
        double t1 = now_s();
        if (rc != GPU_OK) {
            r->ok = false;
            snprintf(r->note, sizeof r->note, "%s", last_msg);
            return;
        }
        bool good = verify(r, p, size, seed); /* the kernel pass over the bus */
        double t2 = now_s();
        gpu_unmap_file(p, 0);
        if (!good) return;
        kernel_s[i] = t2 - t1;
        r->s[r->n++] = t2 - t0;
    }
    finish(r);
    r->extra_med_s = bench_quantiles(kernel_s, (size_t)(r->n), NULL);
}

static void run_naive(result *r, const char *path, size_t size, uint32_t seed, int reps) {
    r->ran = true;
    char *host = malloc(size);
    CUdeviceptr dev = 0;
    if (!host || cu.cuMemAlloc(&dev, size) != CUDA_SUCCESS) {
        snprintf(r->note, sizeof r->note, "no memory for the naive buffers");
        free(host);
        return;
    }
    memset(host, 0, size); /* touched: no page faults in the timed read */
    r->ok = true;
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        int fd = open(path, O_RDONLY);
        size_t done = 0;
        while (fd >= 0 && done < size) {
            ssize_t n = read(fd, host + done, size - done);
            if (n <= 0) break;
            done += (size_t)n;
        }
        if (fd >= 0) close(fd);
        CUresult cr = cu.cuMemcpyHtoD(dev, host, size);
        double t1 = now_s();
        if (done != size || cr != CUDA_SUCCESS) {
            r->ok = false;
            snprintf(r->note, sizeof r->note, "read %zu of %zu bytes, copy %s", done, size, cu_util_errname(cr));
            break;
        }
        if (i == 0 && !verify(r, (void *)(uintptr_t)dev, size, seed)) break;
        r->s[r->n++] = t1 - t0;
    }
    cu.cuMemFree(dev);
    free(host);
    finish(r);
}

/* Plain pinned host-to-device bandwidth: 512 MiB copies, median of 7. */
static double h2d_pinned_gbps(void) {
    typedef CUresult (*host_alloc_fn)(void **, size_t, unsigned);
    typedef CUresult (*free_host_fn)(void *);
    host_alloc_fn host_alloc;
    free_host_fn free_host;
    void *a = cuda_loader_proc("cuMemHostAlloc"), *f = cuda_loader_proc("cuMemFreeHost");
    memcpy(&host_alloc, &a, sizeof a);
    memcpy(&free_host, &f, sizeof f);
    if (!host_alloc || !free_host) return 0;
    size_t n = 512 * MiB;
    void *pinned = NULL;
    CUdeviceptr dev = 0;
    CU_CHECK(host_alloc(&pinned, n, 0));
    CU_CHECK(cu.cuMemAlloc(&dev, n));
    memset(pinned, 1, n);
    double t[7];
    CU_CHECK(cu.cuMemcpyHtoD(dev, pinned, n));
    for (int i = 0; i < 7; i++) {
        double t0 = now_s();
        CU_CHECK(cu.cuMemcpyHtoD(dev, pinned, n));
        t[i] = now_s() - t0;
    }
    cu.cuMemFree(dev);
    free_host(pinned);
    return gbps(n, bench_quantiles(t, 7, NULL));
}

/* ---- output ------------------------------------------------------------------------------ */

typedef struct row {
    size_t size;
    double write_s, resident;
    result map, naive, zc, cufile;
} row;

typedef struct sweep_point {
    unsigned threads;
    size_t chunk;
    double gbps;
} sweep_point;

static void json_result(FILE *f, const char *name, const result *r, size_t size, bool last) {
    fprintf(f, "      \"%s\": {\"ran\": %s, \"ok\": %s, \"reps\": %d, \"median_s\": %.6f, \"gb_per_s\": %.3f, \"extra_median_s\": %.6f, \"note\": \"",
            name, r->ran ? "true" : "false", r->ok ? "true" : "false", r->n, r->med_s, r->ok ? gbps(size, r->med_s) : 0.0,
            r->extra_med_s);
    for (const char *c = r->note; *c; c++) fputc(*c == '"' || *c == '\\' ? '\'' : *c, f);
    fprintf(f, "\"}%s\n", last ? "" : ",");
}

static double ratio(const result *a, const result *b) {
    return a->ok && b->ok && a->med_s > 0 ? b->med_s / a->med_s : 0;
}

/* Prints the table (last in the output) and writes the JSON; with_cufile once
 * the cuFile phase has run. */
static void report(const char *device, double h2d_before, double h2d_after, double cold_s, row *rows, int nsizes,
                   const sweep_point *sweep, int nsweep, int si, const char *json, bool with_cufile) {
    double h2d = h2d_before > h2d_after ? h2d_before : h2d_after;
    printf("\nFile loading from the page cache, %s; medians; GB/s = 1e9 bytes/s.\n", device);
    printf("Pinned H2D (cuMemcpyHtoD 512 MiB): %.1f GB/s before, %.1f after (best %.1f is the reference).\n", h2d_before,
           h2d_after, h2d);
    printf("First gpu_map_file of the run (pins %s staging): %.1f ms for %zu MiB.\n", "its", cold_s * 1e3, rows[0].size / MiB);
    printf("\n| size | map_file GB/s | %% of H2D | naive GB/s | map/naive | zerocopy GB/s (1 pass) | map/zerocopy | zc kernel pass GB/s | cufile GB/s | map/cufile | unmap ms |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        size_t s = rows[i].size;
        char cuf[32], cufr[32];
        snprintf(cuf, sizeof cuf, "%s", with_cufile ? "n/a" : "(later)");
        snprintf(cufr, sizeof cufr, "%s", cuf);
        if (r->cufile.ok) {
            snprintf(cuf, sizeof cuf, "%.1f", gbps(s, r->cufile.med_s));
            snprintf(cufr, sizeof cufr, "%.2fx", ratio(&r->map, &r->cufile));
        }
        printf("| %zu MiB | %.1f | %.0f%% | %.1f | %.2fx | %.1f | %.2fx | %.1f | %s | %s | %.2f |\n", s / MiB,
               r->map.ok ? gbps(s, r->map.med_s) : 0, r->map.ok && h2d > 0 ? 100 * gbps(s, r->map.med_s) / h2d : 0,
               r->naive.ok ? gbps(s, r->naive.med_s) : 0, ratio(&r->map, &r->naive), r->zc.ok ? gbps(s, r->zc.med_s) : 0,
               ratio(&r->map, &r->zc), r->zc.ok ? gbps(s, r->zc.extra_med_s) : 0, cuf, cufr, r->map.extra_med_s * 1e3);
    }
    printf("\nmap_file on the %zu MiB file by GPUHEAP_FILE_THREADS x GPUHEAP_FILE_CHUNK:", rows[si].size / MiB);
    for (int k = 0; k < nsweep; k++) printf(" %ux%zuM=%.1f", sweep[k].threads, sweep[k].chunk / MiB, sweep[k].gbps);
    printf(" GB/s\n");
    for (int i = 0; i < nsizes; i++) {
        const char *bad = !rows[i].map.ok ? rows[i].map.note : !rows[i].naive.ok ? rows[i].naive.note : NULL;
        if (bad) printf("%zu MiB: FAILED: %s\n", rows[i].size / MiB, bad);
    }

    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{\n  \"benchmark\": \"gpuheap-file-load\",\n  \"device\": \"%s\",\n", device);
            fprintf(f, "  \"h2d_pinned_gb_per_s\": %.3f,\n  \"h2d_pinned_before\": %.3f,\n  \"h2d_pinned_after\": %.3f,\n", h2d,
                    h2d_before, h2d_after);
            fprintf(f, "  \"first_map_ms\": %.3f,\n  \"cufile_phase_done\": %s,\n  \"rows\": [\n", cold_s * 1e3,
                    with_cufile ? "true" : "false");
            for (int i = 0; i < nsizes; i++) {
                row *r = &rows[i];
                fprintf(f, "    {\"size\": %zu, \"page_cache_resident\": %.4f, \"write_s\": %.3f,\n", r->size, r->resident,
                        r->write_s);
                json_result(f, "map_file", &r->map, r->size, false);
                json_result(f, "naive", &r->naive, r->size, false);
                json_result(f, "zerocopy", &r->zc, r->size, false);
                json_result(f, "cufile", &r->cufile, r->size, false);
                fprintf(f, "      \"map_over_h2d\": %.4f, \"map_over_naive\": %.3f, \"map_over_zerocopy\": %.3f, \"map_over_cufile\": %.3f}%s\n",
                        r->map.ok && h2d > 0 ? gbps(r->size, r->map.med_s) / h2d : 0, ratio(&r->map, &r->naive),
                        ratio(&r->map, &r->zc), ratio(&r->map, &r->cufile), i + 1 < nsizes ? "," : "");
            }
            fprintf(f, "  ],\n  \"sweep_size\": %zu,\n  \"sweep\": [", rows[si].size);
            for (int k = 0; k < nsweep; k++)
                fprintf(f, "%s{\"threads\": %u, \"chunk\": %zu, \"gb_per_s\": %.3f}", k ? ", " : "", sweep[k].threads,
                        sweep[k].chunk, sweep[k].gbps);
            fprintf(f, "]\n}\n");
            fclose(f);
        }
    }
}

int main(int argc, char **argv) {
    const char *dir = "/tmp/gpuheap-file-load", *json = NULL;
    size_t sizes[MAX_SIZES] = {256 * MiB, 1 * GiB, 4 * GiB, 8 * GiB};
    int nsizes = 4, reps_arg = 0;
    bool keep = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps_arg = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep")) keep = true;
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
            nsizes = 0;
            for (char *s = strtok(argv[++i], ","); s && nsizes < MAX_SIZES; s = strtok(NULL, ",")) {
                char *end;
                double v = strtod(s, &end);
                size_t mult = *end == 'G' ? GiB : *end == 'M' ? MiB : 1;
                sizes[nsizes++] = (size_t)(v * (double)mult) / 4 * 4;
            }
        } else {
            fprintf(stderr, "usage: gpuheap-file-load [--dir DIR] [--sizes 256M,1G,4G,8G] [--reps N] [--json FILE] [--keep]\n");
            return 2;
        }
    }
    if (reps_arg > MAX_REPS) reps_arg = MAX_REPS;

    int rc = cu_util_init(0);
    if (rc == CU_UTIL_SKIP) {
        fprintf(stderr, "gpuheap-file-load: no usable GPU: nothing to measure (reason above)\n");
        return 77;
    }
    if (rc != 0) return 1;
    gpu_set_error_handler(on_error, NULL);
    const char *device = cu_util_device_name();
    printf("# gpuheap-file-load on %s\n", device);

    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_CUDA;
    cfg.reserve_bytes = (size_t)256 << 30;
    gpu_heap_t *h = NULL;
    if (gpu_heap_create(&cfg, &h) != GPU_OK) {
        fprintf(stderr, "gpu_heap_create: %s\n", last_msg);
        return 1;
    }
    mkdir(dir, 0755);

    double h2d_before = h2d_pinned_gbps();
    printf("# pinned H2D (cuMemcpyHtoD, 512 MiB): %.1f GB/s\n", h2d_before);

    row rows[MAX_SIZES];
    memset(rows, 0, sizeof rows);
    char path[MAX_SIZES][512];
    for (int i = 0; i < nsizes; i++) {
        snprintf(path[i], sizeof path[i], "%s/file-%zuMiB.bin", dir, sizes[i] / MiB);
        rows[i].size = sizes[i];
        if (make_file(path[i], sizes[i], (uint32_t)i + 1, &rows[i].write_s) != 0) {
            fprintf(stderr, "cannot write %s: %s\n", path[i], strerror(errno));
            return 1;
        }
        rows[i].resident = warm_and_measure(path[i], sizes[i]);
        printf("# %s: written in %.2f s, %.1f%% in the page cache\n", path[i], rows[i].write_s, rows[i].resident * 100);
    }

    /* The first load pins the staging buffers: timed once, apart. */
    double t0 = now_s();
    void *p = NULL;
    if (gpu_heap_map_file(h, path[0], 0, 0, 0, &p) == GPU_OK) gpu_unmap_file(p, 0);
    double cold_s = now_s() - t0;
    printf("# first gpu_map_file (%zu MiB, pins the staging buffers): %.1f ms\n", sizes[0] / MiB, cold_s * 1e3);

    for (int i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        uint32_t seed = (uint32_t)i + 1;
        int reps = reps_arg > 0 ? reps_arg : (sizes[i] <= GiB ? 5 : 3);
        run_map_file(&r->map, h, path[i], sizes[i], seed, 0, reps);
        run_naive(&r->naive, path[i], sizes[i], seed, reps > 3 ? 3 : reps);
        run_zerocopy(&r->zc, h, path[i], sizes[i], seed, reps > 3 ? 3 : reps);
        printf("# %5zu MiB: map_file %.1f GB/s, naive %.1f, zerocopy %.1f (kernel pass %.1f)\n", sizes[i] / MiB,
               r->map.ok ? gbps(sizes[i], r->map.med_s) : 0, r->naive.ok ? gbps(sizes[i], r->naive.med_s) : 0,
               r->zc.ok ? gbps(sizes[i], r->zc.med_s) : 0, r->zc.ok ? gbps(sizes[i], r->zc.extra_med_s) : 0);
        fflush(stdout);
    }

    /* Threads and chunk sizes, on the file closest to 1 GiB. */
    int si = 0;
    for (int i = 0; i < nsizes; i++)
        if (sizes[i] <= GiB) si = i;
    sweep_point sweep[16];
    int nsweep = 0;
    const unsigned threads[] = {1, 2, 4, 8, 12, 16};
    const size_t chunks[] = {2 * MiB, 32 * MiB};
    for (size_t k = 0; k < sizeof threads / sizeof threads[0] + sizeof chunks / sizeof chunks[0]; k++) {
        unsigned th = k < 6 ? threads[k] : 8;
        size_t ch = k < 6 ? 8 * MiB : chunks[k - 6];
        char v[32];
        snprintf(v, sizeof v, "%u", th);
        setenv("GPUHEAP_FILE_THREADS", v, 1);
        snprintf(v, sizeof v, "%zu", ch);
        setenv("GPUHEAP_FILE_CHUNK", v, 1);
        result r;
        memset(&r, 0, sizeof r);
        run_map_file(&r, h, path[si], sizes[si], (uint32_t)si + 1, 0, 3);
        sweep[nsweep++] = (sweep_point){th, ch, r.ok ? gbps(sizes[si], r.med_s) : 0};
    }
    unsetenv("GPUHEAP_FILE_THREADS");
    unsetenv("GPUHEAP_FILE_CHUNK");
    double h2d_after = h2d_pinned_gbps();

    /* The table and JSON now; cuFile (which may be slow or stall in its
     * compatibility mode) runs after them and then prints and writes both again. */
    report(device, h2d_before, h2d_after, cold_s, rows, nsizes, sweep, nsweep, si, json, false);
    for (int i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        run_map_file(&r->cufile, h, path[i], sizes[i], (uint32_t)i + 1, GPU_MAP_CUFILE, 2);
        printf("# %5zu MiB: cufile %s%.1f GB/s%s%s\n", sizes[i] / MiB, r->cufile.ok ? "" : "n/a ",
               r->cufile.ok ? gbps(sizes[i], r->cufile.med_s) : 0, r->cufile.ok ? "" : ": ", r->cufile.ok ? "" : r->cufile.note);
        fflush(stdout);
        if (!r->cufile.ok) break; /* absent or refused: the same answer for every size */
    }
    report(device, h2d_before, h2d_after, cold_s, rows, nsizes, sweep, nsweep, si, json, true);
    gpu_heap_destroy(h);
    if (!keep)
        for (int i = 0; i < nsizes; i++) unlink(path[i]);
    int failed = 0;
    for (int i = 0; i < nsizes; i++) failed |= !rows[i].map.ok || !rows[i].naive.ok || !rows[i].zc.ok;
    return failed;
}
