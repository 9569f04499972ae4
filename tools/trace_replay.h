/*
 * trace_replay.h — reading a gpuheap trace, and replaying its calls against any
 * allocator.
 *
 * A trace (lib/trace.c writes it; README.md, "Trace format", describes it) is a
 * program's allocation pattern with its timing. Replaying it against gpuheap,
 * cudaMalloc and cudaMallocAsync in one process answers "which allocator would
 * have served this program best, in time and in memory held". The replay needs
 * only the calls a program made (malloc, free, realloc, trim); the backend events
 * (map, unmap, fence…) describe what gpuheap did underneath and are what
 * tools/gpuheap-plot draws. An allocator is a table of functions (tr_allocator),
 * so the same replay drives every peer; tools/replay_peers.h has the three.
 *
 * Addresses in a trace are the recording run's; the replay maps each to the
 * pointer its allocator returned. Events of different threads are ordered by
 * time (tr_sort), which can leave an address handed out again before the line
 * that freed it: the replay then frees the stale block first and counts a
 * conflict, rather than stopping.
 */
#ifndef GPUHEAP_TOOLS_TRACE_REPLAY_H
#define GPUHEAP_TOOLS_TRACE_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The trace's ops; names as in the file. TR_UNKNOWN: a name this reader does not
 * know (a later version's op), kept and skipped. */
typedef enum tr_op {
    TR_MALLOC, TR_FREE, TR_REALLOC, TR_PROTECT, TR_TRIM, TR_RESERVE, TR_UNRESERVE,
    TR_MAP, TR_UNMAP, TR_FENCE, TR_COPY, TR_MEMSET, TR_CREATE, TR_RELEASE, TR_ACCESS,
    TR_MAP_FILE, TR_SYNC_FILE, TR_UNMAP_FILE, TR_EXPORT, TR_IMPORT, TR_IPC_OPEN, TR_IPC_CLOSE,
    TR_IPC_REQUEST, TR_IPC_LOOKUP, TR_UNKNOWN
} tr_op;

typedef struct tr_event {
    uint64_t t_ns, dur_ns;
    uint64_t heap, stream, addr, size, arg, result;
    uint32_t tid, flags;
    int32_t rc;
    int op;          /* tr_op */
    uint64_t line;   /* position in the file: ties keep file order */
} tr_event;

typedef struct tr_trace {
    tr_event *ev;
    size_t n, cap;
    size_t unknown_ops; /* lines whose op this reader does not know */
    size_t bad_lines;   /* lines that do not parse */
} tr_trace;

const char *tr_op_name(int op);
int tr_op_from_name(const char *name, size_t len);
static inline bool tr_op_is_call(int op) { return op <= TR_TRIM; } /* an application's call, not the backend's work */

/* Parses one line. 1: *e holds an event; 0: a comment or blank line; -1: not a
 * trace line. */
int tr_parse_line(const char *line, tr_event *e);

/* Appends one event (tests build traces by hand; the random workload too).
 * Returns 0, or -1 when out of memory. */
int tr_push(tr_trace *t, const tr_event *e);

/* Reads a whole trace (a path ending in .gz is read through gzip -dc) and sorts
 * it. Returns 0, or -1 with the reason in err: the file cannot be read, or it is
 * not a trace (empty; or without the "# gpuheap trace" first line and with no
 * more records than lines that do not parse; or records none at all). */
int tr_load(const char *path, tr_trace *t, char *err, size_t err_len);

/* Orders events as they happened: malloc by its end (the address exists once the
 * call returned), everything else by its start; ties in file order. */
void tr_sort(tr_trace *t);
void tr_free(tr_trace *t);

/* The backend's work recorded inside one application call. */
typedef struct tr_call_work {
    size_t creates, releases, maps, unmaps, fences;
} tr_call_work;

/* What a trace holds, without replaying it. Physical memory is what the
 * recorded heap held in handles (created, not yet released), mapped or not; a
 * handle mapped at two addresses at once (a paged heap's lingering page) counts
 * twice in the mapped bytes and once here. */
typedef struct tr_summary {
    size_t events, mallocs, frees, reallocs, others, failed_calls, threads;
    size_t calls;            /* application calls (tr_op_is_call) */
    size_t maps, unmaps, fences;
    uint64_t peak_live;      /* highest sum of requested bytes live (application calls only) */
    uint64_t peak_mapped;    /* highest sum of mapped extent bytes (map/unmap events) */
    uint64_t peak_physical;  /* highest sum of handles' bytes created and not released */
    size_t peak_call;        /* the application call in which that peak was first reached (index in ev), or SIZE_MAX */
    size_t peak_call_nth;    /* and which call it was, counting from 1 */
    tr_call_work peak_work;  /* what the backend did in that call */
    uint64_t start_ns;       /* the first event's start */
    uint64_t span_ns;        /* first event's start to last event's end */
} tr_summary;
void tr_summarize(const tr_trace *t, tr_summary *s);

/* An allocator under replay. alloc and free are required; the rest may be NULL. */
typedef struct tr_allocator {
    const char *name;
    void *ctx;
    void *(*alloc)(void *ctx, size_t size, size_t align, unsigned flags); /* NULL on failure */
    int (*free)(void *ctx, void *p);                                        /* 0 or an error */
    /* Resize keeping contents; NULL: the replay allocates, copies (copy, if
     * given) and frees, and counts the bytes copied. */
    void *(*realloc)(void *ctx, void *p, size_t old_size, size_t size);
    int (*copy)(void *ctx, void *dst, const void *src, size_t n);
    int (*trim)(void *ctx, size_t keep);
    /* gpu_protect of [p, p+size); only calls on a block's start are replayed. */
    int (*protect)(void *ctx, void *p, size_t size, int prot);
    /* Untimed: called each time the live bytes reach a new peak, to read how much
     * memory the allocator holds (cudaMalloc has no other way to say). */
    void (*sample)(void *ctx);
    /* Timed, once at the end: waits for the allocator's work (a stream sync). */
    int (*finish)(void *ctx);
    /* Untimed, before each replayed call: the recording's time of that call
     * (nanoseconds from the trace's start), for an allocator that models time. */
    void (*clock)(void *ctx, uint64_t t_ns);
    /* Untimed, once, when half of the trace's application calls have been
     * replayed: an allocator that counts its own work can tell what the run's
     * second half cost — its steady state — from its warm-up. */
    void (*halfway)(void *ctx);
} tr_allocator;

typedef struct tr_result {
    double seconds;          /* the replay's calls, sampling excluded */
    size_t calls;            /* allocator calls made */
    size_t failed;           /* calls that failed in the replay but not in the recording */
    size_t skipped;          /* events not replayed: failed when recorded, unknown, protect or trim the allocator lacks, or a free of an address never seen */
    size_t conflicts;        /* an address handed out again before its free's line: the stale block was freed first */
    uint64_t peak_live;      /* highest sum of requested bytes live */
    uint64_t copied_bytes;   /* bytes copied by a realloc done as alloc + copy + free */
    char first_error[160];
} tr_result;

/* Replays every application call of t in order, then frees what is still live
 * (untimed). Returns 0, or -1 when the replay could not run at all (out of host
 * memory); allocator failures are counted in r->failed, not fatal. */
int tr_replay(const tr_trace *t, const tr_allocator *a, tr_result *r);

#endif /* GPUHEAP_TOOLS_TRACE_REPLAY_H */
