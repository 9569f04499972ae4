/*
 * extent.h — the granule map: which extent is mapped at an address (extent.c),
 * and the walk over the whole extents inside a mapped range.
 */
#ifndef GPUHEAP_CORE_EXTENT_H
#define GPUHEAP_CORE_EXTENT_H

#include "core/types.h"

int extmap_init(extmap *m, uintptr_t base, size_t size, size_t granularity);
void extmap_free(extmap *m);
/* Calls fn on every extent once, in address order, until it returns false. fn
 * may not change the map. */
void extmap_walk(const extmap *m, bool (*fn)(extent *e, void *arg), void *arg);
/* The extent mapped at address va, or NULL. */
extent *extmap_find(const extmap *m, uintptr_t va);
/* Points every granule of e at e (or at NULL when clearing). */
int extmap_set(extmap *m, extent *e);
/* Makes the leaves for [va, va+size) so that a later extmap_set there cannot fail. */
int extmap_prepare(extmap *m, uintptr_t va, size_t size);
void extmap_clear(extmap *m, const extent *e);

/* ---- the whole extents inside a range -------------------------------------- */
/* In a range [lo, hi) whose every granule is mapped (an idle block, say), the
 * extents lying wholly inside run without a gap from the first extent boundary
 * at or after lo up to the first extent that passes hi:
 *     for (extent *e = extmap_first_whole(m, lo, hi); e; e = extmap_next_whole(m, e, hi))
 * extmap_boundary and extmap_whole_at are the walk's two halves, for searches
 * that keep boundaries as cursors (the fit search's sliding window). No asserts
 * here: white-box tests include this header beside their own util.h. */

/* The first extent boundary at or after va (va mapped). */
static inline uintptr_t extmap_boundary(const extmap *m, uintptr_t va) {
    const extent *e = extmap_find(m, va);
    return e->va == va ? va : e->va + e->size;
}
/* The extent starting at the boundary va when it ends by hi, else NULL. */
static inline extent *extmap_whole_at(const extmap *m, uintptr_t va, uintptr_t hi) {
    if (va >= hi) return NULL;
    extent *e = extmap_find(m, va);
    return e->va + e->size <= hi ? e : NULL;
}
/* The first extent wholly inside [lo, hi), or NULL. */
static inline extent *extmap_first_whole(const extmap *m, uintptr_t lo, uintptr_t hi) {
    return extmap_whole_at(m, extmap_boundary(m, lo), hi);
}
/* The extent right after e when it ends by hi, else NULL. */
static inline extent *extmap_next_whole(const extmap *m, const extent *e, uintptr_t hi) {
    return extmap_whole_at(m, e->va + e->size, hi);
}

#endif /* GPUHEAP_CORE_EXTENT_H */
