/*
 * check.c — the heap checker and the statistics snapshot.
 *
 * gpu_heap_check walks the whole reservation and proves the books right: blocks
 * tile the reservation exactly, free blocks are coalesced and indexed where their
 * state says, live blocks are in the address map, every used byte has a mapped
 * extent behind it, extents agree with the granule map, and the counters equal
 * what the walk finds. Tests call it after every step, the fuzzer after every
 * operation, and debug builds (-Ddebug_checks=true) after every call. It returns
 * the first broken invariant as text instead of asserting, so a test can print it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

typedef struct checker {
    char *msg;
    size_t len;
    int rc;
} checker;

/* Records the first failure. */
static bool fail(checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool fail(checker *c, const char *fmt, ...) {
    if (c->rc != GPU_OK) return false;
    c->rc = GPU_ERR_CORRUPT;
    if (c->msg && c->len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->msg, c->len, fmt, ap);
        va_end(ap);
    }
    return false;
}

#define CHECK(c, cond, ...) ((cond) ? true : fail(c, __VA_ARGS__))

/* Every granule of a used block has an extent, and that extent maps itself. */
static bool check_backed(gpu_heap_t *h, checker *c, const block *b) {
    for (uintptr_t va = gh_align_down(b->start, h->gran); va < block_end(b);) {
        extent *e = extmap_find(&h->extents, va);
        if (!CHECK(c, e, "block %#lx+%zu (state %d) has no extent at %#lx", (unsigned long)b->start, b->size,
                   b->state, (unsigned long)va))
            return false;
        if (!CHECK(c, e->va <= va && va < e->va + e->size, "extent map slot at %#lx points at extent %#lx+%zu",
                   (unsigned long)va, (unsigned long)e->va, e->size))
            return false;
        va = e->va + e->size;
    }
    return true;
}

/* No extent at the first and last granule (and every granule of small ranges). */
static bool check_unbacked(gpu_heap_t *h, checker *c, const block *b) {
    size_t granules = b->size / h->gran;
    for (size_t i = 0; i < granules; i++) {
        if (granules > 4096 && i == 2048) i = granules - 2048; /* huge vacant ranges: the ends */
        uintptr_t va = b->start + i * h->gran;
        if (!CHECK(c, !extmap_find(&h->extents, va), "unmapped block %#lx+%zu (state %d) has an extent at %#lx",
                   (unsigned long)b->start, b->size, b->state, (unsigned long)va))
            return false;
    }
    return true;
}

/* Counts the extents and checks each one's owner and protection. */
typedef struct extent_tally {
    checker *c;
    size_t mapped, n, prot, paused, npaused, moving, twins;
} extent_tally;

static bool tally_extent(extent *e, void *arg) {
    extent_tally *t = arg;
    checker *c = t->c;
    if (e->paused) {
        t->paused += e->size;
        t->npaused++;
    } else {
        t->mapped += e->size;
        t->n++;
    }
    t->moving += e->moving;
    t->twins += e->twin;
    if (e->prot != GPU_PROT_READ_WRITE) {
        t->prot++;
        const block *o = extent_owner(e);
        CHECK(c, o, "protected extent %#lx has no owning block", (unsigned long)e->va);
        CHECK(c, !o || tc_state(atomic_load_explicit(&((block *)o)->tc, memory_order_acquire)) != TC_FREE,
              "protected extent %#lx belongs to a block a thread cache holds free", (unsigned long)e->va);
    }
    const block *o = extent_owner(e);
    if (o)
        CHECK(c, o->state == BLOCK_LIVE || o->state == BLOCK_BUSY || o->state == BLOCK_SPARSE,
              "extent %#lx+%zu is claimed by a block that is not live", (unsigned long)e->va, e->size);
    return c->rc == GPU_OK;
}

static int check_locked(gpu_heap_t *h, checker *c) {
    size_t live = 0, live_n = 0, idle = 0, idle_n = 0, vac = 0, vac_n = 0, quar = 0, quar_n = 0, total = 0;
    size_t strm = 0, strm_n = 0, sparse = 0, sparse_n = 0, committed = 0, linger_n = 0;
    CHECK(c, h->first && h->first->start == h->base && !h->first->prev_phys, "the first block is not at the base");
    const block *prev = NULL;
    for (const block *b = h->first; b && c->rc == GPU_OK; prev = b, b = b->next_phys) {
        CHECK(c, b->prev_phys == prev, "block %#lx: prev_phys link broken", (unsigned long)b->start);
        CHECK(c, !prev || block_end(prev) == b->start, "gap or overlap before block %#lx", (unsigned long)b->start);
        CHECK(c, b->size && b->size % GH_QUANTUM == 0, "block %#lx: size %zu not a quantum multiple",
              (unsigned long)b->start, b->size);
        CHECK(c, !prev || !(prev->state == b->state && (b->state == BLOCK_IDLE || b->state == BLOCK_VACANT)),
              "adjacent free blocks of state %d at %#lx were not merged", b->state, (unsigned long)b->start);
        total += b->size;
        unsigned tc = tc_state(atomic_load_explicit(&((block *)b)->tc, memory_order_relaxed));
        CHECK(c, tc != 3 && (tc == TC_NONE || b->state == BLOCK_LIVE), "block %#lx of state %d has thread-cache state %u",
              (unsigned long)b->start, b->state, tc);
        switch (b->state) {
        case BLOCK_LIVE:
        case BLOCK_BUSY:
            if (blockmap_find(&h->live, b->start) == b) {
                live += b->size;
                live_n++;
                check_backed(h, c, b);
            }
            break;
        case BLOCK_IDLE:
            CHECK(c, tlsf_contains(&h->idle, b), "idle block %#lx not in the idle index", (unsigned long)b->start);
            CHECK(c, fit_memo_holds(h, b), "idle block %#lx remembers a whole-extent miss for %zu bytes that a search "
                  "would not make now", (unsigned long)b->start, b->fit_need);
            idle += b->size;
            idle_n++;
            check_backed(h, c, b);
            break;
        case BLOCK_VACANT:
            CHECK(c, tlsf_contains(&h->vacant, b), "vacant block %#lx not in the vacant index", (unsigned long)b->start);
            vac += b->size;
            vac_n++;
            check_unbacked(h, c, b);
            break;
        case BLOCK_HEADROOM:
            CHECK(c, prev && (prev->state == BLOCK_LIVE || prev->state == BLOCK_BUSY),
                  "headroom at %#lx does not follow a live block", (unsigned long)b->start);
            check_unbacked(h, c, b);
            break;
        case BLOCK_SPARSE:
            CHECK(c, blockmap_find(&h->live, b->start) == b, "reservation %#lx is not in the address map",
                  (unsigned long)b->start);
            sparse += b->size;
            sparse_n++;
            for (uintptr_t va = b->start; va < block_end(b) && c->rc == GPU_OK; va += h->gran) {
                extent *e = extmap_find(&h->extents, va);
                if (!e) continue;
                CHECK(c, e->owner == b && e->va >= b->start && e->va + e->size <= block_end(b),
                      "extent %#lx in reservation %#lx is not owned by it", (unsigned long)e->va, (unsigned long)b->start);
                committed += e->size;
                va = e->va + e->size - h->gran;
            }
            break;
        case BLOCK_STREAM:
            CHECK(c, b->pool && tlsf_contains(&b->pool->free, b), "stream-freed block %#lx not in its stream's index",
                  (unsigned long)b->start);
            CHECK(c, !prev || !(prev->state == BLOCK_STREAM && prev->pool == b->pool),
                  "adjacent blocks freed on one stream at %#lx were not merged", (unsigned long)b->start);
            strm += b->size;
            strm_n++;
            check_backed(h, c, b);
            break;
        case BLOCK_QUARANTINE:
            quar += b->size;
            quar_n++;
            check_backed(h, c, b);
            break;
        case BLOCK_LINGER: /* in the books unmapped; for the GPU still mapped until its release is done */
            check_unbacked(h, c, b);
            if (b->twin) {
                linger_n++;
                CHECK(c, b->twin->twin && b->twin->size == b->size, "lingering block %#lx: its twin extent %#lx is not marked",
                      (unsigned long)b->start, (unsigned long)b->twin->va);
            }
            break;
        default: fail(c, "block %#lx has unknown state %d", (unsigned long)b->start, b->state);
        }
    }
    if (c->rc != GPU_OK) return c->rc;
    CHECK(c, total == h->reserved, "blocks cover %zu bytes of a %zu-byte reservation", total, h->reserved);
    CHECK(c, live == h->live_bytes && live_n == h->live_blocks, "live: walked %zu bytes in %zu blocks, counted %zu in %zu",
          live, live_n, h->live_bytes, h->live_blocks);
    CHECK(c, live_n + sparse_n == h->live.live, "%zu live blocks and %zu reservations walked, %zu in the address map",
          live_n, sparse_n, h->live.live);
    CHECK(c, sparse == h->sparse_reserved && committed == h->sparse_committed,
          "reservations: walked %zu bytes with %zu committed, counted %zu with %zu", sparse, committed,
          h->sparse_reserved, h->sparse_committed);
    CHECK(c, idle == h->idle.bytes && idle_n == h->idle.blocks, "idle index counts %zu bytes in %zu blocks, walk %zu in %zu",
          h->idle.bytes, h->idle.blocks, idle, idle_n);
    CHECK(c, vac == h->vacant.bytes && vac_n == h->vacant.blocks, "vacant index counts disagree with the walk");
    size_t q = 0, qn = 0;
    for (const block *b = h->quarantine; b; b = b->next_free) {
        q += b->size;
        qn++;
        CHECK(c, b->state == BLOCK_QUARANTINE, "a block in the quarantine list has state %d", b->state);
    }
    /* A drain fencing outside the lock holds its batch off the list. */
    q += h->draining_bytes;
    qn += h->draining_blocks;
    for (unsigned i = 0; i < h->nsealed; i++) /* sealed batches wait for their event */
        for (const block *b = h->sealed[i].q.head; b; b = b->next_free) {
            q += b->size;
            qn++;
            CHECK(c, b->state == BLOCK_QUARANTINE, "a block in a sealed batch has state %d", b->state);
        }
    CHECK(c, q == quar && qn == quar_n && q == h->quarantine_bytes && qn == h->quarantine_blocks,
          "quarantine: list (and batches being fenced) %zu bytes/%zu blocks, walk %zu/%zu, counters %zu/%zu", q, qn, quar, quar_n,
          h->quarantine_bytes, h->quarantine_blocks);
    /* Extents: each distinct one counted once, owners sound, protection owned. */
    extent_tally t = {.c = c};
    extmap_walk(&h->extents, tally_extent, &t);
    size_t mapped = t.mapped, n = t.n, prot = t.prot;
    CHECK(c, mapped == h->mapped_bytes && n == h->nextents, "extents: %zu bytes in %zu found, counters %zu in %zu", mapped,
          n, h->mapped_bytes, h->nextents);
    /* Memory control (pause.c): paused extents only in a heap that is not
     * running, extents on the move only while a pause or resume has them. */
    int run = atomic_load(&h->run_state);
    CHECK(c, t.paused == h->paused_bytes && t.npaused == h->npaused,
          "paused extents: %zu bytes in %zu found, counters %zu in %zu", t.paused, t.npaused, h->paused_bytes, h->npaused);
    CHECK(c, !t.npaused || run != HEAP_RUNNING, "a running heap has %zu paused extents", t.npaused);
    CHECK(c, !t.moving || run == HEAP_PAUSING || run == HEAP_RESUMING, "%zu extents on the move in a heap neither pausing nor resuming", t.moving);
    CHECK(c, (h->backup_bytes != 0) <= (run != HEAP_RUNNING), "a running heap keeps a backup of %zu bytes", h->backup_bytes);
    CHECK(c, h->backup_bytes <= h->backup_pinned, "a backup of %zu bytes in %zu pinned bytes", h->backup_bytes, h->backup_pinned);
    CHECK(c, prot == h->protected_extents, "%zu protected extents found, %zu counted", prot, h->protected_extents);
    size_t listed = 0;
    for (const block *b = h->linger; b && c->rc == GPU_OK; b = b->next_free, listed++)
        CHECK(c, b->state == BLOCK_LINGER && b->twin, "a block on the lingering list has state %d", b->state);
    CHECK(c, listed == h->nlinger && listed == linger_n && t.twins == linger_n,
          "lingering pages: %zu listed, %zu counted, %zu walked with a twin, %zu twin extents", listed, h->nlinger, linger_n,
          t.twins);
    size_t pool_bytes = 0, pool_blocks = 0;
    for (size_t i = 0; i < h->npools; i++) pool_bytes += h->pools[i]->free.bytes, pool_blocks += h->pools[i]->free.blocks;
    CHECK(c, pool_bytes == strm && pool_blocks == strm_n, "stream pools index %zu bytes in %zu blocks, walk %zu in %zu",
          pool_bytes, pool_blocks, strm, strm_n);
    CHECK(c, live + idle + quar + strm <= mapped + t.paused, "used bytes %zu exceed mapped and paused bytes %zu",
          live + idle + quar + strm, mapped + t.paused);
    return c->rc;
}

int heap_check(gpu_heap_t *h, char *msg, size_t len) {
    checker c = {.msg = msg, .len = len, .rc = GPU_OK};
    if (msg && len) msg[0] = '\0';
    heap_lock(h);
    int rc = check_locked(h, &c);
    heap_unlock(h);
    return rc;
}

void heap_stats(gpu_heap_t *h, gpu_stats_t *s) {
    memset(s, 0, sizeof *s); /* the layers' fields stay 0 where no layer is registered */
    heap_lock(h);
    s->version = GPU_STATS_VERSION;
    s->live_bytes = h->live_bytes;
    s->live_blocks = h->live_blocks;
    s->peak_live_bytes = h->peak_live_bytes;
    s->mapped_bytes = h->mapped_bytes;
    s->peak_mapped_bytes = h->peak_mapped_bytes;
    s->idle_bytes = h->idle.bytes;
    s->quarantine_bytes = h->quarantine_bytes;
    s->quarantine_blocks = h->quarantine_blocks;
    s->extents = h->nextents;
    s->reserved_bytes = h->reserved;
    s->granularity = h->gran;
    s->fences = h->fences;
    s->stream_free_bytes = s->stream_free_blocks = 0;
    for (size_t i = 0; i < h->npools; i++) {
        s->stream_free_bytes += h->pools[i]->free.bytes;
        s->stream_free_blocks += h->pools[i]->free.blocks;
    }
    s->stream_events = h->stream_events;
    s->seal_events = h->seal_events;
    s->order_releases = h->order_releases;
    s->sparse_reserved_bytes = h->sparse_reserved;
    s->sparse_committed_bytes = h->sparse_committed;
    s->protected_extents = h->protected_extents;
    s->ipc_exports = h->ipc_exports;
    s->ipc_imports_open = atomic_load_explicit(&h->ipc_imports_open, memory_order_relaxed);
    s->paused_bytes = h->paused_bytes;
    s->backup_bytes = h->backup_bytes;
    s->backup_pinned_bytes = h->backup_pinned;
    s->cached_bytes = s->cached_blocks = 0;
    hooks_stats_locked(h, s); /* thread caches: blocks they hold free are not live */
    /* The heap raises its live peak where it hands memory out; a cache's hand-out
     * of a block it held is the program's too, seen here at the latest. Kept
     * apart, so that looking never changes what the heap decides. */
    if (h->peak_live_told < h->peak_live_bytes) h->peak_live_told = h->peak_live_bytes;
    if (h->peak_live_told < s->live_bytes) h->peak_live_told = s->live_bytes;
    s->peak_live_bytes = h->peak_live_told;
    heap_unlock(h);
    hooks_stats(h, s); /* gpu_map_file's mappings: their own lock */
    const vmm_counts *k = &h->door.counts;
    s->backend_reserve = k->calls[VMM_OP_RESERVE];
    s->backend_create = k->calls[VMM_OP_CREATE];
    s->backend_release = k->calls[VMM_OP_RELEASE];
    s->backend_map = k->calls[VMM_OP_MAP];
    s->backend_unmap = k->calls[VMM_OP_UNMAP];
    s->backend_set_access = k->calls[VMM_OP_SET_ACCESS];
    s->backend_errors = k->errors;
    s->backend_fence = k->calls[VMM_OP_FENCE];
    s->backend_event_record = k->calls[VMM_OP_EVENT_RECORD];
    s->backend_memset = k->calls[VMM_OP_MEMSET];
    s->backend_copy = k->calls[VMM_OP_COPY];
    s->copy_bytes = k->copy_bytes;
    s->extents_lost = atomic_load_explicit(&h->extents_lost, memory_order_relaxed);
}
