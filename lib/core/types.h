/*
 * types.h — the heap core's records, in one place: blocks, the free-block index,
 * the address map, extents and their map, record pools, events and what waits on
 * them, stream pools, and the heap itself. Functions are declared in the header of the file that defines
 * them (tlsf.h, blockmap.h, extent.h, block.h, heap.h, internal.h); this header
 * only says what the books are made of.
 *
 * Every record lives in host memory, never in the device memory it describes
 * (jemalloc's out-of-band extent records are the model).
 */
#ifndef GPUHEAP_CORE_TYPES_H
#define GPUHEAP_CORE_TYPES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/door.h"
#include "gpuheap.h"
#include "common.h"

/* ---- blocks ------------------------------------------------------------------- */

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
    BLOCK_LINGER = 9,     /* a paged heap's page moved away while a legacy-order release may still use it: its
                           * handle is mapped elsewhere too, this mapping stays until that release is done (linger.c) */
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
    uint8_t busy;                 /* BLOCK_SPARSE: a thread is committing or decommitting in it; a BUSY piece of a
                                   * paged run (paged.c): still to be mapped; BLOCK_LINGER: being unmapped */
    uint8_t claims;               /* its extents' owner pointers name it and hold while it lives (set when
                                   * it claims them, cleared when it stops being live: extent_owner) */
    uint32_t epoch;               /* BLOCK_STREAM: its pool's epoch when it was freed */
    uint64_t order_epoch;         /* BLOCK_IDLE in legacy free order: the last release made before (part of) it
                                   * became idle; its memory may be unmapped once that one is done (trim.c). 0: now */
    struct stream_pool *pool;     /* BLOCK_STREAM: the stream it was freed on */
    struct extent *twin;          /* BLOCK_LINGER: the extent its handle is mapped at now (NULL while the handle
                                   * waits in a spare set); order_epoch: the release it waits for */
    uint64_t export_token;        /* LIVE: the token gpu_ipc_get_mem_handle gave it (export.c); 0: never exported.
                                   * Cleared whenever the block becomes or stops being live */
    /* IDLE: the whole-extent search's last miss in this block (fit.c): the need
     * and alignment it failed for, the extent map's generation then and the
     * extents it stepped over. fit_need 0: none; tlsf_insert clears it, since a
     * block's range changes only while it is out of its index. */
    size_t fit_need;
    uint64_t fit_gen;
    uint32_t fit_steps;
    uint8_t fit_align_log2;
    /* Thread caches (lib/cache): (generation << 2) | tc_state. Last, so that
     * block_new keeps it: the generation outlives the record's reuse. */
    _Atomic uint64_t tc;
};

/* Where a LIVE block stands with the thread caches (lib/cache). The heap changes
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

/* ---- the segregated-fit index of free blocks (tlsf.c) ------------------------ */

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

/* ---- the address map: live block by start address (blockmap.c) -------------- */

typedef struct blockmap {
    uintptr_t *keys; /* start addresses; 0 empty, 1 deleted */
    block **vals;
    size_t cap;      /* a power of two */
    size_t used;     /* keys that are not empty (live + deleted) */
    size_t live;
} blockmap;

/* ---- extents and the granule map (extent.c) --------------------------------- */

/* One physical allocation mapped whole at [va, va+size). */
typedef struct extent {
    uintptr_t va;
    size_t size;
    vmm_handle handle;
    block *owner;   /* the last block to claim it: its owner while that block lives and holds it
                     * whole (extent_owner), left stale when the block is freed (account.c) */
    uint8_t prot;   /* gpu_prot_t currently set (a paused extent: the one it gets back at resume) */
    /* Memory control (pause.c): given back by gpu_pause — unmapped and
     * released, no handle; the record, its addresses, owner and protection
     * kept, counted in paused_bytes instead of mapped_bytes. */
    uint8_t paused;
    /* A pause or a resume is giving it back or mapping it again with the lock
     * dropped: trims leave it alone. */
    uint8_t moving;
    /* Its handle is also still mapped at a BLOCK_LINGER block's address
     * (linger.c): it is not given back before that mapping goes. */
    uint8_t twin;
    uint32_t pins;  /* exports of it in flight (export.c): while pinned it is never given back */
    struct extent *next_free; /* record free list */
} extent;

#define EXTMAP_LEAF_LOG2 12

/* granule index -> extent*, two levels, leaves made on demand. */
typedef struct extmap {
    uintptr_t base;
    size_t granularity; /* a power of two (heap.c asserts it) */
    unsigned shift;     /* log2 of it: a granule index is a shift, not a division */
    size_t granules;
    size_t span;        /* granules * granularity */
    extent ***leaves;   /* [granules >> EXTMAP_LEAF_LOG2 rounded up] */
    size_t nleaves;
    uint64_t gen;       /* moves on with every extent set or cleared: what a search remembered of the
                         * map holds while it has not moved (fit.c) */
} extmap;

/* ---- record pools (block.c) --------------------------------------------------- */

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

/* ---- events and what waits on them (events.c) ------------------------------- */

/* Quarantined blocks taken off the list together, and what they add up to. */
typedef struct quarantine_batch {
    block *head; /* linked through next_free */
    size_t bytes, blocks;
} quarantine_batch;

/* One event recorded in the GPU's order, and what it covers. Its owner keeps its
 * events in a FIFO, oldest first (events.c runs them): the quarantine's sealed
 * batches, a stream pool's pending events. */
typedef struct event_entry {
    vmm_event ev;
    uint64_t tag;       /* what it covers, in the owner's terms: a cover number (the quarantine), an epoch (a stream pool) */
    quarantine_batch q; /* the blocks waiting on it where the owner lists them (the quarantine); empty for a pool */
} event_entry;

#define SEALED_MAX 8 /* quarantine batches sealed and not yet released */
#define ORDERS_MAX 16 /* legacy-order releases whose events are kept until seen done */
#define SPENT_MAX (SEALED_MAX + 1) /* events done with under the lock: retired seals and a stale early cover */

/* ---- stream pools (stream.c) -------------------------------------------------- */

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
    event_entry pending[STREAM_PENDING_MAX]; /* oldest first; tag: the epoch it covers */
    unsigned npending;
    bool busy;         /* a thread is recording or querying this pool's events outside the lock */
} stream_pool;

/* ---- the heap ------------------------------------------------------------------ */
#define GH_HEAP_MAGIC 0x67707568656170ull /* "gpuheap" */

struct gpu_heap {
    /* Read by every call and written almost never: a line of their own, away
     * from the lock and the counters (a thread cache's fast path reads them). */
    uint64_t magic;
    uintptr_t base;        /* the reservation */
    size_t reserved;
    size_t gran;
    size_t page;           /* paged placement (paged.c): extents of this size, shared by blocks of every size; 0: off */
    uint64_t serial;       /* unique per heap opened in this process (thread caches' key) */
    bool is_default;
    /* Memory control (pause.c): HEAP_RUNNING (0), PAUSING, PAUSED or RESUMING.
     * Changed under the lock; read without it by the API before it asks a
     * thread cache (one load of this line). */
    _Atomic uint8_t run_state;
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
    size_t peak_live_told; /* the live peak gpu_heap_stats reported: it also sees the caches' hand-outs (check.c) */
    size_t mapped_bytes, peak_mapped_bytes;
    size_t spare_bytes;    /* handles an allocation's recycle keeps unmapped for its mapping (spare.c): held, in the peak */
    size_t quarantine_bytes, quarantine_blocks;
    size_t draining_bytes, draining_blocks; /* quarantined blocks a drain took off the list while it fences (lock dropped) */
    /* Quarantine batches sealed by one context-wide event each, oldest first
     * (quarantine.c; tag: the cover number taken before the event was recorded):
     * released when a query finds the event complete, or by a fence. */
    event_entry sealed[SEALED_MAX];
    unsigned nsealed;
    bool seal_busy;        /* a thread records or queries seal events with the lock dropped */
    /* An event recorded at the free of a large block (quarantine.c): the next
     * seal's event, recorded early so that the GPU has passed it by the time a
     * miss looks. A seal takes it instead of recording while no block entered
     * the quarantine after it (quarantined == early_mark); else it is spent. */
    event_entry early;
    unsigned nearly;
    bool early_busy;
    uint64_t quarantined;  /* blocks ever put in the quarantine */
    bool large_freed;      /* a block of BACK_CHUNK_AFTER_FREE_GRANULES or more was freed: large ranges are backed in chunks (vacant.c) */
    uint64_t early_mark;   /* quarantined when the early event was recorded */
    /* Events done with while the lock was held (a fence released their batches,
     * an early event went stale): given back to the driver at the next call made
     * without the lock (events.c). */
    vmm_event spent[SPENT_MAX];
    unsigned nspent;
    uint64_t seal_events;
    uint64_t order_releases; /* releases in legacy free order (quarantine_order_locked) */
    /* The releases' events, oldest first (tag: the release's number), and the
     * last release known done — by its event or a fence: memory idle since a
     * release no later than it may be unmapped without a fence (trim.c). One
     * not known done is owed (heap_order_owed; a switch back to events fences). */
    event_entry orders[ORDERS_MAX];
    unsigned norders;
    bool order_busy;
    uint64_t order_done;
    /* Pages moved while a legacy-order release may still use them (linger.c):
     * BLOCK_LINGER blocks whose mapping goes once their release is done, newest
     * first, linked through prev_free/next_free. */
    block *linger;
    size_t nlinger;
    size_t nextents;
    size_t protected_extents; /* extents whose access is not read-write */
    stream_pool *pools[STREAM_POOLS_MAX];
    size_t npools;
    uint64_t stream_events;
    size_t sparse_reserved, sparse_committed;
    block *sparse_list;    /* BLOCK_SPARSE blocks, linked through prev_free/next_free */
    uint64_t fences;
    _Atomic uint64_t extents_lost; /* handles the driver would neither release nor map back (backing.c) */
    uint64_t ipc_exports;          /* blocks given an export token (export.c) */
    _Atomic uint64_t ipc_imports_open; /* other processes' blocks open through this heap's backend (lib/ipc) */
    size_t paused_bytes, npaused; /* extents given back by gpu_pause, record kept (pause.c) */
    struct pause_backup *backup;  /* the paused contents in pinned host memory, or the buffer kept for the next pause, or NULL (pause.c) */
    size_t backup_bytes;          /* paused contents held in it */
    size_t backup_pinned;         /* its pinned host bytes */

    /* Cover numbers (quarantine.c): every seal event and fence takes the next
     * cover_seq before its driver call, and once it is known complete raises
     * cover_done past its number. A block freed when cover_seq read t is safe to
     * reuse once cover_done > t — lock-free, for the thread caches. */
    _Alignas(64) _Atomic uint64_t cover_seq, cover_done;
};

#endif /* GPUHEAP_CORE_TYPES_H */
