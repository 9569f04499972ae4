/*
 * trace.c — recording every call on every heap (GPUHEAP_TRACE=FILE, gpu_trace_start).
 *
 * A trace is the raw material for replay (tools/gpuheap-replay), for pictures of
 * the heap over time (tools/gpuheap-plot) and for comparing allocators on a real
 * program's pattern. It has to be cheap enough to leave on, so the call being
 * recorded pays only two reads of the time-stamp counter and one 64-byte store
 * into a buffer of its own thread; nothing is formatted and no lock is taken on
 * that path. A full buffer (TRACE_BATCH records) is handed to a writer thread,
 * which turns it into text and writes it; the thread takes an empty one and goes
 * on. Stopping the trace (or the process's exit) flushes what every thread has
 * buffered. The hooks run after the heap has released its lock (lib/api) or in
 * the backend door (lib/backend/door.c), which holds no heap lock, and touch only trace
 * state, so tracing can never deadlock with a heap.
 *
 * The file is text, one event a line, columns separated by one space:
 *
 *     t_ns tid op heap stream addr size arg flags result rc dur_ns
 *
 * Each column's meaning per op is in README.md ("Trace format"), the one place
 * it is written down; trace.h's enum names the ops and the line under each.
 *
 * Lines starting with '#' are comments; the first says "# gpuheap trace 1".
 * Each thread's lines come in batches, so the file as a whole is not in time
 * order: readers sort. To order events of different threads, use t_ns + dur_ns
 * for malloc (an address exists once the call returned) and t_ns for everything
 * else (an address is given up once the call began); see tools/trace_replay.c.
 *
 * Time comes from the x86 time-stamp counter (invariant on every CPU a GPU
 * server has), converted to nanoseconds when formatted, against CLOCK_MONOTONIC
 * over the whole trace so far; elsewhere from CLOCK_MONOTONIC itself. A process
 * that forks keeps recording only in the parent.
 */
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "obs/trace.h"

#define TRACE_BATCH 4096 /* records per buffer: 288 KiB */
#define SPARE_BATCHES 4  /* made ready by gpu_trace_start */

_Atomic int trace_on;

static const char *const op_names[TRACE_OP_COUNT] = {
    [TRACE_MALLOC] = "malloc",   [TRACE_FREE] = "free",       [TRACE_REALLOC] = "realloc",
    [TRACE_PROTECT] = "protect", [TRACE_TRIM] = "trim",       [TRACE_RESERVE] = "reserve",
    [TRACE_UNRESERVE] = "unreserve", [TRACE_MAP] = "map",     [TRACE_UNMAP] = "unmap",
    [TRACE_FENCE] = "fence",     [TRACE_COPY] = "copy",       [TRACE_MEMSET] = "memset",
    [TRACE_MAP_FILE] = "map_file", [TRACE_SYNC_FILE] = "sync_file", [TRACE_UNMAP_FILE] = "unmap_file",
    [TRACE_CREATE] = "create",   [TRACE_RELEASE] = "release", [TRACE_ACCESS] = "access",
    [TRACE_PAUSE] = "pause",     [TRACE_RESUME] = "resume",
    [TRACE_EXPORT] = "export",   [TRACE_IMPORT] = "import",   [TRACE_IPC_OPEN] = "ipc_open",
    [TRACE_IPC_CLOSE] = "ipc_close", [TRACE_IPC_REQUEST] = "ipc_request", [TRACE_IPC_LOOKUP] = "ipc_lookup",
};

/* A buffer of records: a thread's current one, queued for the writer, or free. */
typedef struct trace_batch {
    struct trace_batch *next;
    size_t n;
    trace_event ev[TRACE_BATCH];
} trace_batch;

/* One recording thread. Only its owner writes records; count is published with
 * release so that a flush from another thread reads whole records. */
typedef struct trace_thread {
    trace_batch *batch;
    _Atomic size_t count;
    uint64_t gen;      /* the trace session the buffer's records belong to */
    uint32_t tid;
    struct trace_thread *prev, *next;
} trace_thread;

/* Everything below is guarded by lock, except what is read on the record path:
 * trace_on, gen (read relaxed: a stale value only costs a reset) and each
 * thread's own state. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static trace_thread *threads;           /* every thread that ever recorded and has not exited */
static trace_batch *queue, **queue_tail = &queue; /* full batches for the writer, oldest first */
static trace_batch *spare;              /* empty batches */
static trace_batch *writing;            /* the batches the writer formats now, outside the lock */
static _Atomic uint64_t gen;            /* trace session; 0 before the first */
static int out = -1;         /* the trace file: plain write(2), no stdio buffer a fork could duplicate */
static bool write_failed;    /* a write failed: gpu_trace_stop reports it */
static int write_errno;       /* its errno */
static bool writer_running, writer_stop;
static pthread_t writer;
static pthread_key_t thread_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static _Thread_local trace_thread *self;

/* The clock: ticks on the record path, nanoseconds in the file, at one fixed
 * rate per session (a rate that changed while the file is written would reorder
 * events of different batches). */
static uint64_t tick0, ns0;
static double tick_ns = 1.0;

/* Nanoseconds per tick, measured against CLOCK_MONOTONIC over CALIBRATE_NS at
 * the trace's start: a rate error of ~1e-5, so event order is exact and times
 * drift by ~10 µs a second at most. */
#define CALIBRATE_NS 10000000u

static void calibrate(void) {
    ns0 = gh_mono_ns();
    tick0 = trace_tick();
#if defined(__x86_64__) || defined(__i386__)
    uint64_t n;
    while ((n = gh_mono_ns()) - ns0 < CALIBRATE_NS) {}
    uint64_t t = trace_tick();
    tick_ns = t > tick0 ? (double)(n - ns0) / (double)(t - tick0) : 1.0;
    tick0 = t; /* the trace starts now */
    ns0 = n;
#endif
}

/* ---- formatting (writer thread, or the thread that stops the trace) --------- */

static char *put_dec(char *p, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static char *put_hex(char *p, uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    int n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    *p++ = '0';
    *p++ = 'x';
    while (n) *p++ = tmp[--n];
    return p;
}

/* Writes len bytes to the trace file, whatever write(2) takes at a time. */
static void put_out(const char *p, size_t len) {
    while (len && out >= 0) {
        ssize_t n = write(out, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            write_failed = true;
            write_errno = n < 0 ? errno : ENOSPC;
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Writes n records as text, a chunk at a time. Called by the writer, or by the
 * thread that stops the trace once the writer is gone: one thread at a time. */
static void format_batch(const trace_event *ev, size_t n) {
    const double scale = tick_ns;
    char chunk[1 << 16];
    char *p = chunk;
    for (size_t i = 0; i < n; i++) {
        const trace_event *e = &ev[i];
        if (p > chunk + sizeof chunk - 320) {
            put_out(chunk, (size_t)(p - chunk));
            p = chunk;
        }
        uint64_t rel = e->tick > tick0 ? e->tick - tick0 : 0;
        p = put_dec(p, (uint64_t)((double)rel * scale));
        *p++ = ' ';
        p = put_dec(p, e->tid);
        *p++ = ' ';
        const char *name = trace_op_name((trace_op)e->op);
        size_t len = strlen(name);
        memcpy(p, name, len);
        p += len;
        const uint64_t hex[3] = {e->heap, e->stream, e->addr}, dec[3] = {e->size, e->arg, e->flags};
        for (int k = 0; k < 3; k++) *p++ = ' ', p = put_hex(p, hex[k]);
        for (int k = 0; k < 3; k++) *p++ = ' ', p = put_dec(p, dec[k]);
        *p++ = ' ';
        p = put_hex(p, e->result);
        *p++ = ' ';
        if (e->rc < 0) *p++ = '-';
        p = put_dec(p, (uint64_t)(e->rc < 0 ? -(int64_t)e->rc : e->rc));
        *p++ = ' ';
        p = put_dec(p, (uint64_t)((double)e->dur * scale));
        *p++ = '\n';
    }
    put_out(chunk, (size_t)(p - chunk));
}

/* The writer: formats full batches as they come, until told to stop with the
 * queue empty. */
static void *writer_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!queue && !writer_stop) pthread_cond_wait(&queue_cond, &lock);
        if (!queue) break;
        writing = queue;
        queue = NULL;
        queue_tail = &queue;
        pthread_mutex_unlock(&lock);
        for (trace_batch *b = writing; b; b = b->next) format_batch(b->ev, b->n);
        pthread_mutex_lock(&lock);
        while (writing) {
            trace_batch *b = writing;
            writing = b->next;
            b->next = spare;
            spare = b;
        }
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* An empty batch, from the spares or new; NULL when the host is out of memory.
 * Called with lock held. */
static trace_batch *batch_get_locked(void) {
    trace_batch *b = spare;
    if (b) spare = b->next;
    else b = malloc(sizeof *b);
    if (b) b->next = NULL;
    return b;
}

/* ---- the recording threads ---------------------------------------------------- */

/* Queues a batch of n records for the writer, started on the first batch. Both
 * ways a batch is handed over (full, or a thread's last at its exit) come here:
 * a thread that exited before any batch filled once left its records in a queue
 * that no writer drained, and a PyTorch trace lost its autograd thread's calls.
 * Called with lock held. */
static void queue_locked(trace_batch *b, size_t n) {
    b->n = n;
    *queue_tail = b;
    queue_tail = &b->next;
    if (!writer_running && pthread_create(&writer, NULL, writer_main, NULL) == 0) writer_running = true;
    pthread_cond_signal(&queue_cond);
}

/* A thread that exits hands over what it recorded in the current session. */
static void thread_exit(void *arg) {
    trace_thread *t = arg;
    pthread_mutex_lock(&lock);
    size_t n = atomic_load_explicit(&t->count, memory_order_acquire);
    if (atomic_load(&trace_on) && t->gen == atomic_load(&gen) && n && t->batch) {
        queue_locked(t->batch, n);
    } else if (t->batch) {
        t->batch->next = spare;
        spare = t->batch;
    }
    if (t->prev) t->prev->next = t->next;
    else threads = t->next;
    if (t->next) t->next->prev = t->prev;
    pthread_mutex_unlock(&lock);
    if (self == t) self = NULL;
    free(t);
}

static void key_create(void) { (void)pthread_key_create(&thread_key, thread_exit); }

/* The calling thread's recording state, made on its first record. */
static trace_thread *thread_self(void) {
    if (self) return self;
    pthread_once(&key_once, key_create);
    trace_thread *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->tid = (uint32_t)syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    t->batch = batch_get_locked();
    t->gen = atomic_load(&gen);
    t->next = threads;
    if (threads) threads->prev = t;
    threads = t;
    pthread_mutex_unlock(&lock);
    if (!t->batch) {
        thread_exit(t);
        return NULL;
    }
    (void)pthread_setspecific(thread_key, t);
    return self = t;
}

/* Hands the thread's full batch to the writer and takes an empty one. False when
 * the trace stopped meanwhile or the host is out of memory (records are dropped). */
static bool thread_swap(trace_thread *t) {
    bool ok = false;
    pthread_mutex_lock(&lock);
    if (atomic_load(&trace_on) && t->gen == atomic_load(&gen)) {
        trace_batch *fresh = batch_get_locked();
        if (fresh) {
            queue_locked(t->batch, TRACE_BATCH);
            t->batch = fresh;
            ok = true;
        }
    }
    atomic_store_explicit(&t->count, 0, memory_order_release);
    pthread_mutex_unlock(&lock);
    return ok;
}

void trace_record(uint64_t t0, const trace_event *e) {
    uint64_t t1 = trace_tick();
    trace_thread *t = self ? self : thread_self();
    if (!t) return;
    uint64_t g = atomic_load_explicit(&gen, memory_order_relaxed);
    if (t->gen != g) { /* records of an earlier session: drop them */
        t->gen = g;
        atomic_store_explicit(&t->count, 0, memory_order_relaxed);
    }
    size_t n = atomic_load_explicit(&t->count, memory_order_relaxed);
    if (n == TRACE_BATCH) {
        if (!thread_swap(t)) return;
        n = 0;
    }
    trace_event *r = &t->batch->ev[n];
    *r = *e;
    r->tick = t0;
    uint64_t d = t1 - t0;
    r->dur = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
    r->tid = t->tid;
    atomic_store_explicit(&t->count, n + 1, memory_order_release);
}

/* ---- fork ----------------------------------------------------------------------- */

/* A child of fork has no writer thread and shares the parent's file (written
 * with write(2), so no buffered bytes are duplicated): the child stops recording
 * and forgets the file. The lock is held across fork so that the child sees
 * consistent state. */
static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_parent(void) { pthread_mutex_unlock(&lock); }
static void fork_child(void) {
    atomic_store(&trace_on, 0);
    out = -1; /* the parent's file: the child leaves it alone (a close would be harmless too) */
    writer_running = false;
    /* The parent writes these; the child keeps the memory as spares (the batches
     * the parent's writer was formatting included: no thread of the child holds them). */
    trace_batch **lists[] = {&queue, &writing};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        while (*lists[i]) {
            trace_batch *b = *lists[i];
            *lists[i] = b->next;
            b->next = spare;
            spare = b;
        }
    queue_tail = &queue;
    atomic_fetch_add(&gen, 1);
    pthread_mutex_unlock(&lock);
}
static void atfork_register(void) { (void)pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* ---- starting and stopping -------------------------------------------------- */

int gpu_trace_start(const char *path) {
    if (!path || !*path) return gh_error(GPU_ERR_INVALID, "gpu_trace_start: no file name");
    static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
    pthread_once(&atfork_once, atfork_register);
    pthread_mutex_lock(&lock);
    if (out >= 0) {
        pthread_mutex_unlock(&lock);
        return gh_error(GPU_ERR_INVALID, "gpu_trace_start(%s): a trace is already being recorded", path);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        pthread_mutex_unlock(&lock);
        return gh_error(GPU_ERR_INVALID, "gpu_trace_start: cannot write %s: %s", path, strerror(e));
    }
    out = fd;
    write_failed = false;
    calibrate();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    char head[256];
    int hn = snprintf(head, sizeof head, "# gpuheap trace 1\n"
                 "# t_ns tid op heap stream addr size arg flags result rc dur_ns\n"
                 "# start %lld.%09ld (unix time), clock %s, pid %d\n",
            (long long)wall.tv_sec, wall.tv_nsec,
#if defined(__x86_64__) || defined(__i386__)
            "tsc",
#else
            "monotonic",
#endif
            (int)getpid());
    put_out(head, hn > 0 ? (size_t)hn : 0);
    /* A few empty batches, touched now, so that the first swaps of a busy
     * thread find memory already faulted in. */
    int have = 0;
    for (trace_batch *b = spare; b; b = b->next) have++;
    for (int i = have; i < SPARE_BATCHES; i++) {
        trace_batch *b = malloc(sizeof *b);
        if (!b) break;
        memset(b, 0, sizeof *b);
        b->next = spare;
        spare = b;
    }
    writer_stop = false;
    atomic_fetch_add(&gen, 1);
    atomic_store(&trace_on, 1);
    pthread_mutex_unlock(&lock);
    gh_ok();
    return GPU_OK;
}

int gpu_trace_stop(void) {
    pthread_mutex_lock(&lock);
    if (out < 0) {
        pthread_mutex_unlock(&lock);
        gh_ok();
        return GPU_OK;
    }
    atomic_store(&trace_on, 0);
    /* The writer drains the queue first, so lines keep their batches' order. */
    writer_stop = true;
    pthread_cond_broadcast(&queue_cond);
    bool joined = writer_running;
    pthread_mutex_unlock(&lock);
    if (joined) pthread_join(writer, NULL);
    pthread_mutex_lock(&lock);
    writer_running = false;
    /* What is still queued — a writer that could not be started leaves it — is
     * formatted here, in the queue's order. */
    while (queue) {
        trace_batch *b = queue;
        queue = b->next;
        format_batch(b->ev, b->n);
        b->next = spare;
        spare = b;
    }
    queue_tail = &queue;
    /* Then what every thread still holds: whole records only (count is
     * published after the record is written). */
    uint64_t g = atomic_load(&gen);
    for (trace_thread *t = threads; t; t = t->next) {
        if (t->gen != g) continue;
        size_t n = atomic_load_explicit(&t->count, memory_order_acquire);
        format_batch(t->batch->ev, n);
    }
    bool closed = close(out) == 0;
    int e = write_failed ? write_errno : errno; /* the write's own error, not a later call's */
    int rc = closed && !write_failed ? GPU_OK : GPU_ERR_INVALID;
    out = -1;
    atomic_fetch_add(&gen, 1); /* what threads still buffer belongs to no session */
    pthread_mutex_unlock(&lock);
    if (rc != GPU_OK) return gh_error(rc, "gpu_trace_stop: writing the trace failed: %s", strerror(e));
    gh_ok();
    return GPU_OK;
}

static void trace_at_exit(void) { (void)gpu_trace_stop(); }

/* GPUHEAP_TRACE with each %p replaced by the process id, so that a program's
 * child processes (dataloader workers, a benchmark's fresh processes) each write
 * their own file instead of truncating one another's. */
static bool trace_env_path(const char *spec, char *out, size_t len) {
    size_t n = 0;
    for (const char *c = spec; *c; c++) {
        bool pid = c[0] == '%' && c[1] == 'p';
        int w = pid ? snprintf(out + n, len - n, "%d", (int)getpid()) : snprintf(out + n, len - n, "%c", *c);
        if (w < 0 || (size_t)w >= len - n) return false;
        n += (size_t)w;
        c += pid;
    }
    return true;
}

static void env_init(void) {
    const char *spec = getenv("GPUHEAP_TRACE");
    char path[4096];
    if (!spec || !*spec) return;
    if (trace_env_path(spec, path, sizeof path) && gpu_trace_start(path) == GPU_OK) atexit(trace_at_exit);
    else fprintf(stderr, "gpuheap: GPUHEAP_TRACE=%s: cannot write the trace\n", spec);
}

void trace_env_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, env_init);
}

const char *trace_op_name(trace_op op) { return op < TRACE_OP_COUNT && op_names[op] ? op_names[op] : "unknown"; }
