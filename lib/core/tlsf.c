/*
 * tlsf.c — the two-level segregated-fit index of free blocks.
 *
 * Free blocks are kept in lists by size class: a first level of powers of two and
 * a second level that splits each power of two into TLSF_SL_COUNT equal steps.
 * Two bitmaps say which lists are non-empty, so finding a list that holds a large
 * enough block is a couple of bit scans: O(1) whatever the heap's size. This is
 * the algorithm of Masmano et al. (TLSF, ECRTS 2004); what differs from the
 * classic is that block records live outside the memory they describe (device
 * memory cannot hold headers), so the index links heap.c's host-side records.
 *
 * Sizes are multiples of GH_QUANTUM (256 bytes); the classes are computed on
 * size / GH_QUANTUM, so the smallest classes are exact.
 */
#include <string.h>

#include "core/internal.h"

/* floor(log2(x)) for x > 0. */
static inline unsigned log2_floor(uint64_t x) { return 63u - (unsigned)__builtin_clzll(x); }

/* The class (fl, sl) whose list holds blocks of this size. */
static inline void mapping_insert(size_t size, unsigned *fl, unsigned *sl) {
    uint64_t u = size / GH_QUANTUM;
    if (u < TLSF_SL_COUNT) {
        *fl = 0;
        *sl = (unsigned)u;
        return;
    }
    unsigned l = log2_floor(u);
    *fl = l - TLSF_SL_LOG2 + 1;
    *sl = (unsigned)(u >> (l - TLSF_SL_LOG2)) - TLSF_SL_COUNT;
}

/* The first class all of whose blocks are at least size bytes. */
static inline void mapping_search(size_t size, unsigned *fl, unsigned *sl) {
    uint64_t u = size / GH_QUANTUM;
    if (u >= TLSF_SL_COUNT) u += (1ull << (log2_floor(u) - TLSF_SL_LOG2)) - 1;
    mapping_insert(u * GH_QUANTUM, fl, sl);
}

void tlsf_init(tlsf_index *t) { memset(t, 0, sizeof *t); }

void tlsf_insert(tlsf_index *t, block *b) {
    gh_assert(b->size >= GH_QUANTUM && b->size % GH_QUANTUM == 0, "free block size is a quantum multiple");
    unsigned fl, sl;
    mapping_insert(b->size, &fl, &sl);
    gh_assert(fl < TLSF_FL_COUNT, "block size within the index's range");
    block *head = t->heads[fl][sl];
    b->fit_need = 0; /* the range may have changed while out of the index: forget the last miss */
    b->prev_free = NULL;
    b->next_free = head;
    if (head) head->prev_free = b;
    t->heads[fl][sl] = b;
    t->fl_bitmap |= 1ull << fl;
    t->sl_bitmap[fl] |= 1u << sl;
    t->bytes += b->size;
    t->blocks++;
}

void tlsf_remove(tlsf_index *t, block *b) {
    unsigned fl, sl;
    mapping_insert(b->size, &fl, &sl);
    if (b->prev_free) {
        b->prev_free->next_free = b->next_free;
    } else {
        gh_assert(t->heads[fl][sl] == b, "a block without a predecessor heads its list");
        t->heads[fl][sl] = b->next_free;
        if (!b->next_free) {
            t->sl_bitmap[fl] &= ~(1u << sl);
            if (!t->sl_bitmap[fl]) t->fl_bitmap &= ~(1ull << fl);
        }
    }
    if (b->next_free) b->next_free->prev_free = b->prev_free;
    b->prev_free = b->next_free = NULL;
    t->bytes -= b->size;
    t->blocks--;
}

/* A few list entries scanned when no class is wholly large enough: this finds an
 * exact-class fit (rare, but it matters when VA or idle memory is scarce). */
#define TLSF_SCAN_LIMIT 16

block *tlsf_find(tlsf_index *t, size_t size) {
    unsigned fl, sl;
    mapping_search(size, &fl, &sl);
    if (fl < TLSF_FL_COUNT) {
        uint32_t sl_map = t->sl_bitmap[fl] & (~0u << sl);
        if (!sl_map) {
            uint64_t fl_map = fl + 1 < 64 ? t->fl_bitmap & (~0ull << (fl + 1)) : 0;
            if (fl_map) {
                fl = (unsigned)__builtin_ctzll(fl_map);
                sl_map = t->sl_bitmap[fl];
            }
        }
        if (sl_map) return t->heads[fl][__builtin_ctz(sl_map)];
    }
    /* No class is guaranteed to fit: look through the size's own class. */
    mapping_insert(size, &fl, &sl);
    if (fl >= TLSF_FL_COUNT) return NULL;
    int n = 0;
    for (block *b = t->heads[fl][sl]; b && n < TLSF_SCAN_LIMIT; b = b->next_free, n++)
        if (b->size >= size) return b;
    return NULL;
}

void tlsf_walk(tlsf_index *t, bool (*fn)(block *b, void *arg), void *arg) { tlsf_walk_from(t, 0, fn, arg); }

/* Visits the non-empty lists only, found by the bitmaps: a walk on the large-
 * block path (fit.c) costs what the blocks it looks at cost, not 16 heads per
 * first-level class. */
void tlsf_walk_from(tlsf_index *t, size_t size, bool (*fn)(block *b, void *arg), void *arg) {
    unsigned fl0 = 0, sl0 = 0;
    if (size) mapping_insert(size, &fl0, &sl0);
    if (fl0 >= TLSF_FL_COUNT) return;
    uint64_t fl_map = t->fl_bitmap & (~0ull << fl0);
    while (fl_map) {
        unsigned fl = (unsigned)__builtin_ctzll(fl_map);
        fl_map &= fl_map - 1;
        uint32_t sl_map = t->sl_bitmap[fl] & (fl == fl0 ? ~0u << sl0 : ~0u);
        while (sl_map) {
            unsigned sl = (unsigned)__builtin_ctz(sl_map);
            sl_map &= sl_map - 1;
            for (block *b = t->heads[fl][sl], *next; b; b = next) {
                next = b->next_free; /* fn may remove b */
                if (!fn(b, arg)) return;
            }
        }
    }
}

bool tlsf_contains(const tlsf_index *t, const block *b) {
    unsigned fl, sl;
    mapping_insert(b->size, &fl, &sl);
    if (fl >= TLSF_FL_COUNT) return false;
    for (const block *x = t->heads[fl][sl]; x; x = x->next_free)
        if (x == b) return true;
    return false;
}
