/*
 * export.c — the exporting side of shared blocks (share.h): a handle for a live
 * block, and the transport server's lookup that answers importers with an fd
 * per extent behind it.
 *
 * The block keeps its export token in its own record (core/export.c), which
 * the heap clears when the block is freed. The transport hears only a token, so
 * this file keeps a small table, token -> (heap, heap serial, block start), to
 * find the heap again; an entry outlives its block (the heap does not tell this
 * layer about frees), so a lookup checks the block under the heap's lock, and a
 * full table first drops the entries whose block is gone before it grows:
 * the table holds at most about twice the blocks exported and still live.
 *
 * Serving a request: the heap is found live by pointer and serial under the
 * registry's lock (registry_call), which a destroy must take too, so the heap
 * and its backend stay while the lookup runs; under the heap's lock the extents
 * behind the block are pinned (never given back meanwhile), each handle becomes
 * an fd with no heap lock held (a driver call), and the block is checked again
 * before anything is sent: memory whose block was freed meanwhile is never
 * handed out. Lock order: the table, then the registry, then a heap.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ipc/ipc.h"
#include "ipc/share.h"

typedef struct export_entry {
    uint64_t token;
    gpu_heap_t *h;
    uint64_t serial; /* h's, so that a heap opened later at the same address is not taken for it */
    uintptr_t start;
} export_entry;

/* tab.lock guards the table; it is held across heap locks, never across a driver call. */
static struct {
    pthread_mutex_t lock;
    export_entry *v;
    size_t n, cap;
} tab = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- the table -------------------------------------------------------------------- */

typedef struct still_live {
    const export_entry *e;
    bool live;
} still_live;

static void check_live(gpu_heap_t *h, void *arg) {
    still_live *q = arg;
    q->live = heap_export_live(h, q->e->start, q->e->token);
}

/* Makes room for one more entry: drops those whose block is gone, then grows
 * the table when it is still more than half full. tab.lock held. */
static int table_room(void) {
    if (tab.n < tab.cap) return GPU_OK;
    size_t kept = 0;
    for (size_t i = 0; i < tab.n; i++) {
        still_live q = {.e = &tab.v[i]};
        if (registry_call(tab.v[i].h, tab.v[i].serial, check_live, &q) && q.live) tab.v[kept++] = tab.v[i];
    }
    tab.n = kept;
    if (tab.n < tab.cap / 2) return GPU_OK;
    size_t cap = tab.cap ? tab.cap * 2 : 64;
    export_entry *v = realloc(tab.v, cap * sizeof *v);
    if (!v) return gh_note(GPU_ERR_OUT_OF_MEMORY, "out of host memory for the table of exported blocks");
    tab.v = v;
    tab.cap = cap;
    return GPU_OK;
}

/* The entry of token, copied into *out; false when there is none. */
static bool table_find(uint64_t token, export_entry *out) {
    pthread_mutex_lock(&tab.lock);
    bool found = false;
    for (size_t i = 0; i < tab.n && !found; i++)
        if (tab.v[i].token == token) *out = tab.v[i], found = true;
    pthread_mutex_unlock(&tab.lock);
    return found;
}

/* ---- the server's lookup -------------------------------------------------------- */

typedef struct serve_ctx {
    const export_entry *e;
    ipc_reply *r;
    int *fds;
    unsigned max_fds, *nfds;
    int rc;
} serve_ctx;

/* Writes the noted reason into the reply for the importer. */
static int refuse(ipc_reply *r, int rc) {
    snprintf(r->message, sizeof r->message, "%s", gh_noted());
    return rc;
}

/* The lookup's work inside the heap, with the registry locked (registry_call). */
static void serve_in_heap(gpu_heap_t *h, void *arg) {
    serve_ctx *c = arg;
    heap_export x = {.start = c->e->start, .token = c->e->token, .max = c->max_fds};
    x.ext = malloc(c->max_fds * sizeof *x.ext);
    if (!x.ext) {
        c->rc = refuse(c->r, gh_note(GPU_ERR_BACKEND, "the exporting process is out of host memory"));
        return;
    }
    int rc = heap_export_begin(h, &x);
    if (rc != GPU_OK) {
        free(x.ext);
        c->rc = refuse(c->r, rc);
        return;
    }
    for (unsigned i = 0; i < x.n && rc == GPU_OK; i++) { /* no heap lock: driver calls */
        rc = vmm_call_export_fd(&h->door, x.ext[i].handle, &c->fds[i]);
        if (rc == GPU_OK) (*c->nfds)++; /* the server's to close from here, whatever happens */
        else refuse(c->r, gh_note(rc, "the exporting process could not export extent %u of %u: %s", i, x.n, vmm_error()));
    }
    int end = heap_export_end(h, &x); /* unpins; the block must still be live, as exported */
    if (rc == GPU_OK && end != GPU_OK) rc = refuse(c->r, end);
    if (rc == GPU_OK) {
        c->r->nextents = x.n;
        c->r->offset = x.offset;
        c->r->size = x.size;
        c->r->granularity = x.granularity;
        for (unsigned i = 0; i < x.n; i++) c->r->extent_size[i] = x.ext[i].size;
    }
    free(x.ext);
    c->rc = rc;
}

/* The transport server's lookup (ipc.h, ipc_lookup_fn). */
static int export_lookup(uint64_t token, ipc_reply *r, int *fds, unsigned max_fds, unsigned *nfds, void *arg) {
    (void)arg;
    export_entry e;
    if (!table_find(token, &e)) {
        snprintf(r->message, sizeof r->message, "no block of this process was exported with that token");
        return GPU_ERR_INVALID;
    }
    serve_ctx c = {.e = &e, .r = r, .fds = fds, .max_fds = max_fds, .nfds = nfds, .rc = GPU_ERR_INVALID};
    if (!registry_call(e.h, e.serial, serve_in_heap, &c)) {
        snprintf(r->message, sizeof r->message, "the heap that held the block was destroyed");
        return GPU_ERR_INVALID;
    }
    return c.rc;
}

static pthread_once_t lookup_once = PTHREAD_ONCE_INIT;
static void lookup_register(void) { ipc_server_set_lookup(export_lookup, NULL); }

/* ---- making a handle ------------------------------------------------------------ */

int ipc_export(gpu_heap_t *h, void *ptr, unsigned char out[IPC_HANDLE_BYTES]) {
    int rc = vmm_call_exportable(&h->door);
    if (rc != GPU_OK) return gh_note(rc, "%s", vmm_error());
    uint64_t fresh, token = 0;
    size_t size = 0;
    rc = ipc_random64(&fresh);
    if (rc != GPU_OK) return gh_note_context(rc, "an export token");
    pthread_mutex_lock(&tab.lock);
    rc = table_room();
    if (rc == GPU_OK) rc = heap_export_token(h, ptr, fresh, &token, &size);
    if (rc == GPU_OK && token == fresh)
        tab.v[tab.n++] = (export_entry){.token = token, .h = h, .serial = h->serial, .start = (uintptr_t)ptr};
    pthread_mutex_unlock(&tab.lock);
    if (rc != GPU_OK) return rc;
    pthread_once(&lookup_once, lookup_register);
    ipc_handle_fields f;
    rc = ipc_server_handle(token, size, &f);
    if (rc != GPU_OK) return rc;
    ipc_handle_encode(&f, out);
    return GPU_OK;
}
