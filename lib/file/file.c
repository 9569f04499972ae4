/*
 * file.c — file-backed GPU memory: gpu_map_file, gpu_sync_file, gpu_unmap_file.
 *
 * The CUDA driver cannot take a regular file's descriptor as device memory
 * (DESIGN.md §3), so a "mapped file" here is one of two things. A loaded mapping
 * is a block of the heap that owns its extents, filled with the file's bytes and,
 * unless it is writable, protected read-only afterwards: the model-weights case,
 * loaded once, read by kernels at device-memory speed, and a stray write stopped
 * at once. A zero-copy mapping is the file's page-cache pages, mmap'ed and
 * registered read-only with the driver: nothing is copied, every device read
 * crosses the bus.
 *
 * Loading is the part that must be fast. One thread reading a file and copying it
 * to the device does one thing at a time, and a read() from the page cache is a
 * CPU copy that runs at a fraction of the host-to-device bandwidth. So a load
 * runs on several threads (GPUHEAP_FILE_THREADS, 8), each with two staging
 * buffers of GPUHEAP_FILE_CHUNK bytes (8 MiB) in pinned memory: a thread takes
 * the next piece of the file, waits until its older buffer's copy has finished,
 * pread()s into it, and queues an asynchronous copy to the device on its copy
 * queue — so reads on many cores overlap with each other and with the copies.
 * Each thread has a copy queue of its own (CUDA: a stream per thread): with one
 * queue for all of them (the earlier layout) every thread's copy and event
 * record took the one stream's lock in turn (~27 us per piece from 8 threads on
 * an H200), and a thread waiting for its older buffer waited, in stream order,
 * for every copy other threads had queued before it.
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
 * of pinned memory: a set is sliced anew by each load that takes it.
 *
 * Pieces start small and end small (load_take), so that the pipeline
 * does not wait a whole piece's read while it fills or while its last reader
 * finishes alone. On an H200 that measured the same as fixed 8 MiB pieces (62%
 * against 65% of the copy bandwidth at 256 MiB, 94% at 8 GiB, one run each):
 * what small loads lose, a fixed ~2.5 ms per load, lay elsewhere (bench/RESULTS.md,
 * "File loading"); GPUHEAP_FILE_TIMING=1 prints where each load's time goes
 * (file_timing.c). Pinned memory is slow to allocate (58 ms for the default
 * 128 MiB there), so a heap keeps its staging set for the next load until
 * gpu_heap_trim or the heap's end, and with it the loader threads (a crew,
 * crew.c) and the copy queues: a load wakes threads instead of creating them.
 * The threads start reading before the heap block exists, so that the heap's
 * allocation overlaps the first reads (load_start, load_finish). Where the
 * backend can read files straight into device memory (cuFile, GPU_MAP_CUFILE or
 * GPUHEAP_CUFILE=1), the same threads call that instead, one piece per call.
 *
 * Write-back (GPU_MAP_WRITE) runs the other way on one thread: device-to-host
 * copies into up to four staging buffers ahead of pwrite()s of the older ones.
 *
 * The registry below lists the live mappings (heap, address, file range, flags,
 * the file descriptor kept for write-back or zero-copy) so that gpu_sync_file and
 * gpu_unmap_file find a mapping from its address, gpu_free can refuse one, and
 * the heap's statistics count them. Its lock is never held across I/O, a backend
 * call or a heap call; a mapping being synced or unmapped is marked busy instead.
 * The registry is a list: lookups are linear in the number of live mappings,
 * which is small next to the I/O each one stands for, and gpu_free looks only
 * when a loaded mapping exists and the pointer is page-aligned.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file/crew.h"
#include "file/timing.h"
#include "api/api.h"
#include "backend/door.h"
#include "core/heap.h"
#include "error.h"
#include "obs/trace.h"
#include "util.h"

#define FILE_CHUNK_DEFAULT ((size_t)8 << 20)
#define FILE_CHUNK_MIN ((size_t)4 << 10)
#define FILE_CHUNK_MAX ((size_t)1 << 30)
#define FILE_THREADS_DEFAULT 8u
#define FILE_THREADS_MAX CREW_MAX /* a crew's seats bound the loader's threads */
#define FILE_SMALL_THREADS 12u             /* a small load's threads (size-aware defaults) */
#define FILE_SMALL_CHUNK ((size_t)4 << 20) /* and its chunk */
#define FILE_SLOTS_PER_THREAD 2u
#define FILE_SLOTS_MAX (FILE_THREADS_MAX * FILE_SLOTS_PER_THREAD)
#define FILE_WRITEBACK_SLOTS 4u
#define FILE_ALL_FLAGS (GPU_MAP_WRITE | GPU_MAP_ZEROCOPY | GPU_MAP_CUFILE)

/* The head of a record kept per heap on one of this file's lists, the mappings
 * and the staging sets: one pair of list helpers serves both. */
typedef struct file_entry {
    struct file_entry *next;
    gpu_heap_t *heap;
    bool busy; /* a call works on the record outside the list's lock */
} file_entry;

/* Puts e at the head of the list at *head (the list's lock held). */
static inline void entry_push(file_entry **head, file_entry *e) {
    e->next = *head;
    *head = e;
}

/* Unlinks e from the list at *head (the list's lock held). */
static inline void entry_unlink(file_entry **head, file_entry *e) {
    for (file_entry **pp = head; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            return;
        }
}

/* Moves h's records off the list at *head onto the list it returns: the idle
 * ones, or every one when all is set (the list's lock held). */
static inline file_entry *entry_take(file_entry **head, gpu_heap_t *h, bool all) {
    file_entry *gone = NULL;
    for (file_entry **pp = head; *pp;) {
        file_entry *e = *pp;
        if (e->heap == h && (all || !e->busy)) {
            *pp = e->next;
            e->next = gone;
            gone = e;
        } else {
            pp = &e->next;
        }
    }
    return gone;
}

/* One live mapping; busy: a sync or unmap works on it outside the lock. */
typedef struct file_map {
    file_entry entry;   /* first: the registry's list */
    uintptr_t ptr;      /* the address the caller holds */
    uint64_t offset;    /* the file range mapped */
    size_t length;
    size_t block_size;  /* loaded: the block's usable size; 0 for zero-copy */
    unsigned flags;     /* GPU_MAP_* */
    int fd;             /* kept for write-back and zero-copy; -1 otherwise */
    void *host;         /* zero-copy: the mmap'ed pages, host_len bytes */
    size_t host_len;
    bool freeing;       /* unmap is freeing its block: lookups skip it */
    char path[];        /* for messages */
} file_map;

_Static_assert(offsetof(file_map, entry) == 0, "a mapping is reached from its list entry by a cast");
/* The mapping whose list entry e is. */
static inline file_map *mapping_of(file_entry *e) { return (file_map *)e; }

/* A set of pinned staging buffers with the copy queues that drain them. The
 * pinned memory is one allocation, sliced into slots anew by every load that
 * takes the set (a small load's 24 x 4 MiB fit in a large load's 16 x 8 MiB),
 * so that loads of different sizes keep one allocation. Slot i's copies go to
 * queue i / 2, marker i % 2: the queue of the thread that owns slots i and i ^ 1. */
typedef struct staging {
    file_entry entry;    /* first: the list of sets; busy: a load or write-back is using it */
    void *base;          /* one staging allocation of `bytes`, sliced into the slots */
    size_t bytes;
    unsigned nslots;     /* the current load's slicing: nslots slots of slot_size bytes */
    size_t slot_size;
    unsigned nqueues;    /* queues opened, one per slot pair */
    crew crew;           /* the loader threads, kept with the buffers (crew.c) */
    vmm_queue *queue[FILE_THREADS_MAX];
} staging;

_Static_assert(offsetof(staging, entry) == 0, "a staging set is reached from its list entry by a cast");
/* The staging set whose list entry e is. */
static inline staging *staging_of(file_entry *e) { return (staging *)e; }

/* Slot i's buffer: the slots are slot_size bytes each, back to back in base. */
static inline void *slot_buf(const staging *s, unsigned i) { return (char *)s->base + (size_t)i * s->slot_size; }

static pthread_mutex_t file_lock = PTHREAD_MUTEX_INITIALIZER;
static file_entry *file_maps;       /* file_map records, under file_lock */
static file_entry *file_stagings;   /* staging records, under file_lock */

/* ---- tuning -------------------------------------------------------------------- */

typedef struct file_tuning {
    unsigned threads;
    size_t chunk;
    bool cufile;      /* GPUHEAP_CUFILE=1: try cuFile on every load */
    bool threads_set; /* GPUHEAP_FILE_THREADS given (and valid): the size-aware */
    bool chunk_set;   /* defaults leave threads (chunk_set: chunk) alone */
    bool small;       /* tuning_for found a small load and changed a default */
    unsigned cpus;    /* online CPUs, 0 when unknown */
} file_tuning;

/* Read on every load (cheap next to one), so a program or benchmark may change
 * them between loads. A malformed value is ignored. */
static file_tuning tuning_get(void) {
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
static file_tuning tuning_for(file_tuning t, size_t length) {
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

/* ---- staging sets ---------------------------------------------------------------- */

static void staging_put(staging *s);

/* Closes every queue of s (no copy in flight). */
static void staging_close_queues(staging *s) {
    for (unsigned i = 0; i < s->nqueues; i++) vmm_call_queue_close(&s->entry.heap->door, s->queue[i]);
    s->nqueues = 0;
}

/* Frees a set no copy is using any more (its slots were waited for). */
static void staging_destroy(staging *s) {
    vmm_door *d = &s->entry.heap->door;
    crew_destroy(&s->crew); /* idle: its last job ended before the set was put back */
    staging_close_queues(s);
    vmm_call_staging_free(d, s->base, s->bytes);
    free(s);
}

/* The queue slot i's copies go to, and the slot's marker in it. */
static vmm_queue *slot_queue(const staging *s, unsigned i, unsigned *marker) {
    *marker = i % FILE_SLOTS_PER_THREAD;
    return s->queue[i / FILE_SLOTS_PER_THREAD];
}

/* Opens the queues s's nslots slots still lack, one per slot pair. */
static int staging_queues(staging *s) {
    vmm_door *d = &s->entry.heap->door;
    unsigned want = (s->nslots + FILE_SLOTS_PER_THREAD - 1) / FILE_SLOTS_PER_THREAD;
    for (; s->nqueues < want; s->nqueues++) {
        int rc = vmm_call_queue_open(d, FILE_SLOTS_PER_THREAD, &s->queue[s->nqueues]);
        if (rc != GPU_OK) return gh_note(rc, "opening a copy queue: %s", vmm_error());
    }
    return GPU_OK;
}

/* A set of at least nslots buffers of slot_size bytes for h, its queues laid
 * open, marked busy: the heap's idle one when its memory is
 * large enough but not more than twice that (sliced anew), else a new one (an
 * idle one that does not fit is freed first, so a heap keeps one set). */
static int staging_take(gpu_heap_t *h, unsigned nslots, size_t slot_size, staging **out, bool *pinned) {
    size_t total;
    if (nslots > FILE_SLOTS_MAX) nslots = FILE_SLOTS_MAX;
    if (gh_mul_overflow(nslots, slot_size, &total)) return gh_note(GPU_ERR_INVALID, "staging: %u x %zu bytes overflows", nslots, slot_size);
    staging *stale = NULL, *s = NULL;
    pthread_mutex_lock(&file_lock);
    for (file_entry *e = file_stagings; e && !s; e = e->next) {
        if (e->heap != h || e->busy) continue;
        staging *t = staging_of(e);
        if (t->bytes >= total && t->bytes / 2 <= total) s = t; /* not a much larger set kept for a small load */
        else stale = t;
    }
    if (s) s->entry.busy = true;
    else if (stale) entry_unlink(&file_stagings, &stale->entry);
    pthread_mutex_unlock(&file_lock);
    if (pinned) *pinned = !s;
    if (stale && !s) staging_destroy(stale);
    int rc;
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for a staging record");
        s->entry.heap = h;
        s->bytes = total;
        rc = vmm_call_staging_alloc(&h->door, total, &s->base);
        if (rc != GPU_OK) {
            free(s);
            return gh_note(rc, "allocating %zu bytes of pinned staging memory: %s", total, vmm_error());
        }
        crew_init(&s->crew); /* threads start with the first load that uses the set */
        s->entry.busy = true;
        pthread_mutex_lock(&file_lock);
        entry_push(&file_stagings, &s->entry);
        pthread_mutex_unlock(&file_lock);
    }
    s->nslots = nslots;
    s->slot_size = slot_size;
    rc = staging_queues(s);
    if (rc != GPU_OK) {
        staging_put(s); /* kept (the memory is good); the queues are tried again next time */
        return rc;
    }
    *out = s;
    return GPU_OK;
}

/* Gives a set back (every copy on it finished): kept for the heap's next load
 * unless the heap already has an idle one. */
static void staging_put(staging *s) {
    bool spare = false;
    pthread_mutex_lock(&file_lock);
    for (file_entry *e = file_stagings; e; e = e->next) spare |= e != &s->entry && e->heap == s->entry.heap && !e->busy;
    if (spare) entry_unlink(&file_stagings, &s->entry);
    else s->entry.busy = false;
    pthread_mutex_unlock(&file_lock);
    if (spare) staging_destroy(s);
}

/* Frees h's idle sets (all of them when closing: nothing else runs then). */
static void staging_release(gpu_heap_t *h, bool all) {
    pthread_mutex_lock(&file_lock);
    file_entry *gone = entry_take(&file_stagings, h, all);
    pthread_mutex_unlock(&file_lock);
    while (gone) {
        file_entry *next = gone->next;
        staging_destroy(staging_of(gone));
        gone = next;
    }
}

/* gpu_heap_trim (a hook): the pinned staging buffers cached for h go back. */
static void file_release_staging(gpu_heap_t *h) { staging_release(h, false); }

/* ---- the file ------------------------------------------------------------------------ */

/* pread()s (write: pwrite()s) exactly n bytes at file offset at, through
 * interruptions and short transfers. Returns 0, an errno value, or -1 where a
 * read met the file's end or a write took nothing; *done: the bytes moved. */
static int file_rw(int fd, void *buf, size_t n, uint64_t at, bool write, size_t *done) {
    size_t k = 0;
    int err = 0;
    while (k < n) {
        char *p = (char *)buf + k;
        ssize_t r = write ? pwrite(fd, p, n - k, (off_t)(at + k)) : pread(fd, p, n - k, (off_t)(at + k));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            err = r < 0 ? errno : -1;
            break;
        }
        k += (size_t)r;
    }
    *done = k;
    return err;
}

/* ---- the loader -------------------------------------------------------------------- */

/* A load's destination: not yet known while the heap allocates it (the threads
 * read their first pieces meanwhile), then ready, or cancelled when the
 * allocation failed. */
enum { DST_WAITING, DST_READY, DST_CANCELLED };

/* One load, shared by its threads. */
typedef struct load_job {
    gpu_heap_t *h;
    int fd;
    uint64_t offset;   /* file offset of the first byte */
    size_t length;
    uintptr_t dst;     /* device address of the first byte, once dst_state is DST_READY */
    size_t chunk;      /* the largest piece (a staging slot's size) */
    unsigned threads;
    staging *st;       /* POSIX path */
    vmm_direct *direct; /* cuFile path */
    crew *crew;        /* the threads: the staging set's, or own (cuFile) */
    crew own;          /* cuFile: a crew for this load only */
    load_timing *tm;   /* GPUHEAP_FILE_TIMING=1, else NULL */
    _Atomic size_t next;   /* offset (in the range) of the next piece to take */
    _Atomic bool failed;
    _Atomic int dst_state; /* DST_*; changes under lock */
    pthread_mutex_t lock;  /* guards rc, msg and the change of dst_state */
    pthread_cond_t dst_known;
    int rc;
    char msg[300];
} load_job;

/* Records the first failure of a load and stops its threads. Returns err. */
static int load_fail(load_job *j, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int load_fail(load_job *j, int err, const char *fmt, ...) {
    pthread_mutex_lock(&j->lock);
    if (j->rc == GPU_OK) {
        j->rc = err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->msg, sizeof j->msg, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&j->lock);
    atomic_store(&j->failed, true);
    return err;
}

/* The destination, waited for while the heap allocates it; false when the load
 * was cancelled. */
static bool load_dst(load_job *j, uintptr_t *dst) {
    int s = atomic_load_explicit(&j->dst_state, memory_order_acquire);
    if (s == DST_WAITING) {
        uint64_t t0 = j->tm ? gh_mono_ns() : 0;
        pthread_mutex_lock(&j->lock);
        while ((s = atomic_load_explicit(&j->dst_state, memory_order_relaxed)) == DST_WAITING)
            pthread_cond_wait(&j->dst_known, &j->lock);
        pthread_mutex_unlock(&j->lock);
        if (j->tm) file_timing_add(&j->tm->dst_wait_ns, t0);
    }
    *dst = j->dst;
    return s == DST_READY;
}

/* Publishes the destination (dst != 0) or cancels the load (dst == 0). */
static void load_set_dst(load_job *j, uintptr_t dst) {
    pthread_mutex_lock(&j->lock);
    j->dst = dst;
    if (!dst) atomic_store(&j->failed, true);
    atomic_store_explicit(&j->dst_state, dst ? DST_READY : DST_CANCELLED, memory_order_release);
    pthread_cond_broadcast(&j->dst_known);
    pthread_mutex_unlock(&j->lock);
}

/* pread()s exactly n bytes at file offset at into buf. */
static int load_read(load_job *j, void *buf, size_t n, uint64_t at) {
    size_t done;
    int err = file_rw(j->fd, buf, n, at, false, &done);
    if (err > 0)
        return load_fail(j, GPU_ERR_BACKEND, "reading %zu bytes at offset %" PRIu64 ": %s", n - done, at + done, strerror(err));
    if (err < 0)
        return load_fail(j, GPU_ERR_BACKEND, "the file ended at offset %" PRIu64 " while it was being read (it shrank)",
                         at + done);
    return GPU_OK;
}

/* The next piece of the range for a thread. Pieces start small and double (a
 * 32nd of a chunk for each thread in turn, then a 16th, ... half), so that the
 * first copies start after a short read instead of a full chunk's; the middle
 * goes in whole chunks; and once less than a chunk per thread is left, each
 * piece is the remainder's share per thread (down to a 32nd of a chunk), so
 * that the last reads end together and the copies queued after them are short.
 * Offsets stay multiples of 4 KiB from the range's start. */
/* The unit pieces are cut in (4 KiB, or an eighth of a tiny chunk) and the
 * smallest piece (a 32nd of the chunk, at least a unit). */
static size_t load_unit(size_t chunk) { return chunk >= 32768 ? 4096 : chunk / 8; }
static size_t load_smallest(size_t chunk) { return chunk / 32 > load_unit(chunk) ? chunk / 32 : load_unit(chunk); }

static bool load_take(load_job *j, size_t *off, size_t *len) {
    size_t c = j->chunk, unit = load_unit(c), small = load_smallest(c), th = j->threads;
    size_t cur = atomic_load_explicit(&j->next, memory_order_relaxed);
    for (;;) {
        if (cur >= j->length || atomic_load_explicit(&j->failed, memory_order_relaxed)) return false;
        size_t remaining = j->length - cur, n = c, mark = 0;
        for (size_t s = small; s < c; s *= 2) {
            mark += th * s;
            if (cur < mark) {
                n = s;
                break;
            }
        }
        if (remaining / th < n) n = remaining / th;
        if (n < small) n = small;
        n -= n % unit;
        if (n > remaining) n = remaining;
        if (atomic_compare_exchange_weak_explicit(&j->next, &cur, cur + n, memory_order_relaxed, memory_order_relaxed)) {
            *off = cur;
            *len = n;
            return true;
        }
    }
}

/* One thread's share of a cuFile load: pieces read straight into the device,
 * once the destination is known. */
static void load_run_direct(load_job *j) {
    vmm_door *d = &j->h->door;
    load_timing *tm = j->tm;
    size_t off, n;
    uintptr_t dst = 0;
    while (load_take(j, &off, &n)) {
        if (tm) atomic_fetch_add_explicit(&tm->pieces, 1, memory_order_relaxed);
        if (!load_dst(j, &dst)) break;
        uint64_t t0 = tm ? gh_mono_ns() : 0;
        int rc = vmm_call_direct_read(d, j->direct, j->offset + off, n, dst + off);
        if (rc != GPU_OK) load_fail(j, rc, "%s", vmm_error());
        if (tm) {
            file_timing_first(&tm->first_issue, t0);
            file_timing_max(&tm->last_read, file_timing_add(&tm->read_ns, t0));
        }
        if (rc != GPU_OK) break;
    }
}

/* Waits for the copy queued from one of the thread's staging slots. */
static int load_wait(load_job *j, vmm_queue *queue, unsigned marker) {
    uint64_t t0 = j->tm ? gh_mono_ns() : 0;
    int rc = vmm_call_queue_wait(&j->h->door, queue, marker);
    if (j->tm) file_timing_add(&j->tm->wait_ns, t0);
    if (rc != GPU_OK) load_fail(j, rc, "copying to the device: %s", vmm_error());
    return rc;
}

/* One thread's share of a staged load: pieces taken in turn, two staging slots
 * of its own, each waited for before it is refilled. The first piece is read
 * before the destination is known (the heap may still be allocating it). */
static void load_run_staged(load_job *j, unsigned id) {
    vmm_door *d = &j->h->door;
    load_timing *tm = j->tm;
    unsigned slot[FILE_SLOTS_PER_THREAD], marker[FILE_SLOTS_PER_THREAD];
    vmm_queue *queue[FILE_SLOTS_PER_THREAD];
    bool pending[FILE_SLOTS_PER_THREAD] = {false};
    for (unsigned k = 0; k < FILE_SLOTS_PER_THREAD; k++) {
        slot[k] = id * FILE_SLOTS_PER_THREAD + k;
        queue[k] = slot_queue(j->st, slot[k], &marker[k]);
    }
    unsigned k = 0;
    size_t off, n;
    uintptr_t dst = 0;
    while (load_take(j, &off, &n)) {
        int rc = GPU_OK;
        if (tm) atomic_fetch_add_explicit(&tm->pieces, 1, memory_order_relaxed);
        void *buf = slot_buf(j->st, slot[k]);
        if (pending[k]) rc = load_wait(j, queue[k], marker[k]);
        pending[k] = false;
        uint64_t t0 = tm ? gh_mono_ns() : 0;
        if (rc == GPU_OK) rc = load_read(j, buf, n, j->offset + off);
        if (tm) file_timing_max(&tm->last_read, file_timing_add(&tm->read_ns, t0));
        if (rc == GPU_OK && !dst && !load_dst(j, &dst)) break; /* cancelled: nothing was queued */
        if (rc == GPU_OK) {
            t0 = tm ? gh_mono_ns() : 0;
            rc = vmm_call_queue_upload(d, queue[k], marker[k], dst + off, buf, n);
            if (tm) {
                file_timing_add(&tm->issue_ns, t0);
                file_timing_first(&tm->first_issue, t0);
            }
            if (rc != GPU_OK) load_fail(j, rc, "copying to the device: %s", vmm_error());
            pending[k] = rc == GPU_OK;
        }
        k = (k + 1) % FILE_SLOTS_PER_THREAD;
        if (rc != GPU_OK) break;
    }
    /* Every copy this thread queued ends before the load does. */
    for (unsigned i = 0; i < FILE_SLOTS_PER_THREAD; i++)
        if (pending[i]) (void)load_wait(j, queue[i], marker[i]);
}

static void load_run(load_job *j, unsigned id) {
    if (j->tm) file_timing_max(&j->tm->last_worker, gh_mono_ns());
    if (j->direct) load_run_direct(j);
    else load_run_staged(j, id);
}

static void load_crew_fn(void *arg, unsigned id) { load_run(arg, id); }

/* Starts a load of the file's [offset, offset+length) whose destination is not
 * known yet: takes the heap's staging set (POSIX path) and sets its threads
 * reading. Every started load ends with load_finish. */
static int load_start(load_job *j, gpu_heap_t *h, int fd, uint64_t offset, size_t length, vmm_direct *direct,
                      const file_tuning *t, load_timing *tm) {
    memset(j, 0, sizeof *j);
    j->h = h;
    j->fd = fd;
    j->offset = offset;
    j->length = length;
    j->chunk = t->chunk;
    j->tm = tm;
    /* No more threads than the smallest pieces: small files use few. */
    size_t most = length / load_smallest(t->chunk) + 1;
    j->threads = t->threads < most ? t->threads : (unsigned)most;
    atomic_init(&j->next, 0);
    atomic_init(&j->failed, false);
    atomic_init(&j->dst_state, DST_WAITING);
    j->direct = direct;
    int rc = GPU_OK;
    bool pinned = false;
    if (!direct) rc = staging_take(h, t->threads * FILE_SLOTS_PER_THREAD, t->chunk, &j->st, &pinned);
    if (rc != GPU_OK) return rc;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->dst_known, NULL);
    if (tm) {
        tm->staged = gh_mono_ns();
        tm->pinned = pinned;
        tm->direct = direct != NULL;
    }
    if (direct) {
        crew_init(&j->own);
        j->crew = &j->own;
    } else {
        j->crew = &j->st->crew;
    }
    unsigned before = crew_size(j->crew);
    /* A thread that cannot start leaves its pieces to the others. */
    unsigned helpers = crew_start(j->crew, j->threads, load_crew_fn, j);
    if (tm) {
        tm->started = gh_mono_ns();
        tm->threads = helpers + 1;
        tm->new_threads = crew_size(j->crew) - before;
    }
    return GPU_OK;
}

/* Gives the load its destination (dst, or 0 when the allocation failed and the
 * load is cancelled), runs the caller's share, waits for the threads and every
 * copy, and gives the staging set back. Returns the load's result. */
static int load_finish(load_job *j, uintptr_t dst) {
    load_set_dst(j, dst);
    if (dst) load_run(j, 0);
    crew_wait(j->crew);
    if (j->direct) crew_destroy(&j->own);
    if (j->st) staging_put(j->st);
    int rc = dst ? j->rc : GPU_OK;
    if (rc != GPU_OK) gh_note(rc, "%s", j->msg);
    pthread_cond_destroy(&j->dst_known);
    pthread_mutex_destroy(&j->lock);
    return rc;
}

/* ---- write-back ---------------------------------------------------------------------- */

/* pwrite()s exactly n bytes at file offset at. */
static int write_all(int fd, void *buf, size_t n, uint64_t at) {
    size_t done;
    int err = file_rw(fd, buf, n, at, true, &done);
    if (err)
        return gh_note(GPU_ERR_BACKEND, "writing %zu bytes at offset %" PRIu64 ": %s", n - done, at + done,
                       err > 0 ? strerror(err) : "nothing written");
    return GPU_OK;
}

/* The length of piece i of a mapping cut in pieces of a staging slot's size. */
static inline size_t writeback_len(const file_map *m, const staging *st, size_t i) {
    size_t rest = m->length - i * st->slot_size;
    return rest < st->slot_size ? rest : st->slot_size;
}

/* Queues the device-to-host copy of the mapping's piece i into staging slot s. */
static int writeback_fetch(const file_map *m, staging *st, unsigned s, size_t i, bool *pending) {
    unsigned marker;
    vmm_queue *q = slot_queue(st, s, &marker);
    int rc = vmm_call_queue_download(&m->entry.heap->door, q, marker, slot_buf(st, s), m->ptr + i * st->slot_size,
                                     writeback_len(m, st, i));
    if (rc != GPU_OK) gh_note(rc, "copying to the host: %s", vmm_error());
    pending[s] = rc == GPU_OK;
    return rc;
}

/* Waits for the copy into staging slot s, which is then no longer pending. */
static int writeback_wait(const file_map *m, staging *st, unsigned s, bool *pending) {
    unsigned marker;
    vmm_queue *q = slot_queue(st, s, &marker);
    pending[s] = false;
    return vmm_call_queue_wait(&m->entry.heap->door, q, marker);
}

/* Copies the mapping's device bytes into the file: device-to-host copies run
 * ahead into up to FILE_WRITEBACK_SLOTS buffers while older ones are written. */
static int write_back(file_map *m) {
    file_tuning t = tuning_for(tuning_get(), m->length); /* as the load did: its kept staging set fits */
    staging *st;
    int rc = staging_take(m->entry.heap, t.threads * FILE_SLOTS_PER_THREAD, t.chunk, &st, NULL);
    if (rc != GPU_OK) return rc;
    unsigned nslots = st->nslots < FILE_WRITEBACK_SLOTS ? st->nslots : FILE_WRITEBACK_SLOTS;
    size_t chunk = st->slot_size, nchunks = m->length / chunk + (m->length % chunk != 0);
    bool pending[FILE_WRITEBACK_SLOTS] = {false};
    for (size_t i = 0; i < nslots && i < nchunks && rc == GPU_OK; i++) rc = writeback_fetch(m, st, (unsigned)i, i, pending);
    for (size_t i = 0; i < nchunks && rc == GPU_OK; i++) {
        unsigned s = (unsigned)(i % nslots);
        rc = writeback_wait(m, st, s, pending);
        if (rc != GPU_OK) {
            gh_note(rc, "copying to the host: %s", vmm_error());
            break;
        }
        rc = write_all(m->fd, slot_buf(st, s), writeback_len(m, st, i), m->offset + i * chunk);
        if (rc == GPU_OK && i + nslots < nchunks) rc = writeback_fetch(m, st, s, i + nslots, pending);
    }
    /* The set goes back only once no copy into it is in flight. */
    for (unsigned s = 0; s < nslots; s++)
        if (pending[s]) (void)writeback_wait(m, st, s, pending);
    staging_put(st);
    return rc;
}

/* Waits for GPU work, checks the file still holds the range and, for a writable
 * mapping, writes it back (and fdatasyncs when durable). m is busy. */
static int sync_mapping(file_map *m, bool durable) {
    if (m->fd < 0) return GPU_OK; /* a read-only loaded copy: nothing to check or write */
    struct stat st;
    if (fstat(m->fd, &st) != 0) return gh_note(GPU_ERR_BACKEND, "fstat(\"%s\"): %s", m->path, strerror(errno));
    uint64_t end = m->offset + m->length;
    if ((uint64_t)st.st_size < end)
        return gh_note(GPU_ERR_BACKEND, "\"%s\" shrank to %lld bytes while mapped (the mapping ends at %" PRIu64 "); nothing written",
                       m->path, (long long)st.st_size, end);
    if (!(m->flags & GPU_MAP_WRITE)) return GPU_OK;
    int rc = vmm_call_fence(&m->entry.heap->door); /* kernels that write the mapping have finished */
    if (rc != GPU_OK) return gh_note(rc, "waiting for GPU work before writing \"%s\" back: %s", m->path, vmm_error());
    rc = write_back(m);
    if (rc != GPU_OK) return rc;
    if (durable && fdatasync(m->fd) != 0) return gh_note(GPU_ERR_BACKEND, "fdatasync(\"%s\"): %s", m->path, strerror(errno));
    return GPU_OK;
}

/* ---- opening and mapping ----------------------------------------------------------------- */

/* Opens path as a regular file and checks the range; sets *fd, *length (resolved
 * from 0) and *size. */
static int open_range(const char *path, uint64_t offset, size_t length, bool write, int *fd_out, size_t *length_out) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below). */
    int fd = open(path, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): cannot open it %s: %s", path,
                       write ? "for reading and writing" : "for reading", strerror(errno));
    struct stat st;
    int rc = GPU_OK;
    if (fstat(fd, &st) != 0) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): fstat: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): it is a directory", path);
    } else if (!S_ISREG(st.st_mode)) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): not a regular file", path);
    } else if (offset >= (uint64_t)st.st_size) {
        rc = st.st_size == 0 ? gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): the file is empty", path)
                             : gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): offset %" PRIu64 " is at or past the end of the file (%lld bytes)",
                                       path, offset, (long long)st.st_size);
    } else {
        uint64_t avail = (uint64_t)st.st_size - offset;
        if (length == 0 && avail > SIZE_MAX) avail = SIZE_MAX; /* 32-bit hosts only */
        if (length == 0) length = (size_t)avail;
        if ((uint64_t)length > avail)
            rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): the range [%" PRIu64 ", +%zu) runs past the end of the file (%lld bytes)",
                         path, offset, length, (long long)st.st_size);
    }
    /* A regular file: blocking mode again (cuFile refuses an O_NONBLOCK descriptor). */
    int fl = rc == GPU_OK ? fcntl(fd, F_GETFL) : -1;
    if (rc == GPU_OK && (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0))
        rc = gh_note(GPU_ERR_BACKEND, "gpu_map_file(\"%s\"): fcntl: %s", path, strerror(errno));
    if (rc != GPU_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    *length_out = length;
    return GPU_OK;
}

/* Loads the range into a new owned block of h; sets m's ptr and block_size. The
 * loader threads start reading before the block is allocated, so that the
 * allocation's driver calls overlap the first reads; a failed allocation
 * cancels them with nothing copied. tm: the phase clock, or NULL. */
static int map_loaded(gpu_heap_t *h, file_map *m, load_timing *tm) {
    /* cuFile first: asked for with the flag, its absence is an error before
     * anything is allocated; asked for by GPUHEAP_CUFILE=1, it falls back to read(). */
    file_tuning t = tuning_get();
    vmm_direct *direct = NULL;
    int rc;
    /* GPUHEAP_CUFILE=1 is a preference: a backend without direct reads is not
     * asked (nor counted as failing) on every load. */
    if ((m->flags & GPU_MAP_CUFILE) || (t.cufile && vmm_call_has_direct(&h->door))) {
        rc = vmm_call_direct_open(&h->door, m->fd, &direct);
        if (rc != GPU_OK && (m->flags & GPU_MAP_CUFILE))
            return gh_note(rc, "gpu_map_file(\"%s\", GPU_MAP_CUFILE): %s", m->path, vmm_error());
    }
    if (!direct) t = tuning_for(t, m->length); /* measured for the staging pipeline only */
    if (tm) {
        tm->chunk = t.chunk;
        tm->small = t.small;
    }
    load_job j;
    rc = load_start(&j, h, m->fd, m->offset, m->length, direct, &t, tm);
    if (rc != GPU_OK) {
        vmm_call_direct_close(&h->door, direct);
        return rc; /* staging_take said why */
    }
    void *p = NULL;
    int arc = heap_malloc(h, m->length, GH_QUANTUM, GPU_ALLOC_OWNED, &p);
    size_t usable = 0;
    if (arc == GPU_OK) (void)heap_usable_size(h, p, &usable);
    if (tm) tm->allocated = gh_mono_ns();
    rc = load_finish(&j, arc == GPU_OK ? (uintptr_t)p : 0);
    if (tm) tm->copied = gh_mono_ns();
    vmm_call_direct_close(&h->door, direct);
    if (arc != GPU_OK) return arc; /* heap_malloc said why; nothing was copied */
    if (rc == GPU_OK && usable > m->length) {
        rc = vmm_call_memset(&h->door, (uintptr_t)p + m->length, 0, usable - m->length);
        if (rc != GPU_OK) gh_note(rc, "zeroing the block's tail: %s", vmm_error());
    }
    if (tm) tm->tail = gh_mono_ns();
    if (rc == GPU_OK && !(m->flags & GPU_MAP_WRITE)) rc = heap_protect(h, p, usable, GPU_PROT_READ);
    if (tm) tm->protected_ = gh_mono_ns();
    if (rc != GPU_OK) {
        (void)heap_free(h, p); /* keeps the message noted above */
        return rc;
    }
    (void)heap_mark_file(h, p, true); /* gpu_free and gpu_realloc refuse it from now on */
    m->ptr = (uintptr_t)p;
    m->block_size = usable;
    return GPU_OK;
}

/* mmaps the range read-only and registers it with the device. */
static int map_zerocopy(gpu_heap_t *h, file_map *m) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    if (m->offset % (uint64_t)page)
        return gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\", GPU_MAP_ZEROCOPY): offset %" PRIu64 " is not a multiple of the page size %ld",
                       m->path, m->offset, page);
    m->host_len = gh_align_up(m->length, (size_t)page);
    void *host = mmap(NULL, m->host_len, PROT_READ, MAP_SHARED, m->fd, (off_t)m->offset);
    if (host == MAP_FAILED)
        return gh_note(errno == ENOMEM ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "gpu_map_file(\"%s\"): mmap of %zu bytes: %s",
                       m->path, m->host_len, strerror(errno));
    uintptr_t dev = 0;
    int rc = vmm_call_register_read_only(&h->door, host, m->host_len, &dev);
    if (rc != GPU_OK) {
        gh_note(rc, "gpu_map_file(\"%s\"): registering the page cache for the device: %s", m->path, vmm_error());
        munmap(host, m->host_len);
        return rc;
    }
    m->host = host;
    m->ptr = dev;
    return GPU_OK;
}

/* Tears a mapping's host side down: zero-copy pages, its file descriptor, the record. */
static void mapping_free(file_map *m) {
    if (m->host) munmap(m->host, m->host_len);
    if (m->fd >= 0) close(m->fd);
    free(m);
}

/* Finds the mapping at ptr (of heap, or of any heap when any) and marks it busy. */
static int mapping_acquire(gpu_heap_t *heap, bool any, void *ptr, const char *call, file_map **out) {
    pthread_mutex_lock(&file_lock);
    file_map *m = NULL;
    for (file_entry *e = file_maps; e && !m; e = e->next) {
        file_map *c = mapping_of(e);
        if (c->ptr == (uintptr_t)ptr && !c->freeing) m = c;
    }
    int rc = GPU_OK;
    if (!m) rc = gh_note(GPU_ERR_INVALID, "%s(%p): not the address of a file mapping (from gpu_map_file)", call, ptr);
    else if (!any && m->entry.heap != heap) rc = gh_note(GPU_ERR_INVALID, "%s(%p): the mapping belongs to another heap", call, ptr);
    else if (m->entry.busy) rc = gh_note(GPU_ERR_BUSY, "%s(%p): another thread is syncing or unmapping it", call, ptr);
    else m->entry.busy = true;
    pthread_mutex_unlock(&file_lock);
    if (rc == GPU_OK) *out = m;
    return rc;
}

/* Ends a sync's or unmap's hold on m (mapping_acquire). */
static void mapping_release(file_map *m) {
    pthread_mutex_lock(&file_lock);
    m->entry.busy = false;
    pthread_mutex_unlock(&file_lock);
}

/* Marks m, busy, as having its block freed (lookups skip it), or not any more. */
static void mapping_freeing(file_map *m, bool freeing) {
    pthread_mutex_lock(&file_lock);
    m->freeing = freeing;
    pthread_mutex_unlock(&file_lock);
}

/* Lists a new mapping. */
static void mapping_add(file_map *m) {
    pthread_mutex_lock(&file_lock);
    entry_push(&file_maps, &m->entry);
    pthread_mutex_unlock(&file_lock);
}

/* Takes m, busy, off the list and frees it. */
static void mapping_drop(file_map *m) {
    pthread_mutex_lock(&file_lock);
    entry_unlink(&file_maps, &m->entry);
    pthread_mutex_unlock(&file_lock);
    mapping_free(m);
}

/* Records a map/sync/unmap call in the trace (trace.c): addr the mapping, size
 * its length, arg the file offset, flags the call's flags. */
static void trace_file(uint64_t t0, trace_op op, gpu_heap_t *h, uintptr_t addr, size_t size, uint64_t arg, unsigned flags, int rc) {
    trace_record(t0, &(trace_event){.op = (uint8_t)op, .heap = h ? h->base : 0, .addr = addr, .size = size, .arg = arg,
                                    .flags = (uint8_t)flags, .result = op == TRACE_MAP_FILE ? addr : 0, .rc = (int8_t)rc});
}

/* ---- the public calls ------------------------------------------------------------------------- */

static pthread_once_t file_hooks_once = PTHREAD_ONCE_INIT;
static int file_hooks_rc;
static void file_hooks_add(void);

int gpu_heap_map_file(gpu_heap_t *heap, const char *path, uint64_t offset, size_t length, unsigned flags, void **out) {
    if (!path || !out) return gh_error(GPU_ERR_INVALID, "gpu_map_file: %s is NULL", path ? "out" : "path");
    if (flags & ~(unsigned)FILE_ALL_FLAGS) return gh_error(GPU_ERR_INVALID, "gpu_map_file: unknown flags %#x", flags);
    if ((flags & GPU_MAP_ZEROCOPY) && (flags & (GPU_MAP_WRITE | GPU_MAP_CUFILE)))
        return gh_error(GPU_ERR_INVALID, "gpu_map_file: GPU_MAP_ZEROCOPY is read-only and loads nothing (not with %s)",
                        flags & GPU_MAP_WRITE ? "GPU_MAP_WRITE" : "GPU_MAP_CUFILE");
    gpu_heap_t *h = api_heap(heap);
    if (!h) return gpu_last_error();
    pthread_once(&file_hooks_once, file_hooks_add); /* before the first mapping: the heap must tell us when it closes */
    if (file_hooks_rc != GPU_OK) return gh_report(file_hooks_rc);
    uint64_t t0 = trace_begin();

    size_t plen = strlen(path) + 1;
    file_map *m = calloc(1, sizeof *m + plen);
    if (!m) return gh_error(GPU_ERR_OUT_OF_MEMORY, "gpu_map_file: out of host memory");
    memcpy(m->path, path, plen);
    m->entry.heap = h;
    m->offset = offset;
    m->flags = flags;
    m->fd = -1;
    load_timing timing, *tm = NULL; /* GPUHEAP_FILE_TIMING=1: the phase breakdown (file_timing.c) */
    if (!(flags & GPU_MAP_ZEROCOPY) && file_timing_enabled()) {
        memset(&timing, 0, sizeof timing);
        tm = &timing;
        tm->begin = gh_mono_ns();
    }
    int rc = open_range(path, offset, length, flags & GPU_MAP_WRITE, &m->fd, &m->length);
    if (tm) {
        tm->opened = gh_mono_ns();
        tm->bytes = m->length;
    }
    if (rc == GPU_OK) rc = flags & GPU_MAP_ZEROCOPY ? map_zerocopy(h, m) : map_loaded(h, m, tm);
    if (rc == GPU_OK && !(flags & (GPU_MAP_WRITE | GPU_MAP_ZEROCOPY))) {
        close(m->fd); /* a read-only copy needs the file no more */
        m->fd = -1;
    }
    if (rc != GPU_OK) {
        mapping_free(m);
        if (t0) trace_file(t0, TRACE_MAP_FILE, h, 0, length, offset, flags, rc);
        return gh_report(rc);
    }
    mapping_add(m);
    if (tm) {
        tm->end = gh_mono_ns();
        file_timing_print(tm, path);
    }
    if (t0) trace_file(t0, TRACE_MAP_FILE, h, m->ptr, m->length, offset, flags, GPU_OK);
    *out = (void *)m->ptr;
    gh_ok();
    return GPU_OK;
}

int gpu_map_file(const char *path, uint64_t offset, size_t length, unsigned flags, void **out) {
    return gpu_heap_map_file(NULL, path, offset, length, flags, out);
}

/* The heap a sync or unmap names: NULL from the plain forms means "any". */
static int sync_file(gpu_heap_t *heap, bool any, void *ptr) {
    gpu_heap_t *h = NULL;
    if (!any && !(h = api_heap(heap))) return gpu_last_error();
    uint64_t t0 = trace_begin();
    file_map *m;
    int rc = mapping_acquire(h, any, ptr, "gpu_sync_file", &m);
    if (rc != GPU_OK) return gh_report(rc);
    rc = sync_mapping(m, true);
    if (t0) trace_file(t0, TRACE_SYNC_FILE, m->entry.heap, m->ptr, m->length, m->offset, m->flags, rc);
    mapping_release(m);
    if (rc != GPU_OK) return gh_report(rc);
    gh_ok();
    return GPU_OK;
}

int gpu_heap_sync_file(gpu_heap_t *heap, void *ptr) { return sync_file(heap, false, ptr); }
int gpu_sync_file(void *ptr) { return sync_file(NULL, true, ptr); }

static int unmap_file(gpu_heap_t *heap, bool any, void *ptr, unsigned flags) {
    if (flags & ~(unsigned)GPU_UNMAP_DISCARD) return gh_error(GPU_ERR_INVALID, "gpu_unmap_file: unknown flags %#x", flags);
    gpu_heap_t *h = NULL;
    if (!any && !(h = api_heap(heap))) return gpu_last_error();
    uint64_t t0 = trace_begin();
    file_map *m;
    int rc = mapping_acquire(h, any, ptr, "gpu_unmap_file", &m);
    if (rc != GPU_OK) return gh_report(rc);
    h = m->entry.heap;
    if ((m->flags & GPU_MAP_WRITE) && !(flags & GPU_UNMAP_DISCARD)) rc = sync_mapping(m, false);
    if (rc == GPU_OK && m->block_size) {
        mapping_freeing(m, true);
        (void)heap_mark_file(h, (void *)m->ptr, false);
        rc = heap_free(h, (void *)m->ptr);
        if (rc == GPU_ERR_NOT_LIVE) {
            /* Someone freed the block with gpu_free during the unmap: it is gone. */
            mapping_drop(m);
            if (t0) trace_file(t0, TRACE_UNMAP_FILE, h, (uintptr_t)ptr, 0, 0, flags, rc);
            return gh_report(rc);
        }
        if (rc != GPU_OK) {
            (void)heap_mark_file(h, (void *)m->ptr, true);
            mapping_freeing(m, false);
        }
    } else if (rc == GPU_OK) {
        /* Zero-copy: no kernel may still read the pages once they are unregistered. */
        rc = vmm_call_fence(&h->door);
        if (rc == GPU_OK) rc = vmm_call_unregister(&h->door, m->host);
        if (rc != GPU_OK) gh_note(rc, "gpu_unmap_file(%p): %s", ptr, vmm_error());
    }
    if (t0) trace_file(t0, TRACE_UNMAP_FILE, h, m->ptr, m->length, m->offset, flags, rc);
    if (rc != GPU_OK) {
        mapping_release(m);
        return gh_report(rc);
    }
    mapping_drop(m);
    gh_ok();
    return GPU_OK;
}

int gpu_heap_unmap_file(gpu_heap_t *heap, void *ptr, unsigned flags) { return unmap_file(heap, false, ptr, flags); }
int gpu_unmap_file(void *ptr, unsigned flags) { return unmap_file(NULL, true, ptr, flags); }

/* ---- hooks the heap calls (core/heap.h) ---------------------------------------------------- */

/* gpu_heap_stats: the heap's file mappings. */
static void file_stats(gpu_heap_t *h, gpu_stats_t *s) {
    uint64_t loaded = 0, zerocopy = 0, n = 0;
    pthread_mutex_lock(&file_lock);
    for (file_entry *e = file_maps; e; e = e->next) {
        const file_map *m = mapping_of(e);
        if (e->heap != h) continue;
        n++;
        if (m->block_size) loaded += m->length;
        else zerocopy += m->length;
    }
    pthread_mutex_unlock(&file_lock);
    s->file_loaded_bytes = loaded;
    s->file_zerocopy_bytes = zerocopy;
    s->file_mappings = n;
}

/* The heap is closing, its backend still open: every mapping of h and its staging
 * go, zero-copy ranges are unregistered, no write-back happens. */
static void file_heap_closing(gpu_heap_t *h) {
    pthread_mutex_lock(&file_lock);
    file_entry *gone = entry_take(&file_maps, h, true);
    pthread_mutex_unlock(&file_lock);
    bool fenced = false;
    while (gone) {
        file_entry *next = gone->next;
        file_map *m = mapping_of(gone);
        if (m->host) {
            if (!fenced) (void)vmm_call_fence(&h->door);
            fenced = true;
            (void)vmm_call_unregister(&h->door, m->host);
        }
        mapping_free(m); /* a loaded block goes with the heap */
        gone = next;
    }
    staging_release(h, true);
}

static const heap_hooks file_hooks = {.closing = file_heap_closing, .stats = file_stats, .trimming = file_release_staging};
static void file_hooks_add(void) { file_hooks_rc = heap_hooks_add(&file_hooks); }
