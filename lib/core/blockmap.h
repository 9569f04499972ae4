/*
 * blockmap.h — the address map: a live block's record from its start address in
 * O(1) (blockmap.c). Interior pointers and freed blocks are not found.
 */
#ifndef GPUHEAP_CORE_BLOCKMAP_H
#define GPUHEAP_CORE_BLOCKMAP_H

#include "core/types.h"

int blockmap_init(blockmap *m);
void blockmap_free(blockmap *m);
/* Makes room for n more keys so that the next n inserts cannot fail. */
int blockmap_reserve(blockmap *m, size_t n);
void blockmap_insert(blockmap *m, block *b);
block *blockmap_find(const blockmap *m, uintptr_t start);
void blockmap_remove(blockmap *m, uintptr_t start);

#endif /* GPUHEAP_CORE_BLOCKMAP_H */
