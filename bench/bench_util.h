/*
 * bench_util.h — the small things every benchmark here needs: size units, a
 * monotonic clock in nanoseconds, a size written the way the tables write it,
 * the median and 99th percentile of a set of timings, ratios to the peers, and
 * this benchmark run again in a fresh process (a round that must be a program's
 * first).
 */
#ifndef GPUHEAP_BENCH_UTIL_H
#define GPUHEAP_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* Nanoseconds on the monotonic clock. */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* "256 B", "4 KiB", "16 MiB", "1 GiB": the largest unit that divides size. */
static inline const char *size_label(size_t size, char *buf, size_t len) {
    if (size >= GiB && size % GiB == 0) snprintf(buf, len, "%zu GiB", size / GiB);
    else if (size >= MiB && size % MiB == 0) snprintf(buf, len, "%zu MiB", size / MiB);
    else if (size >= KiB && size % KiB == 0) snprintf(buf, len, "%zu KiB", size / KiB);
    else snprintf(buf, len, "%zu B", size);
    return buf;
}

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median and 99th percentile (nearest rank) of v[0..n), sorting v; p99 may be
 * NULL. Both 0 when n is 0. */
static inline double bench_quantiles(double *v, size_t n, double *p99) {
    if (p99) *p99 = 0;
    if (!n) return 0;
    qsort(v, n, sizeof *v, bench_cmp_double);
    size_t rank = (size_t)((double)n * 0.99 + 0.999999);
    if (p99) *p99 = v[(rank < 1 ? 1 : rank > n ? n : rank) - 1];
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A peer's time over gpuheap's (above 1: gpuheap is faster); 0 when either is missing. */
static inline double bench_ratio(double peer, double heap) { return heap > 0 && peer > 0 ? peer / heap : 0; }

/* "12.3x" or "n/a". */
static inline const char *bench_fmt_ratio(double r, char *buf, size_t len) {
    if (r <= 0) snprintf(buf, len, "n/a");
    else if (r >= 100) snprintf(buf, len, "%.0fx", r);
    else snprintf(buf, len, "%.2fx", r);
    return buf;
}

/* This program started again with args ("--child 3"), its output to read; NULL
 * when it cannot be. Close with pclose. */
static inline FILE *bench_popen_self(const char *args) {
    char self[4096], cmd[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return NULL;
    self[n] = 0;
    snprintf(cmd, sizeof cmd, "'%s' %s", self, args);
    return popen(cmd, "r");
}

#endif /* GPUHEAP_BENCH_UTIL_H */
