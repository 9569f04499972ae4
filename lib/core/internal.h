/*
 * internal.h — the heap core's own names, shared between its files and called by
 * nothing outside lib/core: the operations that run with the heap's lock held
 * (each may drop and retake it around a driver call), the quarantine, the stream
 * pools, the event FIFOs both wait on (events.c), the doors that back extents and
 * give them back (backing.c), peers catching up.
 */
#ifndef GPUHEAP_CORE_INTERNAL_H
#define GPUHEAP_CORE_INTERNAL_H

#include "core/block.h"
#include "core/blockmap.h"
#include "core/extent.h"
#include "core/heap.h"
#include "core/tlsf.h"
#include "error.h"

/* Everything below is called with the lock held unless it says otherwise; an
 * operation that calls the driver drops the lock around the call and retakes it. */

/* spare.c: the handles one allocation request's recycle unmapped and kept; the
 * request's mappings take those of their pieces' sizes, and it releases the rest
 * before it creates anything new, and at its end. */
#define SPARE_MAX 256 /* handles a recycle keeps (trim.c): a paged heap's trade of 512 MiB in 2 MiB pages */

typedef struct spare {
    vmm_handle handle; /* unmapped, not released: still held, and counted in the cap */
    size_t size;
    block *from;       /* or still mapped at this BLOCK_LINGER block until its release is done (linger.c) */
} spare;

typedef struct spare_set {
    unsigned n;
    spare kept[SPARE_MAX];
} spare_set;

/* ---- account.c: live and mapped books, a block's way out of LIVE ------------ */

void heap_mapped_add(gpu_heap_t *h, size_t bytes);                    /* mapped bytes and their peak */
/* A record for an extent just mapped at [va, va+size), in the map and counted; NULL: no map leaf. */
extent *heap_extent_new_locked(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle handle);
void heap_extent_drop_locked(gpu_heap_t *h, extent *e);               /* out of the map and the counts */
void heap_make_live_locked(gpu_heap_t *h, block *b);                  /* b (in no index) becomes LIVE and counted */
void heap_note_live_peak_locked(gpu_heap_t *h);                     /* the live bytes grew: the program's peak follows */
/* A LIVE block, already out of the map, stops counting as live: the inverse of
 * heap_make_live_locked (extents unclaimed, headroom given back, cache state cleared). */
void heap_unlive_locked(gpu_heap_t *h, block *b);
void heap_headroom_release_locked(gpu_heap_t *h, block *b);           /* b's headroom becomes vacant VA */
void heap_quarantine_locked(gpu_heap_t *h, block *b);                 /* a LIVE block, already out of the map */
/* The same onto another list of quarantined blocks (a sealed batch's). */
void heap_quarantine_onto_locked(gpu_heap_t *h, block *b, block **list);
/* A LIVE block out of the address map goes back to the heap: idle at once when
 * safe is set (no GPU work can still use it), else into the quarantine. */
void heap_retire_locked(gpu_heap_t *h, block *b, bool safe);

/* ---- fence.c: waiting for the GPU ------------------------------------------- */

/* One device fence, and what it makes safe: the quarantine, its sealed batches
 * and every stream-freed block become idle, and the cover number moves on. For
 * callers that need the fence for their own sake (a decommit, a move) too.
 * Refused with GPU_ERR_CAPTURING while a capture is in progress (stream: the
 * caller's, or 0); a failed fence releases nothing. */
int heap_fence_locked(gpu_heap_t *h, uintptr_t stream);
int heap_drain_locked(gpu_heap_t *h, uintptr_t stream);               /* the same, only when something waits */
/* Out of memory: waits for stream-freed blocks and gives every idle extent back
 * (heap_trim_locked(0)); true when the caller should try once more. */
bool heap_reclaim_locked(gpu_heap_t *h);

/* ---- vacant.c: new memory ----------------------------------------------------- */

/* The grid a heap's new ranges start on: a paged heap's page, else the
 * granularity. The reservation is aligned to it (heap.c), so where a range
 * falls relative to the heap's start does not depend on where the driver put
 * the heap. */
static inline size_t heap_grid(const gpu_heap_t *h) { return h->page ? h->page : h->gran; }

/* Carves size bytes at align out of vacant VA, with up to headroom bytes of
 * HEADROOM after it where there is room; the range comes back BUSY. */
int heap_carve_vacant_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, block **out);
/* Maps a BUSY range: one extent, or chunks (vacant.c); a piece the size of a
 * handle in spares (may be NULL) gets that handle, and the spares left are
 * released before anything is created. */
int heap_back_at_locked(gpu_heap_t *h, block *range, spare_set *spares);
/* heap_carve_vacant_locked and heap_back_at_locked: a new BUSY block with an extent of its own. */
int heap_back_locked(gpu_heap_t *h, size_t size, size_t align, size_t headroom, spare_set *spares, block **out);
/* Maps one new extent over the first grow bytes of n, unmapped VA (VACANT, in
 * its index, or HEADROOM) right after a block the caller holds: n comes back
 * BUSY and grow bytes long, the rest of it as it was. On a refusal n is as it
 * was, whole. The one way realloc's in-place growth and an extended idle tail
 * map after a block; records reserved by the caller. */
int heap_back_after_locked(gpu_heap_t *h, block *n, size_t grow, spare_set *spares);
/* The block that owns e: the last block to claim it, while that block still
 * claims it (live, or BUSY being changed as a live block) or is the gpu_reserve
 * range that set it, and holds e whole; else NULL. A freed block does not
 * unclaim its extents — with large blocks in chunks that walk cost a
 * stream-ordered 1 GiB pair a third of its time — it only clears its claims
 * flag, so a stale pointer is told apart here (block records are never freed
 * while the heap lives; a record reused for a new block starts unclaimed). */
static inline block *extent_owner(const extent *e) {
    block *b = e->owner;
    return b && (b->claims || b->state == BLOCK_SPARSE) && b->start <= e->va && e->va + e->size <= b->start + b->size
               ? b
               : NULL;
}
/* Once a block of this many granules (64 MiB on a GPU) has been freed, or the
 * heap holds as much as the range, ranges of 512 MiB and more are backed in
 * chunks (vacant.c, back_chunk). */
#define BACK_CHUNK_AFTER_FREE_GRANULES 32
/* The user freed a block of size bytes (gpu_free, or a thread cache keeping it:
 * lib/cache/big.c): from a large one on, large ranges are backed in chunks. */
static inline void heap_note_free_locked(gpu_heap_t *h, size_t size) {
    if (size >= BACK_CHUNK_AFTER_FREE_GRANULES * h->gran) h->large_freed = true;
}
/* New memory for need bytes at align that starts with an idle block of at least
 * min bytes ending where mapped memory ends: one new extent is mapped over the
 * vacant VA right after it, and the two come back as one BUSY block (at least
 * need bytes). GH_MISS when no idle block qualifies; records reserved. */
/* paged.c: a paged heap's placement of a request no idle block holds, over a
 * run of idle blocks and unmapped holes; GH_MISS when a range of its own maps
 * no more. (vacant.c maps a paged heap's ranges in pages, moving idle ones.) */
int heap_run_locked(gpu_heap_t *h, size_t need, size_t align, spare_set *spares, block **out);
int heap_extend_tail_locked(gpu_heap_t *h, size_t need, size_t align, size_t min, spare_set *spares, block **out);
size_t heap_headroom_for(const gpu_heap_t *h, size_t size);           /* headroom kept after a new extent */

/* ---- fit.c: which idle memory a request takes --------------------------------- */

/* Each returns an idle piece of need bytes at align, made LIVE, or NULL on a miss. */
block *fit_take_best(gpu_heap_t *h, size_t need, size_t align);
block *fit_take_any(gpu_heap_t *h, size_t need, size_t align);        /* from any idle block */
block *fit_take_whole(gpu_heap_t *h, size_t need, size_t align);      /* only where it fills whole extents */
bool fit_memo_holds(gpu_heap_t *h, const block *b); /* b's remembered miss is what a search would find now (check.c) */
block *fit_take_owned(gpu_heap_t *h, size_t need, size_t align);      /* whole extents, owned by the block */

/* ---- alloc.c: the allocation path --------------------------------------------- */

/* A LIVE block of need bytes at align (flags: GPU_ALLOC_OWNED), idle memory first,
 * then new; stream: the caller's, for capture checks (0: none). */
int heap_alloc_locked(gpu_heap_t *h, size_t need, size_t align, unsigned flags, uintptr_t stream, block **out);
/* Up to n LIVE blocks of need bytes (one exact size class: at most 16 quanta) for
 * a thread cache's refill, in the order n calls of heap_alloc_locked would give
 * them, carved from one idle block while it lasts. Returns how many it got; a
 * shortfall is the heap's to report when the caller asks it for one block. */
size_t heap_alloc_run_locked(gpu_heap_t *h, size_t need, size_t n, block **out);

/* ---- free.c ----------------------------------------------------------------------- */

int heap_restore_access(gpu_heap_t *h, block *b);      /* b BUSY, lock not held: its extents read-write again */

/* ---- lookup.c ----------------------------------------------------------------------- */

/* The block at p that a caller may treat as live (in the address map and not
 * held free by a thread cache), or NULL. With take set, a block a thread cache
 * handed out becomes the heap's alone (TC_NONE), so that the caller may change it. */
block *heap_find_live(gpu_heap_t *h, uintptr_t p, bool take);

/* ---- trim.c: giving idle memory back ------------------------------------------ */

int heap_trim_locked(gpu_heap_t *h, size_t keep);     /* drain, then release whole idle extents */
int heap_release_range_locked(gpu_heap_t *h, uintptr_t lo, uintptr_t hi); /* the same, inside [lo, hi) */
/* Before mapping `bytes` of new memory: gives back that much of what sits idle
 * in whole extents (in pieces too small or in the wrong place for the request),
 * or all of it when less sits idle, so that physical memory follows live memory
 * instead of growing. Refused while a capture is in progress. In legacy free
 * order idle memory may still be in use: how says what may go. The
 * handles go into keep (when not NULL) unmapped, up to what it holds, for the
 * mapping that follows (spare.c); the rest are released. */
typedef enum recycle_how {
    RECYCLE_SAFE,   /* only memory idle since a release seen done */
    RECYCLE_LINGER, /* that, and pages a release may still use, kept mapped where they are until it is done (linger.c) */
    RECYCLE_FENCE,  /* a fence first: everything */
} recycle_how;
int heap_recycle_locked(gpu_heap_t *h, size_t bytes, spare_set *keep, recycle_how how);

/* ---- quarantine.c ------------------------------------------------------------- */

/* Non-blocking release of the quarantine. Sealing records one
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
/* A LIVE block out of the address map, freed by its user when cover_seq read tag
 * and kept since (a thread cache's), goes back to the heap: idle when a cover
 * past tag completed, else into the oldest sealed batch whose event was
 * recorded after its free (it is released with that batch), else into the
 * quarantine. Lock held. */
void quarantine_retire_locked(gpu_heap_t *h, block *b, uint64_t tag);
/* After the free of a block that passes the quarantine's budget alone: records
 * the next seal's event now (a seal takes it while nothing entered the
 * quarantine after it), so that the miss that wants this memory finds the GPU
 * past it. Lock held; dropped around the driver call. */
void quarantine_early_locked(gpu_heap_t *h);
/* In legacy free order (gpu_set_free_order): makes the context wait for all
 * work issued so far and releases the quarantine and every sealed batch at
 * once (with empty_ok also when nothing waits: the thread caches' frees). True
 * when it did; false in event order, while a capture is in progress, or while
 * another thread records or asks. Lock held; dropped around the driver call. */
bool quarantine_order_locked(gpu_heap_t *h, uintptr_t stream, bool empty_ok);
/* The process's free order (gpu_free_order). */
bool quarantine_legacy(void);
/* A legacy-order release not yet known done (by its event or a fence): idle
 * memory may still be in use by the work before it. */
static inline bool heap_order_owed(const gpu_heap_t *h) { return h->order_done < h->order_releases; }
/* Asks the legacy-order releases' events, oldest first, whether they are done
 * (no wait), so that memory idle since them may be unmapped (order_done). */
void quarantine_orders_reap_locked(gpu_heap_t *h);
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

/* ---- stream.c: blocks freed on streams ------------------------------------- */

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

/* ---- backing.c: the doors to back an extent and to give one back ------------- */

/* Maps one new extent over [va, va+size), a range the caller holds (BUSY, or in
 * a busy reservation): create (or, with kept, that handle of size bytes, held
 * unmapped: spare.c), map, read-write access for the owner and every peer; the
 * record is made (owned by owner, which may be NULL) and peers added meanwhile
 * are granted it. A kept handle the driver will not map is released and a new
 * one created — unless it still lingers where it was (kept->from): then the
 * refusal is returned and the handle stays the caller's. Lock held; dropped
 * around the driver calls. */
int extent_back_locked(gpu_heap_t *h, uintptr_t va, size_t size, block *owner, const spare *kept);

/* What became of an extent given back. */
typedef enum extent_fate {
    EXTENT_GONE, /* unmapped and released */
    EXTENT_KEPT, /* still mapped, bytes intact: an unmap was refused, or a release and then mapped back */
    EXTENT_LOST, /* unmapped, and the driver would take back neither the handle nor its mapping: forgotten */
    EXTENT_SPARE, /* unmapped and kept, handle held, for the caller's next mapping (spare.c) */
} extent_fate;

typedef struct extent_return {
    extent *e;        /* held by the caller (a BUSY range, a busy reservation, a closing heap) */
    gpu_prot_t prot;  /* in: the access it is mapped back with if its release is refused; out: its access if kept */
    bool spare;       /* in: once unmapped, keep the handle (EXTENT_SPARE) instead of releasing it */
    extent_fate fate; /* out */
    int rc;           /* out: GPU_OK when gone, else the driver's refusal */
} extent_return;

/* Gives n extents back: each unmapped, then released (one marked spare is only
 * unmapped: SPARE). A release the driver
 * refuses is mapped back (prot, peers included) and the extent KEPT; when that is
 * refused too it is LOST. With all_or_none every mapping goes first, and one
 * refused puts the others back (all KEPT). Returns the first refusal or GPU_OK.
 * Lock not held; the books are untouched until extent_settle_locked. */
int extents_give_back(gpu_heap_t *h, extent_return *v, size_t n, bool all_or_none);
/* The books after extents_give_back, one extent at a time: a gone, spare or lost
 * record is dropped (a lost one counted in extents_lost), a kept one takes its access.
 * Lock held. */
void extent_settle_locked(gpu_heap_t *h, const extent_return *r);
/* heap_close: every extent given back through the same door (the books go with
 * the heap). Lock not held. */
void extents_give_back_all(gpu_heap_t *h);
/* Fresh handles, not in the books: backed at [va, va+size) read-write (undone
 * on failure); unmapped and released (discard); released when unmapped already
 * (drop). A handle the driver will not take back, asked twice, is counted in
 * extents_lost. Lock not held. */
int handle_back(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle *out);
void handle_discard(gpu_heap_t *h, uintptr_t va, size_t size, vmm_handle hd);
void handle_drop(gpu_heap_t *h, vmm_handle hd, size_t size);
/* The cap (heap_cap_set): a paused extent given back by the door costs no call
 * (it holds no memory); every other create and release is counted per device,
 * and handle_back refuses what would pass the cap, after giving h's idle memory
 * back (heap_reclaim_locked) and then the device's other lasting heaps' (the
 * default and tag heaps), with GPU_ERR_OUT_OF_MEMORY naming the cap. A driver
 * out of memory has those other heaps give their idle memory back, then is tried
 * once more. Callers hold no heap lock: the door takes other heaps' locks. */

/* ---- spare.c: handles a trade keeps for the mapping that follows ------------- */

/* A handle the recycle unmapped (or left lingering at from), kept in s
 * (counted in spare_bytes). */
void spare_keep_locked(gpu_heap_t *h, spare_set *s, vmm_handle hd, size_t size, block *from);
/* A kept handle of exactly size bytes, out of the set (s may be NULL: none). */
bool spare_take_locked(gpu_heap_t *h, spare_set *s, size_t size, spare *out);
/* Moves a handle of size bytes among those from index held on to index held:
 * held + 1, or held when there is none (the first held handles are spoken for). */
unsigned spare_hold(spare_set *s, unsigned held, size_t size);
/* Releases every handle of s (NULL: none) past the first keep; lock dropped around each.
 * A lingering one goes back where it is still mapped instead (linger_return_locked). */
void spare_release_locked(gpu_heap_t *h, spare_set *s, unsigned keep);

/* ---- linger.c: pages moved before their release is done ----------------------- */

/* The idle range (BUSY, cut to one extent e) moves while a legacy-order release
 * may still use it: its handle goes into s, still mapped here; the range becomes
 * BLOCK_LINGER and e's record goes (no driver call). */
void linger_keep_locked(gpu_heap_t *h, block *range, extent *e, spare_set *s);
/* Maps the lingering spare sp at [va, va+size): the block joins the heap's
 * lingering list, its twin the new extent. When the driver refuses, the handle
 * goes back where it lingers and the piece gets new memory. */
int linger_back_locked(gpu_heap_t *h, uintptr_t va, size_t size, const spare *sp);
/* A lingering spare no mapping took: back where it is still mapped, idle. */
void linger_return_locked(gpu_heap_t *h, const spare *sp);
/* Unmaps lingering mappings whose release is known done (the caller asked the
 * events: quarantine_orders_reap_locked); with all, a fence first when any is
 * not, so that none is left. Lock dropped around the driver calls. */
void linger_reap_locked(gpu_heap_t *h, bool all);
/* The twin extent e is about to be given back: its lingering mapping goes
 * first (a fence first when its release is not seen done). */
void linger_settle_twin_locked(gpu_heap_t *h, const extent *e);
/* heap_close: every lingering mapping unmapped (the GPU was fenced). Lock not held. */
void linger_close(gpu_heap_t *h);

/* ---- pause.c ------------------------------------------------------------------ */

/* While another thread pauses or resumes h, waits (lock dropped meanwhile) until
 * it has done: frees, releases and peer grants wait instead of failing. */
void heap_settle_locked(gpu_heap_t *h);
/* heap_close: the backup of a paused heap, or the pinned buffer kept for the
 * next pause, goes with it. Lock not held. */
void heap_pause_close(gpu_heap_t *h);
/* gpu_heap_trim: the pinned buffer a resume kept for the next pause's backup is
 * freed (not while paused: it holds the contents). Lock not held. */
void heap_backup_trim(gpu_heap_t *h);

/* ---- events.c: FIFOs of events and what each covers -------------------------- */

/* An owner's FIFO as events.c sees it: the owner's entries (oldest first), their
 * count, its busy flag (a thread records or queries with the lock dropped), and
 * its capacity. The heap's quarantine: sealed, nsealed, seal_busy; a stream pool:
 * pending, npending, busy. */
typedef struct event_queue {
    event_entry *e;
    unsigned *n;
    bool *busy;
    unsigned cap;
} event_queue;

/* An owner's answer to an entry whose event completed: makes what it covers idle;
 * true when any block became idle. Lock held. */
typedef bool (*events_done_fn)(gpu_heap_t *h, const event_entry *e, void *arg);

/* What an event marks: the work issued so far on one stream, or on the whole
 * context (refused with GPU_ERR_CAPTURING while a capture is in progress, as a
 * fence would be); EVENT_ORDERED also makes all later work of the context wait
 * for it. */
typedef enum event_kind { EVENT_ON_STREAM, EVENT_ON_CONTEXT, EVENT_ORDERED } event_kind;
/* Records an event of kind EVENT_ON_STREAM or EVENT_ON_CONTEXT and appends item
 * with it. The queue must have room and not be busy. Lock held; dropped around
 * the driver calls (busy meanwhile). A failed record appends nothing and returns
 * the error. */
int events_record_locked(gpu_heap_t *h, event_queue q, uintptr_t stream, event_kind kind, const event_entry *item);
/* Makes the context wait for all work issued so far (an EVENT_ORDERED
 * record); with ev, keeps the event recorded (NULL: none is kept). busy is set
 * while the lock is dropped around the driver call. */
int events_order_locked(gpu_heap_t *h, bool *busy, uintptr_t stream, vmm_event *ev);
/* Asks about the oldest events in turn (with wait set, waits for them), the lock
 * dropped around each driver call; each completed entry leaves the queue and goes
 * to done. Stops at the first event not yet complete. Does nothing while the
 * queue is busy. Returns true when any done call did. Lock held on entry and exit. */
bool events_reap_locked(gpu_heap_t *h, event_queue q, bool wait, events_done_fn done, void *arg);
/* Takes entry i out of the queue (something else made it safe: a fence) and
 * returns it; its event is spent, given back to the driver after the lock is
 * dropped. Only the quarantine retires (spent events have room for its entries).
 * Lock held; no driver call. */
event_entry events_retire_locked(gpu_heap_t *h, event_queue q, unsigned i);
/* The heap closes: every event of the queue, and every spent one, given back.
 * Lock not held. */
void events_close(gpu_heap_t *h, event_queue q);

/* ---- peer.c ------------------------------------------------------------------ */

/* After a new extent [va, va+size) entered the map: grants the peers added since
 * `seen` (read under the lock before the extent was backed). Lock held; dropped
 * around the grant. */
void heap_peer_catch_up_locked(gpu_heap_t *h, uintptr_t va, size_t size, uint64_t seen);

/* ---- hooks.c ----------------------------------------------------------------- */

/* Calls every registered hook of that member (heap.h's heap_hooks). */
void hooks_closing(gpu_heap_t *h);
void hooks_stats_locked(gpu_heap_t *h, gpu_stats_t *s);
void hooks_stats(gpu_heap_t *h, gpu_stats_t *s);
void hooks_trimming(gpu_heap_t *h);
size_t hooks_held_locked(gpu_heap_t *h); /* what the layers above hold free of what the heap counts live */
void hooks_flush_locked(gpu_heap_t *h);
/* Every room_locked hook; true when any gave memory back. */
bool hooks_room_locked(gpu_heap_t *h, bool past_budget);

#endif /* GPUHEAP_CORE_INTERNAL_H */
