/*
 * handout.h — the blocks one thread's cache has handed out, by address
 * (handout.c), so that the same thread's gpu_free finds them without the heap.
 *
 * An open-addressing table with linear probing: every block the cache hands out
 * is kept until it comes back, however many are out (the table grows), so a
 * thread that holds ten thousand small blocks frees each through its cache. An
 * entry whose block another thread freed meanwhile (the heap took it back, the
 * tc word moved on) is stale; the table drops those whenever it is about to grow,
 * so a thread whose blocks are freed elsewhere does not grow it without bound.
 * Removal shifts the following entries back (no tombstones), so a lookup ends at
 * the first empty slot. Only the owning thread touches its table.
 */
#ifndef GPUHEAP_CACHE_HANDOUT_H
#define GPUHEAP_CACHE_HANDOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/types.h"

/* A key is the block's start (a multiple of GH_QUANTUM, never 0) with its class
 * in the low bits; 0 marks an empty slot. */
#define HANDOUT_CLASS_MASK ((uintptr_t)0xff)

typedef struct handout {
    uintptr_t key; /* start | class; 0: empty */
    block *b;
    uint64_t w;  /* the tc word the block was handed out with */
    size_t size; /* its class's size then: a mid slot may take another size meanwhile */
} handout;

typedef struct handout_map {
    handout *slot;      /* NULL until the first block goes out */
    uintptr_t base;     /* the heap's base: slots by offset, so two heaps given the same calls probe alike */
    uint32_t mask;      /* slots - 1 (a power of two) */
    uint32_t n;         /* entries */
    uint32_t grow_at;   /* n that makes room first (drops stale entries, grows) */
    uint32_t shrink_at; /* n below which a removal shrinks the table */
} handout_map;

/* Makes room for one more entry (handout.c): drops stale entries and resizes.
 * False when out of host memory (the caller does without). */
bool handout_make_room(handout_map *m);
/* After a removal left few entries in a large table: shrinks it (or not, when
 * out of host memory: nothing is lost). */
void handout_shrink(handout_map *m);
void handout_free(handout_map *m);

/* The slot where a search for start begins. */
static inline uint32_t handout_home(const handout_map *m, uintptr_t start) {
    return (uint32_t)(((uint64_t)(start - m->base) >> 8) * 0x9E3779B97F4A7C15ull >> 32) & m->mask;
}

/* The entry for the block at start, or NULL. */
static inline handout *handout_find(handout_map *m, uintptr_t start) {
    if (!m->n) return NULL;
    for (uint32_t i = handout_home(m, start);; i = (i + 1) & m->mask) {
        handout *e = &m->slot[i];
        if ((e->key & ~HANDOUT_CLASS_MASK) == start) return e;
        if (!e->key) return NULL;
    }
}

/* Remembers that b (at start, of class k and size bytes) went out with tc word w;
 * an older entry for the same start (stale: its block left meanwhile) is
 * replaced. False when out of host memory: then a free of b goes to the heap,
 * which finds it. */
static inline bool handout_put(handout_map *m, uintptr_t start, unsigned k, size_t size, block *b, uint64_t w) {
    if (m->n >= m->grow_at && !handout_make_room(m)) return false;
    uint32_t i = handout_home(m, start);
    while (m->slot[i].key && (m->slot[i].key & ~HANDOUT_CLASS_MASK) != start) i = (i + 1) & m->mask;
    m->n += !m->slot[i].key;
    m->slot[i] = (handout){start | k, b, w, size};
    return true;
}

/* Removes e: the entries after it that would no longer be found move back. The
 * table may be left due for shrinking (n < shrink_at): the caller then calls
 * handout_shrink, once it is done with the entry's contents. */
static inline void handout_take(handout_map *m, handout *e) {
    uint32_t i = (uint32_t)(e - m->slot);
    for (uint32_t j = (i + 1) & m->mask; m->slot[j].key; j = (j + 1) & m->mask) {
        uint32_t h = handout_home(m, m->slot[j].key & ~HANDOUT_CLASS_MASK);
        /* j's entry may fill the hole at i unless its home lies in (i, j] (cyclically) */
        if (((j - h) & m->mask) >= ((j - i) & m->mask)) {
            m->slot[i] = m->slot[j];
            i = j;
        }
    }
    m->slot[i].key = 0;
    m->n--;
}


#endif /* GPUHEAP_CACHE_HANDOUT_H */
