/*
 * tcache.h — per-thread caches of small blocks, in front of the heap (tcache.c).
 *
 * The API asks a thread's cache first and the heap only on a miss; the heap
 * knows nothing of the caches but the hooks they register (core/heap.h).
 */
#ifndef GPUHEAP_CACHE_TCACHE_H
#define GPUHEAP_CACHE_TCACHE_H

#include "core/heap.h"

/* Blocks up to this size go through a thread cache's small classes (one per
 * quantum), larger ones through its mid slots (exact sizes, fewer of them, a
 * budget of their own): under a granule, and whole granules up to at most
 * TC_MID_MAX_BYTES (cache/internal.h, tc_wide_limit_need); larger ones never. */
#define TC_MAX_BYTES ((size_t)4 << 10)
#define TC_MID_MAX_BYTES ((size_t)16 << 20)

/* A plain block of this many granules and more (64 MiB on a GPU) may be kept by
 * its thread from its free to the next allocation it fits, one at a time
 * (big.c). Granules, not bytes, so that the stress and fuzz tests' heaps of
 * 64 KiB granules keep blocks too. */
#define TC_BIG_MIN_GRANULES 32u
static inline size_t tc_big_min(const gpu_heap_t *h) { return TC_BIG_MIN_GRANULES * h->gran; }

/* gpu_malloc of size bytes (at most TC_MID_MAX_BYTES) at the minimum alignment, no
 * flags, from the thread's cache: the block, or NULL when the cache cannot
 * serve it (the caller goes to the heap, which reports any error). */
void *tcache_malloc(gpu_heap_t *h, size_t size);
/* gpu_malloc of size bytes (at least tc_big_min) at the minimum alignment, no
 * flags, through the thread's cache: its kept block when it fits and its cover
 * completed, else the heap's (GPU_OK, *out set), the heap's error, or GH_MISS
 * when the cache does not take the size (the caller asks the heap). Aligned
 * requests (the interposer's: cudaMalloc's alignment) are the heap's: kept
 * blocks under gpuheap-run held a CNN at 2,692 MiB and a GPT at 3,694 on an
 * H200 where the heap alone held 2,486 and 3,512 (bench/RESULTS.md). */
int tcache_malloc_big(gpu_heap_t *h, size_t size, void **out);
/* Before an allocation of this thread goes to the heap: the large block its
 * cache of h keeps, if any, goes back (idle once its cover completed). */
void tcache_give_back_big(gpu_heap_t *h);
/* gpu_free through the thread's cache: true when the cache took p, false when p
 * is not one of its blocks (the caller goes to the heap). */
bool tcache_free(gpu_heap_t *h, uintptr_t p);
/* The size of the calling thread's table of blocks its cache of h handed out (0:
 * it has none yet), for tests: it follows what is out, not what went out. */
size_t tcache_handout_slots(gpu_heap_t *h);

#endif /* GPUHEAP_CACHE_TCACHE_H */
