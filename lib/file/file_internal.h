/*
 * file_internal.h — what the files of lib/file share, and nothing outside the
 * folder uses: the records (a mapping, a staging set, a load's tuning), the
 * list helpers both per-heap lists use, and each file's names for the others.
 *
 * The folder, by idea (each file opens with its own essay):
 *   map.c       the public calls: gpu_map_file, gpu_sync_file, gpu_unmap_file
 *   io.c        the file itself: opening a range, moving its bytes whole
 *   tune.c      the GPUHEAP_FILE_* knobs and the size-aware defaults
 *   staging.c   pinned staging sets, kept per heap between loads
 *   load.c      the loader pipeline: pieces read on several threads, copied up
 *   writeback.c gpu_sync_file's write-back and the file's checks
 *   registry.c  the live mappings, found from their address; the heap's hooks
 *   crew.c      the loader's kept threads; timing.c GPUHEAP_FILE_TIMING
 * Calls go one way: map.c calls load, writeback, registry and io; load and
 * writeback call tune, staging and io; registry calls staging (its hooks).
 */
#ifndef GPUHEAP_FILE_INTERNAL_H
#define GPUHEAP_FILE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/door.h"
#include "core/heap.h"
#include "file/crew.h"
#include "file/timing.h"

#define FILE_THREADS_MAX CREW_MAX /* a crew's seats bound the loader's threads */
#define FILE_SLOTS_PER_THREAD 2u  /* staging slots a loader thread fills in turn */

/* ---- types -------------------------------------------------------------------- */

/* The head of a record kept per heap on one of the folder's two lists, the
 * mappings (registry.c) and the staging sets (staging.c): one set of list
 * helpers serves both. */
typedef struct file_entry {
    struct file_entry *next;
    gpu_heap_t *heap;
    bool busy; /* a call works on the record outside the list's lock */
} file_entry;

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

/* A load's shape: threads and piece size, from the environment and the load's size (tune.c). */
typedef struct file_tuning {
    unsigned threads;
    size_t chunk;
    bool cufile;      /* GPUHEAP_CUFILE=1: try cuFile on every load */
    bool threads_set; /* GPUHEAP_FILE_THREADS given (and valid): the size-aware */
    bool chunk_set;   /* defaults leave threads (chunk_set: chunk) alone */
    bool small;       /* tuning_for found a small load and changed a default */
    unsigned cpus;    /* online CPUs, 0 when unknown */
} file_tuning;

_Static_assert(offsetof(file_map, entry) == 0, "a mapping is reached from its list entry by a cast");
_Static_assert(offsetof(staging, entry) == 0, "a staging set is reached from its list entry by a cast");

/* ---- small helpers ------------------------------------------------------------ */

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

/* The mapping whose list entry e is. */
static inline file_map *mapping_of(file_entry *e) { return (file_map *)e; }
/* The staging set whose list entry e is. */
static inline staging *staging_of(file_entry *e) { return (staging *)e; }

/* Slot i's buffer: the slots are slot_size bytes each, back to back in base. */
static inline void *slot_buf(const staging *s, unsigned i) { return (char *)s->base + (size_t)i * s->slot_size; }

/* The queue slot i's copies go to, and the slot's marker in it. */
static inline vmm_queue *slot_queue(const staging *s, unsigned i, unsigned *marker) {
    *marker = i % FILE_SLOTS_PER_THREAD;
    return s->queue[i / FILE_SLOTS_PER_THREAD];
}

/* ---- io.c: the file ----------------------------------------------------------- */

/* Opens path as a regular file (read-write when write is set) and checks the
 * range; sets *fd_out and *length_out (the length resolved from 0). */
int io_open_range(const char *path, uint64_t offset, size_t length, bool write, int *fd_out, size_t *length_out);
/* pread()s (write: pwrite()s) exactly n bytes at file offset at, through
 * interruptions and short transfers. Returns 0, an errno value, or -1 where a
 * read met the file's end or a write took nothing; *done: the bytes moved. */
int io_rw(int fd, void *buf, size_t n, uint64_t at, bool write, size_t *done);

/* ---- tune.c: the knobs -------------------------------------------------------- */

/* The environment's tuning (GPUHEAP_FILE_THREADS, GPUHEAP_FILE_CHUNK,
 * GPUHEAP_CUFILE), read on every call; a malformed value is ignored. */
file_tuning tuning_get(void);
/* t with the size-aware defaults applied for a load of length bytes. */
file_tuning tuning_for(file_tuning t, size_t length);

/* ---- staging.c: pinned staging sets ------------------------------------------- */

/* A set of at least nslots buffers of slot_size bytes for h, sliced for them,
 * its queues open, marked busy; *pinned (when not NULL): whether it was
 * allocated now rather than kept. */
int staging_take(gpu_heap_t *h, unsigned nslots, size_t slot_size, staging **out, bool *pinned);
/* Gives a set back (every copy on it finished): kept for the heap's next load. */
void staging_put(staging *s);
/* Frees h's idle sets (every one when all is set: the heap is closing). */
void staging_release(gpu_heap_t *h, bool all);

/* ---- load.c: the loader ------------------------------------------------------- */

/* Loads m's range into a new owned block of h, protected unless writable; sets
 * m's ptr and block_size. tm: the phase clock (GPUHEAP_FILE_TIMING), or NULL. */
int load_mapping(gpu_heap_t *h, file_map *m, load_timing *tm);

/* ---- writeback.c: write-back -------------------------------------------------- */

/* Waits for GPU work, checks the file still holds the range and, for a writable
 * mapping, writes it back (and fdatasyncs when durable). m is busy. */
int sync_mapping(file_map *m, bool durable);

/* ---- registry.c: the live mappings and the heap's hooks ----------------------- */

/* Registers the heap hooks (once per process), before the first mapping; the result. */
int registry_hooks(void);
/* Lists a new mapping. */
void mapping_add(file_map *m);
/* Finds the mapping at ptr (of heap, or of any heap when any) and marks it busy;
 * call names the public call in messages. */
int mapping_acquire(gpu_heap_t *heap, bool any, void *ptr, const char *call, file_map **out);
/* Ends a sync's or unmap's hold on m (mapping_acquire). */
void mapping_release(file_map *m);
/* Marks m, busy, as having its block freed (lookups skip it), or not any more. */
void mapping_freeing(file_map *m, bool freeing);
/* Takes m, busy, off the list and frees it. */
void mapping_drop(file_map *m);
/* Tears a mapping's host side down (zero-copy pages, its descriptor) and frees
 * the record; m is on no list. */
void mapping_free(file_map *m);

#endif /* GPUHEAP_FILE_INTERNAL_H */
