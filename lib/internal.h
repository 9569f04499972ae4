/*
 * internal.h — names shared between gpuheap's source files, grouped by the file
 * that defines them (mimalloc's internal.h is the model).
 *
 * The heap is layered: api.c checks arguments and finds heaps; heap.c carves the
 * reservation into blocks and keeps them backed; tlsf.c is the segregated-fit
 * index of free blocks; blockmap.c finds a live block from its pointer; extent.c
 * records which addresses have physical memory; backend_call.c is the one door to
 * the backend. Nothing below heap.c knows about locks; nothing above
 * backend_call.c knows about the driver.
 */
#ifndef GPUHEAP_INTERNAL_H
#define GPUHEAP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "backend.h"
#include "gpuheap.h"

/* ---- small helpers -------------------------------------------------------- */

#define GH_QUANTUM ((size_t)GPU_MIN_ALIGNMENT)

#ifndef GPUHEAP_DEBUG_CHECKS
#define GPUHEAP_DEBUG_CHECKS 0
#endif

/* An assert with a message; compiled always, so it never rots, and on in every build:
 * a broken invariant in an allocator is worse than a stop. */
#define gh_assert(cond, msg) \
    ((cond) ? (void)0 : gh_assert_fail(#cond, msg, __FILE__, __LINE__))
_Noreturn void gh_assert_fail(const char *cond, const char *msg, const char *file, int line);

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t gh_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Round x up to a multiple of a (a power of two); 0 on overflow. */
static inline size_t gh_align_up(size_t x, size_t a) {
    if (x > SIZE_MAX - (a - 1)) return 0;
    return (x + a - 1) & ~(a - 1);
}
/* Round x down to a multiple of a (a power of two). */
static inline uintptr_t gh_align_down(uintptr_t x, size_t a) { return x & ~(uintptr_t)(a - 1); }
/* True when a is a non-zero power of two. */
static inline bool gh_is_pow2(size_t a) { return a && !(a & (a - 1)); }
/* *out = a * b, returning true on overflow. */
static inline bool gh_mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }

/* ---- block records (heap.c, tlsf.c) --------------------------------------- */

/* What a range of the reservation is doing. Every byte is in exactly one block. */
typedef enum block_state {
    BLOCK_LIVE = 1,       /* handed to a caller; mapped */
    BLOCK_IDLE = 2,       /* free and mapped: reusable without driver calls (idle index) */
    BLOCK_VACANT = 3,     /* free and unmapped VA (vacant index) */
    BLOCK_QUARANTINE = 4, /* freed, mapped, waiting for a fence before it may be reused */
    BLOCK_HEADROOM = 5,   /* unmapped VA kept free after a large live block for in-place growth */
    BLOCK_BUSY = 6,       /* being mapped, unmapped or moved by a thread outside the lock */
    BLOCK_STREAM = 7,     /* freed on a stream, mapped: reusable on that stream at once (its pool's index) */
    BLOCK_SPARSE = 8,     /* a gpu_reserve range: partly mapped, its extents owned by it */
} block_state;

struct stream_pool;

typedef struct block block;
/* 64-byte aligned (two cache lines a record): a thread cache writes tc on every
 * malloc and free, and records of blocks that different threads use must not
 * share a line. */
struct __attribute__((aligned(64))) block {
    uintptr_t start;
    size_t size;
    block *prev_phys, *next_phys; /* neighbours in address order */
    block *prev_free, *next_free; /* links in a free list or the quarantine list */
    uint8_t state;                /* block_state */
    uint8_t owned;                /* asked for with GPU_ALLOC_OWNED: keep granule-aligned on shrink */
    uint8_t file;                 /* holds a gpu_map_file mapping: gpu_free and gpu_realloc refuse it */
    uint8_t busy;                 /* BLOCK_SPARSE: a thread is committing or decommitting in it */
    uint32_t epoch;               /* BLOCK_STREAM: its pool's epoch when it was freed */
    struct stream_pool *pool;     /* BLOCK_STREAM: the stream it was freed on */
    /* Thread caches (tcache.c): (generation << 2) | tc_state. Last, so that
     * block_new keeps it: the generation outlives the record's reuse. */
    _Atomic uint64_t tc;
};

/* Where a LIVE block stands with the thread caches (tcache.c). The heap changes
 * a live block only while it is TC_NONE; it takes a TC_USER block back first. */
enum { TC_NONE = 0, TC_USER = 1, TC_FREE = 2 };
static inline unsigned tc_state(uint64_t w) { return (unsigned)(w & 3); }
/* w with its state replaced, the generation kept. */
static inline uint64_t tc_with(uint64_t w, unsigned state) { return (w & ~(uint64_t)3) | state; }
/* Sets b's state, generation kept, where no cache can race (the heap's lock
 * held and the block not handed out, or a record not yet in use). */
static inline void tc_set(block *b, unsigned state) {
    atomic_store_explicit(&b->tc, tc_with(atomic_load_explicit(&b->tc, memory_order_relaxed), state), memory_order_relaxed);
}

/* ---- tlsf.c: segregated-fit index of free blocks by size ----------------- */

#define TLSF_SL_LOG2 4
#define TLSF_SL_COUNT (1u << TLSF_SL_LOG2)
#define TLSF_FL_COUNT 48 /* sizes up to 2^48 bytes (in quanta: fewer) */

typedef struct tlsf_index {
    uint64_t fl_bitmap;
    uint32_t sl_bitmap[TLSF_FL_COUNT];
    block *heads[TLSF_FL_COUNT][TLSF_SL_COUNT];
    size_t bytes;  /* total size of the blocks indexed */
    size_t blocks; /* number of blocks indexed */
} tlsf_index;

void tlsf_init(tlsf_index *t);
void tlsf_insert(tlsf_index *t, block *b);
void tlsf_remove(tlsf_index *t, block *b);
/* A block of at least size bytes (good fit: from the first class whose every
 * member is large enough), or NULL. Does not remove it. */
block *tlsf_find(tlsf_index *t, size_t size);
/* Calls fn on every indexed block until it returns false. */
void tlsf_walk(tlsf_index *t, bool (*fn)(block *b, void *arg), void *arg);
/* The same, from the class that holds blocks of size bytes upward: smallest first. */
void tlsf_walk_from(tlsf_index *t, size_t size, bool (*fn)(block *b, void *arg), void *arg);
/* True when b is linked in t's list for its size. */
bool tlsf_contains(const tlsf_index *t, const block *b);

/* ---- stream.c: blocks freed on streams ------------------------------------- */

#define STREAM_POOLS_MAX 64
#define STREAM_PENDING_MAX 4

/* The blocks freed on one stream. They are reused by that stream at once; an
 * event recorded on the stream later covers every block freed before it (epoch
 * <= the event's), and once the event completes those blocks become idle. Events
 * are recorded lazily, only when another stream or the heap needs the memory. */
typedef struct stream_pool {
    uintptr_t stream;
    tlsf_index free;   /* BLOCK_STREAM blocks of this pool */
    uint32_t epoch;    /* the epoch of blocks freed now; an event covers all before it */
    struct { vmm_event ev; uint32_t epoch; } pending[STREAM_PENDING_MAX];
    unsigned npending;
    bool busy;         /* a thread is recording or querying this pool's events outside the lock */
} stream_pool;

/* The pool of stream (created when create is set), or NULL. Lock held. */
stream_pool *stream_pool_of(struct gpu_heap *h, uintptr_t stream, bool create);
/* Takes a block of need bytes from pool's own freed blocks, made LIVE; NULL on a miss. */
block *stream_take(struct gpu_heap *h, stream_pool *pool, size_t need);
/* Puts a LIVE block (out of the address map) into pool. */
void stream_put(struct gpu_heap *h, stream_pool *pool, block *b);
/* After a free on pool's stream (alive: the caller just named it): records an
 * event covering every block freed there so far, unless one is in flight. Lock
 * held; dropped around the driver call. */
void stream_cover_locked(struct gpu_heap *h, stream_pool *pool);
/* Queries pending events (dropping the lock) and makes the blocks they cover
 * idle; with wait set, waits for them instead (out of memory). Returns true when
 * blocks became idle. Blocks no event covers wait for the device fence. */
bool stream_reap_locked(struct gpu_heap *h, bool wait);
/* A device fence makes every block freed on a stream before it safe. Before the
 * fence (lock held): notes each pool's epoch and moves it on, returning how many
 * pools there are; after it: makes the noted epochs' blocks idle. Blocks freed
 * while the fence ran (lock dropped) wait for their own event. */
size_t stream_fence_begin_locked(struct gpu_heap *h, uint32_t *epochs);
void stream_fence_end_locked(struct gpu_heap *h, const uint32_t *epochs, size_t n);
void stream_pools_close(struct gpu_heap *h);

/* ---- blockmap.c: live block by start address, O(1) ------------------------ */

typedef struct blockmap {
    uintptr_t *keys; /* start addresses; 0 empty, 1 deleted */
    block **vals;
    size_t cap;      /* a power of two */
    size_t used;     /* keys that are not empty (live + deleted) */
    size_t live;
} blockmap;

int blockmap_init(blockmap *m);
void blockmap_free(blockmap *m);
/* Makes room for n more keys so that the next n inserts cannot fail. */
int blockmap_reserve(blockmap *m, size_t n);
void blockmap_insert(blockmap *m, block *b);
block *blockmap_find(const blockmap *m, uintptr_t start);
void blockmap_remove(blockmap *m, uintptr_t start);

/* ---- extent.c: physical extents and the granule map ----------------------- */

/* One physical allocation mapped whole at [va, va+size). */
typedef struct extent {
    uintptr_t va;
    size_t size;
    vmm_handle handle;
    block *owner;   /* the live block that contains the whole extent, or NULL */
    uint8_t prot;   /* gpu_prot_t currently set */
    struct extent *next_free; /* record free list */
} extent;

#define EXTMAP_LEAF_LOG2 12

/* granule index -> extent*, two levels, leaves made on demand. */
typedef struct extmap {
    uintptr_t base;
    size_t granularity;
    size_t granules;
    extent ***leaves;   /* [granules >> EXTMAP_LEAF_LOG2 rounded up] */
    size_t nleaves;
} extmap;

int extmap_init(extmap *m, uintptr_t base, size_t size, size_t granularity);
void extmap_free(extmap *m);
/* Calls fn on every extent once, in address order, until it returns false. fn
 * may not change the map. */
void extmap_walk(const extmap *m, bool (*fn)(extent *e, void *arg), void *arg);
/* The extent mapped at address va, or NULL. */
extent *extmap_find(const extmap *m, uintptr_t va);
/* Points every granule of e at e (or at NULL when clearing). */
int extmap_set(extmap *m, extent *e);
/* Makes the leaves for [va, va+size) so that a later extmap_set there cannot fail. */
int extmap_prepare(extmap *m, uintptr_t va, size_t size);
void extmap_clear(extmap *m, const extent *e);

/* ---- block.c: block records and the moves the heap makes with them ------- */

/* Fixed-size host records handed out from slabs, so the fast path never calls
 * malloc. */
typedef struct record_pool {
    size_t size;       /* record size */
    void *free_list;
    void **slabs;
    size_t nslabs, cap_slabs;
    size_t in_use;
    size_t nfree;      /* records on the free list or not yet carved */
    char *bump;        /* the newest slab's records not yet carved (untouched memory) */
    size_t bump_left;
} record_pool;

void pool_init(record_pool *p, size_t record_size);
void *pool_get(record_pool *p); /* NULL when the host is out of memory */
/* Makes sure n records can be taken without failing. */
bool pool_reserve(record_pool *p, size_t n);
void pool_put(record_pool *p, void *r);
void pool_destroy(record_pool *p);

struct gpu_heap;
/* A new record for [start, start+size) in the given state, linked nowhere. */
block *block_new(struct gpu_heap *h, uintptr_t start, size_t size, block_state state);
/* Cuts b at b->start + size; b keeps the front, the returned record (same state,
 * linked after b in address order) the rest. NULL when out of host memory. b must
 * not be in an index. */
block *block_split(struct gpu_heap *h, block *b, size_t size);
/* Puts an IDLE or VACANT block, in no index, into its index after merging it with
 * free neighbours of the same state. Returns the merged block. */
block *block_release_free(struct gpu_heap *h, block *b, block_state state);
/* Absorbs b's next neighbour (out of every index) into b and frees its record. */
void block_absorb_next(struct gpu_heap *h, block *b);
/* Takes a free block out of its index. */
void block_unindex(struct gpu_heap *h, block *b);
/* Marks as owned by b every extent lying wholly inside b (or clears them). */
void block_claim_extents(struct gpu_heap *h, block *b);
void block_unclaim_extents(struct gpu_heap *h, block *b);
/* True when b starts and ends at extent boundaries and owns every extent in it. */
bool block_owns_all(struct gpu_heap *h, const block *b);
/* The end address of a block. */
static inline uintptr_t block_end(const block *b) { return b->start + b->size; }

/* ---- backend_call.c: the one door to the backend --------------------------- */

typedef enum vmm_op {
    VMM_OP_RESERVE, VMM_OP_UNRESERVE, VMM_OP_CREATE, VMM_OP_RELEASE, VMM_OP_MAP,
    VMM_OP_UNMAP, VMM_OP_SET_ACCESS, VMM_OP_FENCE, VMM_OP_MEMSET, VMM_OP_COPY,
    VMM_OP_EVENT_RECORD, VMM_OP_EVENT_QUERY, VMM_OP_EVENT_WAIT,
    VMM_OP_STAGING, VMM_OP_TRANSFER, VMM_OP_REGISTER, VMM_OP_DIRECT, /* file.c */
    VMM_OP_GRANT, /* peer access (peer.c) */
    VMM_OP_COUNT
} vmm_op;

typedef struct vmm_counts {
    _Atomic uint64_t calls[VMM_OP_COUNT];
    _Atomic uint64_t errors;
    _Atomic uint64_t copy_bytes; /* bytes moved by successful copy calls (stats.c, trace.c) */
} vmm_counts;

#define GH_MAX_PEERS 64 /* device ordinals a door can grant access to (one bit each) */

typedef struct vmm_door {
    vmm_backend *b;
    vmm_counts counts;
    int verbose;
    _Atomic uint64_t peers; /* other devices granted access to every extent (peer.c); changed under the heap lock */
} vmm_door;

int vmm_call_reserve(vmm_door *d, size_t size, uintptr_t *va);
int vmm_call_unreserve(vmm_door *d, uintptr_t va, size_t size);
int vmm_call_create(vmm_door *d, size_t size, vmm_handle *out);
int vmm_call_release(vmm_door *d, vmm_handle h);
int vmm_call_map(vmm_door *d, uintptr_t va, size_t size, vmm_handle h);
int vmm_call_unmap(vmm_door *d, uintptr_t va, size_t size);
/* An unmap that undoes a mapping the caller just made, asked twice: nothing can
 * stand in for it when it is refused (the mapping would stay under addresses the
 * heap then calls vacant). */
int vmm_call_unmap_undo(vmm_door *d, uintptr_t va, size_t size);
/* Maps a handle back where the caller had just unmapped it, with its access:
 * each call asked twice, for the same reason (the books say "mapped" there). On
 * failure nothing stays mapped. */
int vmm_call_remap_undo(vmm_door *d, uintptr_t va, size_t size, vmm_handle h, gpu_prot_t prot);
int vmm_call_set_access(vmm_door *d, uintptr_t va, size_t size, gpu_prot_t prot);
int vmm_call_fence(vmm_door *d);
int vmm_call_memset(vmm_door *d, uintptr_t va, int byte, size_t size);
int vmm_call_copy(vmm_door *d, uintptr_t dst, uintptr_t src, size_t size);
int vmm_call_event_record(vmm_door *d, uintptr_t stream, vmm_event *out);
int vmm_call_event_query(vmm_door *d, vmm_event ev); /* GPU_ERR_BUSY: not yet, and not an error */
int vmm_call_event_wait(vmm_door *d, vmm_event ev);
/* An event after all work issued so far on the device's context (the backend's
 * fence_record); GPU_ERR_BACKEND when the backend has none. */
int vmm_call_fence_record(vmm_door *d, vmm_event *out);
void vmm_call_event_release(vmm_door *d, vmm_event ev);
/* True when a capture is in progress that a fence would break: stream's (if not
 * 0), a blocking stream's, or one announced with gpu_capture_begin. */
bool vmm_call_capturing(vmm_door *d, uintptr_t stream);
/* Sets device's (not the owner's) access to a range of whole mappings. A
 * backend without a grant op refuses with GPU_ERR_NO_DRIVER. vmm_call_set_access
 * grants every peer in d->peers the owner's protection after the owner's own. */
int vmm_call_grant(vmm_door *d, uintptr_t va, size_t size, int device, gpu_prot_t prot);
int vmm_call_grant_peers(vmm_door *d, uintptr_t va, size_t size, uint64_t devices, gpu_prot_t prot);
/* create + map + set_access(read-write), undoing what succeeded on failure. */
int vmm_call_back(vmm_door *d, uintptr_t va, size_t size, vmm_handle *out);
/* unmap + release. GPU_OK once the mapping is gone (a release the backend keeps
 * refusing leaks the handle, counted as a backend error); an error only when the
 * unmap was refused and nothing changed. */
int vmm_call_unback(vmm_door *d, uintptr_t va, size_t size, vmm_handle h);
/* File-backed memory (file.c): staging memory, the copy queue, zero-copy
 * registration, direct reads. An op the backend does not offer (a NULL entry) is
 * refused with GPU_ERR_NO_DRIVER, never called. */
int vmm_call_staging_alloc(vmm_door *d, size_t size, void **out);
void vmm_call_staging_free(vmm_door *d, void *p, size_t size);
int vmm_call_queue_open(vmm_door *d, unsigned slots, vmm_queue **out);
void vmm_call_queue_close(vmm_door *d, vmm_queue *q);
int vmm_call_queue_upload(vmm_door *d, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size);
int vmm_call_queue_download(vmm_door *d, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size);
int vmm_call_queue_wait(vmm_door *d, vmm_queue *q, unsigned slot);
int vmm_call_register_read_only(vmm_door *d, void *host, size_t size, uintptr_t *dev);
int vmm_call_unregister(vmm_door *d, void *host);
bool vmm_call_has_direct(const vmm_door *d);
int vmm_call_direct_open(vmm_door *d, int fd, vmm_direct **out);
int vmm_call_direct_read(vmm_door *d, vmm_direct *dd, uint64_t offset, size_t size, uintptr_t dst);
void vmm_call_direct_close(vmm_door *d, vmm_direct *dd);

/* ---- backend_fault.c: a backend wrapper that fails the Nth call (tests, fuzzer) -- */

#define VMM_FAULT_LOG 4096

/* What the wrapper saw, in memory the caller owns (it outlives the backend).
 * Written without a lock: meant for one thread at a time. */
typedef struct vmm_fault_report {
    uint64_t calls;                  /* backend calls seen, failed ones included */
    uint64_t per_op[VMM_OP_COUNT];
    uint8_t log[VMM_FAULT_LOG];      /* the vmm_op of each of the first VMM_FAULT_LOG calls */
    uint64_t injected;               /* calls failed on purpose */
    int first_op;                    /* the vmm_op of the first injected failure */
    bool closed;                     /* the heap closed the backend */
    vmm_host_counts at_close;        /* the inner host backend's counts just before it closed */
} vmm_fault_report;

/* Wraps inner (which the wrapper closes when it is closed); report may be NULL. */
int vmm_fault_open(vmm_backend *inner, vmm_fault_report *report, vmm_backend **out);
/* Fails the nth backend call from now (1 = the next one) with error (0 = the op's
 * natural error: create out of memory, reserve out of VA, else GPU_ERR_BACKEND);
 * persistent: that call and every later one. nth 0 disarms. */
void vmm_fault_arm(vmm_backend *b, uint64_t nth, bool persistent, int error);
/* Fails the nth call of one vmm_op from now, once (other ops pass). */
void vmm_fault_arm_op(vmm_backend *b, int op, uint64_t nth, int error);
/* Calls fn(op, arg) before each call the wrapper lets through (NULL: none); the
 * heap calls the backend with its lock dropped, so fn may call into the heap. */
void vmm_fault_hook(vmm_backend *b, void (*fn)(int op, void *arg), void *arg);
/* Backend calls seen since open. */
uint64_t vmm_fault_calls(vmm_backend *b);
const char *vmm_op_name(int op);

/* ---- heap.c: the heap ------------------------------------------------------ */

/* Quarantined blocks taken off the list together, and what they add up to. */
typedef struct quarantine_batch {
    block *head; /* linked through next_free */
    size_t bytes, blocks;
} quarantine_batch;

#define GH_HEAP_MAGIC 0x67707568656170ull /* "gpuheap" */

struct gpu_heap {
    /* Read by every call and written almost never: a line of their own, away
     * from the lock and the counters (a thread cache's fast path reads them). */
    uint64_t magic;
    uintptr_t base;        /* the reservation */
    size_t reserved;
    size_t gran;
    uint64_t serial;       /* unique per heap opened in this process (thread caches' key) */
    size_t tcache_bytes;   /* per-thread cache limit (cfg.thread_cache), 0 = off */
    size_t tcache_max;     /* the largest need a thread cache takes (below a granule); 0 = off */
    bool is_default;
    /* The heap's lock: held only for bookkeeping, never across a driver call, so an
     * exchange to take it and a store to give it back beat a pthread mutex (an
     * exchange and an exchange): 4.8 vs 11 ns per lock and unlock measured on the
     * CI machine in a threaded process. */
    _Alignas(64) _Atomic int lock;
    gpu_config_t cfg;
    vmm_door door;

    tlsf_index idle;       /* BLOCK_IDLE */
    tlsf_index vacant;     /* BLOCK_VACANT */
    block *quarantine;     /* BLOCK_QUARANTINE, newest first */
    blockmap live;         /* BLOCK_LIVE (and BUSY blocks being changed for a caller), by start */
    extmap extents;
    record_pool block_pool, extent_pool;
    block *first;          /* the block at base: merges keep the lower record, so it never changes */

    /* statistics kept under the lock */
    size_t live_bytes, live_blocks, peak_live_bytes;
    size_t mapped_bytes, peak_mapped_bytes;
    size_t quarantine_bytes, quarantine_blocks;
    size_t draining_bytes, draining_blocks; /* quarantined blocks a drain took off the list while it fences (lock dropped) */
    /* Quarantine batches sealed by one context-wide event each, oldest first
     * (quarantine.c): released when a query finds the event complete. */
    struct sealed_batch {
        quarantine_batch q;
        vmm_event ev;
        uint64_t seq;
    } sealed[8];
    unsigned nsealed;
    bool seal_busy;        /* a thread records or queries seal events with the lock dropped */
    uint64_t seal_events;
    size_t nextents;
    size_t protected_extents; /* extents whose access is not read-write */
    stream_pool *pools[STREAM_POOLS_MAX];
    size_t npools;
    uint64_t stream_events;
    size_t sparse_reserved, sparse_committed;
    block *sparse_list;    /* BLOCK_SPARSE blocks, linked through prev_free/next_free */
    uint64_t fences;

    /* Cover numbers (quarantine.c): every seal event and fence takes the next
     * cover_seq before its driver call, and once it is known complete raises
     * cover_done past its number. A block freed when cover_seq read t is safe to
     * reuse once cover_done > t — lock-free, for the thread caches. */
    _Alignas(64) _Atomic uint64_t cover_seq, cover_done;
    _Atomic uint64_t cache_flush_gen; /* raised to ask every thread cache to give its blocks back */
    struct tcache *caches;           /* the thread caches of this heap (under the lock) */
};

/* Waits for a held heap lock: spins briefly, then gives the core away. */
void heap_lock_wait(gpu_heap_t *h);
static inline void heap_lock(gpu_heap_t *h) {
    if (atomic_exchange_explicit(&h->lock, 1, memory_order_acquire)) heap_lock_wait(h);
}
/* Takes the lock if it is free; false (and nothing taken) if another thread holds it. */
static inline bool heap_trylock(gpu_heap_t *h) {
    return !atomic_load_explicit(&h->lock, memory_order_relaxed) &&
           !atomic_exchange_explicit(&h->lock, 1, memory_order_acquire);
}
static inline void heap_unlock(gpu_heap_t *h) { atomic_store_explicit(&h->lock, 0, memory_order_release); }
/* Makes sure the next operation can take records and a map slot without failing. */
int heap_reserve_records(gpu_heap_t *h);

int heap_open(const gpu_config_t *cfg, gpu_heap_t **out);
/* Opens a heap over a backend the caller opened (a wrapper that records calls or
 * fails on demand, in tests). The heap closes the backend when it is closed, or
 * at once when opening fails. */
int heap_open_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out);
void heap_close(gpu_heap_t *h);
/* Each returns GPU_OK or an error; *msg (static or in a thread buffer) says why. */
int heap_malloc(gpu_heap_t *h, size_t size, size_t align, unsigned flags, void **out);
int heap_free(gpu_heap_t *h, void *ptr);
/* sparse.c: gpu_reserve ranges */
int heap_reserve(gpu_heap_t *h, size_t size, void **out);
int heap_commit(gpu_heap_t *h, void *ptr, size_t len);
int heap_decommit(gpu_heap_t *h, void *ptr, size_t len);
int heap_release_reservation(gpu_heap_t *h, void *ptr);
/* stream-ordered forms (stream.c's pools); the stream is a CUstream as an integer */
int heap_malloc_async(gpu_heap_t *h, size_t size, uintptr_t stream, void **out);
int heap_free_async(gpu_heap_t *h, void *ptr, uintptr_t stream);
int heap_realloc(gpu_heap_t *h, void *ptr, size_t size, void **out);
int heap_usable_size(gpu_heap_t *h, const void *ptr, size_t *out);
/* Marks the live block at ptr as holding a gpu_map_file mapping (or clears the
 * mark before file.c frees it). */
int heap_mark_file(gpu_heap_t *h, void *ptr, bool on);
int heap_protect(gpu_heap_t *h, void *ptr, size_t size, gpu_prot_t prot);
int heap_trim(gpu_heap_t *h, size_t keep);
void heap_stats(gpu_heap_t *h, gpu_stats_t *out);
int heap_check(gpu_heap_t *h, char *msg, size_t len);
static inline bool heap_owns(const gpu_heap_t *h, uintptr_t p) { return p - h->base < h->reserved; }

/* ---- heap internals shared by heap.c, resize.c, trim.c, protect.c, check.c -- */

/* Called with the lock held; each may drop and retake it around driver calls. */
/* One device fence, and what it makes safe: the quarantine, its sealed batches
 * and every stream-freed block become idle, and the cover number moves on. For
 * callers that need the fence for their own sake (a decommit, a move) too.
 * Refused with GPU_ERR_CAPTURING while a capture is in progress (stream: the
 * caller's, or 0); a failed fence releases nothing. */
int heap_fence_locked(gpu_heap_t *h, uintptr_t stream);
/* The same, only when something waits to be released. */
int heap_drain_locked(gpu_heap_t *h, uintptr_t stream);
/* quarantine.c: non-blocking release of the quarantine. Sealing records one
 * context-wide event after all work issued so far and hangs the quarantine on it;
 * reaping queries the sealed events (never blocks) and makes the batches of
 * completed ones idle. Lock held; dropped around the driver calls. */
int quarantine_seal_locked(gpu_heap_t *h, uintptr_t stream);
bool quarantine_reap_locked(gpu_heap_t *h);
/* Blocks freed when cover_seq read tag: true once reusable. Otherwise queries the
 * sealed events, or seals a new one (with whatever the quarantine holds) when
 * none was recorded since tag; never waits. Lock held; dropped around driver calls. */
bool quarantine_cover_locked(gpu_heap_t *h, uint64_t tag);
static inline bool quarantine_covered(gpu_heap_t *h, uint64_t tag) {
    return tag < atomic_load_explicit(&h->cover_done, memory_order_acquire);
}
/* cover_done = max(cover_done, v). */
void quarantine_cover_done(gpu_heap_t *h, uint64_t v);
/* After a device fence: batches sealed before it (seq below the one noted) go idle. */
void quarantine_release_sealed_locked(gpu_heap_t *h, uint64_t before_seq);
/* The unsealed quarantine, taken off its list for a driver call made with the
 * lock dropped: its blocks count as draining meanwhile (the checker sees them). */
quarantine_batch quarantine_take_locked(gpu_heap_t *h);
/* After that call: the batch stops draining; when the call failed it goes back
 * in front of what was freed meanwhile. */
void quarantine_untake_locked(gpu_heap_t *h, const quarantine_batch *q, bool failed);
/* A batch whose GPU work is known finished: its blocks become idle. */
void quarantine_free_locked(gpu_heap_t *h, const quarantine_batch *q);
void quarantine_close(gpu_heap_t *h);
int heap_trim_locked(gpu_heap_t *h, size_t keep);     /* drain, then release whole idle extents */
/* Out of memory: waits for stream-freed blocks and gives every idle extent back
 * (heap_trim_locked(0)); true when the caller should try once more. */
bool heap_reclaim_locked(gpu_heap_t *h);
int heap_release_range_locked(gpu_heap_t *h, uintptr_t lo, uintptr_t hi); /* the same, inside [lo, hi) */
/* Before mapping `bytes` of new memory: when at least that much sits idle (in
 * pieces too small or in the wrong place for the request), gives that much back
 * first, so that physical memory follows live memory instead of growing. No fence
 * (idle memory is safe); refused while a capture is in progress. */
int heap_recycle_locked(gpu_heap_t *h, size_t bytes);
int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out);
int heap_back_at_locked(gpu_heap_t *h, block *range); /* maps one new extent over a BUSY range */
int heap_carve_vacant_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out);
void heap_headroom_release_locked(gpu_heap_t *h, block *b);
size_t heap_headroom_for(const gpu_heap_t *h, size_t size);
int heap_restore_access(gpu_heap_t *h, block *b);      /* b BUSY, lock not held */
void heap_make_live_locked(gpu_heap_t *h, block *b);   /* b (in no index) becomes LIVE and counted */
/* A LIVE block, already out of the map, stops counting as live: the inverse of
 * heap_make_live_locked (extents unclaimed, headroom given back, cache state cleared). */
void heap_unlive_locked(gpu_heap_t *h, block *b);
void heap_quarantine_locked(gpu_heap_t *h, block *b);  /* a LIVE block, already out of the map */
extent *heap_extent_new_locked(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle handle);
void heap_extent_drop_locked(gpu_heap_t *h, extent *e);
void heap_mapped_add(gpu_heap_t *h, size_t bytes);
int heap_alloc_locked(gpu_heap_t *h, size_t need, size_t align, unsigned flags, uintptr_t stream, block **out);
/* The block at p that a caller may treat as live (in the address map and not
 * held free by a thread cache), or NULL. With take set, a block a thread cache
 * handed out becomes the heap's alone (TC_NONE), so that the caller may change
 * it. Lock held. */
block *heap_find_live(gpu_heap_t *h, uintptr_t p, bool take);
/* A LIVE block out of the address map goes back to the heap: idle at once when
 * safe is set (no GPU work can still use it), else into the quarantine. */
void heap_retire_locked(gpu_heap_t *h, block *b, bool safe);

/* ---- tcache.c: per-thread caches of small blocks ---------------------------- */

/* Blocks larger than this never go through a thread cache. */
#define TC_MAX_BYTES ((size_t)4 << 10)
/* gpu_malloc of need bytes (a quantum multiple, at most h->tcache_max) from the thread's cache: GPU_OK
 * with *out, or GPU_ERR_BUSY when the cache cannot serve it (the caller goes to
 * the heap); other errors are the heap's. */
int tcache_malloc(gpu_heap_t *h, size_t need, void **out);
/* gpu_free through the thread's cache: GPU_OK when the cache took p,
 * GPU_ERR_BUSY when p is not one of its blocks (the caller goes to the heap). */
int tcache_free(gpu_heap_t *h, uintptr_t p);
/* Every block the calling thread's cache holds goes back to h (lock held), and
 * the other threads' caches are asked to do the same at their next call. */
void tcache_flush_locked(gpu_heap_t *h);
/* Blocks held free by h's caches (lock held; a racing owner may move them). */
void tcache_stats_locked(gpu_heap_t *h, size_t *bytes, size_t *blocks);
/* h is closing: its caches are dropped (their blocks go with the heap). */
void tcache_heap_closing(gpu_heap_t *h);

/* ---- api.c: errors and the registry of heaps -------------------------------- */

/* Records a message for err on the calling thread without reporting it: for code
 * that holds a lock. Returns err. */
int gh_note(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Puts fmt's text and ": " before the message noted last (the caller's context
 * for a note made further down). Returns err. */
int gh_note_context(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reports err with the message noted last (sets the last error, calls the
 * handler, prints when verbose). Call with no lock held. Returns err. */
int gh_report(int err);
/* gh_note + gh_report. */
int gh_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gh_ok(void);
/* True between gpu_capture_begin and gpu_capture_end (of any thread). */
bool gh_capture_announced(void);
/* The heap whose reservation holds p, or NULL. */
gpu_heap_t *registry_find_ptr(uintptr_t p);
int registry_add(gpu_heap_t *h);
/* gpu_heap_create over a backend the caller opened (tests: fault injection). */
int gh_heap_create_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out);
void registry_remove(gpu_heap_t *h);
/* Calls fn(h, arg) with the registry locked when h is a live heap of that serial
 * (so it cannot be destroyed meanwhile); false when it is not. */
bool registry_call(gpu_heap_t *h, uint64_t serial, void (*fn)(gpu_heap_t *h, void *arg), void *arg);
/* Calls fn on every live heap, with the registry locked (fn must not create or
 * destroy heaps). */
void registry_each(void (*fn)(gpu_heap_t *h, void *arg), void *arg);
/* The default heap of CUDA device dev, created on first use (gpu_heap_default
 * for a device named by the caller: the interposer, the framework entry points);
 * NULL with the error reported. */
gpu_heap_t *gh_heap_default_of(int dev);
/* The default heap of dev if it exists, without creating it. */
gpu_heap_t *gh_heap_default_peek(int dev);
/* The configuration default heaps are made from (gpu_config_init, read once). */
const gpu_config_t *gh_default_config(void);
/* GPUHEAP_VERBOSE, read once. */
int gh_verbosity(void);

/* ---- lookup.c: the live block containing an address ------------------------ */

/* The bounds of the live block that contains p (any byte of it). GPU_ERR_NOT_OWNED
 * outside h, GPU_ERR_NOT_LIVE when no live block holds p. Takes the lock. */
int heap_block_containing(gpu_heap_t *h, uintptr_t p, uintptr_t *start, size_t *size);

/* ---- peer.c: other devices' access to the heap's memory -------------------- */

/* Grants device access to every extent now and to every later one (idempotent;
 * the owner itself is a no-op). Lock not held; driver calls outside the lock. */
int heap_peer_add(gpu_heap_t *h, int device);
/* Later extents are no longer granted to device; earlier ones keep its access. */
int heap_peer_remove(gpu_heap_t *h, int device);
uint64_t heap_peers(const gpu_heap_t *h);
/* After a new extent [va, va+size) entered the map: grants the peers added since
 * `seen` (read under the lock before the extent was backed). Lock held; dropped
 * around the grant. */
void heap_peer_catch_up_locked(gpu_heap_t *h, uintptr_t va, size_t size, uint64_t seen);

/* ---- stats.c: statistics as JSON and at exit (GPUHEAP_STATS, GPUHEAP_STATS_JSON) -- */

/* Reads GPUHEAP_STATS and GPUHEAP_STATS_JSON once and arms the exit report. */
void stats_env_init(void);
/* An explicit heap is being destroyed: its summary, under GPUHEAP_STATS=1. */
void stats_heap_closing(gpu_heap_t *h);

/* ---- trace.c: recording every call (GPUHEAP_TRACE, gpu_trace_start) -------- */

/* What a trace line records; the names are in trace.c. Later ops go before
 * TRACE_OP_COUNT (readers skip names they do not know). */
typedef enum trace_op {
    TRACE_MALLOC, TRACE_FREE, TRACE_REALLOC, TRACE_PROTECT, TRACE_TRIM,
    TRACE_RESERVE, TRACE_UNRESERVE, TRACE_MAP, TRACE_UNMAP, TRACE_FENCE, TRACE_COPY, TRACE_MEMSET,
    TRACE_MAP_FILE, TRACE_SYNC_FILE, TRACE_UNMAP_FILE, /* file.c: addr = mapping, size = length, arg = file offset */
    TRACE_CREATE, TRACE_RELEASE, TRACE_ACCESS, /* backend_call.c: physical memory made, given back; access set */
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

/* ---- file.c: file-backed memory -------------------------------------------- */

/* Adds the heap's file mappings to its statistics. */
void file_stats(gpu_heap_t *h, gpu_stats_t *s);
/* Gives back the pinned staging buffers cached for h (gpu_heap_trim). */
void file_release_staging(gpu_heap_t *h);
/* Drops every mapping of h and its staging, before the heap closes its backend:
 * zero-copy ranges are unregistered, no write-back happens. */
void file_heap_closing(gpu_heap_t *h);

/* The heap a gpu_heap_* call names (api.c): NULL is the default heap, anything
 * else must be live; NULL with the error reported otherwise. */
gpu_heap_t *api_heap(gpu_heap_t *heap);

/* ---- config.c --------------------------------------------------------------- */

/* Parses "123", "64K", "2M", "1G", "64T", "max"; false on a malformed value. */
bool config_parse_size(const char *s, size_t *out);

#endif /* GPUHEAP_INTERNAL_H */
