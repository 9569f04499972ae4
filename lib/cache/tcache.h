/*
 * tcache.h — per-thread caches of small blocks, in front of the heap (tcache.c).
 *
 * The API asks a thread's cache first and the heap only on a miss; the heap
 * knows nothing of the caches but the hooks they register (core/heap.h).
 */
#ifndef GPUHEAP_CACHE_TCACHE_H
#define GPUHEAP_CACHE_TCACHE_H

#include "core/heap.h"

/* Blocks larger than this never go through a thread cache. */
#define TC_MAX_BYTES ((size_t)4 << 10)

/* gpu_malloc of size bytes at the minimum alignment, no flags, from the thread's
 * cache: GPU_OK with *out, or GH_MISS when the cache cannot serve it (the caller
 * goes to the heap); other errors are the heap's. */
int tcache_malloc(gpu_heap_t *h, size_t size, void **out);
/* gpu_free through the thread's cache: GPU_OK when the cache took p, GH_MISS
 * when p is not one of its blocks (the caller goes to the heap). */
int tcache_free(gpu_heap_t *h, uintptr_t p);
/* The size of the calling thread's table of blocks its cache of h handed out (0:
 * it has none yet), for tests: it follows what is out, not what went out. */
size_t tcache_handout_slots(gpu_heap_t *h);

#endif /* GPUHEAP_CACHE_TCACHE_H */
