/*
 * registry.c — the live mappings, and the hooks through which the heap asks
 * about them.
 *
 * The registry lists the live mappings (heap, address, file range, flags, the
 * file descriptor kept for write-back or zero-copy) so that gpu_sync_file and
 * gpu_unmap_file find a mapping from its address and the heap's statistics
 * count them; gpu_free refuses a loaded mapping's block by a mark on the block
 * itself (heap_mark_file), without asking here. Its lock is never held across
 * I/O, a backend call or a heap call; a mapping being synced or unmapped is
 * marked busy instead. The registry is a list: lookups are linear in the number
 * of live mappings, which is small next to the I/O each one stands for.
 *
 * The heap core knows nothing of files (calls go down only); it tells this
 * layer through hooks (core/heap.h heap_hooks), registered before the first
 * mapping: a heap's statistics count its mappings, gpu_heap_trim gives its
 * kept staging set back (staging.c), and a heap's end drops its mappings.
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "file/file_internal.h"

static pthread_mutex_t maps_lock = PTHREAD_MUTEX_INITIALIZER;
static file_entry *maps; /* file_map records, under maps_lock */

void mapping_free(file_map *m) {
    if (m->host) munmap(m->host, m->host_len);
    if (m->fd >= 0) close(m->fd);
    free(m);
}

/* A mapping whose block is being freed is skipped: its address may be reused. */
int mapping_acquire(gpu_heap_t *heap, bool any, void *ptr, const char *call, file_map **out) {
    pthread_mutex_lock(&maps_lock);
    file_map *m = NULL;
    for (file_entry *e = maps; e && !m; e = e->next) {
        file_map *c = mapping_of(e);
        if (c->ptr == (uintptr_t)ptr && !c->freeing) m = c;
    }
    int rc = GPU_OK;
    if (!m) rc = gh_note(GPU_ERR_INVALID, "%s(%p): not the address of a file mapping (from gpu_map_file)", call, ptr);
    else if (!any && m->entry.heap != heap) rc = gh_note(GPU_ERR_INVALID, "%s(%p): the mapping belongs to another heap", call, ptr);
    else if (m->entry.busy) rc = gh_note(GPU_ERR_BUSY, "%s(%p): another thread is syncing or unmapping it", call, ptr);
    else m->entry.busy = true;
    pthread_mutex_unlock(&maps_lock);
    if (rc == GPU_OK) *out = m;
    return rc;
}

void mapping_release(file_map *m) {
    pthread_mutex_lock(&maps_lock);
    m->entry.busy = false;
    pthread_mutex_unlock(&maps_lock);
}

void mapping_freeing(file_map *m, bool freeing) {
    pthread_mutex_lock(&maps_lock);
    m->freeing = freeing;
    pthread_mutex_unlock(&maps_lock);
}

void mapping_add(file_map *m) {
    pthread_mutex_lock(&maps_lock);
    entry_push(&maps, &m->entry);
    pthread_mutex_unlock(&maps_lock);
}

void mapping_drop(file_map *m) {
    pthread_mutex_lock(&maps_lock);
    entry_unlink(&maps, &m->entry);
    pthread_mutex_unlock(&maps_lock);
    mapping_free(m);
}

/* ---- hooks the heap calls (core/heap.h) ---------------------------------------------------- */

/* gpu_heap_stats: the heap's file mappings. */
static void file_stats(gpu_heap_t *h, gpu_stats_t *s) {
    uint64_t loaded = 0, zerocopy = 0, n = 0;
    pthread_mutex_lock(&maps_lock);
    for (file_entry *e = maps; e; e = e->next) {
        const file_map *m = mapping_of(e);
        if (e->heap != h) continue;
        n++;
        if (m->block_size) loaded += m->length;
        else zerocopy += m->length;
    }
    pthread_mutex_unlock(&maps_lock);
    s->file_loaded_bytes = loaded;
    s->file_zerocopy_bytes = zerocopy;
    s->file_mappings = n;
}

/* gpu_heap_trim: the pinned staging set kept for h goes back, with its threads. */
static void file_trimming(gpu_heap_t *h) { staging_release(h, false); }

/* The heap is closing, its backend still open: every mapping of h and its staging
 * go, zero-copy ranges are unregistered, no write-back happens. */
static void file_heap_closing(gpu_heap_t *h) {
    pthread_mutex_lock(&maps_lock);
    file_entry *gone = entry_take(&maps, h, true);
    pthread_mutex_unlock(&maps_lock);
    bool fenced = false;
    while (gone) {
        file_entry *next = gone->next;
        file_map *m = mapping_of(gone);
        if (m->host) {
            if (!fenced) (void)vmm_call_fence(&h->door);
            fenced = true;
            (void)vmm_call_unregister(&h->door, m->host);
        }
        mapping_free(m); /* a loaded block goes with the heap */
        gone = next;
    }
    staging_release(h, true);
}

static const heap_hooks file_hooks = {.closing = file_heap_closing, .stats = file_stats, .trimming = file_trimming};
static pthread_once_t file_hooks_once = PTHREAD_ONCE_INIT;
static int file_hooks_rc;
static void file_hooks_add(void) { file_hooks_rc = heap_hooks_add(&file_hooks); }

/* Once, before the first mapping: the heap must tell this layer when it closes. */
int registry_hooks(void) {
    pthread_once(&file_hooks_once, file_hooks_add);
    return file_hooks_rc;
}
