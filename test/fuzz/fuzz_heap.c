/*
 * fuzz_heap.c — a libFuzzer target: byte strings become sequences of heap calls,
 * checked against a reference model after every one.
 *
 * The input is read as a stream of operations: one byte picks an entry of the op
 * table (ops[] below), and the op reads its own arguments from the bytes that
 * follow (a short input simply ends). The heap is a small one on the host backend
 * — 64 KiB granularity, a 512 MiB reservation, a 24 MiB physical budget so that
 * out-of-memory and its recovery happen often — opened over lib/backend_fault.c,
 * so that one op can make a later backend call fail.
 *
 * The model is a table of live blocks (pointer, size asked, usable size, pattern
 * seed, protection), a few recently freed pointers, the streams blocks were freed
 * on, and sparse reservations with the state of each granule. Every block holds a
 * pattern that is a function of (seed, offset) — whole when small, 4 KiB at each
 * end when large — written at allocation and after every resize. After every op:
 *   - gpu_heap_check passes, and the host backend holds exactly one mapping and
 *     one handle per extent and as many bytes as the heap says it maps;
 *   - the heap's live-block count equals the model's;
 *   - every readable block holds its pattern, and every committed granule of a
 *     reservation holds its own.
 * A call may fail only in the ways its contract allows (out of memory or VA; and,
 * when a fault fired during it, a backend error), and a failed call must leave
 * the model's blocks as they were. Bad input (double free, interior and foreign
 * pointers, impossible sizes, bad flags, alignment and protection, a destroyed
 * heap) must give exactly its documented error. Anything else aborts, which
 * libFuzzer reports with the input that did it.
 *
 * Adding an op is one line in ops[] plus its function. Stream-ordered calls run
 * on three fake streams (the host backend completes their events at once unless
 * an op delays them); sparse reservations are committed and decommitted a few
 * granules at a time.
 *
 * Built with -Dfuzz=true (clang, -fsanitize=fuzzer,address,undefined) as
 * test/fuzz/fuzz_heap; built without libFuzzer (FUZZ_STANDALONE) it is a replay
 * tool that runs the files named on its command line, which is how the seed corpus
 * and every regression input run in the ordinary unit suite.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuheap.h"
#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GRAN (64 * KiB)
#define BUDGET (24 * MiB)
#define RESERVE (512 * MiB)
#define NSLOTS 32
#define NGRAVE 8
#define NRES 4
#define RES_GRANULES 16
#define EDGE (4 * KiB)
#define FULL_LIMIT (16 * KiB)

/* ---- failing loudly ------------------------------------------------------------ */

static const char *current_op = "setup";

static _Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_heap: op %s: ", current_op);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* ---- the input ------------------------------------------------------------------- */

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static uint8_t u8(reader *r) {
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}
static uint16_t u16(reader *r) { return (uint16_t)(u8(r) | u8(r) << 8); }

/* A size: log-uniform from 0 to 8 MiB, with the edges (0, granularity +- 1) likely. */
static size_t size_arg(reader *r) {
    uint8_t k = u8(r);
    switch (k % 16) {
    case 0: return 0;
    case 1: return GRAN;
    case 2: return GRAN - 1;
    case 3: return GRAN + 1;
    default: break;
    }
    unsigned bits = k / 16 + (k % 16) % 8; /* 0..22 */
    size_t base = (size_t)1 << bits;
    return base + u16(r) % base;
}

/* ---- patterns ---------------------------------------------------------------------- */

static uint64_t mix(uint64_t x) {
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dull;
    return x ^ (x >> 33);
}

static uint8_t pat(uint64_t seed, size_t off) { return (uint8_t)(mix(seed + (off >> 3)) >> (8 * (off & 7))); }

/* The parts of a size-byte block that carry the pattern: all of it, or the ends. */
static int spans(size_t size, size_t out[2][2]) {
    if (size <= FULL_LIMIT) {
        out[0][0] = 0, out[0][1] = size;
        return 1;
    }
    out[0][0] = 0, out[0][1] = EDGE;
    out[1][0] = size - EDGE, out[1][1] = size;
    return 2;
}

/* Whole aligned words go in one step (the pattern's word w is mix(seed + w),
 * little-endian); the odd bytes at either end one by one. */
static void fill(char *p, size_t size, uint64_t seed) {
    size_t s[2][2];
    for (int i = 0, n = spans(size, s); i < n; i++) {
        size_t o = s[i][0];
        for (; o < s[i][1] && o % 8; o++) p[o] = (char)pat(seed, o);
        for (; o + 8 <= s[i][1]; o += 8) {
            uint64_t w = mix(seed + (o >> 3));
            memcpy(p + o, &w, 8);
        }
        for (; o < s[i][1]; o++) p[o] = (char)pat(seed, o);
    }
}

/* The first offset below clip where a block filled for size bytes is wrong, or SIZE_MAX. */
static size_t mismatch(const char *p, size_t size, size_t clip, uint64_t seed) {
    size_t s[2][2];
    for (int i = 0, n = spans(size, s); i < n; i++) {
        size_t end = s[i][1] < clip ? s[i][1] : clip, o = s[i][0];
        for (; o < end && o % 8; o++)
            if ((uint8_t)p[o] != pat(seed, o)) return o;
        for (; o + 8 <= end; o += 8) {
            uint64_t w = mix(seed + (o >> 3)), got;
            memcpy(&got, p + o, 8);
            if (got != w) break;
        }
        for (; o < end; o++)
            if ((uint8_t)p[o] != pat(seed, o)) return o;
    }
    return SIZE_MAX;
}

/* True when [p, p+len) is all zero. */
static bool all_zero(const char *p, size_t len) {
    static const char zero[4096];
    for (size_t o = 0; o < len; o += sizeof zero)
        if (memcmp(p + o, zero, len - o < sizeof zero ? len - o : sizeof zero)) return false;
    return true;
}

/* ---- the model ---------------------------------------------------------------------- */

typedef struct slot {
    char *p;
    size_t size;   /* asked for; the pattern covers it */
    size_t usable;
    uint64_t seed;
    int prot;      /* the most restrictive protection any part of the block has */
    size_t closed; /* the longest head a protect call closed (0: none) */
    bool owned;
} slot;

enum { G_NONE, G_COMMITTED, G_UNKNOWN }; /* granule states of a reservation */

typedef struct resv {
    char *p;
    size_t granules;
    uint8_t state[RES_GRANULES];
    uint64_t seed[RES_GRANULES];
} resv;

typedef struct fuzz {
    gpu_heap_t *h;
    vmm_backend *inner, *outer;
    vmm_fault_report rep;
    slot s[NSLOTS];
    char *grave[NGRAVE]; /* freed pointers, for double frees */
    size_t ngrave;
    resv res[NRES];
    uint64_t seeds;
    uint64_t injected; /* faults fired before the current op */
} fuzz;

static const uintptr_t streams[3] = {0, 0x1001, 0x2002};

static bool readable(int prot) { return prot != GPU_PROT_NONE; }
static bool fault_fired(const fuzz *f) { return f->rep.injected > f->injected; }

/* Dies unless err is a failure the call may have: out of memory or VA, or a
 * backend error when a fault fired during it. */
static void allowed_failure(const fuzz *f, int err, const char *call) {
    if (err == GPU_ERR_OUT_OF_MEMORY || err == GPU_ERR_OUT_OF_VA) return;
    if (fault_fired(f) && err == GPU_ERR_BACKEND) return;
    die("%s failed with %d (%s)%s", call, err, gpu_strerror(err), fault_fired(f) ? " after a fault" : "");
}

/* Dies unless err is GPU_OK, or a backend failure that a fault explains. */
static void ok_or_fault(const fuzz *f, int err, const char *call) {
    if (err == GPU_OK) return;
    if (fault_fired(f) && (err == GPU_ERR_BACKEND || err == GPU_ERR_OUT_OF_MEMORY || err == GPU_ERR_OUT_OF_VA)) return;
    die("%s returned %d (%s)", call, err, gpu_strerror(err));
}

static void expect_error(int got, int want, const char *call) {
    if (got != want) die("%s returned %d (%s), expected %d (%s)", call, got, gpu_strerror(got), want, gpu_strerror(want));
    if (gpu_last_error() != want) die("%s: last error %d, expected %d", call, gpu_last_error(), want);
}

static slot *slot_arg(fuzz *f, reader *r) { return &f->s[u8(r) % NSLOTS]; }
static slot *live_arg(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    return s->p ? s : NULL;
}

static void bury(fuzz *f, char *p) { f->grave[f->ngrave++ % NGRAVE] = p; }

/* True when [q, q+len) meets a live block of the model or a reservation. */
static bool in_use(const fuzz *f, const char *q, size_t len) {
    for (int i = 0; i < NSLOTS; i++)
        if (f->s[i].p && q < f->s[i].p + f->s[i].usable && f->s[i].p < q + len) return true;
    for (int i = 0; i < NRES; i++)
        if (f->res[i].p && q < f->res[i].p + f->res[i].granules * GRAN && f->res[i].p < q + len) return true;
    return false;
}

/* Records a new block, checks what the call promised, and writes its pattern. */
static void adopt(fuzz *f, slot *s, char *p, size_t size, bool zeroed, bool owned, size_t align) {
    if ((uintptr_t)p % GPU_MIN_ALIGNMENT || (align && (uintptr_t)p % align)) die("%p is not aligned to %zu", (void *)p, align);
    size_t u = gpu_heap_malloc_usable_size(f->h, p);
    if (u < size || u % GPU_MIN_ALIGNMENT) die("block %p of %zu bytes has usable size %zu", (void *)p, size, u);
    if (owned && u % GRAN) die("owned block %p has usable size %zu, not a granule multiple", (void *)p, u);
    if (in_use(f, p, u)) die("block %p+%zu overlaps a live block or reservation", (void *)p, u);
    if (zeroed && !all_zero(p, size)) die("zeroed block %p of %zu bytes is not zero", (void *)p, size);
    *s = (slot){.p = p, .size = size, .usable = u, .seed = ++f->seeds, .prot = GPU_PROT_READ_WRITE, .owned = owned};
    fill(p, size, s->seed);
}

/* ---- the checks after every op ---------------------------------------------------------- */

static void verify(fuzz *f) {
    char msg[512] = "";
    if (gpu_heap_check(f->h, msg, sizeof msg) != GPU_OK) die("gpu_heap_check: %s", msg);
    gpu_stats_t st;
    if (gpu_heap_stats(f->h, &st) != GPU_OK) die("gpu_heap_stats failed");
    vmm_host_counts c;
    vmm_host_counts_get(f->inner, &c);
    size_t lingering = f->h->nlinger; /* moved pages' old mappings (linger.c): a second mapping of an extent's handle */
    if (c.mappings != st.extents + lingering || c.handles != st.extents || c.physical_bytes != st.mapped_bytes ||
        c.reservations != 1)
        die("the backend holds %zu mappings, %zu handles, %zu bytes; the heap knows %llu extents of %llu bytes", c.mappings,
            c.handles, c.physical_bytes, (unsigned long long)st.extents, (unsigned long long)st.mapped_bytes);
    size_t live = 0;
    bool sparse = false;
    for (int i = 0; i < NSLOTS; i++) {
        slot *s = &f->s[i];
        if (!s->p) continue;
        live++;
        if (!readable(s->prot)) continue;
        size_t bad = mismatch(s->p, s->size, s->size, s->seed);
        if (bad != SIZE_MAX) die("block %p (%zu bytes): pattern wrong at offset %zu", (void *)s->p, s->size, bad);
    }
    for (int i = 0; i < NRES; i++) {
        resv *v = &f->res[i];
        if (!v->p) continue;
        sparse = true;
        for (size_t g = 0; g < v->granules; g++) {
            if (v->state[g] != G_COMMITTED) continue;
            size_t bad = mismatch(v->p + g * GRAN, FULL_LIMIT / 4, FULL_LIMIT / 4, v->seed[g]);
            if (bad != SIZE_MAX) die("reservation %p granule %zu: pattern wrong at offset %zu", (void *)v->p, g, bad);
        }
    }
    if (!sparse && st.live_blocks != live)
        die("the heap counts %llu live blocks, the model %zu", (unsigned long long)st.live_blocks, live);
}

/* ---- the ops ---------------------------------------------------------------------------------- */

static void op_malloc(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    size_t size = size_arg(r);
    if (s->p) return;
    char *p = gpu_heap_malloc(f->h, size);
    if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_malloc");
    adopt(f, s, p, size, false, false, 0);
}

static void op_calloc(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    size_t n = u8(r) % 16, size = size_arg(r) / 16;
    if (s->p) return;
    char *p = gpu_heap_calloc(f->h, n, size);
    if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_calloc");
    adopt(f, s, p, n * size, true, false, 0);
}

static void op_aligned(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    size_t size = size_arg(r), align = (size_t)1 << (u8(r) % 24);
    if (s->p) return;
    char *p = gpu_heap_malloc_aligned(f->h, size, align);
    if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_malloc_aligned");
    adopt(f, s, p, size, false, false, align);
}

static void op_owned(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    size_t size = size_arg(r);
    bool zero = u8(r) & 1;
    if (s->p) return;
    char *p = gpu_heap_malloc_flags(f->h, size, GPU_ALLOC_OWNED | (zero ? GPU_ALLOC_ZERO : 0));
    if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_malloc_flags(OWNED)");
    adopt(f, s, p, size, zero, true, GRAN);
}

/* Makes a protected block read-write again before an op that writes it. */
static bool unprotect(fuzz *f, slot *s) {
    if (s->prot == GPU_PROT_READ_WRITE) return true;
    int rc = gpu_heap_protect(f->h, s->p, s->usable, GPU_PROT_READ_WRITE);
    /* A block that got extents of its own and was shrunk to a size that is not
     * a granule multiple owns only the whole extents at its head: those are
     * what op_protect could close, and all there is to open. */
    if (rc == GPU_ERR_NOT_WHOLE_EXTENT && !s->owned && s->usable > GRAN)
        rc = gpu_heap_protect(f->h, s->p, s->usable & ~(size_t)(GRAN - 1), GPU_PROT_READ_WRITE);
    /* A block placed at the start of an extent run whose last extent it fills
     * only in part owns the extents before it: reopen what was closed. */
    if (rc == GPU_ERR_NOT_WHOLE_EXTENT && s->closed && s->closed < s->usable)
        rc = gpu_heap_protect(f->h, s->p, s->closed, GPU_PROT_READ_WRITE);
    if (rc == GPU_OK) s->prot = GPU_PROT_READ_WRITE, s->closed = 0;
    else ok_or_fault(f, rc, "gpu_heap_protect(READ_WRITE)");
    return rc == GPU_OK;
}

static void op_realloc(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    size_t size = size_arg(r);
    if (!s->p) { /* realloc(NULL, size) is malloc */
        char *p = gpu_heap_realloc(f->h, NULL, size);
        if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_realloc(NULL)");
        return adopt(f, s, p, size, false, false, 0);
    }
    if (!unprotect(f, s)) return;
    char *old = s->p;
    char *p = gpu_heap_realloc(f->h, s->p, size);
    if (!size) { /* realloc(p, 0) frees p */
        if (p || gpu_last_error() != GPU_OK) die("gpu_heap_realloc(p, 0) returned %p, error %d", (void *)p, gpu_last_error());
        bury(f, old);
        s->p = NULL;
        return;
    }
    if (!p) {
        allowed_failure(f, gpu_last_error(), "gpu_heap_realloc");
        size_t u = gpu_heap_malloc_usable_size(f->h, old);
        if (u != s->usable) die("a failed realloc changed the usable size %zu -> %zu", s->usable, u);
        return;
    }
    size_t bad = mismatch(p, s->size, size < s->size ? size : s->size, s->seed);
    if (bad != SIZE_MAX) die("realloc %zu -> %zu lost the contents at offset %zu", s->size, size, bad);
    if (p != old) bury(f, old);
    slot keep = *s;
    s->p = NULL;
    adopt(f, s, p, size, false, keep.owned, keep.owned ? GRAN : 0);
}

static void op_free(fuzz *f, reader *r) {
    slot *s = live_arg(f, r);
    if (!s) return;
    int rc = gpu_heap_free(f->h, s->p);
    if (rc != GPU_OK) {
        ok_or_fault(f, rc, "gpu_heap_free");
        return;
    }
    bury(f, s->p);
    s->p = NULL;
}

static void op_malloc_async(fuzz *f, reader *r) {
    slot *s = slot_arg(f, r);
    uintptr_t stream = streams[u8(r) % 3];
    size_t size = size_arg(r);
    if (s->p) return;
    char *p = gpu_heap_malloc_async(f->h, size, (void *)stream);
    if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_malloc_async");
    adopt(f, s, p, size, false, false, 0);
}

static void op_free_async(fuzz *f, reader *r) {
    slot *s = live_arg(f, r);
    uintptr_t stream = streams[u8(r) % 3];
    if (!s) return;
    int rc = gpu_heap_free_async(f->h, s->p, (void *)stream);
    if (rc != GPU_OK) {
        ok_or_fault(f, rc, "gpu_heap_free_async");
        return;
    }
    bury(f, s->p);
    s->p = NULL;
}

/* Events recorded from now on complete only after some queries (a GPU behind the
 * CPU); the byte's top bit picks the free order: legacy hands freed blocks out
 * at once (gpu_set_free_order), and going back to events fences what it owes. */
static void op_event_delay(fuzz *f, reader *r) {
    uint8_t v = u8(r);
    vmm_host_set_event_delay(f->inner, v % 4);
    ok_or_fault(f, gpu_set_free_order(v & 0x80 ? GPU_FREE_ORDER_LEGACY : GPU_FREE_ORDER_EVENT), "gpu_set_free_order");
}

static void op_protect(fuzz *f, reader *r) {
    slot *s = live_arg(f, r);
    static const int prots[3] = {GPU_PROT_NONE, GPU_PROT_READ, GPU_PROT_READ_WRITE};
    int prot = prots[u8(r) % 3];
    bool whole = u8(r) & 1;
    if (!s) return;
    size_t len = whole ? s->usable : GRAN;
    int rc = gpu_heap_protect(f->h, s->p, len, prot);
    if (rc == GPU_OK) {
        if (whole) s->prot = prot;
        else if (prot < s->prot) s->prot = prot; /* part of it: the block is as closed as its most closed part */
        if (prot != GPU_PROT_READ_WRITE && len > s->closed) s->closed = len;
        return;
    }
    if (rc == GPU_ERR_NOT_WHOLE_EXTENT && (!s->owned || !whole)) return;
    ok_or_fault(f, rc, "gpu_heap_protect");
}

static void op_trim(fuzz *f, reader *r) {
    static const size_t keeps[4] = {0, 1 * MiB, 8 * MiB, SIZE_MAX};
    int rc = gpu_heap_trim(f->h, keeps[u8(r) % 4]);
    if (rc != GPU_OK) ok_or_fault(f, rc, "gpu_heap_trim");
}

static void op_usable(fuzz *f, reader *r) {
    slot *s = live_arg(f, r);
    if (!s) return;
    size_t u = gpu_heap_malloc_usable_size(f->h, s->p);
    if (u != s->usable) die("usable size %zu, the model says %zu", u, s->usable);
}

/* Fails the k-th backend call from now, once. */
static void op_fault(fuzz *f, reader *r) {
    static const int errs[3] = {0, GPU_ERR_BACKEND, GPU_ERR_OUT_OF_MEMORY};
    uint8_t k = u8(r);
    vmm_fault_arm(f->outer, 1 + k % 16, false, errs[(k / 16) % 3]);
}

/* ---- bad input: exactly the documented error, and nothing changes ---------------------------- */

static void op_double_free(fuzz *f, reader *r) {
    if (!f->ngrave) return;
    char *p = f->grave[u8(r) % (f->ngrave < NGRAVE ? f->ngrave : NGRAVE)];
    if (in_use(f, p, 1)) return; /* reused since: no longer a double free */
    expect_error(gpu_heap_free(f->h, p), GPU_ERR_NOT_LIVE, "double gpu_heap_free");
    expect_error(gpu_heap_free_async(f->h, p, (void *)streams[1]), GPU_ERR_NOT_LIVE, "double gpu_heap_free_async");
    if (gpu_heap_realloc(f->h, p, 100)) die("realloc of a freed pointer succeeded");
    expect_error(gpu_last_error(), GPU_ERR_NOT_LIVE, "realloc of a freed pointer");
}

static void op_interior(fuzz *f, reader *r) {
    slot *s = live_arg(f, r);
    size_t off = u16(r);
    if (!s) return;
    char *q = s->p + 1 + off % (s->usable - 1); /* usable >= 256 */
    expect_error(gpu_heap_free(f->h, q), GPU_ERR_NOT_LIVE, "gpu_heap_free(interior)");
    if (gpu_heap_malloc_usable_size(f->h, q) != 0) die("usable size of an interior pointer is not 0");
    expect_error(gpu_last_error(), GPU_ERR_NOT_LIVE, "usable_size(interior)");
    if (gpu_heap_realloc(f->h, q, 64)) die("realloc of an interior pointer succeeded");
    expect_error(gpu_last_error(), GPU_ERR_NOT_LIVE, "realloc(interior)");
}

static void op_foreign(fuzz *f, reader *r) {
    char local[64];
    char *foreign[3] = {local, (char *)f, (char *)(uintptr_t)(0x1000 + 256 * (size_t)u8(r))};
    for (int i = 0; i < 3; i++) {
        expect_error(gpu_heap_free(f->h, foreign[i]), GPU_ERR_NOT_OWNED, "gpu_heap_free(foreign)");
        expect_error(gpu_free(foreign[i]), GPU_ERR_NOT_OWNED, "gpu_free(foreign)");
        if (gpu_heap_realloc(f->h, foreign[i], 10)) die("realloc of a foreign pointer succeeded");
        expect_error(gpu_last_error(), GPU_ERR_NOT_OWNED, "realloc(foreign)");
    }
}

static void op_bad_args(fuzz *f, reader *r) {
    uint8_t k = u8(r);
    slot *s = live_arg(f, r);
    switch (k % 6) {
    case 0:
        if (gpu_heap_malloc(f->h, SIZE_MAX - k)) die("malloc(SIZE_MAX - %u) succeeded", k);
        if (gpu_last_error() != GPU_ERR_INVALID && gpu_last_error() != GPU_ERR_OUT_OF_VA)
            die("malloc(SIZE_MAX): error %d", gpu_last_error());
        break;
    case 1:
        if (gpu_heap_calloc(f->h, SIZE_MAX / 2 + k, 2 + k)) die("overflowing calloc succeeded");
        expect_error(gpu_last_error(), GPU_ERR_INVALID, "overflowing calloc");
        break;
    case 2:
        if (gpu_heap_malloc_aligned(f->h, 100, 3 + 2 * (size_t)k)) die("malloc_aligned with an odd alignment succeeded");
        expect_error(gpu_last_error(), GPU_ERR_INVALID, "malloc_aligned(odd alignment)");
        break;
    case 3:
        if (gpu_heap_malloc_flags(f->h, 100, 4u << (k % 28))) die("malloc_flags with an unknown flag succeeded");
        expect_error(gpu_last_error(), GPU_ERR_INVALID, "malloc_flags(unknown flag)");
        break;
    case 4:
        if (s) expect_error(gpu_heap_protect(f->h, s->p, s->usable, 4 + k % 100), GPU_ERR_INVALID, "protect(bad prot)");
        break;
    case 5:
        if (s) expect_error(gpu_heap_protect(f->h, s->p, 0, GPU_PROT_READ), GPU_ERR_INVALID, "protect(size 0)");
        break;
    }
}

/* A heap handle used after gpu_heap_destroy is refused, whatever the call. */
static void op_destroyed(fuzz *f, reader *r) {
    (void)r;
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_HOST;
    cfg.reserve_bytes = 64 * MiB;
    cfg.host_granularity = GRAN;
    gpu_heap_t *dead;
    if (gpu_heap_create(&cfg, &dead) != GPU_OK) return allowed_failure(f, gpu_last_error(), "gpu_heap_create");
    if (gpu_heap_destroy(dead) != GPU_OK) die("gpu_heap_destroy failed");
    if (dead == f->h) return; /* the allocator gave the same address back: not a dead handle */
    gpu_stats_t st;
    if (gpu_heap_malloc(dead, 100)) die("malloc on a destroyed heap succeeded");
    expect_error(gpu_last_error(), GPU_ERR_DESTROYED, "malloc(destroyed heap)");
    expect_error(gpu_heap_trim(dead, 0), GPU_ERR_DESTROYED, "trim(destroyed heap)");
    expect_error(gpu_heap_stats(dead, &st), GPU_ERR_DESTROYED, "stats(destroyed heap)");
    expect_error(gpu_heap_check(dead, NULL, 0), GPU_ERR_DESTROYED, "check(destroyed heap)");
    expect_error(gpu_heap_destroy(dead), GPU_ERR_DESTROYED, "destroy(destroyed heap)");
}

/* ---- sparse reservations ---------------------------------------------------------------- */

static void op_reserve(fuzz *f, reader *r) {
    resv *v = &f->res[u8(r) % NRES];
    size_t granules = 1 + u8(r) % RES_GRANULES;
    if (v->p) return;
    char *p = gpu_heap_reserve(f->h, granules * GRAN);
    if (!p) return allowed_failure(f, gpu_last_error(), "gpu_heap_reserve");
    if ((uintptr_t)p % GRAN) die("reservation %p is not granule-aligned", (void *)p);
    if (in_use(f, p, granules * GRAN)) die("reservation %p overlaps a block", (void *)p);
    *v = (resv){.p = p, .granules = granules};
}

static void op_commit(fuzz *f, reader *r) {
    resv *v = &f->res[u8(r) % NRES];
    uint8_t a = u8(r), b = u8(r);
    bool decommit = a & 0x80;
    if (!v->p) return;
    size_t first = a % v->granules, count = 1 + b % (v->granules - first);
    int rc = decommit ? gpu_heap_decommit(f->h, v->p + first * GRAN, count * GRAN)
                      : gpu_heap_commit(f->h, v->p + first * GRAN, count * GRAN);
    if (rc != GPU_OK && rc != GPU_ERR_OUT_OF_MEMORY) ok_or_fault(f, rc, decommit ? "gpu_heap_decommit" : "gpu_heap_commit");
    /* A decommit that cuts inside a commit needs new memory for the parts it
     * keeps; refused for lack of it, it changes nothing (the contract): the
     * model keeps its states, so the next verify checks the contents intact. */
    if (decommit && rc == GPU_ERR_OUT_OF_MEMORY && !fault_fired(f)) return;
    for (size_t g = first; g < first + count; g++) {
        if (rc != GPU_OK) {
            if (!decommit && v->state[g] != G_COMMITTED) v->state[g] = G_UNKNOWN; /* maybe committed, maybe not */
            if (decommit) v->state[g] = G_UNKNOWN;
        } else if (decommit) {
            v->state[g] = G_NONE;
        } else if (v->state[g] != G_COMMITTED) {
            v->state[g] = G_COMMITTED;
            v->seed[g] = ++f->seeds;
            fill(v->p + g * GRAN, FULL_LIMIT / 4, v->seed[g]);
        }
    }
}

static void op_release(fuzz *f, reader *r) {
    resv *v = &f->res[u8(r) % NRES];
    if (!v->p) return;
    int rc = gpu_heap_release(f->h, v->p);
    if (rc != GPU_OK) return ok_or_fault(f, rc, "gpu_heap_release");
    memset(v, 0, sizeof *v);
}

static void op_sparse_bad(fuzz *f, reader *r) {
    resv *v = &f->res[u8(r) % NRES];
    slot *s = live_arg(f, r);
    if (v->p) {
        expect_error(gpu_heap_commit(f->h, v->p + GPU_MIN_ALIGNMENT, GRAN), GPU_ERR_INVALID, "commit(unaligned)");
        expect_error(gpu_heap_free(f->h, v->p), GPU_ERR_INVALID, "free(reservation)");
        if (gpu_heap_realloc(f->h, v->p, 1 + u16(r))) die("realloc of a reservation succeeded");
        expect_error(gpu_last_error(), GPU_ERR_INVALID, "realloc(reservation)");
    }
    if (s) {
        int rc = gpu_heap_commit(f->h, s->p, GRAN);
        if (rc != GPU_ERR_NOT_RESERVATION && rc != GPU_ERR_INVALID) die("commit of a heap block returned %d", rc);
    }
}

/* ---- the op table: one line per op ------------------------------------------------------------ */

typedef struct fuzz_op {
    const char *name;
    void (*run)(fuzz *f, reader *r);
} fuzz_op;

static const fuzz_op ops[] = {
    {"malloc", op_malloc},
    {"calloc", op_calloc},
    {"malloc_aligned", op_aligned},
    {"malloc_flags(OWNED)", op_owned},
    {"realloc", op_realloc},
    {"free", op_free},
    {"malloc", op_malloc}, /* twice: allocation should outweigh the rest */
    {"protect", op_protect},
    {"trim", op_trim},
    {"usable_size", op_usable},
    {"malloc_async", op_malloc_async},
    {"free_async", op_free_async},
    {"event_delay/free_order", op_event_delay},
    {"fault", op_fault},
    {"double_free", op_double_free},
    {"interior_pointer", op_interior},
    {"foreign_pointer", op_foreign},
    {"bad_arguments", op_bad_args},
    {"destroyed_heap", op_destroyed},
    {"reserve", op_reserve},
    {"commit/decommit", op_commit},
    {"release", op_release},
    {"sparse_bad_input", op_sparse_bad},
};
#define NOPS (sizeof ops / sizeof ops[0])

/* Operations run in this process, for the figures in README. */
static uint64_t ops_run;

/* ---- one input ---------------------------------------------------------------------------------- */

static void fuzz_open(fuzz *f) {
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_HOST;
    cfg.reserve_bytes = RESERVE;
    cfg.host_granularity = GRAN;
    cfg.host_budget = BUDGET;
    cfg.verbose = 0;
    if (vmm_host_open(&cfg, &f->inner) != GPU_OK) die("vmm_host_open: %s", vmm_error());
    if (vmm_fault_open(f->inner, &f->rep, &f->outer) != GPU_OK) die("vmm_fault_open: %s", vmm_error());
    if (gh_heap_create_on(&cfg, f->outer, &f->h) != GPU_OK) die("heap creation failed: %d", gpu_last_error());
}

static void fuzz_close(fuzz *f) {
    current_op = "close";
    vmm_fault_arm(f->outer, 0, false, 0);
    vmm_host_set_event_delay(f->inner, 0);
    if (gpu_set_free_order(GPU_FREE_ORDER_EVENT) != GPU_OK) die("back to event order at the end: %d", gpu_last_error());
    for (int i = 0; i < NSLOTS; i++) {
        slot *s = &f->s[i];
        if (s->p && gpu_heap_free(f->h, s->p) != GPU_OK) die("freeing a live block at the end: %d", gpu_last_error());
        s->p = NULL;
    }
    for (int i = 0; i < NRES; i++) {
        if (f->res[i].p && gpu_heap_release(f->h, f->res[i].p) != GPU_OK) die("releasing a reservation at the end");
        f->res[i].p = NULL;
    }
    if (gpu_heap_trim(f->h, 0) != GPU_OK) die("trim(0) at the end: %d", gpu_last_error());
    verify(f);
    gpu_stats_t st;
    gpu_heap_stats(f->h, &st);
    if (st.mapped_bytes || st.live_blocks) die("after freeing everything: %llu bytes mapped, %llu live blocks",
                                               (unsigned long long)st.mapped_bytes, (unsigned long long)st.live_blocks);
    if (gpu_heap_destroy(f->h) != GPU_OK) die("gpu_heap_destroy failed");
    vmm_host_counts z = f->rep.at_close;
    if (z.handles || z.mappings || z.reservations || z.physical_bytes)
        die("after destroy the backend held %zu handles, %zu mappings, %zu reservations", z.handles, z.mappings, z.reservations);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz f;
    memset(&f, 0, sizeof f);
    current_op = "open";
    fuzz_open(&f);
    reader r = {data, size};
    static int trace = -1; /* FUZZ_TRACE=1 prints each op: to find which one broke */
    if (trace < 0) trace = getenv("FUZZ_TRACE") != NULL;
    while (r.n) {
        const fuzz_op *op = &ops[u8(&r) % NOPS];
        current_op = op->name;
        if (trace) fprintf(stderr, "fuzz_heap: %s\n", op->name);
        f.injected = f.rep.injected;
        op->run(&f, &r);
        ops_run++;
        verify(&f);
    }
    fuzz_close(&f);
    return 0;
}

/* Prints how many operations ran (libFuzzer: at exit). */
static void report_ops(void) { fprintf(stderr, "fuzz_heap: %llu operations run\n", (unsigned long long)ops_run); }

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    atexit(report_ops);
    return 0;
}

#ifdef FUZZ_STANDALONE
#include <dirent.h>
#include <sys/stat.h>

/* Runs one input file; false when it cannot be read. */
static bool replay_file(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return false;
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    fprintf(stderr, "fuzz_heap: %s (%zu bytes)\n", path, n);
    LLVMFuzzerTestOneInput(buf, n);
    return true;
}

/* Replays the inputs named on the command line: files, and the files in
 * directories (not recursively). */
int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int inputs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { /* an empty regress/ is not in a clone */
            fprintf(stderr, "fuzz_heap: no %s: skipped\n", argv[i]);
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            inputs += replay_file(argv[i]);
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, alphasort);
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]->d_name);
            if (names[k]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode)) inputs += replay_file(path);
            free(names[k]);
        }
        free(names);
    }
    fprintf(stderr, "fuzz_heap: %d inputs replayed\n", inputs);
    return inputs ? 0 : 1;
}
#endif
