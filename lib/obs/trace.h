/*
 * trace.h — recording every call (GPUHEAP_TRACE, gpu_trace_start; trace.c).
 *
 * trace_record is a probe any layer may call — the API for each public call,
 * the backend door for each driver call, file mappings — and it takes no heap
 * lock and calls nothing of gpuheap back: it only hands the event to the trace's
 * writer thread. One relaxed load decides whether a call is traced at all.
 */
#ifndef GPUHEAP_OBS_TRACE_H
#define GPUHEAP_OBS_TRACE_H

#include <stdatomic.h>
#include <stdint.h>

#include "common.h"

/* What a trace line records; the names are in trace.c. Later ops go before
 * TRACE_OP_COUNT (readers skip names they do not know). */
typedef enum trace_op {
    TRACE_MALLOC, TRACE_FREE, TRACE_REALLOC, TRACE_PROTECT, TRACE_TRIM,
    TRACE_RESERVE, TRACE_UNRESERVE, TRACE_MAP, TRACE_UNMAP, TRACE_FENCE, TRACE_COPY, TRACE_MEMSET,
    TRACE_MAP_FILE, TRACE_SYNC_FILE, TRACE_UNMAP_FILE, /* lib/file: addr = mapping, size = length, arg = file offset */
    TRACE_CREATE, TRACE_RELEASE, TRACE_ACCESS, /* backend/door.c: physical memory made, given back; access set */
    TRACE_PAUSE, TRACE_RESUME, /* api/region.c: a tag's heap paused or resumed; addr = heap, size = bytes, flags = backup */
    TRACE_EXPORT, TRACE_IMPORT, /* backend/door.c: a handle made an fd for another process; an fd made a handle */
    TRACE_IPC_OPEN, TRACE_IPC_CLOSE, /* api/ipc.c: gpu_ipc_open_mem_handle, gpu_ipc_close_mem_handle */
    TRACE_IPC_REQUEST, /* ipc/client.c: an importer's request, sent until its reply is whole */
    TRACE_IPC_LOOKUP,  /* ipc/server.c: the exporter's lookup of one request (its exports included) */
    TRACE_OP_COUNT
} trace_op;

/* One event; trace_record fills tick, dur and tid, the caller the rest (the
 * meaning of each field per op is at the top of trace.c). */
typedef struct trace_event {
    uint64_t tick;             /* when the call began (trace_tick) */
    uint64_t heap, stream, addr, size, arg, result;
    uint32_t dur;              /* ticks the call took, saturated */
    uint32_t tid;
    int8_t rc;
    uint8_t op;                /* trace_op */
    uint8_t flags;
} trace_event;

extern _Atomic int trace_on;

/* The time-stamp counter where there is one (read on every traced call), else
 * CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t trace_tick(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    return gh_mono_ns();
#endif
}
/* The start of a traced call: its tick, or 0 when no trace runs (then skip
 * trace_record). One relaxed load when tracing is off. */
static inline uint64_t trace_begin(void) {
    return atomic_load_explicit(&trace_on, memory_order_relaxed) ? trace_tick() : 0;
}
/* Records e as a call that began at t0 and ends now. Takes no heap lock. */
void trace_record(uint64_t t0, const trace_event *e);
/* Reads GPUHEAP_TRACE once and starts the trace it names. */
void trace_env_init(void);
const char *trace_op_name(trace_op op);

#endif /* GPUHEAP_OBS_TRACE_H */
