/*
 * staging.c — pinned staging sets, and the one each heap keeps between loads.
 *
 * A load reads the file into pinned host memory and copies it to the device
 * from there (load.c); write-back copies the other way through the same
 * buffers (writeback.c). Pinned memory is slow to allocate (58 ms for the
 * default 128 MiB on an H200), so a heap keeps its staging set for the next
 * load until gpu_heap_trim or the heap's end, and with it the loader threads
 * (a crew, crew.c) and the copy queues: a load wakes threads instead of
 * creating them. A set is one allocation, sliced anew by each load that takes
 * it, so loads of different shapes (tune.c) share it; a heap keeps at most one
 * idle set, and a load that finds it too small or more than twice too large
 * frees it and pins one that fits.
 *
 * The list of sets has a lock of its own, never held across a backend call:
 * a set in use is marked busy instead.
 */
#include <pthread.h>
#include <stdlib.h>

#include "error.h"
#include "file/file_internal.h"
#include "common.h"

#define FILE_SLOTS_MAX (FILE_THREADS_MAX * FILE_SLOTS_PER_THREAD)

static pthread_mutex_t stagings_lock = PTHREAD_MUTEX_INITIALIZER;
static file_entry *stagings; /* staging records, under stagings_lock */

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
int staging_take(gpu_heap_t *h, unsigned nslots, size_t slot_size, staging **out, bool *pinned) {
    size_t total;
    if (nslots > FILE_SLOTS_MAX) nslots = FILE_SLOTS_MAX;
    if (gh_mul_overflow(nslots, slot_size, &total)) return gh_note(GPU_ERR_INVALID, "staging: %u x %zu bytes overflows", nslots, slot_size);
    staging *stale = NULL, *s = NULL;
    pthread_mutex_lock(&stagings_lock);
    for (file_entry *e = stagings; e && !s; e = e->next) {
        if (e->heap != h || e->busy) continue;
        staging *t = staging_of(e);
        if (t->bytes >= total && t->bytes / 2 <= total) s = t; /* not a much larger set kept for a small load */
        else stale = t;
    }
    if (s) s->entry.busy = true;
    else if (stale) entry_unlink(&stagings, &stale->entry);
    pthread_mutex_unlock(&stagings_lock);
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
        pthread_mutex_lock(&stagings_lock);
        entry_push(&stagings, &s->entry);
        pthread_mutex_unlock(&stagings_lock);
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
void staging_put(staging *s) {
    bool spare = false;
    pthread_mutex_lock(&stagings_lock);
    for (file_entry *e = stagings; e; e = e->next) spare |= e != &s->entry && e->heap == s->entry.heap && !e->busy;
    if (spare) entry_unlink(&stagings, &s->entry);
    else s->entry.busy = false;
    pthread_mutex_unlock(&stagings_lock);
    if (spare) staging_destroy(s);
}

/* Frees h's idle sets (all of them when closing: nothing else runs then). */
void staging_release(gpu_heap_t *h, bool all) {
    pthread_mutex_lock(&stagings_lock);
    file_entry *gone = entry_take(&stagings, h, all);
    pthread_mutex_unlock(&stagings_lock);
    while (gone) {
        file_entry *next = gone->next;
        staging_destroy(staging_of(gone));
        gone = next;
    }
}
