/*
 * extent.h — the granule map: which extent is mapped at an address (extent.c).
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

#endif /* GPUHEAP_CORE_EXTENT_H */
