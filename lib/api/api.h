/*
 * api.h — what the public entry points (lib/api) offer the other upper layers:
 * the interposer (lib/preload), file mappings (lib/file) and the statistics
 * output (lib/obs) find heaps the way gpu_* calls do.
 */
#ifndef GPUHEAP_API_H
#define GPUHEAP_API_H

#include "core/heap.h"

/* The heap a gpu_heap_* call names: NULL is the default heap, anything else must
 * be live; NULL with the error reported otherwise. */
gpu_heap_t *api_heap(gpu_heap_t *heap);
/* gpu_heap_create over a backend the caller opened (tests: fault injection). */
int gh_heap_create_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out);
/* The default heap of CUDA device dev, created on first use (gpu_heap_default
 * for a device named by the caller: the interposer, the framework entry points);
 * NULL with the error reported. */
gpu_heap_t *gh_heap_default_of(int dev);
/* The default heap of dev if it exists, without creating it. */
gpu_heap_t *gh_heap_default_peek(int dev);
/* The configuration default heaps are made from (gpu_config_init, read once). */
const gpu_config_t *gh_default_config(void);

/* config.c: parses "123", "64K", "2M", "1G", "64T", "max"; false on a malformed value. */
bool config_parse_size(const char *s, size_t *out);

#endif /* GPUHEAP_API_H */
