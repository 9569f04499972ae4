/*
 * heap.h — the heap core as the layers above it see it: open and close a heap,
 * allocate, free, resize, protect, trim, check, take its statistics; find a heap
 * from a pointer (the registry); and the hooks through which the core tells the
 * layers above that a heap closes or is being measured.
 *
 * The API (lib/api), the thread caches (lib/cache), file mappings (lib/file),
 * the interposer (lib/preload) and the statistics output (lib/obs) call these;
 * the core never calls them back except through a registered hook.
 */
#ifndef GPUHEAP_CORE_HEAP_H
#define GPUHEAP_CORE_HEAP_H

#include "core/types.h"

/* ---- the lock (heap.c) ------------------------------------------------------- */
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

/* ---- the calls (heap.c, alloc.c, free.c, lookup.c, resize.c, protect.c, sparse.c, trim.c, check.c) */

int heap_open(const gpu_config_t *cfg, gpu_heap_t **out);
/* Opens a heap over a backend the caller opened (a wrapper that records calls or
 * fails on demand, in tests). The heap closes the backend when it is closed, or
 * at once when opening fails. */
int heap_open_on(const gpu_config_t *cfg, vmm_backend *backend, gpu_heap_t **out);
void heap_close(gpu_heap_t *h);
/* Each returns GPU_OK or an error, with the message noted (error.h) for the
 * caller to report. */
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
 * mark before lib/file frees it). */
int heap_mark_file(gpu_heap_t *h, void *ptr, bool on);
int heap_protect(gpu_heap_t *h, void *ptr, size_t size, gpu_prot_t prot);
int heap_trim(gpu_heap_t *h, size_t keep);
void heap_stats(gpu_heap_t *h, gpu_stats_t *out);
int heap_check(gpu_heap_t *h, char *msg, size_t len);
static inline bool heap_owns(const gpu_heap_t *h, uintptr_t p) { return p - h->base < h->reserved; }

/* ---- pause.c: memory control (gpu_pause, gpu_resume) ----------------------- */

/* What a heap's memory is doing (gpu_heap.run_state). */
enum { HEAP_RUNNING = 0, HEAP_PAUSING, HEAP_PAUSED, HEAP_RESUMING };
/* True while the heap is neither paused nor being paused or resumed: one
 * relaxed load of the heap's read-mostly line (the API asks before a thread cache). */
static inline bool heap_is_running(const gpu_heap_t *h) {
    return atomic_load_explicit(&((gpu_heap_t *)h)->run_state, memory_order_relaxed) == HEAP_RUNNING;
}
/* The refusal of a call that needs a running heap: GPU_ERR_PAUSED when paused,
 * GPU_ERR_BUSY while pausing or resuming, noted; GPU_OK when running. */
int heap_refusal(const gpu_heap_t *h);
/* Gives every physical allocation of h back, keeping its addresses (with
 * backup: the live bytes first copied to pinned host memory); *bytes: what was
 * given back. GPU_OK at once when already paused. A failure leaves h running and
 * unchanged. Lock not held. */
int heap_pause(gpu_heap_t *h, bool backup, size_t *bytes);
/* Maps memory at every paused address again, restores the backup and the
 * protection; *bytes: what was mapped. GPU_OK at once when running. A failure
 * gives back what this call mapped and leaves h paused, backup kept. */
int heap_resume(gpu_heap_t *h, size_t *bytes);

/* ---- backing.c: the cap on physical memory per device ----------------------- */

/* The process-wide cap of physical bytes all heaps of a device may hold: bytes
 * 0 or SIZE_MAX remove it. Memory already held stays. */
void heap_cap_set(size_t bytes);
size_t heap_cap(void);            /* SIZE_MAX: none */
size_t heap_cap_held(int device); /* physical bytes the heaps of device hold now */

/* ---- lookup.c: the live block containing an address ------------------------ */

/* The bounds of the live block that contains p (any byte of it). GPU_ERR_NOT_OWNED
 * outside h, GPU_ERR_NOT_LIVE when no live block holds p. Takes the lock. */
int heap_block_containing(gpu_heap_t *h, uintptr_t p, uintptr_t *start, size_t *size);

/* ---- export.c: blocks shared with other processes (lib/ipc) ------------------ */

/* Gives the live block at ptr (its first byte) an export token — fresh, unless
 * it has one already, which is kept — and answers the token and the block's
 * size. The token lasts until the block is freed or moved. Errors:
 * GPU_ERR_NOT_LIVE (not a live block's start), GPU_ERR_INVALID (a gpu_reserve
 * range), GPU_ERR_BUSY. Takes the lock. */
int heap_export_token(gpu_heap_t *h, void *ptr, uint64_t fresh, uint64_t *token, size_t *size);

/* One extent behind an exported block: its handle and size, as they were when
 * pinned. */
typedef struct heap_export_extent {
    extent *e; /* pinned between heap_export_begin and heap_export_end */
    vmm_handle handle;
    size_t size;
} heap_export_extent;

/* An export being served: in start, token, ext[0..max); out the rest. */
typedef struct heap_export {
    uintptr_t start;          /* in: the block's first byte */
    uint64_t token;           /* in: its export token */
    heap_export_extent *ext;  /* in: room for max extents; out: n of them, in address order */
    unsigned max, n;
    size_t size;              /* out: the block's size */
    size_t offset;            /* out: its start inside the first extent */
    size_t granularity;       /* out: the heap's */
} heap_export;

/* Finds the block exported with x->token at x->start and pins the extents that
 * cover it, so that none is given back while the caller turns their handles
 * into fds with the lock dropped. Errors (x->n 0, nothing pinned):
 * GPU_ERR_INVALID (no such live block: freed or moved since, or more than max
 * extents), GPU_ERR_BUSY. Takes the lock. */
int heap_export_begin(gpu_heap_t *h, heap_export *x);
/* Unpins, then checks that the block is still live with the same token and
 * size: GPU_OK, or the refusal heap_export_begin would give now (the caller
 * then hands nothing out). Takes the lock. */
int heap_export_end(gpu_heap_t *h, heap_export *x);
/* True while the block at start is live with that token. Takes the lock. */
bool heap_export_live(gpu_heap_t *h, uintptr_t start, uint64_t token);
/* Imports of other processes' blocks mapped through h's backend (lib/ipc):
 * +1 at an open, -1 at the last close; gpu_heap_stats' ipc_imports_open. */
void heap_import_count(gpu_heap_t *h, int delta);

/* ---- peer.c: other devices' access to the heap's memory -------------------- */

/* Grants device access to every extent now and to every later one (idempotent;
 * the owner itself is a no-op). Lock not held; driver calls outside the lock. */
int heap_peer_add(gpu_heap_t *h, int device);
/* Later extents are no longer granted to device; earlier ones keep its access. */
int heap_peer_remove(gpu_heap_t *h, int device);
uint64_t heap_peers(const gpu_heap_t *h);

/* ---- quarantine.c: the process's free order (gpu_set_free_order) ------------- */

/* Sets it; back to events, fences every heap that released blocks in legacy
 * order since its last fence (GPU_ERR_CAPTURING: a capture kept a fence from
 * running; the order is events all the same). GPU_ERR_INVALID for no order. */
int heap_set_free_order(gpu_free_order_t order);
gpu_free_order_t heap_free_order(void);

/* ---- registry.c: the live heaps of the process ------------------------------ */

/* Lists h; a heap with is_default set (it lives as long as the process) is
 * listed among the lasting heaps too. */
int registry_add(gpu_heap_t *h);
void registry_remove(gpu_heap_t *h);
/* True when h is a live heap (listed and not yet removed). */
bool registry_has(const gpu_heap_t *h);
/* The heap whose reservation holds p, or NULL. Takes no lock. */
gpu_heap_t *registry_find_ptr(uintptr_t p);
/* Calls fn(h, arg) with the registry locked when h is a live heap of that serial
 * (so it cannot be destroyed meanwhile); false when it is not. */
bool registry_call(gpu_heap_t *h, uint64_t serial, void (*fn)(gpu_heap_t *h, void *arg), void *arg);
/* Calls fn on every live heap, with the registry locked (fn must not create or
 * destroy heaps). */
void registry_each(void (*fn)(gpu_heap_t *h, void *arg), void *arg);
/* Calls fn on every lasting heap (is_default: never destroyed), taking no lock:
 * safe where the registry's lock may be held, and fn may take a heap's lock. */
void registry_each_lasting(void (*fn)(gpu_heap_t *h, void *arg), void *arg);

/* ---- hooks.c: what the layers above hear of a heap ------------------------- */

/* The core calls no layer above it. A layer that keeps something per heap (the
 * thread caches, file mappings) registers hooks once, before it first keeps
 * anything; the core calls every registered hook, in the order registered. Any
 * member may be NULL. */
typedef struct heap_hooks {
    /* The heap is closing, its backend still open; lock not held. The layer
     * drops what it keeps for h (h's memory goes with the heap). */
    void (*closing)(gpu_heap_t *h);
    /* gpu_heap_stats, lock held: the layer corrects the snapshot (blocks a
     * thread cache holds free are not live). */
    void (*stats_locked)(gpu_heap_t *h, gpu_stats_t *s);
    /* gpu_heap_stats, lock not held: the layer adds its own figures. */
    void (*stats)(gpu_heap_t *h, gpu_stats_t *s);
    /* gpu_heap_trim, before the lock is taken: the layer gives back what it
     * keeps for h beside the heap (gpu_map_file's pinned staging buffers). */
    void (*trimming)(gpu_heap_t *h);
    /* gpu_heap_trim, lock held: the layer gives back the free blocks it holds
     * for h on this thread, and asks other threads to do the same. */
    void (*flush_locked)(gpu_heap_t *h);
    /* The heap is about to map new memory, lock held: the layer gives back free
     * blocks it holds for h on this thread that could serve instead, and with
     * past_budget (the mapping would take the heap past its physical budget)
     * asks other threads to do the same; true when it gave any (the heap looks
     * again before it maps). */
    bool (*room_locked)(gpu_heap_t *h, bool past_budget);
    /* Lock held: the bytes of blocks the layer holds free for h that the heap
     * counts live (a thread cache's), so that the live peak — which the physical
     * budget follows — is the program's, not the caches'. */
    size_t (*held_locked)(gpu_heap_t *h);
} heap_hooks;

#define HEAP_HOOKS_MAX 4
/* Registers hooks (kept by pointer: static storage). GPU_ERR_INVALID past
 * HEAP_HOOKS_MAX. Thread-safe; registering the same hooks twice is a no-op. */
int heap_hooks_add(const heap_hooks *hooks);

#endif /* GPUHEAP_CORE_HEAP_H */
