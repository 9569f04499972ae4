/*
 * extent.c — which addresses have physical memory behind them.
 *
 * An extent is one physical allocation mapped whole (the driver maps handles only
 * whole, DESIGN.md §3). The granule map answers "which extent is mapped at this
 * address?" in O(1): one slot per granule of the reservation, in two levels with
 * leaves made on demand, so a 64 TiB reservation costs nothing until it is used.
 * Setting an extent writes one slot per granule it covers: the cost is in
 * proportion to the mapping the driver just made, which is far slower.
 */
#include <stdlib.h>
#include <sys/mman.h>

#include "core/internal.h"

#define LEAF_SLOTS ((size_t)1 << EXTMAP_LEAF_LOG2)
#define LEAF_BYTES (LEAF_SLOTS * sizeof(extent *))

/* The leaf table and the first leaf come zeroed from the kernel, a page at a
 * time as they are first touched: calloc cleared them whole (a 64 TiB
 * reservation's 64 KiB table and 32 KiB leaf), 14 page faults of a heap's
 * creation on the host, each several times dearer in the GPU machine's virtual
 * machine. Leaves made later are calloc's (a mapping each would add up). */
static void *zeroed(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
static void zeroed_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes);
}
static size_t table_bytes(const extmap *m) { return (m->nleaves ? m->nleaves : 1) * sizeof *m->leaves; }

int extmap_init(extmap *m, uintptr_t base, size_t size, size_t granularity) {
    m->base = base;
    m->granularity = granularity;
    m->shift = (unsigned)__builtin_ctzll(granularity);
    gh_assert(granularity && (granularity & (granularity - 1)) == 0, "a granularity is a power of two");
    m->granules = size >> m->shift;
    m->span = m->granules << m->shift;
    m->nleaves = (m->granules + LEAF_SLOTS - 1) / LEAF_SLOTS;
    m->leaves = zeroed(table_bytes(m));
    /* The first leaf now: a heap's first extents go at its base, and a leaf
     * made inside the first allocation cost it ~8 µs (calloc clearing 32 KiB
     * that malloc had to grow its heap for). */
    if (m->leaves && m->nleaves) m->leaves[0] = zeroed(LEAF_BYTES);
    if (m->leaves && (!m->nleaves || m->leaves[0])) return GPU_OK;
    zeroed_free(m->leaves, table_bytes(m));
    m->leaves = NULL;
    return GPU_ERR_OUT_OF_MEMORY;
}

void extmap_free(extmap *m) {
    if (!m->leaves) return;
    if (m->nleaves) zeroed_free(m->leaves[0], LEAF_BYTES);
    for (size_t i = 1; i < m->nleaves; i++) free(m->leaves[i]);
    zeroed_free(m->leaves, table_bytes(m));
    m->leaves = NULL;
}

/* The granule index of va, or SIZE_MAX outside the reservation. A shift: with
 * a division here, the eight extents of a chunked 1 GiB block cost a
 * stream-ordered pair ~100 ns on an H200 in lookups alone (set_owner at the
 * free and again at the reuse). */
static inline size_t granule_of(const extmap *m, uintptr_t va) {
    uintptr_t off = va - m->base;
    return off < m->span ? off >> m->shift : SIZE_MAX;
}

void extmap_walk(const extmap *m, bool (*fn)(extent *e, void *arg), void *arg) {
    for (size_t l = 0; l < m->nleaves; l++) {
        extent **leaf = m->leaves[l];
        if (!leaf) continue;
        for (size_t i = 0; i < LEAF_SLOTS; i++) {
            extent *e = leaf[i];
            /* an extent fills several slots: visit it at its first granule only */
            if (e && e->va == m->base + (((l << EXTMAP_LEAF_LOG2) + i) << m->shift) && !fn(e, arg)) return;
        }
    }
}

extent *extmap_find(const extmap *m, uintptr_t va) {
    size_t g = granule_of(m, va);
    if (g == SIZE_MAX) return NULL;
    extent **leaf = m->leaves[g >> EXTMAP_LEAF_LOG2];
    return leaf ? leaf[g & (LEAF_SLOTS - 1)] : NULL;
}

/* Writes val into every granule slot of [va, va+size); leaves are made first so
 * that a failure leaves the map unchanged. */
static int fill(extmap *m, uintptr_t va, size_t size, extent *val) {
    m->gen++;
    size_t g0 = granule_of(m, va), n = size >> m->shift;
    gh_assert(g0 != SIZE_MAX && g0 + n <= m->granules, "extent inside the reservation");
    for (size_t l = g0 >> EXTMAP_LEAF_LOG2; l <= (g0 + n - 1) >> EXTMAP_LEAF_LOG2; l++) {
        if (m->leaves[l]) continue;
        if (!val) continue;
        m->leaves[l] = calloc(LEAF_SLOTS, sizeof(extent *));
        if (!m->leaves[l]) return GPU_ERR_OUT_OF_MEMORY;
    }
    for (size_t g = g0; g < g0 + n; g++) {
        extent **leaf = m->leaves[g >> EXTMAP_LEAF_LOG2];
        if (leaf) leaf[g & (LEAF_SLOTS - 1)] = val;
    }
    return GPU_OK;
}

int extmap_prepare(extmap *m, uintptr_t va, size_t size) {
    size_t g0 = granule_of(m, va), n = size >> m->shift;
    gh_assert(g0 != SIZE_MAX && n && g0 + n <= m->granules, "range inside the reservation");
    for (size_t l = g0 >> EXTMAP_LEAF_LOG2; l <= (g0 + n - 1) >> EXTMAP_LEAF_LOG2; l++) {
        if (m->leaves[l]) continue;
        m->leaves[l] = calloc(LEAF_SLOTS, sizeof(extent *));
        if (!m->leaves[l]) return GPU_ERR_OUT_OF_MEMORY;
    }
    return GPU_OK;
}

int extmap_set(extmap *m, extent *e) { return fill(m, e->va, e->size, e); }

void extmap_clear(extmap *m, const extent *e) { (void)fill(m, e->va, e->size, NULL); }
