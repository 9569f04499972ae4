/*
 * timing.c — the phase breakdown of a gpu_map_file load (see timing.h).
 *
 * A load of a file from the page cache should cost what its copies to the device
 * cost; bench/RESULTS.md ("File loading") found ~2.5 ms beyond that on an H200 (at
 * 256 MiB) and nothing said where it went. This prints, per load, the calling
 * thread's phases in order and the pipeline's marks, all as milliseconds from
 * the call's start, so that one GPU run shows the split:
 *
 *   gpuheap: map_file 256.0 MiB 7.800 ms 34.4 GB/s | open 0.010 staging 0.002 (kept)
 *   start 0.015 (12 threads, 0 new; 4096 KiB pieces, small-load defaults; last
 *   running at 0.040) alloc 0.060 | first copy
 *   at 0.210, last read at 7.100, copies done at 7.450 | tail 0.000 protect 0.030
 *   end 0.005 | thread sums: read 50.1 wait 3.2 issue 0.4 dst-wait 0.1 ms, 40 pieces
 *
 * (one line). "open".."alloc", "tail", "protect" and "end" are durations of
 * steps on the calling thread; "at" values are times since the call began.
 */
#include "file/timing.h"
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic int timing_env = -1; /* -1 unread, 0 off, 1 on */

bool file_timing_enabled(void) {
    int v = atomic_load_explicit(&timing_env, memory_order_relaxed);
    if (v < 0) {
        const char *s = getenv("GPUHEAP_FILE_TIMING");
        v = s && strcmp(s, "1") == 0;
        atomic_store_explicit(&timing_env, v, memory_order_relaxed);
    }
    return v;
}

uint64_t file_timing_add(_Atomic uint64_t *sum, uint64_t t0) {
    uint64_t t = gh_mono_ns();
    atomic_fetch_add_explicit(sum, t - t0, memory_order_relaxed);
    return t;
}

void file_timing_max(_Atomic uint64_t *a, uint64_t t) {
    uint64_t cur = atomic_load_explicit(a, memory_order_relaxed);
    while (cur < t && !atomic_compare_exchange_weak_explicit(a, &cur, t, memory_order_relaxed, memory_order_relaxed)) {
    }
}

void file_timing_first(_Atomic uint64_t *a, uint64_t t) {
    uint64_t zero = 0;
    atomic_compare_exchange_strong_explicit(a, &zero, t, memory_order_relaxed, memory_order_relaxed);
}

/* Milliseconds from a to b; 0 when either mark is missing. */
static double ms(uint64_t a, uint64_t b) { return a && b && b >= a ? (double)(b - a) / 1e6 : 0.0; }

void file_timing_print(const load_timing *t, const char *path) {
    uint64_t b = t->begin;
    double total = ms(b, t->end);
    double gbps = total > 0 ? (double)t->bytes / (total * 1e6) : 0;
    uint64_t first = atomic_load(&t->first_issue), last_read = atomic_load(&t->last_read);
    uint64_t last_worker = atomic_load(&t->last_worker);
    fprintf(stderr,
            "gpuheap: map_file %.1f MiB %.3f ms %.1f GB/s | open %.3f staging %.3f (%s) start %.3f (%u threads, %u new; "
            "%zu KiB pieces%s%s; last running at %.3f) alloc %.3f | first copy at %.3f, last read at %.3f, copies done at %.3f (final wait %.3f) | "
            "tail %.3f protect %.3f end %.3f | thread sums: read %.3f wait %.3f issue %.3f dst-wait %.3f ms, %u pieces%s | %s\n",
            (double)t->bytes / (1 << 20), total, gbps, ms(b, t->opened), ms(t->opened, t->staged),
            t->direct ? "cuFile" : t->pinned ? "pinned now" : "kept", ms(t->staged, t->started), t->threads, t->new_threads,
            t->chunk >> 10, t->small ? ", small-load defaults" : "", t->direct ? ", cuFile" : "", ms(b, last_worker), ms(t->started, t->allocated), ms(b, first), ms(b, last_read), ms(b, t->copied),
            ms(last_read, t->copied), ms(t->copied, t->tail), ms(t->tail, t->protected_), ms(t->protected_, t->end),
            (double)atomic_load(&t->read_ns) / 1e6, (double)atomic_load(&t->wait_ns) / 1e6,
            (double)atomic_load(&t->issue_ns) / 1e6, (double)atomic_load(&t->dst_wait_ns) / 1e6, atomic_load(&t->pieces),
            t->direct ? " (cuFile: read = direct reads)" : "", path);
}
