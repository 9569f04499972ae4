/*
 * load.c — the loader: a file range read on several threads and copied to the
 * device through pinned staging buffers, into a new block of the heap.
 *
 * A loaded mapping is a block of the heap that owns its extents, filled with
 * the file's bytes and, unless it is writable, protected read-only afterwards:
 * the model-weights case, loaded once, read by kernels at device-memory speed.
 * Loading is the part that must be fast. One thread reading a file and copying
 * it to the device does one thing at a time, and a read() from the page cache
 * is a CPU copy that runs at a fraction of the host-to-device bandwidth. So a
 * load runs on several threads (tune.c), each with two staging slots in pinned
 * memory (staging.c): a thread takes the next piece of the file, waits until
 * its older slot's copy has finished, pread()s into it, and queues an
 * asynchronous copy to the device on its copy queue — so reads on many cores
 * overlap with each other and with the copies. Each thread has a copy queue of
 * its own (CUDA: a stream per thread): with one queue for all of them (the
 * earlier layout) every thread's copy and event record took the one stream's
 * lock in turn (~27 us per piece from 8 threads on an H200), and a thread
 * waiting for its older buffer waited, in stream order, for every copy other
 * threads had queued before it.
 *
 * Pieces start small and end small (load_take), so that the pipeline does not
 * wait a whole piece's read while it fills or while its last reader finishes
 * alone. On an H200 that measured the same as fixed 8 MiB pieces (62% against
 * 65% of the copy bandwidth at 256 MiB, 94% at 8 GiB, one run each): what
 * small loads lose, a fixed ~2.5 ms per load, lay elsewhere (bench/RESULTS.md,
 * "File loading"); GPUHEAP_FILE_TIMING=1 prints where each load's time goes
 * (timing.c). The threads are the staging set's crew (crew.c), woken rather
 * than created, and they start reading before the heap block exists, so that
 * the heap's allocation overlaps the first reads (load_start, load_finish).
 * Where the backend can read files straight into device memory (cuFile,
 * GPU_MAP_CUFILE or GPUHEAP_CUFILE=1), the same pipeline of pieces calls that
 * instead, one piece per call, on a crew of its own.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/heap.h"
#include "error.h"
#include "file/file_internal.h"
#include "common.h"

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
    int err = io_rw(j->fd, buf, n, at, false, &done);
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

/* The loader threads start reading before the block is allocated, so that the
 * allocation's driver calls overlap the first reads; a failed allocation
 * cancels them with nothing copied. */
int load_mapping(gpu_heap_t *h, file_map *m, load_timing *tm) {
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
    /* In legacy free order the block may have been handed out while work issued
     * before its free still runs, ordered only for work submitted to the context
     * later (the context wait): the backend's copy queues are, but cuFile's reads
     * are not stream work, so the load waits for the GPU first. */
    if (arc == GPU_OK && heap_free_order() == GPU_FREE_ORDER_LEGACY && (arc = vmm_call_fence(&h->door)) != GPU_OK) {
        gh_note(arc, "gpu_map_file: waiting for the GPU before loading (legacy free order): %s", vmm_error());
        (void)heap_free(h, p);
    }
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
