/*
 * blockmap.c — finds a live block's record from the pointer the caller holds.
 *
 * Block records live in host memory, outside the device memory they describe, so
 * gpu_free(ptr) needs a map from address to record. Only block starts are keys:
 * a lookup of an interior pointer or of a freed block finds nothing, which is how
 * double frees and interior pointers are told apart from live blocks. The map is
 * an open-addressing hash table with linear probing and backward-shift deletion
 * (no tombstones), so insert, find and remove are O(1) expected and the table
 * never degrades under the malloc/free churn an allocator sees.
 */
#include <stdlib.h>

#include "core/internal.h"

#define BLOCKMAP_MIN_CAP 1024

/* Fibonacci hashing of a 256-aligned address onto the table. */
static inline size_t slot_of(const blockmap *m, uintptr_t key) {
    return (size_t)(((uint64_t)(key >> 8) * 0x9E3779B97F4A7C15ull) >> 20) & (m->cap - 1);
}

static int table_alloc(blockmap *m, size_t cap) {
    m->keys = calloc(cap, sizeof *m->keys);
    m->vals = calloc(cap, sizeof *m->vals);
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        m->keys = NULL;
        m->vals = NULL;
        return GPU_ERR_OUT_OF_MEMORY;
    }
    m->cap = cap;
    m->used = m->live = 0;
    return GPU_OK;
}

int blockmap_init(blockmap *m) { return table_alloc(m, BLOCKMAP_MIN_CAP); }

void blockmap_free(blockmap *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->used = m->live = 0;
}

/* Places key in the table without growing it; the caller made room. */
static void place(blockmap *m, uintptr_t key, block *val) {
    size_t i = slot_of(m, key);
    while (m->keys[i]) i = (i + 1) & (m->cap - 1);
    m->keys[i] = key;
    m->vals[i] = val;
    m->used++;
    m->live++;
}

/* Doubles the table, keeping the load factor under 1/2. */
static int grow(blockmap *m) {
    blockmap old = *m;
    if (table_alloc(m, old.cap * 2) != GPU_OK) {
        *m = old;
        return GPU_ERR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < old.cap; i++)
        if (old.keys[i]) place(m, old.keys[i], old.vals[i]);
    blockmap_free(&old);
    return GPU_OK;
}

int blockmap_reserve(blockmap *m, size_t n) {
    while ((m->used + n) * 2 > m->cap)
        if (grow(m) != GPU_OK) return GPU_ERR_OUT_OF_MEMORY;
    return GPU_OK;
}

void blockmap_insert(blockmap *m, block *b) {
    gh_assert(b->start > 1, "block addresses are never 0 or 1");
    gh_assert((m->used + 1) * 2 <= m->cap, "blockmap_reserve made room first");
    place(m, b->start, b);
}

block *blockmap_find(const blockmap *m, uintptr_t start) {
    for (size_t i = slot_of(m, start);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == start) return m->vals[i];
        if (!m->keys[i]) return NULL;
    }
}

void blockmap_remove(blockmap *m, uintptr_t start) {
    size_t mask = m->cap - 1, i = slot_of(m, start);
    while (m->keys[i] != start) {
        gh_assert(m->keys[i], "removing a key that is in the map");
        i = (i + 1) & mask;
    }
    /* Backward shift: pull later entries of the probe run into the hole. */
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t home = slot_of(m, m->keys[j]);
        bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (between) continue;
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        i = j;
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
    m->used--;
    m->live--;
}
