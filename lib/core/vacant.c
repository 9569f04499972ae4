/*
 * vacant.c — new memory: a range carved out of vacant VA and new extents
 * mapped over it.
 *
 * A block of at least one granule gets an extent of its own, sized to it (the
 * driver charges per mapping, not per byte: DESIGN.md §2), with unmapped
 * headroom left after it so that realloc can usually grow it in place; smaller
 * blocks share extents that alloc.c sizes. A range of 512 MiB and more is
 * backed in a few chunks instead, each an extent, once the heap has freed a
 * large block (back_chunk says why). The range is BUSY while the lock is
 * dropped for the driver calls, so no other thread touches it; a failed mapping
 * gives back what was mapped of it and returns it to the vacant index.
 *
 * Past the physical budget a large request may instead extend an idle block
 * that ends where mapped memory ends: the rest is mapped right after it, so
 * only the shortfall is new memory. Such a tail is typically what is left of
 * a large extent after smaller blocks were cut from its front; it cannot be
 * given back while they live, and without this it sat idle while the request
 * was mapped whole elsewhere.
 */
#include "core/internal.h"

/* Carves [start, start+size) out of vacant VA at the given alignment, with
 * headroom kept free after it when there is room. The range comes back BUSY. */
int heap_carve_vacant_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out) {
    size_t unit = heap_grid(h);
    size_t slack = align > unit ? align - unit : unit - h->gran, want = size + slack;
    if (want < size) return gh_note(GPU_ERR_INVALID, "size %zu overflows with alignment %zu", size, align);
    block *v = NULL;
    if (headroom && want + headroom > want) v = tlsf_find(&h->vacant, want + headroom);
    if (!v) {
        headroom = 0;
        v = tlsf_find(&h->vacant, want);
    }
    if (!v) return gh_note(GPU_ERR_OUT_OF_VA, "no free range of %zu bytes left in the heap's %zu-byte reservation", want, h->reserved);
    tlsf_remove(&h->vacant, v);
    uintptr_t start = gh_align_up(v->start, align < unit ? unit : align);
    size_t room = block_end(v) - start - size; /* free VA after the range */
    if (headroom > room) headroom = room;
    block *b = block_carve(h, v, start, size + headroom, &h->vacant);
    if (headroom) block_split(h, b, size)->state = BLOCK_HEADROOM;
    b->state = BLOCK_BUSY;
    *out = b;
    return GPU_OK;
}

/* A large range is backed in chunks, each an extent of its own: once its block
 * is freed, smaller blocks cut from it pin only the chunks they touch, and the
 * allocation path can give the wholly idle chunks back for new memory (an
 * extent goes back to the driver only whole). As one extent, a freed 1 GiB
 * block cut by smaller ones pinned all of it: RMM's random workload held 1.28x
 * (1 GiB blocks) and 1.43x (4 GiB) its live peak, a CNN whose batch size changes
 * every step 1.23x; backed in chunks of an eighth, at least 128 MiB, from
 * 512 MiB, 1.14x, 1.13x and 1.10x on the host backend, whose placement is the
 * GPU's (bench/RESULTS.md). Smaller chunks, or chunking from 256 MiB, gained no
 * more and mapped up to three times as often; chunks of at least 256 MiB lost
 * most of the CNN's gain.
 *
 * Each chunk is a create, a map and an access grant: a 1 GiB range in eight
 * chunks took 362 us to back on an H200, in one extent 153 us (cudaMalloc 127-189).
 * Chunks pay only where freed memory is reused by blocks of other sizes, so a
 * heap backs a range in one extent while it has freed no block of
 * BACK_CHUNK_AFTER_FREE_GRANULES or more and holds less than the range: a cold
 * start, a program's first large buffers, cost one mapping each. On the
 * workloads above the placement is that of chunks from the start (with the
 * free alone, RMM's 4 GiB case mapped its first blocks whole: 1.315x). */
#define BACK_CHUNKED_MIN_GRANULES 256 /* 512 MiB at the GPU's 2 MiB granule */
#define BACK_CHUNK_MIN_GRANULES 64    /* 128 MiB */
#define BACK_CHUNKS 8

/* A paged heap (paged.c) backs every range in pages; a range of more than
 * PAGED_PIECES_MAX pages in larger pieces, so that an export (at most 1024
 * extents, IPC_MAX_EXTENTS) still carries a block of one range and the pages
 * at its two ends. A range of larger pieces cannot take idle pages: its trade
 * releases them and creates its pieces anew. At 512 the CNN's blocks of
 * 1,064-1,216 MiB did that (host replay of an H200 trace, GPU 40 ms behind:
 * 2,070 creates for a peak of 1,119 pages; 1,118 at 1022, the same peak). */
#define PAGED_PIECES_MAX 1022

static size_t paged_piece(const gpu_heap_t *h, size_t size) {
    return size / h->page > PAGED_PIECES_MAX ? gh_align_up(size / PAGED_PIECES_MAX, h->page) : h->page;
}

/* A paged heap about to map size bytes past its physical peak gives idle pages
 * back first, their handles kept in spares for the range: memory moves instead
 * of growing. In legacy free order what sits in the quarantine is released
 * first (one release: the context waits, no one else). Pages no legacy-order
 * release may still use go first; then pages one may, their old mappings left
 * to linger until it is done (linger.c); a fence only for what the set cannot
 * hold (without moving those pages at all, the CNN trace held 1.25x its live
 * peak, not 1.01x: bench/RESULTS.md). */
static size_t given(size_t idle_before, size_t idle_now) { return idle_before > idle_now ? idle_before - idle_now : 0; }

static void paged_trade_locked(gpu_heap_t *h, size_t size, size_t piece, spare_set *spares) {
    if (!spares || spares->n || h->mapped_bytes + size <= h->peak_mapped_bytes) return;
    if (h->quarantine_bytes && quarantine_legacy()) (void)quarantine_order_locked(h, 0, false); /* freed memory first: a release, not a fence */
    size_t room = h->peak_mapped_bytes > h->mapped_bytes ? h->peak_mapped_bytes - h->mapped_bytes : 0;
    if (h->mapped_bytes + size <= h->peak_mapped_bytes) return;
    size_t want = size - room, idle = h->idle.bytes;
    static const recycle_how ladder[] = {RECYCLE_SAFE, RECYCLE_LINGER, RECYCLE_FENCE};
    bool pages = piece == h->page; /* a range of larger pieces takes no lingering page */
    for (size_t i = 0; i < sizeof ladder / sizeof *ladder; i++) {
        size_t got = given(idle, h->idle.bytes); /* others may have freed meanwhile */
        if (got >= want || !h->idle.bytes || (i && !heap_order_owed(h))) break;
        if (ladder[i] == RECYCLE_LINGER && !pages) continue;
        (void)heap_recycle_locked(h, want - got, spares, ladder[i]);
    }
}

/* The size of the chunks a range of size bytes is backed in (size: one extent).
 * The thresholds count granules (the sizes above are the GPU's), so that a test
 * heap of small granules goes through chunks too: test_stress's model run (64 KiB
 * granules, blocks up to 64 MiB, its checks every 1,000 operations) backs about
 * 2,200 ranges in chunks. */
static size_t back_chunk(const gpu_heap_t *h, size_t size) {
    if (h->page) return paged_piece(h, size);
    if (size < BACK_CHUNKED_MIN_GRANULES * h->gran || (!h->large_freed && h->mapped_bytes < size)) return size;
    size_t chunk = gh_align_up(size / BACK_CHUNKS, h->gran);
    return chunk < BACK_CHUNK_MIN_GRANULES * h->gran ? BACK_CHUNK_MIN_GRANULES * h->gran : chunk;
}

/* The size of the piece of a range of size bytes in chunks of chunk that starts
 * done bytes in: a chunk, or all that is left when less than two (no sliver). */
static size_t piece_at(size_t size, size_t chunk, size_t done) {
    size_t left = size - done;
    return left < 2 * chunk ? left : chunk;
}

/* Kept handles (spare.c) that no piece of the range can take are released
 * before anything is created, so that they and the new memory are never held
 * together. */
static void spares_unfit_release(gpu_heap_t *h, spare_set *s, size_t size, size_t chunk) {
    if (!s || !s->n) return;
    unsigned held = 0;
    for (size_t done = 0, piece; done < size; done += piece) {
        piece = piece_at(size, chunk, done);
        held = spare_hold(s, held, piece);
    }
    spare_release_locked(h, s, held);
}

/* One piece of a range: a kept handle of its size when spares has one, else new. */
static int back_piece(gpu_heap_t *h, uintptr_t va, size_t size, spare_set *spares) {
    spare kept;
    if (!spare_take_locked(h, spares, size, &kept)) return extent_back_locked(h, va, size, NULL, NULL);
    return kept.from ? linger_back_locked(h, va, size, &kept) : extent_back_locked(h, va, size, NULL, &kept);
}

/* The bytes of a range, left bytes from its end, that one trade is for: as many
 * pieces as a spare set holds (the last piece may be up to two chunks), or all
 * that is left. */
static size_t trade_part(size_t left, size_t chunk) {
    return left < (SPARE_MAX + 1) * chunk ? left : SPARE_MAX * chunk;
}

/* Readies the spare set for the next part bytes of a range: a paged heap
 * trades for them, and kept handles that none of their pieces takes go. */
static void spares_ready(gpu_heap_t *h, spare_set *spares, size_t part, size_t chunk) {
    if (h->page) paged_trade_locked(h, part, chunk, spares);
    spares_unfit_release(h, spares, part, chunk);
}

/* A range of more pieces than a spare set holds is traded for and backed a
 * set's worth at a time, so that every idle page a trade gives back is kept for
 * the range. In one trade, the handles past the set's room were released and
 * the rest of the range created anew: on an H200 a 1,056 MiB block of the CNN
 * (418 pages to map) released 97 pages and created 162 in one call, and raised
 * the heap's physical peak by 128 MiB (bench/RESULTS.md). */
int heap_back_at_locked(gpu_heap_t *h, block *range, spare_set *spares) {
    gh_assert(range->state == BLOCK_BUSY, "a range is marked BUSY before it is mapped");
    size_t chunk = back_chunk(h, range->size), done = 0;
    if (chunk == range->size) {
        spares_ready(h, spares, range->size, chunk);
        return back_piece(h, range->start, range->size, spares);
    }
    if (!pool_reserve(&h->extent_pool, range->size / chunk + 1))
        return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for extent records");
    int rc = GPU_OK;
    while (done < range->size && rc == GPU_OK) {
        if (done % (SPARE_MAX * chunk) == 0) spares_ready(h, spares, trade_part(range->size - done, chunk), chunk);
        size_t piece = piece_at(range->size, chunk, done);
        rc = back_piece(h, range->start + done, piece, spares);
        if (rc == GPU_OK) done += piece;
    }
    /* A chunk refused: the ones mapped before it go back, last first (the range
     * stays BUSY; the lock is dropped around each give-back). */
    while (rc != GPU_OK && done) {
        extent *e = extmap_find(&h->extents, range->start + done - 1);
        gh_assert(e && e->va >= range->start && e->va + e->size == range->start + done,
                  "every chunk mapped so far is an extent of this range in the books");
        linger_settle_twin_locked(h, e); /* a moved page's old mapping goes first */
        uintptr_t va = e->va;
        size_t size = e->size;
        vmm_handle hd = e->handle;
        heap_extent_drop_locked(h, e);
        heap_unlock(h);
        handle_discard(h, va, size, hd);
        heap_lock(h);
        done -= size;
    }
    return rc;
}

int heap_back_after_locked(gpu_heap_t *h, block *n, size_t grow, spare_set *spares) {
    block_state was = (block_state)n->state;
    gh_assert((was == BLOCK_VACANT || was == BLOCK_HEADROOM) && n->size >= grow, "unmapped VA, enough of it");
    if (was == BLOCK_VACANT) tlsf_remove(&h->vacant, n);
    block *rest = n->size > grow ? block_split(h, n, grow) : NULL; /* records reserved by the caller */
    if (rest && was == BLOCK_VACANT) tlsf_insert(&h->vacant, rest);
    n->state = BLOCK_BUSY;
    int rc = heap_back_at_locked(h, n, spares);
    if (rc == GPU_OK) return GPU_OK;
    if (was == BLOCK_VACANT) {
        block_release_free(h, n, BLOCK_VACANT); /* merges with the rest again */
    } else {
        n->state = BLOCK_HEADROOM; /* the headroom stays whole */
        if (rest && rest->state == BLOCK_HEADROOM) block_absorb_next(h, n);
    }
    return rc;
}

int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, spare_set *spares, block **out) {
    block *b;
    int rc = heap_carve_vacant_locked(h, size, align, headroom, &b);
    if (rc != GPU_OK) return rc;
    rc = heap_back_at_locked(h, b, spares);
    if (rc != GPU_OK) {
        heap_headroom_release_locked(h, b);
        block_release_free(h, b, BLOCK_VACANT);
        return rc;
    }
    *out = b;
    return GPU_OK;
}

/* ---- an idle tail extended ------------------------------------------------------ */

/* The idle block that an extension would start from: the largest one that ends
 * where mapped memory ends (vacant VA right after it, room enough for the rest),
 * at the alignment, holding at least min bytes and less than need. */
typedef struct tail_pick {
    gpu_heap_t *h;
    size_t need, align, min;
    block *best;
} tail_pick;

static bool pick_tail(block *b, void *arg) {
    tail_pick *p = arg;
    const block *n = b->next_phys;
    if (b->size >= p->need || b->size < p->min || b->start % p->align || !n || n->state != BLOCK_VACANT) return true;
    if (n->size < gh_align_up(p->need - b->size, p->h->gran)) return true;
    if (!p->best || b->size > p->best->size) p->best = b;
    return true;
}

int heap_extend_tail_locked(gpu_heap_t *h, size_t need, size_t align, size_t min, spare_set *spares, block **out) {
    tail_pick p = {.h = h, .need = need, .align = align, .min = min};
    tlsf_walk(&h->idle, pick_tail, &p);
    if (!p.best) return GH_MISS;
    block *b = p.best;
    tlsf_remove(&h->idle, b);
    b->state = BLOCK_BUSY; /* untouched while the lock is dropped */
    int rc = heap_back_after_locked(h, b->next_phys, gh_align_up(need - b->size, h->gran), spares);
    if (rc != GPU_OK) {
        block_release_free(h, b, BLOCK_IDLE);
        return rc;
    }
    block_absorb_next(h, b);
    *out = b;
    return GPU_OK;
}

/* Headroom left unmapped after a block with its own extent: as much again, up to
 * 1/64 of the reservation. */
size_t heap_headroom_for(const gpu_heap_t *h, size_t size) {
    size_t cap = h->reserved / 64;
    return size < cap ? size : cap;
}
