/*
 * import.c — the importing side of shared blocks (share.h): another process's
 * block mapped into this one, counted by opens, and found again from any
 * address inside it.
 *
 * Opening asks the exporter for the extents behind the block (client.c) and
 * builds, through the backend of the caller's default heap, what the exporter
 * has: a reservation of their total size, each extent imported from its fd
 * (every fd received is closed at once, whatever happens) and mapped whole at
 * the same distance from the start as in the exporter, then one grant of
 * read-write access over them all. The block starts at the reservation plus the
 * offset of its first byte in its first extent. Any refusal undoes what was done,
 * in reverse. The memory lives as long as either process maps it: an exporter
 * that frees the block takes nothing from an importer that still has it open.
 *
 * The records of open imports are kept sorted by address, so that the
 * interposer can ask of any pointer whether it lies in one (gh_ipc_range: a
 * binary search, and nothing at all while no import is open). One handle opened
 * twice is one mapping with two opens; the last close waits for the device (no
 * GPU work of this process may still use the memory, as after a free), unmaps,
 * releases and gives the reservation back; its record leaves the table first,
 * so a close of the same address meanwhile is refused and an open of the same
 * handle maps it afresh.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "ipc/ipc.h"
#include "ipc/share.h"

typedef struct import_entry {
    uint32_t pid;                        /* the handle's exporter, server and export: the key */
    uint64_t server_token, export_token;
    gpu_heap_t *h;                       /* whose backend maps it: a default heap, which lives as long as the process */
    uintptr_t base;                      /* the reservation [base, base+span), extents mapped from base */
    size_t span;
    uintptr_t ptr;                       /* the block [ptr, ptr+size) */
    size_t size;
    unsigned opens;
    unsigned n;                          /* extents */
    size_t *sizes;                       /* n each */
    vmm_handle *handles;
} import_entry;

/* imp.lock guards the table; never held across a backend call or a request. */
static struct {
    pthread_mutex_t lock;
    import_entry **v; /* sorted by ptr */
    size_t n, cap;
} imp = {.lock = PTHREAD_MUTEX_INITIALIZER};
static _Atomic size_t imports_listed; /* imp.n, read without the lock by gh_ipc_range */

/* ---- the table -------------------------------------------------------------------- */

/* The index of the first record whose block starts above p. imp.lock held. */
static size_t table_upper(uintptr_t p) {
    size_t lo = 0, hi = imp.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (imp.v[mid]->ptr <= p) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The record whose block holds p, or NULL. imp.lock held. */
static import_entry *table_holding(uintptr_t p) {
    size_t i = table_upper(p);
    if (!i) return NULL;
    import_entry *e = imp.v[i - 1];
    return p - e->ptr < e->size ? e : NULL;
}

/* The open record of a handle, or NULL. imp.lock held. */
static import_entry *table_key(const ipc_handle_fields *f) {
    for (size_t i = 0; i < imp.n; i++) {
        import_entry *e = imp.v[i];
        if (e->pid == f->pid && e->server_token == f->server_token && e->export_token == f->export_token)
            return e;
    }
    return NULL;
}

/* Adds e in address order; false when the host is out of memory. imp.lock held. */
static bool table_insert(import_entry *e) {
    if (imp.n == imp.cap) {
        size_t cap = imp.cap ? imp.cap * 2 : 16;
        import_entry **v = realloc(imp.v, cap * sizeof *v);
        if (!v) return false;
        imp.v = v;
        imp.cap = cap;
    }
    size_t i = table_upper(e->ptr);
    memmove(&imp.v[i + 1], &imp.v[i], (imp.n - i) * sizeof *imp.v);
    imp.v[i] = e;
    imp.n++;
    atomic_store_explicit(&imports_listed, imp.n, memory_order_release);
    return true;
}

/* Takes e (listed) out. imp.lock held. */
static void table_remove(const import_entry *e) {
    size_t i = table_upper(e->ptr);
    gh_assert(i && imp.v[i - 1] == e, "blocks of open imports do not overlap");
    memmove(&imp.v[i - 1], &imp.v[i], (imp.n - i) * sizeof *imp.v);
    imp.n--;
    atomic_store_explicit(&imports_listed, imp.n, memory_order_release);
}

static void entry_free(import_entry *e) {
    if (!e) return;
    free(e->sizes);
    free(e->handles);
    free(e);
}

/* ---- mapping and unmapping ---------------------------------------------------- */

/* Unmaps the first `mapped` extents, releases the first `held` handles and
 * gives the reservation back: the undo of a failed open and the work of the
 * last close. Returns the first refusal; an extent whose unmap is refused twice
 * stays mapped, and its handle and the reservation with it (leaked). */
static int entry_unmap(import_entry *e, unsigned mapped, unsigned held) {
    int first = GPU_OK;
    bool all_unmapped = true;
    uintptr_t va = e->base;
    for (unsigned i = 0; i < held; va += e->sizes[i], i++) {
        if (i < mapped && vmm_call_unmap_undo(&e->h->door, va, e->sizes[i]) != GPU_OK) {
            if (first == GPU_OK) first = gh_note(GPU_ERR_BACKEND, "unmapping an imported extent: %s", vmm_error());
            all_unmapped = false;
            continue;
        }
        if (vmm_call_release(&e->h->door, e->handles[i]) != GPU_OK && first == GPU_OK)
            first = gh_note(GPU_ERR_BACKEND, "releasing an imported extent: %s", vmm_error());
    }
    if (all_unmapped && vmm_call_unreserve(&e->h->door, e->base, e->span) != GPU_OK && first == GPU_OK)
        first = gh_note(GPU_ERR_BACKEND, "giving back an imported block's addresses: %s", vmm_error());
    return first;
}

/* Builds the mapping of a reply: a reservation, each extent imported from its
 * fd and mapped whole, read-write access over all. Closes every fd. */
static int entry_map(import_entry *e, const ipc_reply *r, int *fds, unsigned nfds) {
    const size_t g = e->h->gran;
    int rc = GPU_OK;
    e->n = nfds;
    e->sizes = malloc(nfds * sizeof *e->sizes);
    e->handles = malloc(nfds * sizeof *e->handles);
    if (!e->sizes || !e->handles) rc = gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for an imported block's records");
    for (unsigned i = 0; rc == GPU_OK && i < nfds; i++) {
        e->sizes[i] = r->extent_size[i];
        if (r->extent_size[i] % g || e->span + r->extent_size[i] < e->span)
            rc = gh_note(GPU_ERR_INVALID, "the exporting process's extent of %llu bytes does not fit this process's "
                                          "granularity of %zu bytes", (unsigned long long)r->extent_size[i], g);
        e->span += r->extent_size[i];
    }
    if (rc == GPU_OK && (rc = vmm_call_reserve(&e->h->door, e->span, g, &e->base)) != GPU_OK)
        rc = gh_note(rc, "reserving %zu bytes of addresses for an imported block: %s", e->span, vmm_error());
    unsigned held = 0, mapped = 0;
    uintptr_t va = e->base;
    for (unsigned i = 0; rc == GPU_OK && i < nfds; va += e->sizes[i], i++) {
        rc = vmm_call_import_fd(&e->h->door, fds[i], e->sizes[i], &e->handles[i]);
        close(fds[i]);
        fds[i] = -1;
        if (rc != GPU_OK) {
            rc = gh_note(rc, "importing extent %u of %u: %s", i, nfds, vmm_error());
            break;
        }
        held++;
        if ((rc = vmm_call_map(&e->h->door, va, e->sizes[i], e->handles[i])) != GPU_OK) {
            rc = gh_note(rc, "mapping imported extent %u of %u: %s", i, nfds, vmm_error());
            break;
        }
        mapped++;
    }
    if (rc == GPU_OK && (rc = vmm_call_set_access(&e->h->door, e->base, e->span, GPU_PROT_READ_WRITE)) != GPU_OK)
        rc = gh_note(rc, "granting access to an imported block: %s", vmm_error());
    for (unsigned i = 0; i < nfds; i++)
        if (fds[i] >= 0) close(fds[i]);
    if (rc == GPU_OK) {
        e->ptr = e->base + r->offset;
        e->size = r->size;
        return GPU_OK;
    }
    if (e->base) {
        char why[512];
        strncpy(why, gh_noted(), sizeof why - 1);
        why[sizeof why - 1] = '\0';
        (void)entry_unmap(e, mapped, held);
        gh_note(rc, "%s", why);
    }
    return rc;
}

/* ---- the calls ------------------------------------------------------------------ */

int ipc_import_open(gpu_heap_t *h, const unsigned char handle[IPC_HANDLE_BYTES], void **out) {
    ipc_handle_fields f;
    int rc = ipc_handle_decode(handle, &f);
    if (rc != GPU_OK) return rc;
    if (f.uid != (uint32_t)geteuid())
        return gh_note(GPU_ERR_INVALID, "the handle was exported by a process of uid %u, and this one runs as uid %u: "
                                        "blocks are shared only between processes of one user", (unsigned)f.uid,
                       (unsigned)geteuid());
    pthread_mutex_lock(&imp.lock);
    import_entry *e = table_key(&f);
    if (e) {
        e->opens++;
        *out = (void *)e->ptr;
    }
    pthread_mutex_unlock(&imp.lock);
    if (e) return GPU_OK;

    ipc_reply *r = malloc(sizeof *r);
    int *fds = malloc(IPC_MAX_EXTENTS * sizeof *fds);
    e = calloc(1, sizeof *e);
    unsigned nfds = 0;
    if (!r || !fds || !e) rc = gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory to open an IPC handle");
    if (rc == GPU_OK) rc = ipc_request(&f, r, fds, IPC_MAX_EXTENTS, &nfds); /* closes what it got on failure */
    if (rc == GPU_OK) {
        *e = (import_entry){.pid = f.pid, .server_token = f.server_token, .export_token = f.export_token, .h = h, .opens = 1};
        rc = entry_map(e, r, fds, nfds);
    }
    free(r);
    free(fds);
    if (rc != GPU_OK) {
        entry_free(e);
        return rc;
    }
    /* Another thread may have opened the same handle meanwhile: one mapping. */
    pthread_mutex_lock(&imp.lock);
    import_entry *twin = table_key(&f);
    bool listed = !twin && table_insert(e);
    if (twin) twin->opens++;
    *out = (void *)(twin ? twin->ptr : e->ptr);
    pthread_mutex_unlock(&imp.lock);
    if (listed) {
        heap_import_count(h, +1);
        return GPU_OK;
    }
    (void)entry_unmap(e, e->n, e->n);
    entry_free(e);
    return twin ? GPU_OK : gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for the table of open imports");
}

int ipc_import_close(void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&imp.lock);
    import_entry *e = table_holding(p);
    int rc = GPU_OK;
    if (!e)
        rc = gh_note(GPU_ERR_INVALID, "%p is not an open import: not an address gpu_ipc_open_mem_handle returned, or "
                                      "closed already", ptr);
    else if (e->ptr != p)
        rc = gh_note(GPU_ERR_INVALID, "%p lies inside an imported block: close it with the address "
                                      "gpu_ipc_open_mem_handle returned (%p)", ptr, (void *)e->ptr);
    else if (--e->opens == 0)
        table_remove(e); /* the last close: no one else finds it from here */
    bool last = rc == GPU_OK && !e->opens;
    pthread_mutex_unlock(&imp.lock);
    if (!last) return rc;

    /* No GPU work of this process may still use the memory when it is
     * unmapped; a device sync would break a capture in progress (as the heap
     * never fences then, a close waits for the capture's end). */
    rc = vmm_call_capturing(&e->h->door, 0) ? gh_note(GPU_ERR_CAPTURING, "a stream capture is in progress: close the "
                                                                          "import after it (closing waits for the device)")
                                            : vmm_call_fence(&e->h->door);
    if (rc != GPU_OK) {
        if (rc != GPU_ERR_CAPTURING) rc = gh_note(rc, "waiting for the device before closing an import: %s", vmm_error());
        pthread_mutex_lock(&imp.lock);
        e->opens = 1; /* open again, as before the call; the table has room for what it just held */
        bool listed = table_insert(e);
        gh_assert(listed, "the table keeps its room");
        pthread_mutex_unlock(&imp.lock);
        return rc;
    }
    rc = entry_unmap(e, e->n, e->n);
    heap_import_count(e->h, -1);
    entry_free(e);
    return rc;
}

int gh_ipc_range(uintptr_t p, uintptr_t *start, size_t *size) {
    if (!atomic_load_explicit(&imports_listed, memory_order_acquire)) return GPU_ERR_NOT_OWNED;
    pthread_mutex_lock(&imp.lock);
    const import_entry *e = table_holding(p);
    if (e) {
        if (start) *start = e->ptr;
        if (size) *size = e->size;
    }
    pthread_mutex_unlock(&imp.lock);
    return e ? GPU_OK : GPU_ERR_NOT_OWNED;
}

bool gh_ipc_handle_is_ours(const void *bytes64) { return ipc_handle_is_ours(bytes64); }
