/*
 * pause.c — giving a heap's physical memory back while keeping its addresses,
 * and taking it again (gpu_pause, gpu_resume: memory control).
 *
 * A trainer and an inference engine sharing one GPU hand each other the
 * device's memory for a while: one side's memory goes back to the driver and
 * returns later at the same addresses, so that its pointers — and the CUDA
 * graphs captured over them — stay valid. torch_memory_saver and vLLM's sleep
 * mode do it with one physical allocation per tensor; a heap owns its
 * reservation and maps memory in extents, so it does it at heap speed.
 *
 * Pausing waits for the GPU (one fence: work issued before it is done, the
 * quarantine and stream-freed blocks become idle), gives wholly idle extents
 * back as a trim does, then, for every extent left: with a backup, copies the
 * bytes of the live blocks in it to pinned host memory (the backend's staging
 * memory and copy queue: every copy queued, then one wait — copy-engine speed);
 * then gives it back through backing.c's door. Pinned memory is slow to get and
 * to give back (cuMemHostAlloc took ~600 ms per GiB on an H200, 30x the copy),
 * so the backup's buffer outlives the resume: the heap keeps it for its next
 * pause, replaces it only when a larger backup needs more, and frees it at
 * gpu_heap_trim (heap_backup_trim) or when the heap closes. Live pieces of one
 * extent a short gap apart are copied as one range (a queued copy costs a few
 * microseconds, what a few hundred KiB take to copy). The extent's record stays,
 * marked paused, with its addresses, owner and protection: the blocks over it
 * stay live in the books, a free of one works (books only), and no one else can
 * be handed its addresses. Resuming backs a new handle at each paused extent
 * through the same door (the cap, peers' access), copies the backup back and
 * sets each extent's protection again; any refusal gives back what this resume
 * mapped and leaves the heap paused with its backup, for a later try. Extents
 * that no live block uses any more by then are dropped instead of mapped.
 *
 * Both drop the lock around every driver call, as the rest of the core does.
 * The heap's run_state says PAUSING or RESUMING meanwhile: allocations, realloc
 * and protect are refused (GPU_ERR_BUSY; GPU_ERR_PAUSED once paused), frees and
 * peer grants wait (heap_settle_locked), and the extents on the move are marked
 * so that a trim leaves them alone. Operations already under way when a pause
 * begins hold their blocks BUSY; the pause waits for them first.
 */
#include <stddef.h>
#include <stdlib.h>
#include <time.h>

#include "core/internal.h"

_Static_assert(offsetof(struct gpu_heap, run_state) < 64, "run_state lies in the heap's read-mostly line");

/* A piece of a live block inside one extent, kept at off in the backup. */
typedef struct pause_range {
    uintptr_t va;
    size_t len, off;
} pause_range;

/* Live pieces of one extent at most this far apart are copied as one range. */
#define JOIN_GAP ((size_t)256 << 10)

typedef struct pause_backup {
    void *host;     /* the backend's staging memory (pinned), room bytes long, or NULL; kept between pauses */
    size_t room;
    size_t bytes;   /* paused contents held in it (0 while the heap runs) */
    pause_range *r; /* in address order; a range never crosses an extent */
    size_t n, cap;
} pause_backup;

/* The extents one pause or resume moves, in address order. */
typedef struct move_list {
    extent **e;
    extent_return *ret; /* pause: what the give-back door made of each */
    vmm_handle *hd;      /* resume: the new handles */
    uint8_t *flag;       /* pause: opened for reading; resume: mapped */
    size_t n, cap;
    bool want_paused;    /* listing: paused extents (resume) or mapped ones (pause) */
} move_list;

static void set_state(gpu_heap_t *h, int s) { atomic_store_explicit(&h->run_state, (uint8_t)s, memory_order_relaxed); }
static int state(const gpu_heap_t *h) { return atomic_load_explicit(&((gpu_heap_t *)h)->run_state, memory_order_relaxed); }

/* A short wait with the lock dropped, for another thread to finish its part. */
static void nap_locked(gpu_heap_t *h) {
    heap_unlock(h);
    nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
    heap_lock(h);
}

int heap_refusal(const gpu_heap_t *h) {
    switch (state(h)) {
    case HEAP_RUNNING: return GPU_OK;
    case HEAP_PAUSED: return gh_note(GPU_ERR_PAUSED, "this heap's memory is paused (gpu_pause): resume it first");
    default: return gh_note(GPU_ERR_BUSY, "another thread is pausing or resuming this heap's memory");
    }
}

void heap_settle_locked(gpu_heap_t *h) {
    while (state(h) == HEAP_PAUSING || state(h) == HEAP_RESUMING) nap_locked(h);
}

/* True while another thread has a block or reservation of h under way with the
 * lock dropped (a free restoring access, a realloc, a protect, a commit). */
static bool any_busy(const gpu_heap_t *h) {
    for (const block *b = h->first; b; b = b->next_phys)
        if (b->state == BLOCK_BUSY || (b->state == BLOCK_SPARSE && b->busy)) return true;
    return false;
}

/* extmap_walk's callback: stops at an extent an export in flight has pinned. */
static bool unpinned(extent *e, void *arg) {
    *(bool *)arg |= e->pins != 0;
    return !e->pins;
}

/* True while an export (lib/ipc) turns one of h's handles into an fd with the
 * lock dropped: a pause waits for it, as it waits for busy blocks. Lock held. */
static bool any_pinned(gpu_heap_t *h) {
    bool pinned = false;
    extmap_walk(&h->extents, unpinned, &pinned);
    return pinned;
}

/* ---- the extents on the move --------------------------------------------------- */

static bool list_one(extent *e, void *arg) {
    move_list *m = arg;
    if ((bool)e->paused != m->want_paused || e->moving) return true;
    if (m->n == m->cap) return false;
    e->moving = 1;
    m->e[m->n++] = e;
    return true;
}

/* Lists h's mapped (or paused) extents, marked moving. Lock held. */
static int list_locked(gpu_heap_t *h, bool paused, move_list *m) {
    size_t cap = paused ? h->npaused : h->nextents;
    *m = (move_list){.cap = cap, .want_paused = paused};
    if (!cap) return GPU_OK;
    m->e = malloc(cap * sizeof *m->e);
    m->ret = malloc(cap * sizeof *m->ret);
    m->hd = calloc(cap, sizeof *m->hd);
    m->flag = calloc(cap, 1);
    if (!m->e || !m->ret || !m->hd || !m->flag) return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory listing %zu extents", cap);
    extmap_walk(&h->extents, list_one, m);
    return GPU_OK;
}

/* The extents go back to the others' hands (lock held), and the list. */
static void list_end_locked(move_list *m) {
    for (size_t k = 0; k < m->n; k++) m->e[k]->moving = 0;
    free(m->e);
    free(m->ret);
    free(m->hd);
    free(m->flag);
    *m = (move_list){0};
}

/* ---- the backup ------------------------------------------------------------------ */

static void backup_free(gpu_heap_t *h, pause_backup *bk) {
    if (!bk) return;
    if (bk->host) vmm_call_staging_free(&h->door, bk->host, bk->room);
    free(bk->r);
    free(bk);
}

/* The statistics of h's backup: the paused contents, the pinned bytes held. Lock held. */
static void backup_books_locked(gpu_heap_t *h, const pause_backup *bk) {
    h->backup_bytes = bk ? bk->bytes : 0;
    h->backup_pinned = bk ? bk->room : 0;
}

/* The backup holds nothing any more (it was restored, or never taken); its
 * pinned buffer stays for the next pause. */
static void backup_empty(pause_backup *bk) {
    if (bk) bk->n = bk->bytes = 0;
}

void heap_backup_trim(gpu_heap_t *h) {
    heap_lock(h);
    pause_backup *bk = h->backup;
    bool idle = bk && !bk->bytes && state(h) == HEAP_RUNNING; /* a pause or resume uses it with the lock dropped */
    if (idle) {
        h->backup = NULL;
        backup_books_locked(h, NULL);
    }
    heap_unlock(h);
    if (idle) backup_free(h, bk);
}

/* Appends [va, va+len) of the extent at ev; joins the previous range when it
 * lies in the same extent at most JOIN_GAP before va (the gap's bytes are copied
 * too: they belong to no live block). */
static bool range_add(pause_backup *bk, uintptr_t ev, uintptr_t va, size_t len) {
    pause_range *last = bk->n ? &bk->r[bk->n - 1] : NULL;
    if (last && last->va >= ev && va - (last->va + last->len) <= JOIN_GAP) {
        size_t grow = va + len - (last->va + last->len);
        last->len += grow;
        bk->bytes += grow;
        return true;
    }
    if (bk->n == bk->cap) {
        size_t cap = bk->cap ? bk->cap * 2 : 64;
        pause_range *r = realloc(bk->r, cap * sizeof *r);
        if (!r) return false;
        bk->r = r;
        bk->cap = cap;
    }
    bk->r[bk->n++] = (pause_range){.va = va, .len = len, .off = bk->bytes};
    bk->bytes += len;
    return true;
}

/* A block whose bytes a backup keeps: live (not held free by a thread cache),
 * or a reservation's committed memory. */
static bool holds_data(const block *b) {
    if (b->state == BLOCK_SPARSE) return true;
    return b->state == BLOCK_LIVE && tc_state(atomic_load_explicit(&((block *)b)->tc, memory_order_acquire)) != TC_FREE;
}

/* The pieces of live blocks inside the listed extents, one walk over the blocks
 * beside the list (both in address order). Lock held. */
static int backup_plan_locked(gpu_heap_t *h, const move_list *m, pause_backup *bk) {
    size_t i = 0;
    for (const block *b = h->first; b; b = b->next_phys) {
        if (!holds_data(b)) continue;
        uintptr_t lo = b->start, hi = block_end(b);
        while (i < m->n && m->e[i]->va + m->e[i]->size <= lo) i++;
        for (size_t j = i; j < m->n && m->e[j]->va < hi; j++) {
            const extent *e = m->e[j];
            uintptr_t a = lo > e->va ? lo : e->va, z = hi < e->va + e->size ? hi : e->va + e->size;
            if (!range_add(bk, e->va, a, z - a))
                return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory planning a backup");
        }
    }
    return GPU_OK;
}

/* Pinned memory for bk->bytes: the buffer kept from an earlier pause when it is
 * large enough, else a new one (the old one freed first: both at once may not
 * fit), rounded up to the granularity. Lock not held. */
static int backup_room(gpu_heap_t *h, pause_backup *bk) {
    if (bk->room >= bk->bytes) return GPU_OK;
    if (bk->host) vmm_call_staging_free(&h->door, bk->host, bk->room);
    bk->host = NULL;
    bk->room = 0;
    size_t want = gh_align_up(bk->bytes, h->gran);
    int rc = vmm_call_staging_alloc(&h->door, want, &bk->host);
    if (rc != GPU_OK) {
        bk->host = NULL;
        return gh_note(rc, "pinned host memory for a backup of %zu bytes: %s", bk->bytes, vmm_error());
    }
    bk->room = want;
    return GPU_OK;
}

/* Copies every range into pinned memory: extents gpu_protect made inaccessible
 * are opened for reading first and closed again after (flag[k] stays set where
 * closing was refused: the extent is readable); every copy queued, then one
 * wait. Lock not held. */
static int backup_take(gpu_heap_t *h, move_list *m, pause_backup *bk) {
    vmm_door *d = &h->door;
    int rc = backup_room(h, bk);
    if (rc != GPU_OK) return rc;
    for (size_t k = 0, j = 0; k < bk->n && rc == GPU_OK; k++) {
        while (m->e[j]->va + m->e[j]->size <= bk->r[k].va) j++;
        if (m->e[j]->prot != GPU_PROT_NONE || m->flag[j]) continue;
        rc = vmm_call_set_access(d, m->e[j]->va, m->e[j]->size, GPU_PROT_READ);
        if (rc == GPU_OK) m->flag[j] = 1;
    }
    vmm_queue *q = NULL;
    if (rc == GPU_OK) rc = vmm_call_queue_open(d, 1, &q);
    for (size_t k = 0; k < bk->n && rc == GPU_OK; k++)
        rc = vmm_call_queue_download(d, q, 0, (char *)bk->host + bk->r[k].off, bk->r[k].va, bk->r[k].len);
    if (q) { /* what was queued finishes before anything is freed */
        int w = vmm_call_queue_wait(d, q, 0);
        if (rc == GPU_OK) rc = w;
        vmm_call_queue_close(d, q);
    }
    if (rc != GPU_OK) rc = gh_note(rc, "copying %zu bytes to the backup: %s", bk->bytes, vmm_error());
    for (size_t j = 0; j < m->n; j++)
        if (m->flag[j] && vmm_call_set_access(d, m->e[j]->va, m->e[j]->size, GPU_PROT_NONE) == GPU_OK) m->flag[j] = 0;
    return rc;
}

/* ---- pause ----------------------------------------------------------------------- */

/* The extent went back to the driver; its record stays as the paused address. */
static void mark_paused_locked(gpu_heap_t *h, extent *e) {
    e->paused = 1;
    e->handle = 0;
    h->mapped_bytes -= e->size;
    h->nextents--;
    h->paused_bytes += e->size;
    h->npaused++;
}

/* Gives the listed extents back (all unmapped first: one refused unmap puts
 * every one back) and settles the books: an extent the door kept stays mapped,
 * one gone or lost becomes paused. Returns the bytes paused. Lock held. */
static size_t give_back_locked(gpu_heap_t *h, move_list *m, int *rc) {
    for (size_t k = 0; k < m->n; k++) {
        if (m->flag[k]) m->e[k]->prot = GPU_PROT_READ; /* the backup opened it and could not close it */
        m->ret[k] = (extent_return){.e = m->e[k], .prot = (gpu_prot_t)m->e[k]->prot};
    }
    heap_unlock(h);
    *rc = extents_give_back(h, m->ret, m->n, true);
    heap_lock(h);
    size_t gone = 0;
    for (size_t k = 0; k < m->n; k++) {
        extent *e = m->e[k];
        if (m->ret[k].fate == EXTENT_KEPT) {
            extent_settle_locked(h, &m->ret[k]);
            continue;
        }
        if (m->ret[k].fate == EXTENT_LOST) /* unmapped, its handle leaked: paused all the same */
            atomic_fetch_add_explicit(&h->extents_lost, 1, memory_order_relaxed);
        mark_paused_locked(h, e);
        gone += e->size;
    }
    return gone;
}

int heap_pause(gpu_heap_t *h, bool backup, size_t *bytes) {
    *bytes = 0;
    heap_lock(h);
    if (state(h) != HEAP_RUNNING) {
        int rc = state(h) == HEAP_PAUSED ? GPU_OK : heap_refusal(h);
        heap_unlock(h);
        return rc;
    }
    set_state(h, HEAP_PAUSING);
    pause_backup *bk = h->backup; /* the buffer a resume kept, if any: this pause's until it ends */
    h->backup = NULL;
    backup_empty(bk);
    hooks_flush_locked(h); /* this thread's cached blocks; other caches' free blocks are not backed up */
    int rc = heap_fence_locked(h, 0); /* GPU work issued before the pause is done; freed blocks idle */
    if (rc == GPU_OK) {
        (void)heap_trim_locked(h, 0); /* wholly idle extents go as a trim's; one it keeps is paused below */
        while (any_busy(h) || any_pinned(h)) nap_locked(h);
    }
    move_list m = {0};
    if (rc == GPU_OK) rc = list_locked(h, false, &m);
    if (rc == GPU_OK && backup && m.n) {
        if (!bk) bk = calloc(1, sizeof *bk);
        rc = bk ? backup_plan_locked(h, &m, bk) : gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for a backup");
    }
    if (rc == GPU_OK && bk && bk->bytes) {
        heap_unlock(h);
        rc = backup_take(h, &m, bk);
        heap_lock(h);
    }
    size_t gone = 0;
    if (rc == GPU_OK) {
        gone = give_back_locked(h, &m, &rc);
        if (gone || !m.n) rc = GPU_OK; /* what the driver kept stays mapped */
        else rc = gh_note(rc, "giving the heap's memory back: %s", vmm_error());
    } else {
        for (size_t k = 0; k < m.n; k++) /* the backup opened it and could not close it */
            if (m.flag && m.flag[k]) m.e[k]->prot = GPU_PROT_READ;
    }
    list_end_locked(&m);
    if (rc != GPU_OK) backup_empty(bk); /* the heap runs on; a pinned buffer stays for the next pause */
    if (bk && !bk->bytes && !bk->host) {
        free(bk->r);
        free(bk);
        bk = NULL;
    }
    h->backup = bk;
    backup_books_locked(h, bk);
    if (rc != GPU_OK) {
        set_state(h, HEAP_RUNNING);
        heap_unlock(h);
        return rc;
    }
    set_state(h, HEAP_PAUSED);
    heap_unlock(h);
    *bytes = gone;
    return GPU_OK;
}

/* ---- resume ---------------------------------------------------------------------- */

/* Backs every listed extent anew (read-write, peers too), copies the backup's
 * ranges that lie in them back, then sets each one's protection. On a refusal
 * everything mapped here is given back. Lock not held. */
static int remap_all(gpu_heap_t *h, move_list *m, const pause_backup *bk, const uint8_t *up) {
    vmm_door *d = &h->door;
    int rc = GPU_OK;
    for (size_t k = 0; k < m->n && rc == GPU_OK; k++) {
        rc = handle_back(h, m->e[k]->va, m->e[k]->size, &m->hd[k]);
        if (rc == GPU_OK) m->flag[k] = 1;
        else rc = gh_note(rc, "mapping %zu paused bytes again: %s", m->e[k]->size, vmm_error());
    }
    if (rc == GPU_OK && bk && bk->n && m->n) {
        vmm_queue *q = NULL;
        rc = vmm_call_queue_open(d, 1, &q);
        for (size_t k = 0; k < bk->n && rc == GPU_OK; k++)
            if (up[k]) rc = vmm_call_queue_upload(d, q, 0, bk->r[k].va, (const char *)bk->host + bk->r[k].off, bk->r[k].len);
        if (q) { /* what was queued finishes before anything is given back */
            int w = vmm_call_queue_wait(d, q, 0);
            if (rc == GPU_OK) rc = w;
            vmm_call_queue_close(d, q);
        }
        if (rc != GPU_OK) rc = gh_note(rc, "copying the backup back: %s", vmm_error());
    }
    for (size_t k = 0; k < m->n && rc == GPU_OK; k++)
        if (m->e[k]->prot != GPU_PROT_READ_WRITE &&
            (rc = vmm_call_set_access(d, m->e[k]->va, m->e[k]->size, (gpu_prot_t)m->e[k]->prot)) != GPU_OK)
            rc = gh_note(rc, "restoring the protection of a paused extent: %s", vmm_error());
    if (rc != GPU_OK)
        for (size_t k = 0; k < m->n; k++)
            if (m->flag[k]) handle_discard(h, m->e[k]->va, m->e[k]->size, m->hd[k]);
    return rc;
}

int heap_resume(gpu_heap_t *h, size_t *bytes) {
    *bytes = 0;
    heap_lock(h);
    if (state(h) != HEAP_PAUSED) {
        int rc = state(h) == HEAP_RUNNING ? GPU_OK : heap_refusal(h);
        heap_unlock(h);
        return rc;
    }
    set_state(h, HEAP_RESUMING);
    while (any_busy(h)) nap_locked(h);
    (void)heap_trim_locked(h, 0); /* extents no live block uses: dropped, not mapped again */
    move_list m;
    int rc = list_locked(h, true, &m);
    pause_backup *bk = h->backup;
    uint8_t *up = NULL; /* the backup's ranges that lie in an extent mapped again */
    if (rc == GPU_OK && bk && !(up = calloc(bk->n ? bk->n : 1, 1)))
        rc = gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory to resume");
    for (size_t k = 0; up && k < bk->n; k++) {
        const extent *e = extmap_find(&h->extents, bk->r[k].va);
        up[k] = e && e->moving;
    }
    if (rc == GPU_OK) {
        heap_unlock(h);
        rc = remap_all(h, &m, bk, up);
        heap_lock(h);
    }
    free(up);
    size_t mapped = 0;
    for (size_t k = 0; rc == GPU_OK && k < m.n; k++) {
        extent *e = m.e[k];
        e->paused = 0;
        e->handle = m.hd[k];
        h->paused_bytes -= e->size;
        h->npaused--;
        heap_mapped_add(h, e->size);
        h->nextents++;
        mapped += e->size;
    }
    list_end_locked(&m);
    if (rc != GPU_OK) {
        set_state(h, HEAP_PAUSED);
        heap_unlock(h);
        return rc;
    }
    backup_empty(bk); /* restored: the pinned buffer stays for the next pause */
    backup_books_locked(h, bk);
    set_state(h, HEAP_RUNNING);
    heap_unlock(h);
    *bytes = mapped;
    return GPU_OK;
}

void heap_pause_close(gpu_heap_t *h) {
    backup_free(h, h->backup);
    h->backup = NULL;
    backup_books_locked(h, NULL);
}
