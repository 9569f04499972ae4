/*
 * tune.c — the knobs of a load: how many threads, how large a piece.
 *
 * A load runs on GPUHEAP_FILE_THREADS threads (8, at most the CPUs), each with
 * two staging buffers of GPUHEAP_FILE_CHUNK bytes (8 MiB) (load.c). Both are
 * read from the environment on every load, cheap next to one, so that a
 * program or a benchmark may change them between loads; GPUHEAP_CUFILE=1 asks
 * for cuFile on every load.
 *
 * Size-aware defaults: a load of at most twice its staging set (length <=
 * threads x 2 buffers x chunk x 2: 256 MiB with the defaults) reads each buffer
 * about twice, and its time is mostly the pipeline's filling and draining; it
 * runs on 12 threads (at most the CPUs) with 4 MiB chunks, which measured
 * 71-76% of the H200's copy bandwidth at 256 MiB against 62% for 8 x 8 MiB. A
 * knob set in the environment (GPUHEAP_FILE_THREADS, GPUHEAP_FILE_CHUNK) is
 * kept as it is; the other one still follows the rule (computed with the set
 * value). cuFile loads keep the plain defaults. 12 x 2 x 4 MiB = 96 MiB fits in
 * the default 128 MiB staging set, so loads of either kind keep one allocation
 * of pinned memory (staging.c).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "file/file_internal.h"
#include "common.h"

#define FILE_CHUNK_DEFAULT ((size_t)8 << 20)
#define FILE_CHUNK_MIN ((size_t)4 << 10)
#define FILE_CHUNK_MAX ((size_t)1 << 30)
#define FILE_THREADS_DEFAULT 8u
#define FILE_SMALL_THREADS 12u             /* a small load's threads (size-aware defaults) */
#define FILE_SMALL_CHUNK ((size_t)4 << 20) /* and its chunk */

/* The CPUs are counted once per process; the environment is read every time. */
file_tuning tuning_get(void) {
    file_tuning t = {.threads = FILE_THREADS_DEFAULT, .chunk = FILE_CHUNK_DEFAULT};
    static _Atomic long online; /* sysconf reads /sys: once per process */
    long cpus = atomic_load_explicit(&online, memory_order_relaxed);
    if (cpus == 0) {
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        atomic_store_explicit(&online, cpus > 0 ? cpus : -1, memory_order_relaxed);
    }
    t.cpus = cpus > 0 && cpus < (long)FILE_THREADS_MAX ? (unsigned)cpus : cpus > 0 ? FILE_THREADS_MAX : 0;
    if (t.cpus && t.cpus < t.threads) t.threads = t.cpus;
    const char *s = getenv("GPUHEAP_FILE_THREADS");
    if (s && *s) {
        char *end = NULL;
        long v = strtol(s, &end, 10);
        if (end && !*end && v >= 1 && v <= (long)FILE_THREADS_MAX) {
            t.threads = (unsigned)v;
            t.threads_set = true;
        }
    }
    size_t chunk;
    s = getenv("GPUHEAP_FILE_CHUNK");
    if (s && *s && config_parse_size(s, &chunk) && gh_is_pow2(chunk) && chunk >= FILE_CHUNK_MIN && chunk <= FILE_CHUNK_MAX) {
        t.chunk = chunk;
        t.chunk_set = true;
    }
    s = getenv("GPUHEAP_CUFILE");
    t.cufile = s && strcmp(s, "1") == 0;
    return t;
}

/* The size-aware defaults (the opening comment): a load of at most twice the
 * staging set (threads x 2 slots x chunk x 2) takes FILE_SMALL_THREADS threads
 * (at most the CPUs) and FILE_SMALL_CHUNK pieces, each only where the
 * environment did not set it. */
file_tuning tuning_for(file_tuning t, size_t length) {
    size_t set;
    if (gh_mul_overflow((size_t)t.threads * FILE_SLOTS_PER_THREAD * 2, t.chunk, &set) || length > set) return t;
    if (!t.threads_set) {
        unsigned n = t.cpus && t.cpus < FILE_SMALL_THREADS ? t.cpus : FILE_SMALL_THREADS;
        t.small |= n != t.threads;
        t.threads = n;
    }
    if (!t.chunk_set && t.chunk > FILE_SMALL_CHUNK) {
        t.chunk = FILE_SMALL_CHUNK;
        t.small = true;
    }
    return t;
}
