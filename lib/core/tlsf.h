/*
 * tlsf.h — the two-level segregated-fit index of free blocks (tlsf.c): O(1)
 * insert, remove and good-fit search over size classes.
 */
#ifndef GPUHEAP_CORE_TLSF_H
#define GPUHEAP_CORE_TLSF_H

#include "core/types.h"

void tlsf_init(tlsf_index *t);
void tlsf_insert(tlsf_index *t, block *b);
void tlsf_remove(tlsf_index *t, block *b);
/* A block of at least size bytes (good fit: from the first class whose every
 * member is large enough), or NULL. Does not remove it. Sizes, here and in the
 * blocks indexed, are multiples of GH_QUANTUM: the classes below 16 quanta are
 * exact only for those. */
block *tlsf_find(tlsf_index *t, size_t size);
/* Calls fn on every indexed block until it returns false. */
void tlsf_walk(tlsf_index *t, bool (*fn)(block *b, void *arg), void *arg);
/* The same, from the class that holds blocks of size bytes upward: smallest first. */
void tlsf_walk_from(tlsf_index *t, size_t size, bool (*fn)(block *b, void *arg), void *arg);
/* True when b is linked in t's list for its size. */
bool tlsf_contains(const tlsf_index *t, const block *b);

#endif /* GPUHEAP_CORE_TLSF_H */
