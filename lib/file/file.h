/*
 * file.h — what lib/file offers the API: gpu_heap_trim gives its pinned staging
 * buffers back. Everything else of file-backed memory is public (gpuheap.h) or
 * reaches the core through hooks.
 */
#ifndef GPUHEAP_FILE_H
#define GPUHEAP_FILE_H

#include "core/heap.h"

/* Gives back the pinned staging buffers cached for h (gpu_heap_trim). */
void file_release_staging(gpu_heap_t *h);

#endif /* GPUHEAP_FILE_H */
