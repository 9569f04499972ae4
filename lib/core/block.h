/*
 * block.h — record pools and the moves the heap makes with block records:
 * split, carve a piece out of a free block, merge into an index, claim the extents a block covers (block.c).
 */
#ifndef GPUHEAP_CORE_BLOCK_H
#define GPUHEAP_CORE_BLOCK_H

#include "core/types.h"

void pool_init(record_pool *p, size_t record_size);
void *pool_get(record_pool *p); /* NULL when the host is out of memory */
/* Makes sure n records can be taken without failing. */
bool pool_reserve(record_pool *p, size_t n);
void pool_put(record_pool *p, void *r);
void pool_destroy(record_pool *p);

/* A new record for [start, start+size) in the given state, linked nowhere. */
block *block_new(struct gpu_heap *h, uintptr_t start, size_t size, block_state state);
/* Cuts b at b->start + size; b keeps the front, the returned record (same state,
 * linked after b in address order) the rest. NULL when out of host memory. b must
 * not be in an index. */
block *block_split(struct gpu_heap *h, block *b, size_t size);
/* Cuts [at, at+size) out of the free block b (in no index) and returns that
 * piece, in no index and still in b's state, for the caller to give its new
 * one. What lies before and after it (each in b's state, pool and epoch) goes
 * into index; the front is split off first, then the back. Cannot fail: the
 * caller reserved records beforehand (heap_reserve_records). */
block *block_carve(struct gpu_heap *h, block *b, uintptr_t at, size_t size, tlsf_index *index);
/* Puts an IDLE or VACANT block, in no index, into its index after merging it with
 * free neighbours of the same state. Returns the merged block. */
block *block_release_free(struct gpu_heap *h, block *b, block_state state);
/* Absorbs b's next neighbour (out of every index) into b and frees its record. */
void block_absorb_next(struct gpu_heap *h, block *b);
/* Takes a free block out of its index. */
void block_unindex(struct gpu_heap *h, block *b);
/* Marks as owned by b every extent lying wholly inside b (or clears them). */
void block_claim_extents(struct gpu_heap *h, block *b);
void block_unclaim_extents(struct gpu_heap *h, block *b);
/* True when b starts and ends at extent boundaries and owns every extent in it. */
bool block_owns_all(struct gpu_heap *h, const block *b);
/* The end address of a block. */
static inline uintptr_t block_end(const block *b) { return b->start + b->size; }

#endif /* GPUHEAP_CORE_BLOCK_H */
