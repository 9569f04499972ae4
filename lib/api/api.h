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
/* config.c: the process's settings, read once (GPUHEAP_LIMIT sets the cap). */
void config_process_init(void);
/* GPUHEAP_TAG_RESERVE: the VA a tag's heap reserves first (1 TiB unless set;
 * 0 for "max": as much as granted, as gpu_config_t.reserve_bytes 0 means). */
size_t config_tag_reserve(void);

/* Device ordinals that have a default heap (and a heap per tag). */
#define GH_DEVICES 64
/* The calling thread's current CUDA device (0 without a context, or on the
 * host backend), as the default heaps are chosen. */
int gh_current_device(void);
/* Opens a heap the API layer keeps for the process (a default heap, a tag's
 * heap): registered, refused by gpu_heap_destroy. The error noted, not reported. */
int gh_heap_open_hidden(const gpu_config_t *cfg, gpu_heap_t **out);

/* ---- region.c: tags and regions -------------------------------------------- */

/* Where an allocation of the calling thread goes on device dev: the heap of the
 * innermost open region's tag, or dev's default heap (the gpu_* calls with
 * heap == NULL, the interposer, the framework entry points). Created on first
 * use; NULL with the error reported. */
gpu_heap_t *gh_heap_for_alloc(int dev);
/* True when the calling thread has a region open. */
bool gh_region_open(void);

#endif /* GPUHEAP_API_H */
