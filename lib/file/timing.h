/*
 * timing.h — where a gpu_map_file load spends its time (timing.c).
 *
 * With GPUHEAP_FILE_TIMING=1 in the environment (read once per process), every
 * loaded mapping prints one line to stderr: the milliseconds of each phase of
 * the call, on the calling thread (open/stat, staging, worker start, heap
 * allocation, the tail's zeroing, protection), the load's shape (threads, piece
 * size), and the pipeline's marks seen by
 * the loader threads (first copy issued, last read done, all copies done), with
 * the threads' summed time in read(), in waits for copies and in issuing them.
 * Unset, a load pays one relaxed load of a flag; nothing else is timed.
 */
#ifndef GPUHEAP_FILE_TIMING_H
#define GPUHEAP_FILE_TIMING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct load_timing {
    /* Marks on the calling thread, ns since the monotonic epoch; 0 = not reached. */
    uint64_t begin, opened, staged, started, allocated, copied, tail, protected_, end;
    bool pinned;         /* staging was allocated (pinned) by this load */
    unsigned threads;    /* threads that ran the load (the caller's included) */
    unsigned new_threads; /* of those, started by this load (0 once they are kept) */
    bool direct;         /* cuFile */
    size_t chunk;        /* the largest piece (GPUHEAP_FILE_CHUNK or the size-aware default) */
    bool small;          /* the size-aware defaults changed threads or chunk (tune.c) */
    size_t bytes;
    /* Marks and sums from the loader threads. */
    _Atomic uint64_t first_issue; /* the first copy queued */
    _Atomic uint64_t last_worker; /* the last thread to begin its share */
    _Atomic uint64_t last_read;   /* the last read() finished */
    _Atomic uint64_t read_ns, wait_ns, issue_ns, dst_wait_ns; /* summed over threads */
    _Atomic unsigned pieces;
} load_timing;

/* Whether GPUHEAP_FILE_TIMING=1 (read once). */
bool file_timing_enabled(void);
/* Adds the nanoseconds since t0 (gh_mono_ns) to *sum, a sum over threads;
 * returns the time it took as now. */
uint64_t file_timing_add(_Atomic uint64_t *sum, uint64_t t0);
/* Sets *a to t when t is later (a is a mark written by several threads). */
void file_timing_max(_Atomic uint64_t *a, uint64_t t);
/* Sets *a to t when *a is still 0. */
void file_timing_first(_Atomic uint64_t *a, uint64_t t);
/* Prints t's line to stderr. */
void file_timing_print(const load_timing *t, const char *path);

#endif /* GPUHEAP_FILE_TIMING_H */
