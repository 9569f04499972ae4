/*
 * fit.c — which idle memory a request takes.
 *
 * A hit costs a few bit scans and no driver call. There are three searches, one
 * per kind of request, and each cuts its piece out with block_carve, the rest
 * staying idle:
 *   - fit_take_any: any idle block that holds the request at its alignment (the
 *     index's good fit): blocks below two granules, and larger ones past the
 *     physical budget;
 *   - fit_take_whole: blocks of two granules and more, only where they fill whole
 *     extents (below: why);
 *   - fit_take_owned: GPU_ALLOC_OWNED blocks, a run of whole extents of their own.
 */
#include "core/internal.h"

/* Makes [at, at+size) of the idle block b LIVE; what is left before and after
 * it stays idle (its other neighbours are not idle: no merge). */
static block *claim_idle(gpu_heap_t *h, block *b, uintptr_t at, size_t size) {
    tlsf_remove(&h->idle, b);
    b = block_carve(h, b, at, size, &h->idle);
    heap_make_live_locked(h, b);
    return b;
}

/* An idle block of need bytes at the given alignment, made LIVE; NULL on a miss. */
block *fit_take_any(gpu_heap_t *h, size_t need, size_t align) {
    size_t want = align > GH_QUANTUM ? need + align - GH_QUANTUM : need;
    block *b = tlsf_find(&h->idle, want);
    return b ? claim_idle(h, b, gh_align_up(b->start, align), need) : NULL;
}

/* A paged heap's search (paged.c): the smallest of the first FIT_BEST_SCAN idle
 * blocks from the request's class up that hold it at its alignment — what is
 * left of a cut is idle memory a later block of another size must fit, and a
 * good fit's pick from a larger class left more pages for moving. */
#define FIT_BEST_SCAN 16

typedef struct best_search {
    size_t need, align;
    unsigned seen;
    block *b;
} best_search;

static bool best_one(block *b, void *arg) {
    best_search *f = arg;
    if (gh_align_up(b->start, f->align) + f->need <= block_end(b) && (!f->b || b->size < f->b->size)) f->b = b;
    return ++f->seen < FIT_BEST_SCAN && !(f->b && f->b->size == f->need);
}

block *fit_take_best(gpu_heap_t *h, size_t need, size_t align) {
    best_search f = {.need = need, .align = align};
    tlsf_walk_from(&h->idle, need, best_one, &f);
    return f.b ? claim_idle(h, f.b, gh_align_up(f.b->start, align), need) : NULL;
}

/* Blocks of two granules and more take idle memory only where they fill whole
 * extents, to within a granule or an eighth of their size: a block cut from the
 * middle of a larger idle extent would pin the rest of it, since an extent goes
 * back to the driver only whole. Candidates are looked for from the size's class
 * upward, a bounded number of idle blocks. A miss maps an extent of the block's
 * own while the heap is within its physical budget; past it, the allocation path
 * cuts the block from any idle block, or trades idle extents for new memory. */
#define FIT_SCAN 64        /* idle blocks looked at */
#define FIT_STEPS 1024     /* and extents stepped over, in all */

typedef struct fit_search {
    gpu_heap_t *h;
    size_t need, slack, align;
    unsigned align_log2; /* what a block remembers of align (fit_one) */
    unsigned seen, steps;
    block *b;
    uintptr_t at;
} fit_search;

/* How far past need a run of whole extents may reach: a granule or an eighth. */
static size_t fit_slack(const gpu_heap_t *h, size_t need) { return need / 8 > h->gran ? need / 8 : h->gran; }

/* A whole-extent search for need bytes at align (a power of two). */
static fit_search fit_search_for(gpu_heap_t *h, size_t need, size_t align) {
    return (fit_search){.h = h, .need = need, .slack = fit_slack(h, need), .align = align,
                        .align_log2 = (unsigned)__builtin_ctzll(align)};
}

/* The next extent boundary after va inside the idle block ending at end, or 0
 * where the extent there runs past the block (it is not wholly idle). */
static uintptr_t fit_step(fit_search *f, uintptr_t va, uintptr_t end) {
    f->steps++;
    extent *e = extmap_whole_at(&f->h->extents, va, end);
    return e ? e->va + e->size : 0;
}

/* What the slide found in one block. */
typedef enum window { WINDOW_NONE, WINDOW_FOUND, WINDOW_CUT } window;

/* Slides a window of whole extents [s, x) along b: x is the first boundary at
 * least need past s, so each extent is stepped over at most twice. NONE: b holds
 * no window, to the end of the block (a miss the block can remember); FOUND: one
 * starts at f->at; CUT: the search ran out of steps in b. */
static window fit_window(fit_search *f, const block *b) {
    uintptr_t end = block_end(b);
    uintptr_t s = extmap_boundary(&f->h->extents, b->start), x = s;
    while (s < end && end - s >= f->need) {
        if (f->steps > FIT_STEPS) return WINDOW_CUT;
        while (x - s < f->need) {
            x = fit_step(f, x, end);
            if (!x) return WINDOW_NONE; /* the block ends inside an extent: no later start fits */
        }
        if (x - s - f->need <= f->slack && s % f->align == 0) {
            f->at = s;
            return WINDOW_FOUND;
        }
        s = fit_step(f, s, end);
        if (!s) return WINDOW_NONE;
    }
    return WINDOW_NONE;
}

/* One idle block of the walk. A block misses the same way while its range (it
 * has stayed in the index) and the extent map are what they were: the retry
 * after a release, and the next request of the same size, step over it at once,
 * counting the steps the slide took, so the walk and its bounds come out as
 * they would (the GPT trace's searches: 4 in 5 miss, 15 blocks looked at each). */
static bool fit_one(block *b, void *arg) {
    fit_search *f = arg;
    if (++f->seen > FIT_SCAN || f->steps > FIT_STEPS) return false;
    if (b->size < f->need) return true;
    if (b->fit_need == f->need && b->fit_align_log2 == f->align_log2 && b->fit_gen == f->h->extents.gen) {
        f->steps += b->fit_steps;
        return true;
    }
    unsigned before = f->steps;
    switch (fit_window(f, b)) {
    case WINDOW_FOUND: f->b = b; return false;
    case WINDOW_CUT: return false;
    case WINDOW_NONE: break;
    }
    b->fit_need = f->need;
    b->fit_align_log2 = (uint8_t)f->align_log2;
    b->fit_gen = f->h->extents.gen;
    b->fit_steps = f->steps - before;
    return true;
}

bool fit_memo_holds(gpu_heap_t *h, const block *b) {
    if (!b->fit_need || b->fit_gen != h->extents.gen) return true; /* none, or forgotten at the next search */
    fit_search f = fit_search_for(h, b->fit_need, (size_t)1 << b->fit_align_log2);
    return b->size >= f.need && fit_window(&f, b) == WINDOW_NONE && f.steps == b->fit_steps;
}

block *fit_take_whole(gpu_heap_t *h, size_t need, size_t align) {
    gh_assert(gh_is_pow2(align), "a whole-extent fit's alignment is a power of two");
    fit_search f = fit_search_for(h, need, align);
    tlsf_walk_from(&h->idle, need, fit_one, &f);
    return f.b ? claim_idle(h, f.b, f.at, need) : NULL;
}

/* An idle run of whole extents of at least need bytes, starting at an extent
 * boundary aligned to align, and no longer than need by more than an eighth or a
 * granule (as fit_take_whole allows: a 1-byte block once took a whole idle
 * 32 MiB extent); NULL on a miss. The block owns its extents. */
block *fit_take_owned(gpu_heap_t *h, size_t need, size_t align) {
    block *b = tlsf_find(&h->idle, need + align);
    if (!b) b = tlsf_find(&h->idle, need);
    if (!b) return NULL;
    uintptr_t end = block_end(b);
    extent *e = extmap_first_whole(&h->extents, b->start, end);
    while (e && e->va % align) e = extmap_next_whole(&h->extents, e, end);
    if (!e) return NULL;
    uintptr_t s = e->va; /* the run starts here and ends with e */
    while (e && e->va + e->size - s < need) e = extmap_next_whole(&h->extents, e, end);
    if (!e || e->va + e->size - s - need > fit_slack(h, need)) return NULL;
    b = claim_idle(h, b, s, e->va + e->size - s);
    b->owned = 1;
    return b;
}
