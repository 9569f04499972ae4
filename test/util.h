/*
 * util.h — what every host-backend test suite shares: one idea, "a test owns a
 * heap on the host backend and can see its bytes".
 *
 * The host backend's memory is ordinary CPU memory, so a test writes a pattern
 * into a block and reads it back later: any corruption (an overlap, a lost
 * remap, a bad copy) shows up as a wrong byte at a known offset. The pattern is
 * a function of (seed, offset) only, so a prefix stays checkable after a block
 * moves or grows, and two blocks with different seeds never look alike.
 *
 * Failures are reported with the caller's file and line (the macros pass them
 * through), and every heap-check failure prints the checker's message.
 */
#ifndef GPUHEAP_TEST_UTIL_H
#define GPUHEAP_TEST_UTIL_H

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gpuheap.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* Bytes written at each end of a block too large to fill whole. */
#define EDGE_BYTES (4 * KiB)
/* Blocks up to this size are filled and checked whole. */
#define FULL_FILL_LIMIT (64 * KiB)

/* ---- heaps ---------------------------------------------------------------- */

/* Per-thread caches for the heaps tests make: SIZE_MAX keeps the library's
 * default; suites that check the heap core's own placement and backend calls
 * set 0 before they run. */
static size_t test_thread_cache = SIZE_MAX;

/* A host-backend configuration with the library's defaults for the rest. */
static inline gpu_config_t host_config(size_t reserve, size_t granularity, size_t budget) {
    gpu_config_t cfg;
    if (gpu_config_init(&cfg) != GPU_OK) {
        print_error("gpu_config_init failed: %s\n", gpu_strerror(gpu_last_error()));
        fail();
    }
    cfg.backend = GPU_BACKEND_HOST;
    cfg.reserve_bytes = reserve;
    cfg.host_granularity = granularity;
    cfg.host_budget = budget;
    if (test_thread_cache != SIZE_MAX) cfg.thread_cache = test_thread_cache;
    return cfg;
}

/* Creates a heap from cfg or fails the test at the caller's line. */
static inline gpu_heap_t *heap_create_at(const gpu_config_t *cfg, const char *file, int line) {
    gpu_heap_t *h = NULL;
    int rc = gpu_heap_create(cfg, &h);
    if (rc != GPU_OK || h == NULL) {
        print_error("gpu_heap_create: %d (%s)\n", rc, gpu_strerror(rc));
        _fail(file, line);
    }
    return h;
}
#define HEAP_CREATE(cfg) heap_create_at((cfg), __FILE__, __LINE__)

/* The usual test heap: 64 GiB of VA, the given granularity (0 = 2 MiB), no budget. */
static inline gpu_heap_t *heap_new_at(size_t granularity, const char *file, int line) {
    gpu_config_t cfg = host_config(64 * GiB, granularity, 0);
    return heap_create_at(&cfg, file, line);
}
#define HEAP_NEW(granularity) heap_new_at((granularity), __FILE__, __LINE__)

/* Destroys a heap and insists that it worked. */
#define HEAP_DESTROY(h) assert_int_equal(gpu_heap_destroy(h), GPU_OK)

/* ---- the checker and statistics ------------------------------------------- */

/* Runs gpu_heap_check; a failure prints the checker's message. */
static inline void heap_check_at(gpu_heap_t *h, const char *file, int line) {
    char msg[512] = "";
    int rc = gpu_heap_check(h, msg, sizeof msg);
    if (rc != GPU_OK) {
        print_error("gpu_heap_check: %d (%s): %s\n", rc, gpu_strerror(rc), msg);
        _fail(file, line);
    }
}
#define CHECK_HEAP(h) heap_check_at((h), __FILE__, __LINE__)

/* Fails at the caller's line with a formatted message. */
static inline void fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint_error(fmt, ap);
    va_end(ap);
    print_error("\n");
    _fail(file, line);
}

/* True when x is a non-zero power of two. */
static inline int is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

/* The first relation that a statistics snapshot breaks, or NULL. These hold in
 * any snapshot, even one taken while other threads work on the heap. */
static inline const char *stats_broken(const gpu_stats_t *sp) {
    const gpu_stats_t s = *sp;
#define STATS_REQUIRE(cond) \
    if (!(cond)) return #cond
    STATS_REQUIRE(s.version == GPU_STATS_VERSION);
    STATS_REQUIRE(is_pow2(s.granularity));
    STATS_REQUIRE(s.live_bytes % GPU_MIN_ALIGNMENT == 0);
    STATS_REQUIRE(s.mapped_bytes % s.granularity == 0);
    /* A paused heap's live blocks lie in paused extents (gpu_pause), not mapped ones. */
    STATS_REQUIRE(s.mapped_bytes + s.paused_bytes >= s.live_bytes);
    STATS_REQUIRE(s.idle_bytes + s.live_bytes + s.quarantine_bytes + s.cached_bytes <= s.mapped_bytes + s.paused_bytes);
    STATS_REQUIRE(s.paused_bytes % s.granularity == 0);
    STATS_REQUIRE((s.cached_blocks == 0) == (s.cached_bytes == 0));
    STATS_REQUIRE(s.peak_live_bytes >= s.live_bytes);
    STATS_REQUIRE(s.peak_mapped_bytes >= s.mapped_bytes);
    STATS_REQUIRE((s.mapped_bytes == 0) == (s.extents == 0));
    STATS_REQUIRE(s.extents * s.granularity <= s.mapped_bytes);
    STATS_REQUIRE((s.quarantine_blocks == 0) == (s.quarantine_bytes == 0));
    STATS_REQUIRE(s.live_blocks != 0 || s.live_bytes == 0);
    STATS_REQUIRE(s.mapped_bytes <= s.reserved_bytes);
    STATS_REQUIRE(s.backend_reserve >= 1);
    STATS_REQUIRE(s.backend_create >= s.backend_release);
#undef STATS_REQUIRE
    return NULL;
}

/* Takes a snapshot and checks stats_broken's relations, failing at the caller's line. */
static inline gpu_stats_t stats_at(gpu_heap_t *h, const char *file, int line) {
    gpu_stats_t s;
    memset(&s, 0xa5, sizeof s);
    int rc = gpu_heap_stats(h, &s);
    if (rc != GPU_OK) fail_at(file, line, "gpu_heap_stats: %d (%s)", rc, gpu_strerror(rc));
    const char *broken = stats_broken(&s);
    if (broken)
        fail_at(file, line,
                "stats: %s is false (live %llu in %llu blocks, mapped %llu, idle %llu, "
                "quarantine %llu in %llu blocks, extents %llu, granularity %llu)",
                broken, (unsigned long long)s.live_bytes, (unsigned long long)s.live_blocks,
                (unsigned long long)s.mapped_bytes, (unsigned long long)s.idle_bytes,
                (unsigned long long)s.quarantine_bytes, (unsigned long long)s.quarantine_blocks,
                (unsigned long long)s.extents, (unsigned long long)s.granularity);
    return s;
}
#define STATS(h) stats_at((h), __FILE__, __LINE__)

/* Checks the heap and its statistics together: the usual "after every step". */
#define CHECK_ALL(h) \
    do {             \
        CHECK_HEAP(h); \
        (void)STATS(h); \
    } while (0)

/* ---- patterns -------------------------------------------------------------- */

/* A well-mixed 64-bit value from a 64-bit input (xor-shift-multiply rounds). */
static inline uint64_t mix64(uint64_t x) {
    x += 0x7f4a7c159e3779b1ull;
    x ^= x >> 31;
    x *= 0xd6e8feb86659fd93ull;
    x ^= x >> 29;
    x *= 0xa0761d6478bd642full;
    x ^= x >> 32;
    return x;
}

/* The pattern's byte at offset off of a block seeded with seed. */
static inline uint8_t pattern_byte(uint64_t seed, size_t off) {
    return (uint8_t)(mix64(seed ^ ((uint64_t)(off >> 3) << 8)) >> ((off & 7) * 8));
}

/* The pattern's 64-bit word at word index w (offset 8*w). */
static inline uint64_t pattern_word(uint64_t seed, size_t w) {
    return mix64(seed ^ ((uint64_t)w << 8));
}

/* Writes the pattern over [off, off+len) of the block at p. */
static inline void pattern_fill(void *p, size_t off, size_t len, uint64_t seed) {
    uint8_t *b = p;
    size_t end = off + len, i = off;
    for (; i < end && (i & 7); i++) b[i] = pattern_byte(seed, i);
    for (; i + 8 <= end; i += 8) {
        uint64_t w = pattern_word(seed, i >> 3);
        memcpy(b + i, &w, 8);
    }
    for (; i < end; i++) b[i] = pattern_byte(seed, i);
}

/* The first offset in [off, off+len) where the pattern is wrong, or SIZE_MAX. */
static inline size_t pattern_mismatch(const void *p, size_t off, size_t len, uint64_t seed) {
    const uint8_t *b = p;
    size_t end = off + len, i = off;
    for (; i < end && (i & 7); i++)
        if (b[i] != pattern_byte(seed, i)) return i;
    for (; i + 8 <= end; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        if (w != pattern_word(seed, i >> 3)) break;
    }
    for (; i < end; i++)
        if (b[i] != pattern_byte(seed, i)) return i;
    return SIZE_MAX;
}

/* The first offset in [off, off+len) whose byte is not `byte`, or SIZE_MAX. */
static inline size_t bytes_mismatch(const void *p, size_t off, size_t len, uint8_t byte) {
    const uint8_t *b = p;
    for (size_t i = off; i < off + len; i++)
        if (b[i] != byte) return i;
    return SIZE_MAX;
}

static inline void pattern_check_at(const void *p, size_t off, size_t len, uint64_t seed,
                                    const char *file, int line) {
    size_t bad = pattern_mismatch(p, off, len, seed);
    if (bad != SIZE_MAX)
        fail_at(file, line,
                "pattern (seed %llu) of block %p wrong at offset %zu of [%zu, %zu): "
                "byte 0x%02x, expected 0x%02x",
                (unsigned long long)seed, p, bad, off, off + len,
                ((const uint8_t *)p)[bad], pattern_byte(seed, bad));
}
/* Fails unless [off, off+len) of p holds the pattern of seed. */
#define PATTERN_CHECK(p, off, len, seed) pattern_check_at((p), (off), (len), (seed), __FILE__, __LINE__)

static inline void zero_check_at(const void *p, size_t off, size_t len, const char *file, int line) {
    size_t bad = bytes_mismatch(p, off, len, 0);
    if (bad != SIZE_MAX)
        fail_at(file, line, "block %p not zero at offset %zu of [%zu, %zu): byte 0x%02x", p, bad,
                off, off + len, ((const uint8_t *)p)[bad]);
}
/* Fails unless [off, off+len) of p is all zero. */
#define ZERO_CHECK(p, off, len) zero_check_at((p), (off), (len), __FILE__, __LINE__)

/* A range [off, off+len) of a block. */
typedef struct span {
    size_t off, len;
} span;

/* The parts of a size-byte block that the tests keep a pattern in — the whole
 * block when it is small, else EDGE_BYTES at each end — clipped to [0, clip).
 * Returns how many (at most two). */
static inline int edge_spans(size_t size, size_t clip, span out[2]) {
    int n = 0;
    if (size <= FULL_FILL_LIMIT) {
        out[n++] = (span){0, size};
    } else {
        out[n++] = (span){0, EDGE_BYTES};
        out[n++] = (span){size - EDGE_BYTES, EDGE_BYTES};
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (out[i].off >= clip) continue;
        size_t end = out[i].off + out[i].len;
        if (end > clip) end = clip;
        out[k++] = (span){out[i].off, end - out[i].off};
    }
    return k;
}

/* Writes the pattern into the patterned parts of a size-byte block. */
static inline void block_fill(void *p, size_t size, uint64_t seed) {
    span s[2];
    int n = edge_spans(size, size, s);
    for (int i = 0; i < n; i++) pattern_fill(p, s[i].off, s[i].len, seed);
}

/* The first wrong offset in the patterned parts of a block filled for size
 * bytes, up to clip; SIZE_MAX when all is right. */
static inline size_t block_mismatch(const void *p, size_t size, size_t clip, uint64_t seed) {
    span s[2];
    int n = edge_spans(size, clip, s);
    for (int i = 0; i < n; i++) {
        size_t bad = pattern_mismatch(p, s[i].off, s[i].len, seed);
        if (bad != SIZE_MAX) return bad;
    }
    return SIZE_MAX;
}

/* Checks the patterned parts of a block filled for size bytes, up to clip. */
static inline void block_check_at(const void *p, size_t size, size_t clip, uint64_t seed,
                                  const char *file, int line) {
    span s[2];
    int n = edge_spans(size, clip, s);
    for (int i = 0; i < n; i++) pattern_check_at(p, s[i].off, s[i].len, seed, file, line);
}
#define BLOCK_CHECK(p, size, seed) block_check_at((p), (size), (size), (seed), __FILE__, __LINE__)
#define BLOCK_CHECK_CLIP(p, size, clip, seed) block_check_at((p), (size), (clip), (seed), __FILE__, __LINE__)

/* Checks that the patterned parts of a size-byte block are zero. */
static inline void block_zero_check_at(const void *p, size_t size, const char *file, int line) {
    span s[2];
    int n = edge_spans(size, size, s);
    for (int i = 0; i < n; i++) zero_check_at(p, s[i].off, s[i].len, file, line);
}
#define BLOCK_ZERO_CHECK(p, size) block_zero_check_at((p), (size), __FILE__, __LINE__)

/* ---- errors ---------------------------------------------------------------- */

/* Fails unless the thread's last error is err. */
#define ASSERT_LAST_ERROR(err)                                                            \
    do {                                                                                  \
        int last_ = gpu_last_error();                                                     \
        if (last_ != (err))                                                               \
            fail_at(__FILE__, __LINE__, "gpu_last_error() is %d (%s), expected %d (%s)", \
                    last_, gpu_strerror(last_), (int)(err), gpu_strerror(err));           \
    } while (0)

/* Fails unless rc is err (and the thread's last error agrees). */
#define ASSERT_ERROR(rc, err)                                                              \
    do {                                                                                   \
        int rc_ = (rc);                                                                    \
        if (rc_ != (err))                                                                  \
            fail_at(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s)", #rc, rc_, \
                    gpu_strerror(rc_), (int)(err), gpu_strerror(err));                     \
        ASSERT_LAST_ERROR(err);                                                            \
    } while (0)

/* Fails unless rc is GPU_OK. */
#define ASSERT_OK(rc) ASSERT_ERROR((rc), GPU_OK)

/* ---- blocks ---------------------------------------------------------------- */

/* Fails unless p is a live block of h: 256-aligned, usable size >= size and a
 * multiple of 256. Returns the usable size. */
static inline size_t block_valid_at(gpu_heap_t *h, const void *p, size_t size, const char *file,
                                    int line) {
    if (p == NULL)
        fail_at(file, line, "allocation of %zu bytes returned NULL: %d (%s)", size,
                gpu_last_error(), gpu_strerror(gpu_last_error()));
    if ((uintptr_t)p % GPU_MIN_ALIGNMENT)
        fail_at(file, line, "block %p of %zu bytes is not 256-byte aligned", p, size);
    size_t usable = gpu_heap_malloc_usable_size(h, p);
    if (gpu_last_error() != GPU_OK)
        fail_at(file, line, "usable_size(%p) set error %d (%s)", p, gpu_last_error(),
                gpu_strerror(gpu_last_error()));
    if (usable < size || usable % GPU_MIN_ALIGNMENT)
        fail_at(file, line, "block %p asked %zu bytes, usable size %zu", p, size, usable);
    return usable;
}
#define BLOCK_VALID(h, p, size) block_valid_at((h), (p), (size), __FILE__, __LINE__)

/* ---- child processes -------------------------------------------------------- */

/* Runs fn(arg) in a forked child, whose exit code is fn's result. Returns the
 * wait status. The child never returns into the test runner, and a fault kills
 * it: cmocka's own SIGSEGV handler is put back to the default there. */
static inline int run_in_child(int (*fn)(void *arg), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        print_error("fork failed\n");
        fail();
    }
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        _exit(fn(arg));
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
    }
    return status;
}

/* True when a wait status says the child died of a memory-access fault. */
static inline int died_of_fault(int status) {
    return WIFSIGNALED(status) && (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS);
}
/* True when a wait status says the child exited with code 0. */
static inline int exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

/* An environment variable as a positive integer, else dflt. */
static inline long env_long(const char *name, long dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return (end && *end == '\0' && v > 0) ? v : dflt;
}

/* A small, fast, deterministic generator (xorshift, output multiplied). */
typedef struct rng {
    uint64_t s;
} rng;
static inline uint64_t rng_next(rng *r) {
    uint64_t x = r->s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r->s = x;
    return x * 0x2545f4914f6cdd1dull;
}
static inline rng rng_seeded(uint64_t seed) { return (rng){mix64(seed) | 1}; }
/* Uniform in [0, n) (n > 0; the tiny bias does not matter here). */
static inline uint64_t rng_below(rng *r, uint64_t n) { return rng_next(r) % n; }
/* Log-uniform in [lo, hi]: every power of two between them equally likely. */
static inline size_t rng_log_size(rng *r, size_t lo, size_t hi) {
    int lo_bits = 63 - __builtin_clzll(lo | 1), hi_bits = 63 - __builtin_clzll(hi);
    int bits = lo_bits + (int)rng_below(r, (uint64_t)(hi_bits - lo_bits + 1));
    size_t base = (size_t)1 << bits;
    size_t v = base + (size_t)rng_below(r, base);
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return v;
}

#endif /* GPUHEAP_TEST_UTIL_H */
