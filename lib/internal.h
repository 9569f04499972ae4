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
} block_state;

typedef struct block block;
struct block {
    uintptr_t start;
    size_t size;
    block *prev_phys, *next_phys; /* neighbours in address order */
    block *prev_free, *next_free; /* links in a free list or the quarantine list */
    uint8_t state;                /* block_state */
    uint8_t owned;                /* asked for with GPU_ALLOC_OWNED: keep granule-aligned on shrink */
};

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
/* True when b is linked in t's list for its size. */
bool tlsf_contains(const tlsf_index *t, const block *b);

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
    size_t nfree;      /* records on the free list */
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
    VMM_OP_COUNT
} vmm_op;

typedef struct vmm_counts {
    _Atomic uint64_t calls[VMM_OP_COUNT];
    _Atomic uint64_t errors;
} vmm_counts;

typedef struct vmm_door {
    vmm_backend *b;
    vmm_counts counts;
    int verbose;
} vmm_door;

int vmm_call_reserve(vmm_door *d, size_t size, uintptr_t *va);
int vmm_call_unreserve(vmm_door *d, uintptr_t va, size_t size);
int vmm_call_create(vmm_door *d, size_t size, vmm_handle *out);
int vmm_call_release(vmm_door *d, vmm_handle h);
int vmm_call_map(vmm_door *d, uintptr_t va, size_t size, vmm_handle h);
int vmm_call_unmap(vmm_door *d, uintptr_t va, size_t size);
int vmm_call_set_access(vmm_door *d, uintptr_t va, size_t size, gpu_prot_t prot);
int vmm_call_fence(vmm_door *d);
int vmm_call_memset(vmm_door *d, uintptr_t va, int byte, size_t size);
int vmm_call_copy(vmm_door *d, uintptr_t dst, uintptr_t src, size_t size);
/* create + map + set_access(read-write), undoing what succeeded on failure. */
int vmm_call_back(vmm_door *d, uintptr_t va, size_t size, vmm_handle *out);
/* unmap + release. */
int vmm_call_unback(vmm_door *d, uintptr_t va, size_t size, vmm_handle h);

/* ---- heap.c: the heap ------------------------------------------------------ */

#define GH_HEAP_MAGIC 0x67707568656170ull /* "gpuheap" */

struct gpu_heap {
    uint64_t magic;
    pthread_mutex_t lock;
    gpu_config_t cfg;
    vmm_door door;
    size_t gran;
    uintptr_t base;        /* the reservation */
    size_t reserved;
    bool is_default;

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
    size_t nextents;
    size_t protected_extents; /* extents whose access is not read-write */
    uint64_t fences;
};

static inline void heap_lock(gpu_heap_t *h) { pthread_mutex_lock(&h->lock); }
static inline void heap_unlock(gpu_heap_t *h) { pthread_mutex_unlock(&h->lock); }
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
int heap_realloc(gpu_heap_t *h, void *ptr, size_t size, void **out);
int heap_usable_size(gpu_heap_t *h, const void *ptr, size_t *out);
int heap_protect(gpu_heap_t *h, void *ptr, size_t size, gpu_prot_t prot);
int heap_trim(gpu_heap_t *h, size_t keep);
void heap_stats(gpu_heap_t *h, gpu_stats_t *out);
int heap_check(gpu_heap_t *h, char *msg, size_t len);
static inline bool heap_owns(const gpu_heap_t *h, uintptr_t p) { return p - h->base < h->reserved; }

/* ---- heap internals shared by heap.c, resize.c, trim.c, protect.c, check.c -- */

/* Called with the lock held; each may drop and retake it around driver calls. */
int heap_drain_locked(gpu_heap_t *h);                 /* one fence releases the quarantine */
int heap_trim_locked(gpu_heap_t *h, size_t keep);     /* drain, then release whole idle extents */
int heap_release_range_locked(gpu_heap_t *h, uintptr_t lo, uintptr_t hi); /* the same, inside [lo, hi) */
int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out);
int heap_back_at_locked(gpu_heap_t *h, block *range); /* maps one new extent over a BUSY range */
int heap_carve_vacant_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out);
void heap_headroom_release_locked(gpu_heap_t *h, block *b);
size_t heap_headroom_for(const gpu_heap_t *h, size_t size);
int heap_restore_access(gpu_heap_t *h, block *b);      /* b BUSY, lock not held */
void heap_make_live_locked(gpu_heap_t *h, block *b);   /* b (in no index) becomes LIVE and counted */
void heap_quarantine_locked(gpu_heap_t *h, block *b);  /* a LIVE block, already out of the map */
extent *heap_extent_new_locked(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle handle);
void heap_extent_drop_locked(gpu_heap_t *h, extent *e);
void heap_mapped_add(gpu_heap_t *h, size_t bytes);
int heap_alloc_locked(gpu_heap_t *h, size_t need, size_t align, unsigned flags, block **out);

/* ---- api.c: errors and the registry of heaps -------------------------------- */

/* Records a message for err on the calling thread without reporting it: for code
 * that holds a lock. Returns err. */
int gh_note(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reports err with the message noted last (sets the last error, calls the
 * handler, prints when verbose). Call with no lock held. Returns err. */
int gh_report(int err);
/* gh_note + gh_report. */
int gh_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gh_ok(void);
/* The heap whose reservation holds p, or NULL. */
gpu_heap_t *registry_find_ptr(uintptr_t p);
int registry_add(gpu_heap_t *h);
/* gpu_heap_create over a backend the caller opened (tests: fault injection). */
int gh_heap_create_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out);
void registry_remove(gpu_heap_t *h);

/* ---- config.c --------------------------------------------------------------- */

/* Parses "123", "64K", "2M", "1G", "64T", "max"; false on a malformed value. */
bool config_parse_size(const char *s, size_t *out);

#endif /* GPUHEAP_INTERNAL_H */
