/*
 * bench_util.h — the two small things every benchmark here needs: a monotonic
 * clock in nanoseconds and a size written the way the tables write it.
 */
#ifndef GPUHEAP_BENCH_UTIL_H
#define GPUHEAP_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* Nanoseconds on the monotonic clock. */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* "256 B", "4 KiB", "16 MiB", "1 GiB": the largest unit that divides size. */
static inline const char *size_label(size_t size, char *buf, size_t len) {
    const size_t KiB_ = (size_t)1 << 10, MiB_ = KiB_ << 10, GiB_ = MiB_ << 10;
    if (size >= GiB_ && size % GiB_ == 0) snprintf(buf, len, "%zu GiB", size / GiB_);
    else if (size >= MiB_ && size % MiB_ == 0) snprintf(buf, len, "%zu MiB", size / MiB_);
    else if (size >= KiB_ && size % KiB_ == 0) snprintf(buf, len, "%zu KiB", size / KiB_);
    else snprintf(buf, len, "%zu B", size);
    return buf;
}

#endif /* GPUHEAP_BENCH_UTIL_H */
