/*
 * replay_peers.h — gpuheap and the allocators it is compared with, as
 * tr_allocator tables (trace_replay.h), with the memory each one holds.
 *
 * Each peer answers the same two questions after a replay or a workload: how
 * long its calls took (the replay times them) and how much physical memory it
 * held at its peak. Each has its own honest way to say the second:
 *  - gpuheap: its statistics, peak_mapped_bytes of a heap made for the run;
 *  - cudaMalloc: nothing of its own, so the device's used memory (cudaMemGetInfo)
 *    is read at every new peak of live bytes, less what was used before;
 *  - cudaMallocAsync: the pool's reserved-memory high-water mark
 *    (cudaMemPoolAttrReservedMemHigh), reset before the run, on the device's
 *    default pool with its release threshold at its maximum.
 * The CUDA runtime is the one bench/cudart_util.h loads at run time.
 */
#ifndef GPUHEAP_TOOLS_REPLAY_PEERS_H
#define GPUHEAP_TOOLS_REPLAY_PEERS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "gpuheap.h"
#include "trace_replay.h"

/* The driver work gpuheap did since the peer was opened or reset (its heap is
 * made then, so its counters are the run's). */
typedef struct peer_work {
    uint64_t maps, creates, unmaps, fences, seals, releases; /* creates: new physical memory; releases: in legacy free order */
} peer_work;

typedef struct peer {
    tr_allocator a;
    int kind;                 /* PEER_* */
    gpu_heap_t *heap;         /* gpuheap */
    gpu_config_t cfg;         /* gpuheap: what peer_reset creates the heap with */
    void *stream, *pool;      /* cudaMallocAsync */
    size_t base_used;         /* cudaMalloc: device memory used before the run */
    uint64_t peak_seen;       /* cudaMalloc: highest used - base_used sampled */
    uint64_t lag_ns;          /* gpuheap on the host backend: how far its "GPU" trails the calls (peer_set_lag) */
    peer_work half;           /* gpuheap: its driver work when the replay was half done, */
    bool half_seen;           /* once it was */
    char name[64];
} peer;

enum { PEER_GPUHEAP, PEER_CUDA_MALLOC, PEER_CUDA_MALLOC_ASYNC };

/* A kind's name, as peer_open names the peer ("gpuheap", "cudaMalloc",
 * "cudaMallocAsync"); NULL for an unknown kind. */
const char *peer_kind_name(int kind);

/* Opens a peer; cfg is gpuheap's configuration (NULL: gpu_config_init's). The
 * CUDA peers need cudart_load and cudaSetDevice first. Returns 0, or -1 with the
 * reason in err. */
int peer_open(peer *p, int kind, const gpu_config_t *cfg, char *err, size_t err_len);
/* The peak physical bytes the peer held since it was opened (or reset). */
uint64_t peer_peak_physical(peer *p);
/* Starts a new measurement: gpuheap makes a fresh heap, cudaMalloc reads the used
 * memory again, cudaMallocAsync trims its pool and resets its high-water mark. */
int peer_reset(peer *p, char *err, size_t err_len);
/* False for the CUDA peers, which do not count theirs. */
bool peer_driver_work(const peer *p, peer_work *out);
/* The driver work of the replay's second half (its calls after the halfway
 * hook: the steady state, past the warm-up). False for the CUDA peers, and
 * before a replay reached half way. */
bool peer_second_half(const peer *p, peer_work *out);
/* Writes the JSON members `"maps": …, "creates": …, "unmaps": …, "fences": …, "seals": …, "releases": …`. */
void peer_work_json(FILE *f, const peer_work *w);
/* gpuheap on the host backend only: events complete lag_ns after their record
 * on the trace's clock (each replayed call sets it), as on a GPU that runs that
 * far behind the program — so that freed blocks wait for their cover as they did
 * when the trace was recorded. False for any other peer. */
bool peer_set_lag(peer *p, uint64_t lag_ns);
/* Gives everything back (the heap destroyed, the pool trimmed). */
void peer_close(peer *p);

#endif /* GPUHEAP_TOOLS_REPLAY_PEERS_H */
