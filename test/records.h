/*
 * records.h — block records made by hand, for the white-box tests of the core's
 * indexes (test_tlsf, test_blockmap): zeroed, aligned as the type asks, with a
 * start and a size and nothing else, so that an index is tested alone, without
 * a heap around it.
 */
#ifndef GPUHEAP_TEST_RECORDS_H
#define GPUHEAP_TEST_RECORDS_H

#include <stdlib.h>
#include <string.h>

#include "core/types.h"

/* n zeroed block records (free them with free()). */
static inline block *records(size_t n) {
    block *b = aligned_alloc(_Alignof(block), n * sizeof *b);
    assert_non_null(b);
    memset(b, 0, n * sizeof *b);
    return b;
}

/* b, given a start and a size. */
static inline block *rec(block *b, uintptr_t start, size_t size) {
    b->start = start;
    b->size = size;
    return b;
}

#endif /* GPUHEAP_TEST_RECORDS_H */
