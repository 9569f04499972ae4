/*
 * stats.h — statistics as text: a heap's snapshot as JSON, and the reports at
 * exit that GPUHEAP_STATS and GPUHEAP_STATS_JSON ask for (stats.c).
 */
#ifndef GPUHEAP_OBS_STATS_H
#define GPUHEAP_OBS_STATS_H

#include "core/heap.h"

/* Writes s, the snapshot of h, as one JSON object into buf (snprintf's length
 * rule: returns the length the whole text needs). */
int stats_json(const gpu_heap_t *h, const gpu_stats_t *s, char *buf, size_t len);
/* Reads GPUHEAP_STATS and GPUHEAP_STATS_JSON once and arms the exit report. */
void stats_env_init(void);
/* An explicit heap is being destroyed: its summary, under GPUHEAP_STATS=1. */
void stats_heap_closing(gpu_heap_t *h);

#endif /* GPUHEAP_OBS_STATS_H */
