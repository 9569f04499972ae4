/*
 * test_stress.c — many operations, checked byte by byte, on the host backend.
 *
 * Two runs, both deterministic for a given seed (GPUHEAP_STRESS_SEED, 2026) and size:
 *  - threads: GPUHEAP_STRESS_THREADS threads (4) share one heap, each doing
 *    GPUHEAP_STRESS_ITERS random operations (50 000; and again, half as many, in
 *    legacy free order): malloc, calloc, aligned
 *    and owned allocations, realloc, free, and handing blocks to other threads
 *    through an exchange so that a block is often freed by a thread that did not
 *    allocate it. Every block carries a pattern that is checked before it is
 *    freed or resized. (Thread interleaving makes addresses differ run to run;
 *    each thread's choices do not.)
 *  - model: one thread, 4 x GPUHEAP_STRESS_ITERS operations (200 000) with sizes
 *    log-uniform from 1 B to 64 MiB, occasional trims and protection of owned
 *    blocks, mirrored in a plain array of the live blocks. Every 1000 operations
 *    the heap checker runs, every live block's pattern is checked, the blocks are
 *    shown not to overlap, and live_bytes / live_blocks must equal the model's
 *    (GPUHEAP_STRESS_CHECK_EVERY=1 checks after every operation instead).
 *
 * Worker threads never call cmocka (its failures jump, which only the main
 * thread may do): they record the first problem and stop; the main thread fails.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "util.h"

/* ---- failures from worker threads ------------------------------------------ */

static atomic_int worker_failed;
static char worker_message[1024];
static pthread_mutex_t worker_message_lock = PTHREAD_MUTEX_INITIALIZER;

/* Records the first failure of any worker; later ones are dropped. */
static void worker_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void worker_fail(const char *fmt, ...) {
    pthread_mutex_lock(&worker_message_lock);
    if (!atomic_load(&worker_failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(worker_message, sizeof worker_message, fmt, ap);
        va_end(ap);
        atomic_store(&worker_failed, 1);
    }
    pthread_mutex_unlock(&worker_message_lock);
}

/* The first zero-check failure in the patterned parts of a size-byte block. */
static size_t block_zero_mismatch(const void *p, size_t size) {
    span s[2];
    int n = edge_spans(size, size, s);
    for (int i = 0; i < n; i++) {
        size_t bad = bytes_mismatch(p, s[i].off, s[i].len, 0);
        if (bad != SIZE_MAX) return bad;
    }
    return SIZE_MAX;
}

/* ---- (a) threads sharing one heap ------------------------------------------- */

typedef struct tblock {
    char *p;
    size_t size;
    uint64_t seed;
} tblock;

enum { SLOTS_PER_THREAD = 48, EXCHANGE_SLOTS = 32 };

typedef struct shared_heap {
    gpu_heap_t *h;
    long iters;
    long seed;
    pthread_mutex_t lock; /* guards exchange */
    tblock exchange[EXCHANGE_SLOTS];
    atomic_long handed_over;
} shared_heap;

typedef struct worker {
    shared_heap *sh;
    int id;
    pthread_t thread;
} worker;

/* Checks a block's pattern; false (and a recorded failure) when it is wrong. */
static int tblock_ok(const tblock *b, int id, const char *when) {
    size_t bad = block_mismatch(b->p, b->size, b->size, b->seed);
    if (bad == SIZE_MAX) return 1;
    worker_fail("thread %d, %s: block %p (%zu bytes, seed %llx) wrong at offset %zu", id, when, (void *)b->p,
                b->size, (unsigned long long)b->seed, bad);
    return 0;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    shared_heap *sh = w->sh;
    gpu_heap_t *h = sh->h;
    rng r = rng_seeded(((uint64_t)sh->seed << 16) + (uint64_t)w->id);
    tblock slot[SLOTS_PER_THREAD];
    memset(slot, 0, sizeof slot);
    uint64_t serial = 0;

    for (long it = 0; it < sh->iters && !atomic_load(&worker_failed); it++) {
        tblock *b = &slot[rng_below(&r, SLOTS_PER_THREAD)];
        unsigned op = (unsigned)rng_below(&r, 100);
        if (!b->p) {
            size_t size = rng_log_size(&r, 1, op < 4 ? 16 * MiB : 256 * KiB);
            int zeroed = 0;
            if (op < 60) {
                b->p = gpu_heap_malloc(h, size);
            } else if (op < 75) {
                b->p = gpu_heap_calloc(h, 1, size);
                zeroed = 1;
            } else if (op < 88) {
                size_t align = (size_t)1 << (8 + rng_below(&r, 14));
                b->p = gpu_heap_malloc_aligned(h, size, align);
                if (b->p && (uintptr_t)b->p % align)
                    worker_fail("thread %d: aligned(%zu, %zu) = %p", w->id, size, align, (void *)b->p);
            } else {
                b->p = gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED | (op & 1 ? GPU_ALLOC_ZERO : 0));
                zeroed = op & 1;
            }
            if (!b->p) {
                worker_fail("thread %d: allocation of %zu failed: %d (%s)", w->id, size, gpu_last_error(),
                            gpu_strerror(gpu_last_error()));
                break;
            }
            size_t u = gpu_heap_malloc_usable_size(h, b->p);
            if ((uintptr_t)b->p % GPU_MIN_ALIGNMENT || u < size || u % GPU_MIN_ALIGNMENT)
                worker_fail("thread %d: block %p for %zu bytes, usable %zu", w->id, (void *)b->p, size, u);
            if (zeroed) {
                size_t bad = block_zero_mismatch(b->p, size);
                if (bad != SIZE_MAX)
                    worker_fail("thread %d: zeroed block %p (%zu) not zero at %zu", w->id, (void *)b->p, size, bad);
            }
            b->size = size;
            b->seed = ((uint64_t)w->id << 48) | ++serial;
            block_fill(b->p, b->size, b->seed);
        } else {
            if (!tblock_ok(b, w->id, "before use")) break;
            if (op < 40) {
                int rc = gpu_heap_free(h, b->p);
                if (rc != GPU_OK) worker_fail("thread %d: free(%p): %d (%s)", w->id, (void *)b->p, rc, gpu_strerror(rc));
                b->p = NULL;
            } else if (op < 65) {
                size_t size = rng_log_size(&r, 1, op < 43 ? 16 * MiB : 256 * KiB);
                char *q = gpu_heap_realloc(h, b->p, size);
                if (!q) {
                    worker_fail("thread %d: realloc(%p, %zu) failed: %d (%s)", w->id, (void *)b->p, size,
                                gpu_last_error(), gpu_strerror(gpu_last_error()));
                    break;
                }
                size_t bad = block_mismatch(q, b->size, size, b->seed);
                if (bad != SIZE_MAX)
                    worker_fail("thread %d: realloc %p (%zu) -> %p (%zu) lost the byte at %zu", w->id, (void *)b->p,
                                b->size, (void *)q, size, bad);
                b->p = q;
                b->size = size;
                block_fill(b->p, b->size, b->seed);
            } else if (op < 85) {
                /* Hand the block over; free whatever another thread left there. */
                tblock got;
                pthread_mutex_lock(&sh->lock);
                size_t x = rng_below(&r, EXCHANGE_SLOTS);
                got = sh->exchange[x];
                sh->exchange[x] = *b;
                pthread_mutex_unlock(&sh->lock);
                b->p = NULL;
                if (got.p) {
                    if (!tblock_ok(&got, w->id, "taken from the exchange")) break;
                    int rc = gpu_free(got.p); /* the plain form finds the heap */
                    if (rc != GPU_OK)
                        worker_fail("thread %d: free of handed-over %p: %d (%s)", w->id, (void *)got.p, rc, gpu_strerror(rc));
                    atomic_fetch_add(&sh->handed_over, 1);
                }
            }
        }
        if (it % 1000 == 999) {
            gpu_stats_t s;
            int rc = gpu_heap_stats(h, &s);
            const char *broken = rc == GPU_OK ? stats_broken(&s) : "gpu_heap_stats failed";
            if (broken) worker_fail("thread %d: stats: %s", w->id, broken);
            if (w->id == 0 && it % 4000 == 3999) {
                char msg[512] = "";
                rc = gpu_heap_check(h, msg, sizeof msg);
                if (rc != GPU_OK) worker_fail("thread %d: heap check: %s", w->id, msg);
            }
            if (w->id == 1 && it % 10000 == 9999) {
                rc = gpu_heap_trim(h, it % 20000 == 9999 ? 0 : 8 * MiB);
                if (rc != GPU_OK) worker_fail("thread %d: trim: %d (%s)", w->id, rc, gpu_strerror(rc));
            }
        }
    }
    for (int i = 0; i < SLOTS_PER_THREAD; i++) {
        if (!slot[i].p) continue;
        if (!atomic_load(&worker_failed)) tblock_ok(&slot[i], w->id, "at the end");
        int rc = gpu_heap_free(h, slot[i].p);
        if (rc != GPU_OK) worker_fail("thread %d: final free: %d (%s)", w->id, rc, gpu_strerror(rc));
    }
    return NULL;
}

/* The threads' run, in the free order given (legacy: freed blocks handed out at
 * once, the "legacy stream" made to wait; gpu_set_free_order). */
static void run_threads(gpu_free_order_t order) {
    long nthreads = env_long("GPUHEAP_STRESS_THREADS", 4);
    long iters = env_long("GPUHEAP_STRESS_ITERS", 50000);
    if (order == GPU_FREE_ORDER_LEGACY) iters = iters / 2 + 1; /* the same paths; half the time */
    print_message("threads: %ld threads x %ld operations, %s free order\n", nthreads, iters,
                  order == GPU_FREE_ORDER_LEGACY ? "legacy" : "event");
    ASSERT_OK(gpu_set_free_order(order));
    shared_heap sh;
    memset(&sh, 0, sizeof sh);
    sh.h = HEAP_NEW(0);
    sh.iters = iters;
    sh.seed = env_long("GPUHEAP_STRESS_SEED", 2026);
    pthread_mutex_init(&sh.lock, NULL);
    atomic_store(&worker_failed, 0);
    worker *w = calloc((size_t)nthreads, sizeof *w);
    assert_non_null(w);
    for (long i = 0; i < nthreads; i++) {
        w[i].sh = &sh;
        w[i].id = (int)i;
        assert_int_equal(pthread_create(&w[i].thread, NULL, worker_main, &w[i]), 0);
    }
    for (long i = 0; i < nthreads; i++) assert_int_equal(pthread_join(w[i].thread, NULL), 0);
    free(w);
    if (atomic_load(&worker_failed)) fail_msg("%s", worker_message);

    for (int x = 0; x < EXCHANGE_SLOTS; x++) {
        if (!sh.exchange[x].p) continue;
        BLOCK_CHECK(sh.exchange[x].p, sh.exchange[x].size, sh.exchange[x].seed);
        ASSERT_OK(gpu_heap_free(sh.h, sh.exchange[x].p));
    }
    print_message("blocks freed by another thread: %ld\n", atomic_load(&sh.handed_over));
    assert_true(nthreads < 2 || atomic_load(&sh.handed_over) > 0);
    CHECK_HEAP(sh.h);
    gpu_stats_t s = STATS(sh.h);
    assert_int_equal(s.live_blocks, 0);
    assert_int_equal(s.live_bytes, 0);
    if (order == GPU_FREE_ORDER_LEGACY) assert_true(s.order_releases > 0);
    ASSERT_OK(gpu_set_free_order(GPU_FREE_ORDER_EVENT)); /* fences what legacy order released */
    ASSERT_OK(gpu_heap_trim(sh.h, 0));
    s = STATS(sh.h);
    assert_int_equal(s.mapped_bytes, 0);
    assert_int_equal(s.extents, 0);
    assert_int_equal(s.quarantine_blocks, 0);
    CHECK_HEAP(sh.h);
    HEAP_DESTROY(sh.h);
    pthread_mutex_destroy(&sh.lock);
}

static void test_threads(void **state) {
    (void)state;
    run_threads(GPU_FREE_ORDER_EVENT);
}

static void test_threads_legacy_order(void **state) {
    (void)state;
    run_threads(GPU_FREE_ORDER_LEGACY);
}

/* ---- (b) one thread against a model ----------------------------------------- */

typedef struct mblock {
    char *p;
    size_t size;   /* asked for; the pattern covers its patterned parts */
    size_t usable;
    uint64_t seed;
    int owned;
    int prot;      /* gpu_prot_t now set on the block */
    int shrunk;    /* realloc made it smaller at least once */
} mblock;

enum { MODEL_SLOTS = 256 };

typedef struct model {
    gpu_heap_t *h;
    mblock b[MODEL_SLOTS];
    size_t live_blocks, live_bytes;
    uint64_t serial;
    long op; /* the operation number, for messages */
} model;

static int by_address(const void *x, const void *y) {
    const mblock *a = *(const mblock *const *)x, *b = *(const mblock *const *)y;
    return a->p < b->p ? -1 : a->p > b->p;
}

/* Every live block intact, no two overlapping, the heap's counts the model's. */
static void model_verify(model *m) {
    mblock *sorted[MODEL_SLOTS];
    size_t n = 0;
    for (int i = 0; i < MODEL_SLOTS; i++) {
        mblock *b = &m->b[i];
        if (!b->p) continue;
        sorted[n++] = b;
        size_t u = gpu_heap_malloc_usable_size(m->h, b->p);
        if (u != b->usable) fail_msg("op %ld: block %p usable %zu, model says %zu", m->op, (void *)b->p, u, b->usable);
        if (b->prot == GPU_PROT_NONE) continue;
        size_t bad = block_mismatch(b->p, b->size, b->size, b->seed);
        if (bad != SIZE_MAX)
            fail_msg("op %ld: block %p (%zu bytes, seed %llx) wrong at offset %zu", m->op, (void *)b->p, b->size,
                     (unsigned long long)b->seed, bad);
    }
    qsort(sorted, n, sizeof sorted[0], by_address);
    for (size_t i = 1; i < n; i++)
        if (sorted[i - 1]->p + sorted[i - 1]->usable > sorted[i]->p)
            fail_msg("op %ld: blocks overlap: %p+%zu and %p", m->op, (void *)sorted[i - 1]->p, sorted[i - 1]->usable,
                     (void *)sorted[i]->p);
    char msg[512] = "";
    int rc = gpu_heap_check(m->h, msg, sizeof msg);
    if (rc != GPU_OK) fail_msg("op %ld: gpu_heap_check: %d (%s): %s", m->op, rc, gpu_strerror(rc), msg);
    gpu_stats_t s = STATS(m->h);
    if (s.live_bytes != m->live_bytes || s.live_blocks != m->live_blocks)
        fail_msg("op %ld: stats say %llu bytes in %llu blocks, model %zu in %zu", m->op,
                 (unsigned long long)s.live_bytes, (unsigned long long)s.live_blocks, m->live_bytes, m->live_blocks);
}

static void model_add(model *m, mblock *b, char *p, size_t size, int owned, int zeroed) {
    size_t u = BLOCK_VALID(m->h, p, size);
    if (zeroed) BLOCK_ZERO_CHECK(p, size);
    *b = (mblock){p, size, u, ++m->serial, owned, GPU_PROT_READ_WRITE, 0};
    block_fill(p, size, b->seed);
    m->live_blocks++;
    m->live_bytes += u;
}

static void model_remove(model *m, mblock *b) {
    m->live_blocks--;
    m->live_bytes -= b->usable;
    b->p = NULL;
}

static void model_alloc(model *m, rng *r, mblock *b) {
    gpu_heap_t *h = m->h;
    unsigned kind = (unsigned)rng_below(r, 100);
    size_t size = rng_log_size(r, 1, 64 * MiB);
    if (kind < 50) {
        model_add(m, b, gpu_heap_malloc(h, size), size, 0, 0);
    } else if (kind < 60) {
        size = rng_log_size(r, 1, 4 * MiB); /* the heap zeroes every byte: keep it cheap */
        model_add(m, b, gpu_heap_calloc(h, 1, size), size, 0, 1);
    } else if (kind < 75) {
        size_t align = (size_t)1 << (8 + rng_below(r, 18)); /* 256 B .. 32 MiB */
        char *p = gpu_heap_malloc_aligned(h, size, align);
        if (p && (uintptr_t)p % align) fail_msg("op %ld: aligned(%zu, %zu) = %p", m->op, size, align, (void *)p);
        model_add(m, b, p, size, 0, 0);
    } else if (kind < 92) {
        char *p = gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED);
        model_add(m, b, p, size, 1, 0);
    } else {
        size = rng_log_size(r, 1, 4 * MiB);
        model_add(m, b, gpu_heap_malloc_flags(h, size, GPU_ALLOC_ZERO | (kind & 1 ? GPU_ALLOC_OWNED : 0)), size,
                  kind & 1, 1);
    }
}

static void model_free(model *m, mblock *b) {
    ASSERT_OK(gpu_heap_free(m->h, b->p));
    char *p = b->p;
    model_remove(m, b);
    if (m->op % 97 == 0) ASSERT_ERROR(gpu_heap_free(m->h, p), GPU_ERR_NOT_LIVE); /* now and then a double free */
}

static void model_realloc(model *m, rng *r, mblock *b) {
    if (b->prot != GPU_PROT_READ_WRITE) {
        ASSERT_OK(gpu_heap_protect(m->h, b->p, b->usable, GPU_PROT_READ_WRITE));
        b->prot = GPU_PROT_READ_WRITE;
    }
    if (rng_below(r, 50) == 0) { /* realloc(p, 0) frees */
        assert_null(gpu_heap_realloc(m->h, b->p, 0));
        ASSERT_LAST_ERROR(GPU_OK);
        model_remove(m, b);
        return;
    }
    size_t size = rng_log_size(r, 1, 64 * MiB);
    char *q = gpu_heap_realloc(m->h, b->p, size);
    size_t u = BLOCK_VALID(m->h, q, size);
    BLOCK_CHECK_CLIP(q, b->size, size, b->seed);
    m->live_bytes += u - b->usable;
    if (b->owned && u % STATS(m->h).granularity) fail_msg("op %ld: owned block resized to usable %zu", m->op, u);
    if (u < b->usable) b->shrunk = 1;
    b->p = q;
    b->size = size;
    b->usable = u;
    block_fill(q, size, b->seed);
}

/* Owned blocks that realloc shrank and that then could not be protected: the
 * header does not say whether a shrunk owned block still owns whole extents. */
static long shrunk_unprotectable;

static void model_protect(model *m, rng *r, mblock *b) {
    int prot = rng_below(r, 2) ? GPU_PROT_READ : GPU_PROT_NONE;
    int rc = gpu_heap_protect(m->h, b->p, b->usable, prot);
    if (rc == GPU_ERR_NOT_WHOLE_EXTENT && b->shrunk) {
        shrunk_unprotectable++;
        return;
    }
    if (rc != GPU_OK)
        fail_msg("op %ld: protect(%p, %zu, %d) of an owned block%s: %d (%s)", m->op, (void *)b->p, b->usable, prot,
                 b->shrunk ? " (shrunk by realloc)" : "", rc, gpu_strerror(rc));
    b->prot = prot;
}

static void test_model(void **state) {
    (void)state;
    long ops = 4 * env_long("GPUHEAP_STRESS_ITERS", 50000);
    long every = env_long("GPUHEAP_STRESS_CHECK_EVERY", 1000); /* 1 finds the first broken operation */
    print_message("model: %ld operations, checked every %ld\n", ops, every);
    gpu_config_t cfg = host_config(256 * GiB, 64 * KiB, 0);
    model *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->h = HEAP_CREATE(&cfg);
    rng r = rng_seeded((uint64_t)env_long("GPUHEAP_STRESS_SEED", 2026));
    long trims = 0, protects = 0, reallocs = 0;
    for (m->op = 0; m->op < ops; m->op++) {
        mblock *b = &m->b[rng_below(&r, MODEL_SLOTS)];
        unsigned op = (unsigned)rng_below(&r, 1000);
        if (op == 0) {
            size_t keep = rng_below(&r, 3) == 0 ? 0 : rng_below(&r, 2) ? 16 * MiB : SIZE_MAX;
            gpu_stats_t before = STATS(m->h);
            ASSERT_OK(gpu_heap_trim(m->h, keep));
            gpu_stats_t s = STATS(m->h);
            /* Idle bytes inside extents that also hold live blocks cannot be given
             * back, so idle may stay above keep; the mapping never grows. */
            assert_int_equal(s.quarantine_blocks, 0);
            assert_true(s.mapped_bytes <= before.mapped_bytes);
            if (keep == SIZE_MAX) assert_int_equal(s.mapped_bytes, before.mapped_bytes);
            trims++;
        } else if (!b->p) {
            model_alloc(m, &r, b);
        } else {
            if (b->prot != GPU_PROT_NONE) BLOCK_CHECK(b->p, b->size, b->seed);
            if (op < 420) {
                model_free(m, b); /* protected or not: free restores access */
            } else if (op < 700) {
                model_realloc(m, &r, b);
                reallocs++;
            } else if (op < 760 && b->owned) {
                model_protect(m, &r, b);
                protects++;
            } else if (b->prot == GPU_PROT_READ_WRITE) {
                block_fill(b->p, b->size, b->seed); /* rewrite in place */
            }
        }
        if (m->op % every == every - 1) model_verify(m);
    }
    model_verify(m);
    print_message("model: %zu blocks live at the end; %ld reallocs, %ld protects (%ld refused after a shrink), "
                  "%ld trims\n",
                  m->live_blocks, reallocs, protects, shrunk_unprotectable, trims);
    for (int i = 0; i < MODEL_SLOTS; i++)
        if (m->b[i].p) model_free(m, &m->b[i]);
    CHECK_HEAP(m->h);
    gpu_stats_t s = STATS(m->h);
    assert_int_equal(s.live_blocks, 0);
    assert_int_equal(s.live_bytes, 0);
    ASSERT_OK(gpu_heap_trim(m->h, 0));
    s = STATS(m->h);
    assert_int_equal(s.mapped_bytes, 0);
    assert_int_equal(s.extents, 0);
    CHECK_HEAP(m->h);
    HEAP_DESTROY(m->h);
    free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_threads_legacy_order),
        cmocka_unit_test(test_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
