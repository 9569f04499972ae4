/*
 * test_fault.c — every backend call of a scripted workload fails once, and the
 * heap survives each failure.
 *
 * The heap runs on the host backend through lib/backend_fault.c, a wrapper that
 * counts backend calls and fails the Nth one. A fixed workload (small, large,
 * owned, zeroed and aligned allocations; realloc growing in place over idle
 * memory and over headroom, moving by remapping and by copying, shrinking;
 * protection; frees of protected blocks; a quarantine drain; trims) is run once
 * without faults to count its calls and to prove that each step takes the path
 * it is meant to, then once per N with call N refused. After every step:
 *   - a step that failed did so only because the fault fired in it, with a clean
 *     error code (and the thread's last error agreeing), and changed nothing the
 *     caller can see (a failed realloc leaves its block, a failed free leaves the
 *     block live);
 *   - gpu_heap_check passes, the statistics are sane, and the host backend below
 *     holds exactly what the heap thinks it holds: one mapping and one handle per
 *     extent, as many physical bytes as mapped bytes, one reservation — so a leak
 *     shows at the step that made it;
 *   - every live block still holds its pattern;
 *   - after the fault, every later step succeeds: one refused call does not break
 *     the heap.
 * At the end everything is freed and trimmed, the heap destroyed, and the host
 * backend's counts just before it closed must all be zero.
 *
 * The sweeps: every N with GPU_ERR_BACKEND; every N that lands on a create or
 * reserve with its natural error (out of memory / out of VA), which sends the
 * heap through its reclaim-and-retry path; every N with a release threshold, so
 * frees trim as they go; every N of a stream-ordered workload (events) and of a
 * sparse one (commit, decommit cutting a commit, release). One more fails call N
 * and every call after it (a lost context): each call must still come back with a
 * clean error and the books must stay sound; what the refused give-backs held
 * leaks, and is counted. Each plan runs in a child process, so a crash is
 * reported with its N and the sweep goes on. The totals are printed for README's
 * reliability section; they count what was checked after each fault (steps whose
 * books and bytes were checked, the backend emptied at destroy), and every sweep
 * insists that each of its faults was followed by such checks. The bugs the
 * sweeps found are regression tests below.
 */
#include <stdbool.h>
#include <sys/mman.h>

#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

#define G (64 * KiB) /* the test heap's granularity */

enum { SLOT_A, SLOT_B, SLOT_C, SLOT_X, SLOT_D, SLOT_E, SLOT_Z, SLOT_BIG1, SLOT_BIG2, SLOT_BIG3, SLOT_T, NSLOTS };

/* What the test knows about one live block. */
typedef struct tblk {
    char *p;
    size_t size; /* bytes asked for (the pattern covers them) */
    uint64_t seed;
    int prot;
} tblk;

/* One run of the workload with one fault plan. */
typedef struct run {
    vmm_fault_report rep;
    vmm_backend *inner, *outer;
    gpu_heap_t *h;
    tblk blk[NSLOTS];
    char *res;                  /* a gpu_reserve range of RES_GRANULES granules, or NULL */
    uint8_t committed[16];      /* per granule of res: 1 when committed (and patterned) */
    const struct step *steps;   /* the workload */
    int nsteps;
    /* the plan */
    uint64_t nth;
    bool persistent;
    int error;
    size_t threshold;
    /* the outcome */
    const char *step;        /* the step being run */
    bool bad;                /* a check failed: why says what */
    char why[768];
    int failed_steps;        /* steps that returned an error */
    int fault_step;          /* the step in which the fault first fired, -1 if none */
    int steps_after_fault;   /* steps run after the fault step */
    uint64_t workload_calls; /* backend calls the steps made (cleanup and destroy not counted) */
    size_t leaked_handles;   /* persistent faults: handles a refused give-back left behind */
    /* What was checked once a fault had fired (what "survived" counts). */
    bool create_refused;     /* heap creation failed; the backend was checked for leaks at its close */
    int checked_steps;       /* steps after which the books and the blocks were checked and sound */
    uint64_t checked_bytes;  /* pattern bytes those checks compared in live blocks and committed granules */
    bool destroy_checked;    /* everything freed, trim(0) and destroy: the backend's holdings checked */
} run;

static bool run_fail(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool run_fail(run *r, const char *fmt, ...) {
    if (r->bad) return false;
    r->bad = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    return false;
}

/* ---- the model and the checks after every step ------------------------------- */

static bool readable(int prot) { return prot == GPU_PROT_READ || prot == GPU_PROT_READ_WRITE; }

/* Every live block is still live, big enough, and holds its pattern. Once a
 * fault has fired, the pattern bytes compared are added to r->checked_bytes. */
static void check_blocks(run *r) {
    uint64_t compared = 0;
    size_t n = 0;
    for (int i = 0; i < NSLOTS && !r->bad; i++) {
        tblk *b = &r->blk[i];
        if (!b->p) continue;
        n++;
        size_t u = gpu_heap_malloc_usable_size(r->h, b->p);
        if (u < b->size) {
            run_fail(r, "block %d at %p: usable size %zu < %zu (error %d)", i, (void *)b->p, u, b->size,
                     gpu_last_error());
            return;
        }
        if (!readable(b->prot)) continue;
        size_t bad = block_mismatch(b->p, b->size, b->size, b->seed);
        if (bad != SIZE_MAX) run_fail(r, "block %d at %p (%zu bytes): pattern wrong at offset %zu", i, (void *)b->p, b->size, bad);
        span sp[2];
        int ns = edge_spans(b->size, b->size, sp);
        for (int k = 0; k < ns; k++) compared += sp[k].len;
    }
    for (int g = 0; r->res && g < 16 && !r->bad; g++) {
        if (!r->committed[g]) continue;
        size_t bad = pattern_mismatch(r->res + g * G, 0, 256, 7000u + (unsigned)g + r->nth);
        if (bad != SIZE_MAX) run_fail(r, "reservation granule %d: pattern wrong at offset %zu", g, bad);
        compared += 256;
    }
    if (!r->bad && r->rep.injected) r->checked_bytes += compared;
    gpu_stats_t s;
    if (!r->bad && gpu_heap_stats(r->h, &s) == GPU_OK && s.live_blocks != n)
        run_fail(r, "the heap counts %llu live blocks, the test holds %zu", (unsigned long long)s.live_blocks, n);
}

/* The heap's books are sound and agree with what the host backend holds. */
static void check_books(run *r) {
    if (r->bad) return;
    char msg[512] = "";
    if (gpu_heap_check(r->h, msg, sizeof msg) != GPU_OK) {
        run_fail(r, "gpu_heap_check: %s", msg);
        return;
    }
    gpu_stats_t s;
    if (gpu_heap_stats(r->h, &s) != GPU_OK) {
        run_fail(r, "gpu_heap_stats failed");
        return;
    }
    const char *broken = stats_broken(&s);
    /* Counts are of calls, failed ones included: a refused release that a later
     * trim retries makes releases outnumber creates. */
    if (broken && s.backend_errors && !strcmp(broken, "s.backend_create >= s.backend_release")) broken = NULL;
    if (broken) {
        run_fail(r, "stats: %s is false", broken);
        return;
    }
    vmm_host_counts c;
    vmm_host_counts_get(r->inner, &c);
    if (r->persistent) {
        /* Once the backend refuses everything, the calls that would give memory
         * back are refused too: what they held leaks, and that is all right. The
         * heap must never believe in memory the backend does not hold. */
        if (c.mappings < s.extents || c.handles < s.extents || c.physical_bytes < s.mapped_bytes || c.reservations != 1)
            run_fail(r, "the backend holds %zu mappings, %zu handles, %zu bytes; the heap believes in %llu extents of %llu bytes",
                     c.mappings, c.handles, c.physical_bytes, (unsigned long long)s.extents,
                     (unsigned long long)s.mapped_bytes);
        return;
    }
    size_t lingering = r->h->nlinger; /* moved pages' old mappings: a second mapping of an extent's handle */
    if (c.mappings != s.extents + lingering || c.handles != s.extents || c.physical_bytes != s.mapped_bytes ||
        c.reservations != 1)
        run_fail(r,
                 "the backend holds %zu mappings, %zu handles, %zu bytes, %zu reservations; "
                 "the heap knows %llu extents of %llu bytes and %zu lingering mappings (a leak or a lost mapping)",
                 c.mappings, c.handles, c.physical_bytes, c.reservations, (unsigned long long)s.extents,
                 (unsigned long long)s.mapped_bytes, lingering);
}

/* ---- the operations the steps use ---------------------------------------------- */

enum { HOW_MALLOC, HOW_OWNED, HOW_ZERO, HOW_CALLOC, HOW_ALIGNED };

/* Outcome of one call: GPU_OK, or the error it returned. */
static int outcome_ptr(run *r, const void *p, const char *call) {
    int e = gpu_last_error();
    if (p && e != GPU_OK) run_fail(r, "%s returned %p but the last error is %d", call, p, e);
    if (!p && e == GPU_OK) run_fail(r, "%s returned NULL but the last error is GPU_OK", call);
    return p ? GPU_OK : e;
}

static int op_alloc(run *r, int slot, int how, size_t size, size_t arg) {
    tblk *b = &r->blk[slot];
    if (b->p) return run_fail(r, "slot %d is in use", slot), GPU_OK;
    void *p = NULL;
    switch (how) {
    case HOW_MALLOC: p = gpu_heap_malloc(r->h, size); break;
    case HOW_OWNED: p = gpu_heap_malloc_flags(r->h, size, GPU_ALLOC_OWNED); break;
    case HOW_ZERO: p = gpu_heap_malloc_flags(r->h, size, GPU_ALLOC_ZERO); break;
    case HOW_CALLOC: p = gpu_heap_calloc(r->h, arg, size), size *= arg; break;
    case HOW_ALIGNED: p = gpu_heap_malloc_aligned(r->h, size, arg); break;
    }
    int rc = outcome_ptr(r, p, "allocation");
    if (rc != GPU_OK) return rc;
    if ((how == HOW_ZERO || how == HOW_CALLOC) && bytes_mismatch(p, 0, size, 0) != SIZE_MAX)
        run_fail(r, "a zeroed block of %zu bytes is not zero", size);
    if (how == HOW_ALIGNED && (uintptr_t)p % arg) run_fail(r, "%p is not aligned to %zu", p, arg);
    *b = (tblk){.p = p, .size = size, .seed = 1000u * (unsigned)slot + r->nth, .prot = GPU_PROT_READ_WRITE};
    block_fill(p, size, b->seed);
    return GPU_OK;
}

static int op_realloc(run *r, int slot, size_t size) {
    tblk *b = &r->blk[slot];
    if (!b->p) return GPU_OK; /* an earlier step failed on purpose: nothing to resize */
    size_t before = gpu_heap_malloc_usable_size(r->h, b->p);
    char *p = gpu_heap_realloc(r->h, b->p, size);
    int rc = outcome_ptr(r, p, "gpu_realloc");
    if (rc != GPU_OK) {
        size_t after = gpu_heap_malloc_usable_size(r->h, b->p);
        if (after != before) run_fail(r, "a failed realloc changed the block's usable size %zu -> %zu", before, after);
        return rc;
    }
    size_t keep = size < b->size ? size : b->size;
    size_t bad = block_mismatch(p, b->size, keep, b->seed);
    if (bad != SIZE_MAX) run_fail(r, "realloc %zu -> %zu lost the contents at offset %zu", b->size, size, bad);
    b->p = p;
    b->size = size;
    block_fill(p, size, b->seed);
    return GPU_OK;
}

static int op_free(run *r, int slot) {
    tblk *b = &r->blk[slot];
    if (!b->p) return GPU_OK;
    int rc = gpu_heap_free(r->h, b->p);
    if (rc != gpu_last_error()) run_fail(r, "gpu_heap_free returned %d, last error %d", rc, gpu_last_error());
    if (rc == GPU_OK) b->p = NULL;
    return rc;
}

static int op_protect(run *r, int slot, int prot) {
    tblk *b = &r->blk[slot];
    if (!b->p) return GPU_OK;
    int rc = gpu_heap_protect(r->h, b->p, gpu_heap_malloc_usable_size(r->h, b->p), prot);
    if (rc != gpu_last_error()) run_fail(r, "gpu_heap_protect returned %d, last error %d", rc, gpu_last_error());
    if (rc == GPU_OK) b->prot = prot;
    return rc;
}

static int op_trim(run *r, size_t keep) {
    int rc = gpu_heap_trim(r->h, keep);
    if (rc != gpu_last_error()) run_fail(r, "gpu_heap_trim returned %d, last error %d", rc, gpu_last_error());
    return rc;
}

/* Sparse calls: a failed one leaves the committed ranges as they were. */
static int op_reserve(run *r) {
    if (r->res) return run_fail(r, "a reservation is live"), GPU_OK;
    char *p = gpu_heap_reserve(r->h, 16 * G);
    int rc = outcome_ptr(r, p, "gpu_heap_reserve");
    if (rc == GPU_OK) r->res = p, memset(r->committed, 0, sizeof r->committed);
    return rc;
}

static int op_commit(run *r, int first, int count, bool decommit) {
    if (!r->res) return GPU_OK;
    int rc = decommit ? gpu_heap_decommit(r->h, r->res + first * G, (size_t)count * G)
                      : gpu_heap_commit(r->h, r->res + first * G, (size_t)count * G);
    if (rc != gpu_last_error()) run_fail(r, "gpu_heap_(de)commit returned %d, last error %d", rc, gpu_last_error());
    if (rc != GPU_OK) return rc;
    for (int g = first; g < first + count; g++) {
        if (decommit) {
            r->committed[g] = 0;
        } else if (!r->committed[g]) {
            r->committed[g] = 1;
            pattern_fill(r->res + g * G, 0, 256, 7000u + (unsigned)g + r->nth);
        }
    }
    return GPU_OK;
}

static int op_release(run *r) {
    if (!r->res) return GPU_OK;
    int rc = gpu_heap_release(r->h, r->res);
    if (rc != gpu_last_error()) run_fail(r, "gpu_heap_release returned %d, last error %d", rc, gpu_last_error());
    if (rc == GPU_OK) r->res = NULL;
    return rc;
}

#define S1 ((void *)0x1001)
#define S2 ((void *)0x2002)

static int op_alloc_async(run *r, int slot, size_t size, void *stream) {
    tblk *b = &r->blk[slot];
    if (b->p) return run_fail(r, "slot %d is in use", slot), GPU_OK;
    char *p = gpu_heap_malloc_async(r->h, size, stream);
    int rc = outcome_ptr(r, p, "gpu_heap_malloc_async");
    if (rc != GPU_OK) return rc;
    *b = (tblk){.p = p, .size = size, .seed = 1000u * (unsigned)slot + r->nth, .prot = GPU_PROT_READ_WRITE};
    block_fill(p, size, b->seed);
    return GPU_OK;
}

static int op_free_async(run *r, int slot, void *stream) {
    tblk *b = &r->blk[slot];
    if (!b->p) return GPU_OK;
    int rc = gpu_heap_free_async(r->h, b->p, stream);
    if (rc != gpu_last_error()) run_fail(r, "gpu_heap_free_async returned %d, last error %d", rc, gpu_last_error());
    if (rc == GPU_OK) b->p = NULL;
    return rc;
}

/* ---- the workload ------------------------------------------------------------------ */

#define NO_CALL (-2) /* the step must make no backend call at all (fault-free run) */
#define ANY (-1)

typedef struct step {
    const char *name;
    int (*run)(run *r);
    int must;    /* a vmm_op the fault-free run must call in this step, NO_CALL or ANY */
    int mustnt;  /* a vmm_op it must not call, or ANY */
} step;

static int s_small(run *r) { return op_alloc(r, SLOT_A, HOW_MALLOC, 1000, 0); }
static int s_large(run *r) { return op_alloc(r, SLOT_B, HOW_MALLOC, 3 * G + 100, 0); }
static int s_owned(run *r) { return op_alloc(r, SLOT_C, HOW_OWNED, 5000, 0); }
static int s_owned2(run *r) { return op_alloc(r, SLOT_X, HOW_OWNED, G, 0); }
static int s_calloc(run *r) { return op_alloc(r, SLOT_D, HOW_CALLOC, 30, 100); }
static int s_aligned(run *r) { return op_alloc(r, SLOT_E, HOW_ALIGNED, 10000, 4 * G); }
static int s_zero(run *r) { return op_alloc(r, SLOT_Z, HOW_ZERO, 3000, 0); }
static int s_grow_idle(run *r) { return op_realloc(r, SLOT_A, 2000); }
static int s_grow_headroom(run *r) { return op_realloc(r, SLOT_B, 5 * G); }
static int s_grow_remap(run *r) { return op_realloc(r, SLOT_C, 3 * G); }
static int s_grow_copy(run *r) { return op_realloc(r, SLOT_A, 20 * KiB); }
static int s_shrink(run *r) { return op_realloc(r, SLOT_B, 100); }
static int s_protect_b(run *r) { return op_protect(r, SLOT_B, GPU_PROT_READ); }
static int s_protect_c(run *r) { return op_protect(r, SLOT_C, GPU_PROT_NONE); }
static int s_unprotect_c(run *r) { return op_protect(r, SLOT_C, GPU_PROT_READ_WRITE); }
static int s_protect_x(run *r) { return op_protect(r, SLOT_X, GPU_PROT_READ); }
static int s_free_x(run *r) { return op_free(r, SLOT_X); }
static int s_big1(run *r) { return op_alloc(r, SLOT_BIG1, HOW_MALLOC, 24 * MiB, 0); }
static int s_big2(run *r) { return op_alloc(r, SLOT_BIG2, HOW_MALLOC, 24 * MiB, 0); }
static int s_free_big1(run *r) { return op_free(r, SLOT_BIG1); }
static int s_free_big2(run *r) { return op_free(r, SLOT_BIG2); }
static int s_big3(run *r) { return op_alloc(r, SLOT_BIG3, HOW_MALLOC, 24 * MiB, 0); }
static int s_free_a(run *r) { return op_free(r, SLOT_A); }
static int s_drain(run *r) { return op_trim(r, SIZE_MAX); }
static int s_trim_some(run *r) { return op_trim(r, 1 * MiB); }
static int s_grow_big3(run *r) { return op_realloc(r, SLOT_BIG3, 48 * MiB); }
static int s_free_b(run *r) { return op_free(r, SLOT_B); }
static int s_free_c(run *r) { return op_free(r, SLOT_C); }
static int s_free_rest(run *r) {
    int rc = GPU_OK;
    for (int i = 0; i < NSLOTS && rc == GPU_OK; i++) rc = op_free(r, i);
    return rc;
}
static int s_trim_all(run *r) { return op_trim(r, 0); }
static int s_after_trim(run *r) { return op_alloc(r, SLOT_T, HOW_MALLOC, 5000, 0); }
static int s_free_t(run *r) { return op_free(r, SLOT_T); }

static const step workload[] = {
    {"malloc small (new shared extent)", s_small, VMM_OP_CREATE, ANY},
    {"realloc grow over idle", s_grow_idle, NO_CALL, ANY},
    {"malloc large (own extent, headroom)", s_large, VMM_OP_CREATE, ANY},
    {"malloc owned", s_owned, VMM_OP_CREATE, ANY},
    {"malloc owned, second", s_owned2, VMM_OP_CREATE, ANY},
    {"calloc", s_calloc, VMM_OP_MEMSET, ANY},
    {"malloc aligned 4 granules", s_aligned, ANY, ANY},
    {"malloc zeroed", s_zero, VMM_OP_MEMSET, ANY},
    {"realloc grow over headroom", s_grow_headroom, VMM_OP_CREATE, VMM_OP_COPY},
    {"realloc grow by remap", s_grow_remap, VMM_OP_UNMAP, VMM_OP_COPY},
    {"realloc grow by copy", s_grow_copy, VMM_OP_COPY, ANY},
    {"realloc shrink", s_shrink, VMM_OP_RELEASE, VMM_OP_COPY},
    {"protect large read-only", s_protect_b, VMM_OP_SET_ACCESS, ANY},
    {"protect owned none", s_protect_c, VMM_OP_SET_ACCESS, ANY},
    {"protect owned read-write", s_unprotect_c, VMM_OP_SET_ACCESS, ANY},
    {"protect owned read-only", s_protect_x, VMM_OP_SET_ACCESS, ANY},
    {"free protected", s_free_x, VMM_OP_SET_ACCESS, ANY},
    {"malloc 24 MiB", s_big1, VMM_OP_CREATE, ANY},
    {"malloc 24 MiB, second", s_big2, VMM_OP_CREATE, ANY},
    {"free 24 MiB", s_free_big1, ANY, ANY},
    {"free 24 MiB, second", s_free_big2, ANY, ANY},
    {"malloc 24 MiB beside the quarantine, sealed (within the physical budget)", s_big3, VMM_OP_EVENT_RECORD, VMM_OP_FENCE},
    {"free moved small block", s_free_a, ANY, ANY},
    {"trim keeping all (drain)", s_drain, VMM_OP_FENCE, VMM_OP_RELEASE},
    {"trim to 1 MiB", s_trim_some, VMM_OP_RELEASE, ANY},
    {"realloc 24 -> 48 MiB", s_grow_big3, VMM_OP_CREATE, VMM_OP_COPY},
    {"free protected large", s_free_b, VMM_OP_SET_ACCESS, ANY},
    {"free owned", s_free_c, ANY, ANY},
    {"free the rest", s_free_rest, ANY, ANY},
    {"trim all", s_trim_all, VMM_OP_RELEASE, ANY},
    {"malloc after trim", s_after_trim, VMM_OP_CREATE, ANY},
    {"free it", s_free_t, ANY, ANY},
};

/* Sparse reservations: commits over gaps, decommits that cut a commit (its outer
 * parts are copied into extents of their own), release. */
static int s_reserve(run *r) { return op_reserve(r); }
static int s_commit_0_4(run *r) { return op_commit(r, 0, 4, false); }
static int s_commit_2_8(run *r) { return op_commit(r, 2, 6, false); }
static int s_decommit_1(run *r) { return op_commit(r, 1, 1, true); }
static int s_decommit_6_8(run *r) { return op_commit(r, 6, 2, true); }
static int s_commit_all(run *r) { return op_commit(r, 0, 16, false); }
static int s_decommit_all(run *r) { return op_commit(r, 0, 16, true); }
static int s_release(run *r) { return op_release(r); }

static const step sparse_workload[] = {
    {"malloc small", s_small, VMM_OP_CREATE, ANY},
    {"reserve 16 granules", s_reserve, NO_CALL, ANY},
    {"commit granules 0-3", s_commit_0_4, VMM_OP_CREATE, ANY},
    {"commit granules 2-7 (partly committed)", s_commit_2_8, VMM_OP_CREATE, ANY},
    {"decommit granule 1 (cuts a commit)", s_decommit_1, VMM_OP_COPY, ANY},
    {"decommit granules 6-7", s_decommit_6_8, VMM_OP_RELEASE, ANY},
    {"commit all", s_commit_all, VMM_OP_CREATE, ANY},
    {"decommit all", s_decommit_all, VMM_OP_RELEASE, ANY},
    {"commit granules 0-3 again", s_commit_0_4, VMM_OP_CREATE, ANY},
    {"release the reservation", s_release, VMM_OP_RELEASE, ANY},
    {"free small", s_free_a, ANY, ANY},
    {"trim all", s_trim_all, VMM_OP_RELEASE, ANY},
};

/* Stream-ordered: a stream reuses its own frees at once, another stream only
 * after an event; trim and out-of-memory wait for the events. */
static int s_async1(run *r) { return op_alloc_async(r, SLOT_A, 100 * KiB, S1); }
static int s_afree1(run *r) { return op_free_async(r, SLOT_A, S1); }
static int s_async1_again(run *r) { return op_alloc_async(r, SLOT_B, 100 * KiB, S1); }
static int s_afree1_again(run *r) { return op_free_async(r, SLOT_B, S1); }
static int s_async2(run *r) { return op_alloc_async(r, SLOT_C, 100 * KiB, S2); }
static int s_async2_big(run *r) { return op_alloc_async(r, SLOT_D, 3 * G, S2); }
static int s_afree2_big(run *r) { return op_free_async(r, SLOT_D, S2); }
static int s_plain_after_async(run *r) { return op_alloc(r, SLOT_E, HOW_MALLOC, 3 * G, 0); }
static int s_afree2(run *r) { return op_free_async(r, SLOT_C, S2); }
static int s_async_legacy(run *r) { return op_alloc_async(r, SLOT_Z, 5000, NULL); }
static int s_afree_legacy(run *r) { return op_free_async(r, SLOT_Z, NULL); }

static const step stream_workload[] = {
    {"malloc_async on S1", s_async1, VMM_OP_CREATE, ANY},
    {"free_async on S1 (records an event)", s_afree1, VMM_OP_EVENT_RECORD, ANY},
    {"malloc_async on S1 again (reuse at once)", s_async1_again, NO_CALL, ANY},
    {"free_async on S1 again", s_afree1_again, ANY, ANY},
    {"malloc_async on S2 (S1's event)", s_async2, ANY, ANY},
    {"malloc_async 3 granules on S2", s_async2_big, VMM_OP_CREATE, ANY},
    {"free_async 3 granules on S2", s_afree2_big, ANY, ANY},
    {"malloc 3 granules (S2's event)", s_plain_after_async, ANY, ANY},
    {"free_async on S2", s_afree2, ANY, ANY},
    {"malloc_async on the legacy stream", s_async_legacy, ANY, ANY},
    {"free_async on the legacy stream", s_afree_legacy, ANY, ANY},
    {"trim all (waits for the events)", s_trim_all, VMM_OP_RELEASE, ANY},
    {"free the rest", s_free_rest, ANY, ANY},
    {"trim all again", s_trim_all, ANY, ANY},
};

/* Paged placement (gpu_config_t.page_size, two granules here): blocks share
 * pages; a trim leaves holes between idle blocks; a block over a hole and the
 * idle memory beside it maps only the hole's pages; a block mapped past the
 * physical peak moves idle pages under it where there are any outside its run
 * (which pages lie where depends on the reservation's address, so that step
 * names no call; test_paged pins each path down). */
static int s_pg_five(run *r) { return op_alloc(r, SLOT_A, HOW_MALLOC, 5 * G, 0); }
static int s_pg_three(run *r) { return op_alloc(r, SLOT_B, HOW_MALLOC, 3 * G, 0); }
static int s_pg_over_hole(run *r) { return op_alloc(r, SLOT_C, HOW_MALLOC, 5 * G, 0); }
static int s_pg_moved(run *r) { return op_alloc(r, SLOT_D, HOW_MALLOC, 12 * G, 0); }
static int s_pg_small(run *r) { return op_alloc(r, SLOT_E, HOW_MALLOC, 3000, 0); }

static const step paged_workload[] = {
    {"paged: malloc 5 granules (three new pages)", s_pg_five, VMM_OP_CREATE, ANY},
    {"paged: malloc 3 granules (after its idle tail: one page more)", s_pg_three, VMM_OP_CREATE, ANY},
    {"paged: malloc small (a new page: none idle)", s_pg_small, VMM_OP_CREATE, ANY},
    {"paged: free 5 granules", s_free_a, ANY, ANY},
    {"paged: drain", s_drain, VMM_OP_FENCE, VMM_OP_RELEASE},
    {"paged: trim all (holes between idle blocks)", s_trim_all, VMM_OP_RELEASE, ANY},
    {"paged: malloc over a hole and idle memory", s_pg_over_hole, VMM_OP_CREATE, ANY},
    {"paged: free it", s_free_c, ANY, ANY},
    {"paged: drain again", s_drain, ANY, VMM_OP_RELEASE},
    {"paged: malloc past the peak (idle pages moved)", s_pg_moved, ANY, VMM_OP_RELEASE},
    {"paged: free the rest", s_free_rest, ANY, ANY},
    {"paged: trim all", s_trim_all, VMM_OP_RELEASE, ANY},
};

/* Paged placement in legacy free order with the host's "GPU" a second behind:
 * freed pages move while their release still runs, their old mappings linger
 * (linger.c) with no fence, and go once the release is seen done. */
static int s_lg_big(run *r) { return op_alloc(r, SLOT_BIG1, HOW_MALLOC, 4 * MiB, 0); }
static int s_lg_small(run *r) { return op_alloc(r, SLOT_B, HOW_MALLOC, G, 0); }
static int s_lg_moved(run *r) { return op_alloc(r, SLOT_BIG2, HOW_MALLOC, 4 * MiB + 7 * G, 0); }
static int s_lg_done(run *r) {
    vmm_host_set_clock(r->inner, 2000000000ull, 1000000000ull); /* the release is done */
    return op_trim(r, SIZE_MAX);
}

static const step linger_workload[] = {
    {"linger: malloc 4 MiB", s_lg_big, VMM_OP_CREATE, ANY},
    {"linger: malloc a granule", s_lg_small, ANY, ANY},
    {"linger: free 4 MiB (quarantined)", s_free_big1, ANY, ANY},
    {"linger: malloc past the peak (a release; its pages move and linger)", s_lg_moved, VMM_OP_MAP, VMM_OP_FENCE},
    {"linger: trim while the release runs", s_drain, ANY, VMM_OP_UNMAP},
    {"linger: the release done, trim (old mappings go)", s_lg_done, VMM_OP_UNMAP, VMM_OP_FENCE},
    {"linger: malloc past the peak again (lingers)", s_lg_big, ANY, VMM_OP_FENCE},
    {"linger: free the rest (some still lingering)", s_free_rest, ANY, ANY},
    {"linger: trim all (a fence: every old mapping goes)", s_trim_all, VMM_OP_UNMAP, ANY},
};

/* The same with more pages than one trade's set of handles holds (SPARE_MAX):
 * the range is traded for and backed a set's worth at a time (vacant.c), and a
 * refusal in a later part gives back what the earlier parts mapped. */
#define MANY_PAGES ((SPARE_MAX + 16) * 2 * G)
static int s_lm_big(run *r) { return op_alloc(r, SLOT_BIG1, HOW_MALLOC, MANY_PAGES, 0); }
static int s_lm_moved(run *r) { return op_alloc(r, SLOT_BIG2, HOW_MALLOC, MANY_PAGES + 7 * G, 0); }

static const step linger_many_workload[] = {
    {"linger many: malloc past a trade's set", s_lm_big, VMM_OP_CREATE, ANY},
    {"linger many: malloc a granule", s_lg_small, ANY, ANY},
    {"linger many: free it (quarantined)", s_free_big1, ANY, ANY},
    {"linger many: malloc past the peak (a release; pages move in two trades and linger)", s_lm_moved, VMM_OP_MAP,
     VMM_OP_RELEASE},
    {"linger many: the release done, trim (old mappings go)", s_lg_done, VMM_OP_UNMAP, VMM_OP_FENCE},
    {"linger many: free the rest", s_free_rest, ANY, ANY},
    {"linger many: trim all", s_trim_all, VMM_OP_UNMAP, ANY},
};

#define WORKLOAD(w) (w), (int)(sizeof(w) / sizeof((w)[0]))

/* ---- one run ---------------------------------------------------------------------- */

static size_t fault_page; /* the page size of the heaps runs make (0: not paged) */
static bool fault_late;   /* the host's events complete a second after they are recorded */

static gpu_config_t fault_config(size_t threshold) {
    gpu_config_t cfg = host_config(1 * GiB, G, 0);
    cfg.page_size = fault_page;
    cfg.release_threshold = threshold;
    cfg.verbose = 0;
    return cfg;
}

static bool error_is_clean(int e) {
    return e == GPU_ERR_BACKEND || e == GPU_ERR_OUT_OF_MEMORY || e == GPU_ERR_OUT_OF_VA;
}

/* Runs the workload under r's plan. Returns false with r->why on a broken rule. */
static bool run_workload(run *r) {
    gpu_config_t cfg = fault_config(r->threshold);
    r->fault_step = -1;
    r->step = "open";
    if (vmm_host_open(&cfg, &r->inner) != GPU_OK) return run_fail(r, "vmm_host_open: %s", vmm_error());
    if (fault_late) vmm_host_set_clock(r->inner, 0, 1000000000ull);
    if (vmm_fault_open(r->inner, &r->rep, &r->outer) != GPU_OK) return run_fail(r, "vmm_fault_open failed");
    vmm_fault_arm(r->outer, r->nth, r->persistent, r->error);
    int rc = gh_heap_create_on(&cfg, r->outer, &r->h);
    if (rc != GPU_OK) {
        if (!r->rep.injected) return run_fail(r, "heap creation failed (%d) with no fault", rc);
        if (!error_is_clean(rc) || gpu_last_error() != rc) return run_fail(r, "heap creation: unclean error %d", rc);
        if (!r->rep.closed) return run_fail(r, "a failed heap creation did not close its backend");
        vmm_host_counts z = r->rep.at_close;
        if (z.handles || z.mappings || z.reservations || z.physical_bytes)
            return run_fail(r, "a failed heap creation leaked: %zu handles, %zu mappings, %zu reservations",
                            z.handles, z.mappings, z.reservations);
        r->failed_steps++;
        r->fault_step = 0;
        r->create_refused = true;
        return true;
    }
    if (r->rep.injected) r->fault_step = 0; /* a refused reserve that the heap retried smaller */
    for (int i = 0; i < r->nsteps && !r->bad; i++) {
        const step *s = &r->steps[i];
        r->step = s->name;
        uint64_t inj = r->rep.injected, calls = r->rep.calls;
        uint64_t per_op[VMM_OP_COUNT];
        memcpy(per_op, r->rep.per_op, sizeof per_op);
        rc = s->run(r);
        if (r->bad) break;
        bool fired = r->rep.injected > inj;
        if (fired && r->fault_step < 0) r->fault_step = i + 1;
        if (r->fault_step >= 0 && i + 1 > r->fault_step) r->steps_after_fault++;
        if (rc != GPU_OK) {
            r->failed_steps++;
            if (!fired) run_fail(r, "failed with %d (%s) although no fault fired in it", rc, gpu_strerror(rc));
            else if (!error_is_clean(rc)) run_fail(r, "a refused backend call came back as %d (%s)", rc, gpu_strerror(rc));
        }
        if (!r->nth && !r->bad && r->threshold == SIZE_MAX) { /* the fault-free run takes the intended paths */
            uint64_t made = r->rep.calls - calls;
            if (s->must == NO_CALL && made)
                run_fail(r, "the fault-free run made %llu backend calls (the first: %s), expected none",
                         (unsigned long long)made, calls < VMM_FAULT_LOG ? vmm_op_name(r->rep.log[calls]) : "?");
            if (s->must >= 0 && r->rep.per_op[s->must] == per_op[s->must])
                run_fail(r, "the fault-free run made no %s call", vmm_op_name(s->must));
            if (s->mustnt >= 0 && r->rep.per_op[s->mustnt] != per_op[s->mustnt])
                run_fail(r, "the fault-free run made a %s call", vmm_op_name(s->mustnt));
        }
        check_books(r);
        check_blocks(r);
        if (!r->bad && r->rep.injected) r->checked_steps++;
    }
    if (r->bad) return false;
    r->workload_calls = r->rep.calls;
    /* Whatever happened, everything can be freed and given back, and nothing leaks. */
    r->step = "cleanup";
    vmm_fault_arm(r->outer, 0, false, 0);
    for (int i = 0; i < NSLOTS; i++) {
        if (r->blk[i].p && gpu_heap_free(r->h, r->blk[i].p) != GPU_OK)
            return run_fail(r, "freeing block %d at cleanup: %d", i, gpu_last_error());
        r->blk[i].p = NULL;
    }
    if (r->res && gpu_heap_release(r->h, r->res) != GPU_OK)
        return run_fail(r, "releasing the reservation at cleanup: %d", gpu_last_error());
    r->res = NULL;
    int trc = gpu_heap_trim(r->h, 0);
    /* A handle whose second mapping a refused unmap leaked cannot be released
     * (the backend says it is still mapped): after persistent faults trim may
     * report that, cleanly, and keep the extent. */
    if (trc != GPU_OK && !(r->persistent && trc == GPU_ERR_INVALID))
        return run_fail(r, "trim(0) at cleanup: %d", gpu_last_error());
    check_books(r);
    gpu_stats_t s;
    if (!r->bad && trc == GPU_OK && gpu_heap_stats(r->h, &s) == GPU_OK && (s.mapped_bytes || s.extents || s.live_blocks))
        run_fail(r, "after freeing everything and trim(0): %llu bytes mapped in %llu extents, %llu live blocks",
                 (unsigned long long)s.mapped_bytes, (unsigned long long)s.extents, (unsigned long long)s.live_blocks);
    if (gpu_heap_destroy(r->h) != GPU_OK) return run_fail(r, "gpu_heap_destroy: %d", gpu_last_error());
    r->h = NULL;
    r->step = "destroy";
    vmm_host_counts z = r->rep.at_close;
    if (!r->rep.closed) return run_fail(r, "destroy did not close the backend");
    if (r->persistent) { /* leaks of refused give-backs are expected; count them */
        r->leaked_handles = z.handles;
        r->destroy_checked = !r->bad;
        return !r->bad;
    }
    if (z.handles || z.mappings || z.reservations || z.physical_bytes)
        return run_fail(r, "after destroy the backend still held %zu handles, %zu mappings, %zu reservations, %zu bytes",
                        z.handles, z.mappings, z.reservations, z.physical_bytes);
    r->destroy_checked = !r->bad;
    return !r->bad;
}

/* Plans that broke a rule, reported together at the end of a sweep. */
static int broken_plans;

/* Runs one plan; a broken rule is printed with the plan and counted (the sweep
 * goes on, so one run shows every N that breaks, then fails). */
/* The child's side of a plan: runs it, leaves the outcome in the shared run. */
static int run_child(void *arg) {
    run *r = arg;
    bool ok = run_workload(r);
    if (!ok && r->h) (void)gpu_heap_destroy(r->h); /* best effort: the run is already a failure */
    return ok ? 0 : 1;
}

/* Runs one plan in a child process, so that a crash is a finding about its N,
 * not the end of the sweep; the run record is shared memory. A broken rule is
 * printed with the plan and counted (the sweep goes on, so one run shows every N
 * that breaks, then fails). */
static run *run_plan_on(const step *steps, int nsteps, uint64_t nth, bool persistent, int error, size_t threshold) {
    run *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(r != MAP_FAILED);
    r->steps = steps;
    r->nsteps = nsteps;
    r->nth = nth;
    r->persistent = persistent;
    r->error = error;
    r->threshold = threshold;
    r->step = "start";
    int status = run_in_child(run_child, r);
    if (WIFSIGNALED(status)) {
        r->bad = true;
        snprintf(r->why, sizeof r->why, "the process died of signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    } else if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0) != r->bad) {
        r->bad = true;
        snprintf(r->why, sizeof r->why, "the child ended with status %#x", status);
    }
    if (r->bad) {
        int op = nth && nth <= VMM_FAULT_LOG && nth <= r->rep.calls ? r->rep.log[nth - 1] : -1;
        print_error("fault at backend call %llu (%s, %s%s, threshold %s): step \"%s\": %s\n", (unsigned long long)nth,
                    op >= 0 ? vmm_op_name(op) : "none", error ? gpu_strerror(error) : "natural error",
                    persistent ? ", persistent" : "", threshold == SIZE_MAX ? "keep" : "low", r->step, r->why);
        broken_plans++;
        if (!nth) fail_msg("the fault-free run broke a rule");
    }
    return r;
}

static void run_free(run *r) { munmap(r, sizeof *r); }

/* The main workload. */
static run *run_plan(uint64_t nth, bool persistent, int error, size_t threshold) {
    return run_plan_on(WORKLOAD(workload), nth, persistent, error, threshold);
}

/* ---- the sweeps ---------------------------------------------------------------------- */

/* Totals across the sweeps, printed at the end for README. A fault counts as
 * survived only for what was checked after it fired, not for a run that merely
 * did not break a rule:
 *   checked:    the books (gpu_heap_check, statistics, the backend's holdings)
 *               and the bytes of live blocks were checked after the failing step
 *               and every later one, and the final free-trim-destroy left the
 *               backend empty;
 *   no_bytes:   the same, but no readable block was live after the fault, so
 *               no byte was compared (a fault in the last steps);
 *   at_create:  the heap could not be created; its backend was checked for
 *               leaks when it closed.
 * Persistent plans are counted apart (runs, and the calls refused in them). */
static struct {
    uint64_t runs, faults, checked, no_bytes, at_create, checked_bytes, per_op[VMM_OP_COUNT];
    uint64_t persistent_runs, persistent_faults, persistent_checked;
} totals;

/* What a single-fault run checked after its fault, or NULL; sweeps insist on it. */
static const char *unchecked(const run *r) {
    if (!r->rep.injected) return "no fault fired";
    if (r->create_refused) return NULL;
    if (r->checked_steps < 1) return "no step was checked after the fault";
    if (!r->destroy_checked) return "the backend was not checked after destroy";
    return NULL;
}

static void count(const run *r) {
    totals.runs++;
    if (!r->rep.injected) return;
    if (r->persistent) {
        totals.persistent_runs++;
        totals.persistent_faults += r->rep.injected;
        if (r->create_refused || (r->checked_steps >= 1 && r->destroy_checked)) totals.persistent_checked++;
        return;
    }
    totals.faults += r->rep.injected;
    totals.per_op[r->rep.first_op]++;
    if (unchecked(r)) return;
    if (r->create_refused)
        totals.at_create++;
    else if (r->checked_bytes)
        totals.checked++;
    else
        totals.no_bytes++;
    totals.checked_bytes += r->checked_bytes;
}

/* Every N of a fault-free run's calls, one at a time, with error (0: natural). */
static void sweep_on(const step *steps, int nsteps, const char *what, size_t threshold, int error, bool only_natural) {
    run *dry = run_plan_on(steps, nsteps, 0, false, 0, threshold);
    uint64_t calls = dry->workload_calls;
    uint8_t log[VMM_FAULT_LOG];
    memcpy(log, dry->rep.log, sizeof log);
    assert_true(calls > 20 && calls <= VMM_FAULT_LOG);
    assert_int_equal(dry->failed_steps, 0);
    run_free(dry);
    uint64_t fired = 0, checked = 0, no_bytes = 0, at_create = 0;
    for (uint64_t n = 1; n <= calls; n++) {
        if (only_natural && log[n - 1] != VMM_OP_CREATE && log[n - 1] != VMM_OP_RESERVE) continue;
        run *r = run_plan_on(steps, nsteps, n, false, error, threshold);
        /* The calls up to N are the same as in the fault-free run, so call N is
         * the op the log says, and it fired. */
        if (r->rep.injected != 1 || r->rep.first_op != log[n - 1])
            fail_msg("fault at call %llu: %llu faults fired, first on %s, expected one on %s", (unsigned long long)n,
                     (unsigned long long)r->rep.injected, vmm_op_name(r->rep.first_op), vmm_op_name(log[n - 1]));
        if (!r->bad) {
            const char *why = unchecked(r);
            if (why) fail_msg("fault at call %llu (%s): %s", (unsigned long long)n, vmm_op_name(log[n - 1]), why);
            count(r);
            at_create += r->create_refused;
            checked += !r->create_refused && r->checked_bytes;
            no_bytes += !r->create_refused && !r->checked_bytes;
        }
        fired++;
        run_free(r);
    }
    if (broken_plans) fail_msg("%d fault plans broke a rule (listed above)", broken_plans);
    /* One past the end: nothing fires, nothing fails. */
    run *r = run_plan_on(steps, nsteps, calls + 1, false, error, threshold);
    assert_int_equal(r->rep.injected, 0);
    assert_int_equal(r->failed_steps, 0);
    run_free(r);
    /* Every fault is accounted for by checks that ran after it, and most runs
     * had live bytes to compare (a workload whose checks compared nothing
     * would prove little). */
    assert_int_equal(checked + no_bytes + at_create, fired);
    assert_true(checked * 2 > fired);
    print_message("fault sweep of the %s workload (%s, threshold %s): %llu backend calls, %llu faults injected; "
                  "checked after the fault: %llu with live bytes compared, %llu with none live, %llu refused creation\n",
                  what, only_natural ? "natural errors on create/reserve" : gpu_strerror(error),
                  threshold == SIZE_MAX ? "keep" : "256 KiB", (unsigned long long)calls, (unsigned long long)fired,
                  (unsigned long long)checked, (unsigned long long)no_bytes, (unsigned long long)at_create);
}

static void sweep(size_t threshold, int error, bool only_natural) {
    sweep_on(WORKLOAD(workload), "main", threshold, error, only_natural);
}

static int reset_broken(void **state) {
    (void)state;
    broken_plans = 0;
    return 0;
}

static void test_fault_every_call(void **state) {
    (void)state;
    sweep(SIZE_MAX, GPU_ERR_BACKEND, false);
}

static void test_fault_natural_errors(void **state) {
    (void)state;
    sweep(SIZE_MAX, 0, true);
}

static void test_fault_with_release_threshold(void **state) {
    (void)state;
    sweep(256 * KiB, GPU_ERR_BACKEND, false);
}

static void test_fault_sparse(void **state) {
    (void)state;
    sweep_on(WORKLOAD(sparse_workload), "sparse", SIZE_MAX, GPU_ERR_BACKEND, false);
}

static void test_fault_stream(void **state) {
    (void)state;
    sweep_on(WORKLOAD(stream_workload), "stream", SIZE_MAX, GPU_ERR_BACKEND, false);
}

static void test_fault_paged(void **state) {
    (void)state;
    fault_page = 2 * G;
    sweep_on(WORKLOAD(paged_workload), "paged", SIZE_MAX, GPU_ERR_BACKEND, false);
    sweep_on(WORKLOAD(paged_workload), "paged", SIZE_MAX, 0, true);
    fault_page = 0;
}

static void test_fault_linger(void **state) {
    (void)state;
    fault_page = 2 * G;
    fault_late = true;
    ASSERT_OK(gpu_set_free_order(GPU_FREE_ORDER_LEGACY));
    sweep_on(WORKLOAD(linger_workload), "linger", SIZE_MAX, GPU_ERR_BACKEND, false);
    sweep_on(WORKLOAD(linger_workload), "linger", SIZE_MAX, 0, true);
    sweep_on(WORKLOAD(linger_many_workload), "linger many", SIZE_MAX, GPU_ERR_BACKEND, false);
    sweep_on(WORKLOAD(linger_many_workload), "linger many", SIZE_MAX, 0, true);
    ASSERT_OK(gpu_set_free_order(GPU_FREE_ORDER_EVENT));
    fault_late = false;
    fault_page = 0;
}

/* From call N on, every call fails: each call still returns a clean error, the
 * books stay sound, the contents stay intact, and once the backend works again
 * everything can be freed and given back without a leak. */
static void test_fault_persistent(void **state) {
    (void)state;
    run *dry = run_plan(0, false, 0, SIZE_MAX);
    uint64_t calls = dry->workload_calls;
    run_free(dry);
    size_t leaks = 0, leaky_runs = 0;
    for (uint64_t n = 1; n <= calls; n++) {
        run *r = run_plan(n, true, GPU_ERR_BACKEND, SIZE_MAX);
        assert_true(r->rep.injected >= 1);
        if (!r->bad && !r->create_refused && (r->checked_steps < 1 || !r->destroy_checked))
            fail_msg("persistent fault from call %llu: checks after it: %d steps, destroy %s", (unsigned long long)n,
                     r->checked_steps, r->destroy_checked ? "checked" : "not checked");
        if (!r->bad) count(r);
        leaks += r->leaked_handles;
        leaky_runs += r->leaked_handles != 0;
        run_free(r);
    }
    if (broken_plans) fail_msg("%d fault plans broke a rule (listed above)", broken_plans);
    print_message("persistent faults from each of %llu calls on: survived; %zu of those runs left %zu handles behind "
                  "(give-backs the backend refused)\n", (unsigned long long)calls, leaky_runs, leaks);
}

/* The largest reservation of the backends below: small enough that the host
 * grants every size the test expects (1 TiB, the host backend's own, is more
 * than a process under ThreadSanitizer can always map). */
#define MOST ((size_t)64 << 30)

/* A heap of the default size (the backend's largest reservation, MOST) on a
 * fault wrapper, with its first reservation refused when refuse is set;
 * *calls: the reservations it asked for. */
static gpu_heap_t *default_heap(bool refuse, vmm_fault_report *rep, uint64_t *calls) {
    gpu_config_t cfg = host_config(0, G, 0);
    vmm_backend *inner, *outer;
    assert_int_equal(vmm_host_open(&cfg, &inner), GPU_OK);
    assert_int_equal(vmm_fault_open(inner, rep, &outer), GPU_OK);
    outer->caps.max_reserve = MOST;
    if (refuse) vmm_fault_arm_op(outer, VMM_OP_RESERVE, 1, 0);
    gpu_heap_t *h;
    assert_int_equal(gh_heap_create_on(&cfg, outer, &h), GPU_OK);
    *calls = rep->per_op[VMM_OP_RESERVE];
    return h;
}

/* Heaps of the default size ask no reservation size twice while the heaps
 * before them hold their VA — the CUDA driver takes milliseconds to refuse
 * one: each starts at half the last one's, or below the last refusal, and a
 * heap's close lets twice its size be asked again. First in this file: no heap
 * of the default size comes before it. */
static void test_reservations_halve_from_the_last(void **state) {
    (void)state;
    const size_t most = MOST;
    vmm_fault_report r[6];
    uint64_t calls;
    gpu_heap_t *a = default_heap(false, &r[0], &calls);
    assert_int_equal(calls, 1);
    assert_int_equal(STATS(a).reserved_bytes, most);
    gpu_heap_t *b = default_heap(false, &r[1], &calls);
    assert_int_equal(calls, 1); /* half the last grant, never the first's size again */
    assert_int_equal(STATS(b).reserved_bytes, most / 2);
    gpu_heap_t *c = default_heap(true, &r[2], &calls);
    assert_int_equal(calls, 2); /* a quarter refused, then an eighth */
    assert_int_equal(STATS(c).reserved_bytes, most / 8);
    gpu_heap_t *d = default_heap(false, &r[3], &calls);
    assert_int_equal(calls, 1); /* the quarter is not asked again */
    assert_int_equal(STATS(d).reserved_bytes, most / 16);
    void *p = gpu_heap_malloc(d, 3 * G);
    assert_non_null(p);
    assert_int_equal(gpu_heap_free(d, p), GPU_OK);
    HEAP_DESTROY(d);
    HEAP_DESTROY(c);
    HEAP_DESTROY(b); /* half went: half fits again */
    gpu_heap_t *e = default_heap(false, &r[4], &calls);
    assert_int_equal(calls, 1);
    assert_int_equal(STATS(e).reserved_bytes, most / 2);
    HEAP_DESTROY(e);
    HEAP_DESTROY(a); /* the first's size went: it fits again */
    gpu_heap_t *f = default_heap(false, &r[5], &calls);
    assert_int_equal(calls, 1);
    assert_int_equal(STATS(f).reserved_bytes, most);
    gpu_config_t exact = host_config(most / 4, G, 0); /* an exact size is asked as it is, whatever came before */
    gpu_heap_t *g = HEAP_CREATE(&exact);
    assert_int_equal(STATS(g).reserved_bytes, most / 4);
    HEAP_DESTROY(g);
    HEAP_DESTROY(f);
}

/* The wrapper itself: counts, logs and fails exactly the call it was told to. */
static void test_fault_wrapper(void **state) {
    (void)state;
    gpu_config_t cfg = fault_config(SIZE_MAX);
    vmm_backend *inner, *outer;
    vmm_fault_report rep;
    assert_int_equal(vmm_host_open(&cfg, &inner), GPU_OK);
    assert_int_equal(vmm_fault_open(inner, &rep, &outer), GPU_OK);
    assert_int_equal(outer->caps.granularity, G);
    uintptr_t va;
    assert_int_equal(outer->ops->reserve(outer, 16 * G, G, &va), GPU_OK);
    vmm_fault_arm(outer, 2, false, 0);
    vmm_handle hd;
    assert_int_equal(outer->ops->create(outer, G, &hd), GPU_OK);
    assert_int_equal(outer->ops->create(outer, G, &hd), GPU_ERR_OUT_OF_MEMORY); /* the natural error */
    assert_non_null(strstr(vmm_error(), "injected"));
    assert_int_equal(outer->ops->create(outer, G, &hd), GPU_OK);
    vmm_host_counts c;
    vmm_host_counts_get(inner, &c);
    assert_int_equal(c.handles, 2); /* the refused call did nothing below */
    vmm_fault_arm(outer, 1, false, GPU_ERR_BACKEND);
    assert_int_equal(outer->ops->map(outer, va, G, hd), GPU_ERR_BACKEND);
    /* A real refusal from below passes through with its message. */
    assert_int_equal(outer->ops->map(outer, va + 1, G, hd), GPU_ERR_INVALID);
    assert_non_null(strstr(vmm_error(), "granularity"));
    assert_int_equal(rep.calls, 6);
    assert_int_equal(rep.injected, 2);
    assert_int_equal(rep.per_op[VMM_OP_CREATE], 3);
    assert_int_equal(rep.log[0], VMM_OP_RESERVE);
    assert_int_equal(rep.log[4], VMM_OP_MAP);
    assert_int_equal(vmm_fault_calls(outer), 6);
    outer->ops->close(outer);
    assert_true(rep.closed);
    assert_int_equal(rep.at_close.handles, 2);
    assert_int_equal(rep.at_close.reservations, 1);
}

/* ---- regressions: the bugs the sweeps found, each as a minimal reproduction ---------- */

typedef struct fheap {
    vmm_fault_report rep;
    vmm_backend *inner, *outer;
    gpu_heap_t *h;
    int hook_calls;     /* check_in_fence's findings */
    bool hook_failed;
    char hook_msg[512];
} fheap;

static fheap *fheap_open(void) {
    fheap *f = calloc(1, sizeof *f);
    assert_non_null(f);
    gpu_config_t cfg = fault_config(SIZE_MAX);
    assert_int_equal(vmm_host_open(&cfg, &f->inner), GPU_OK);
    assert_int_equal(vmm_fault_open(f->inner, &f->rep, &f->outer), GPU_OK);
    assert_int_equal(gh_heap_create_on(&cfg, f->outer, &f->h), GPU_OK);
    return f;
}

/* The heap's books, its statistics and the backend's holdings agree. */
static gpu_stats_t fstats(fheap *f) {
    gpu_stats_t s;
    assert_int_equal(gpu_heap_stats(f->h, &s), GPU_OK);
    return s;
}

/* (util.h's STATS is not used here: its relation backend_create >= backend_release
 * counts calls, and a refused release that is retried is two calls.) */
static void fheap_agree_at(fheap *f, const char *file, int line) {
    heap_check_at(f->h, file, line);
    gpu_stats_t s = fstats(f);
    vmm_host_counts c;
    vmm_host_counts_get(f->inner, &c);
    if (c.mappings != s.extents || c.handles != s.extents || c.physical_bytes != s.mapped_bytes)
        fail_at(file, line, "backend: %zu mappings, %zu handles, %zu bytes; heap: %llu extents, %llu bytes", c.mappings,
                c.handles, c.physical_bytes, (unsigned long long)s.extents, (unsigned long long)s.mapped_bytes);
}
#define FHEAP_AGREE(f) fheap_agree_at((f), __FILE__, __LINE__)

static void fheap_close(fheap *f) {
    vmm_fault_arm(f->outer, 0, false, 0);
    HEAP_DESTROY(f->h);
    assert_true(f->rep.closed);
    assert_int_equal(f->rep.at_close.handles, 0);
    assert_int_equal(f->rep.at_close.mappings, 0);
    assert_int_equal(f->rep.at_close.reservations, 0);
    free(f);
}

/* Found at call 28 of the sweep (unmap): a block moved by remapping unmapped its
 * old addresses ignoring errors, so a refused unmap left the old mapping behind
 * under addresses the heap then called vacant (a leaked mapping, and later maps
 * there refused). Now the move fails, the old addresses are mapped back, and the
 * block is unchanged. */
static void test_regress_remap_unmap_refused(void **state) {
    (void)state;
    fheap *f = fheap_open();
    char *c = gpu_heap_malloc_flags(f->h, G, GPU_ALLOC_OWNED);
    char *x = gpu_heap_malloc_flags(f->h, G, GPU_ALLOC_OWNED); /* after c's headroom: c cannot grow in place */
    BLOCK_VALID(f->h, c, G);
    BLOCK_VALID(f->h, x, G);
    pattern_fill(c, 0, G, 1);
    vmm_fault_arm_op(f->outer, VMM_OP_UNMAP, 1, GPU_ERR_BACKEND);
    assert_null(gpu_heap_realloc(f->h, c, 4 * G));
    ASSERT_LAST_ERROR(GPU_ERR_BACKEND);
    assert_int_equal(f->rep.injected, 1);
    assert_int_equal(gpu_heap_malloc_usable_size(f->h, c), G);
    PATTERN_CHECK(c, 0, G, 1);
    FHEAP_AGREE(f);
    char *c2 = gpu_heap_realloc(f->h, c, 4 * G); /* and it works the second time */
    BLOCK_VALID(f->h, c2, 4 * G);
    PATTERN_CHECK(c2, 0, G, 1);
    FHEAP_AGREE(f);
    ASSERT_OK(gpu_heap_free(f->h, c2));
    ASSERT_OK(gpu_heap_free(f->h, x));
    fheap_close(f);
}

/* Found at calls 30-32 of the sweep (fence, unmap, release): a shrinking realloc
 * cut the block, then returned the error of giving the cut-off extents back, so
 * the caller saw a failed realloc whose block had changed size. The shrink now
 * succeeds; memory that could not be given back stays idle for a later trim. */
static void test_regress_shrink_release_refused(void **state) {
    (void)state;
    static const int ops[] = {VMM_OP_FENCE, VMM_OP_UNMAP, VMM_OP_RELEASE};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        fheap *f = fheap_open();
        char *b = gpu_heap_malloc(f->h, 3 * G);
        BLOCK_VALID(f->h, b, 3 * G);
        char *b2 = gpu_heap_realloc(f->h, b, 6 * G); /* a second extent, over the headroom */
        assert_ptr_equal(b2, b);
        pattern_fill(b, 0, 6 * G, 2);
        vmm_fault_arm_op(f->outer, ops[i], 1, GPU_ERR_BACKEND);
        b2 = gpu_heap_realloc(f->h, b, 100);
        assert_ptr_equal(b2, b);
        ASSERT_LAST_ERROR(GPU_OK);
        assert_int_equal(f->rep.injected, 1);
        assert_int_equal(gpu_heap_malloc_usable_size(f->h, b), 3 * G);
        PATTERN_CHECK(b, 0, 3 * G, 2);
        FHEAP_AGREE(f);
        ASSERT_OK(gpu_heap_trim(f->h, 0)); /* what stayed idle goes now */
        FHEAP_AGREE(f);
        assert_int_equal(fstats(f).mapped_bytes, 3 * G);
        ASSERT_OK(gpu_heap_free(f->h, b));
        fheap_close(f);
    }
}

/* Found at calls 47-68 of the sweep (release): trim unmapped an idle extent, and
 * when the release was refused put the range back in the idle index as mapped —
 * so the next allocation there got addresses with nothing behind them (on the
 * host backend a SIGSEGV at the first write; on a GPU an illegal address). The
 * handle is now mapped back, and a later trim releases it. */
static void test_regress_trim_release_refused(void **state) {
    (void)state;
    fheap *f = fheap_open();
    char *p = gpu_heap_malloc(f->h, 2 * G);
    BLOCK_VALID(f->h, p, 2 * G);
    ASSERT_OK(gpu_heap_free(f->h, p));
    vmm_fault_arm_op(f->outer, VMM_OP_RELEASE, 1, GPU_ERR_BACKEND);
    ASSERT_ERROR(gpu_heap_trim(f->h, 0), GPU_ERR_BACKEND);
    FHEAP_AGREE(f);
    char *q = gpu_heap_malloc(f->h, 2 * G); /* the idle extent again: it must be mapped and writable */
    BLOCK_VALID(f->h, q, 2 * G);
    pattern_fill(q, 0, 2 * G, 3);
    PATTERN_CHECK(q, 0, 2 * G, 3);
    ASSERT_OK(gpu_heap_free(f->h, q));
    ASSERT_OK(gpu_heap_trim(f->h, 0));
    FHEAP_AGREE(f);
    assert_int_equal(fstats(f).mapped_bytes, 0);
    fheap_close(f);
}

/* Found by the stress test under ASan (a worker's heap check): a drain takes its
 * batch off the quarantine list and fences with the lock dropped, and a check
 * made meanwhile by another thread counted the batch as lost ("quarantine: list
 * ... walk ..."). The checker now counts batches being fenced. Made deterministic
 * here: the check runs inside the fence. */
static void check_in_fence(int op, void *arg) {
    fheap *f = arg;
    if (op != VMM_OP_FENCE) return;
    char msg[512] = "";
    if (gpu_heap_check(f->h, msg, sizeof msg) != GPU_OK) {
        snprintf(f->hook_msg, sizeof f->hook_msg, "%s", msg);
        f->hook_failed = true;
    }
    f->hook_calls++;
}

static void test_regress_check_during_drain(void **state) {
    (void)state;
    fheap *f = fheap_open();
    char *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = gpu_heap_malloc(f->h, 10000);
        BLOCK_VALID(f->h, p[i], 10000);
    }
    for (int i = 0; i < 8; i++) ASSERT_OK(gpu_heap_free(f->h, p[i]));
    vmm_fault_hook(f->outer, check_in_fence, f);
    ASSERT_OK(gpu_heap_trim(f->h, SIZE_MAX)); /* drains: one fence, with 8 blocks off the list */
    vmm_fault_hook(f->outer, NULL, NULL);
    assert_true(f->hook_calls >= 1);
    if (f->hook_failed) fail_msg("gpu_heap_check during the drain's fence: %s", f->hook_msg);
    FHEAP_AGREE(f);
    fheap_close(f);
}

static int print_totals(void **state) {
    (void)state;
    print_message("fault injection totals: %llu runs, %llu single faults injected (create %llu, map %llu, "
                  "set_access %llu, unmap %llu, release %llu, fence %llu, memset %llu, copy %llu, reserve %llu); "
                  "checked after the fault: %llu with live bytes compared (%llu bytes), %llu with no block live, "
                  "%llu refused heap creation (leaks checked); %llu persistent runs refusing %llu calls, %llu checked\n",
                  (unsigned long long)totals.runs, (unsigned long long)totals.faults,
                  (unsigned long long)totals.per_op[VMM_OP_CREATE],
                  (unsigned long long)totals.per_op[VMM_OP_MAP], (unsigned long long)totals.per_op[VMM_OP_SET_ACCESS],
                  (unsigned long long)totals.per_op[VMM_OP_UNMAP], (unsigned long long)totals.per_op[VMM_OP_RELEASE],
                  (unsigned long long)totals.per_op[VMM_OP_FENCE], (unsigned long long)totals.per_op[VMM_OP_MEMSET],
                  (unsigned long long)totals.per_op[VMM_OP_COPY], (unsigned long long)totals.per_op[VMM_OP_RESERVE],
                  (unsigned long long)totals.checked, (unsigned long long)totals.checked_bytes,
                  (unsigned long long)totals.no_bytes, (unsigned long long)totals.at_create,
                  (unsigned long long)totals.persistent_runs, (unsigned long long)totals.persistent_faults,
                  (unsigned long long)totals.persistent_checked);
    return 0;
}

int main(int argc, char **argv) {
    test_thread_cache = 0; /* each step's backend calls are the heap core's; tcache faults are test_tcache.c's */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reservations_halve_from_the_last),
        cmocka_unit_test(test_fault_wrapper),
        cmocka_unit_test(test_regress_remap_unmap_refused),
        cmocka_unit_test(test_regress_shrink_release_refused),
        cmocka_unit_test(test_regress_trim_release_refused),
        cmocka_unit_test(test_regress_check_during_drain),
        cmocka_unit_test_setup(test_fault_every_call, reset_broken),
        cmocka_unit_test_setup(test_fault_natural_errors, reset_broken),
        cmocka_unit_test_setup(test_fault_with_release_threshold, reset_broken),
        cmocka_unit_test_setup(test_fault_persistent, reset_broken),
        cmocka_unit_test_setup(test_fault_stream, reset_broken),
        cmocka_unit_test_setup(test_fault_paged, reset_broken),
        cmocka_unit_test_setup(test_fault_linger, reset_broken),
    };
    /* The sparse sweep runs on its own ("test_fault sparse", meson's fault-sparse):
     * it found sparse.c's decommit and release bugs, fixed in a8138e1. */
    const struct CMUnitTest sparse[] = {
        cmocka_unit_test_setup(test_fault_sparse, reset_broken),
    };
    if (argc > 1 && !strcmp(argv[1], "sparse")) return cmocka_run_group_tests(sparse, NULL, print_totals);
    return cmocka_run_group_tests(tests, NULL, print_totals);
}
