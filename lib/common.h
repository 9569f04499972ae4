/*
 * common.h — the small helpers every layer of gpuheap uses: the allocation quantum,
 * asserts with a message, overflow-checked size arithmetic, a monotonic clock.
 *
 * Nothing here knows about heaps, backends or errors: it is the floor the other
 * headers stand on, and it calls nothing of gpuheap but gh_assert_fail (error.c).
 */
#ifndef GPUHEAP_COMMON_H
#define GPUHEAP_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "gpuheap.h"

/* The allocation quantum: every block's size and start are multiples of it. */
#define GH_QUANTUM ((size_t)GPU_MIN_ALIGNMENT)

#ifndef GPUHEAP_DEBUG_CHECKS
#define GPUHEAP_DEBUG_CHECKS 0
#endif

/* An assert with a message; compiled always, so it never rots, and on in every build:
 * a broken invariant in an allocator is worse than a stop. */
#define gh_assert(cond, msg) \
    ((cond) ? (void)0 : gh_assert_fail(#cond, msg, __FILE__, __LINE__))
_Noreturn void gh_assert_fail(const char *cond, const char *msg, const char *file, int line);

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t gh_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Round x up to a multiple of a (a power of two); 0 on overflow. */
static inline size_t gh_align_up(size_t x, size_t a) {
    if (x > SIZE_MAX - (a - 1)) return 0;
    return (x + a - 1) & ~(a - 1);
}
/* Round x down to a multiple of a (a power of two). */
static inline uintptr_t gh_align_down(uintptr_t x, size_t a) { return x & ~(uintptr_t)(a - 1); }
/* True when a is a non-zero power of two. */
static inline bool gh_is_pow2(size_t a) { return a && !(a & (a - 1)); }
/* *out = a * b, returning true on overflow. */
static inline bool gh_mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }

#endif /* GPUHEAP_COMMON_H */
