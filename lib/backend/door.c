/*
 * door.c — the one door between the heap and its backend (door.h).
 *
 * Every backend call goes through a wrapper here that checks the preconditions
 * the driver would check (alignment, sizes), counts the call for the statistics,
 * and turns a failure into the heap's error convention with the backend's message
 * attached. Nothing here holds the heap's lock: the heap calls these outside it,
 * because driver VMM calls take microseconds to milliseconds and do not run in
 * parallel anyway (DESIGN.md §2).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/door.h"
#include "error.h"
#include "obs/trace.h"
#include "common.h"

/* Counts a call and, on failure, reports it through the error path. */
static int done(vmm_door *d, vmm_op op, int rc) {
    atomic_fetch_add_explicit(&d->counts.calls[op], 1, memory_order_relaxed);
    if (rc != GPU_OK) {
        atomic_fetch_add_explicit(&d->counts.errors, 1, memory_order_relaxed);
        if (d->verbose >= 2) fprintf(stderr, "gpuheap: %s backend: %s\n", d->b->caps.name, vmm_error());
    }
    return rc;
}

/* True when x is a multiple of the backend's granularity. */
static inline bool granular(const vmm_door *d, uintptr_t x) { return x % d->b->caps.granularity == 0; }

/* Records a backend call in the trace (obs/trace.c), naming the heap by its
 * reservation. */
static void door_trace(const vmm_door *d, uint64_t t0, trace_event *e) {
    if (!e->heap) e->heap = d->trace_heap;
    trace_record(t0, e);
}

/* Captures announced by gpu_capture_begin, process-wide. */
static _Atomic int announced_captures;

void vmm_capture_announce(int delta) {
    if (delta > 0) {
        atomic_fetch_add(&announced_captures, 1);
        return;
    }
    int n = atomic_load(&announced_captures);
    while (n > 0 && !atomic_compare_exchange_weak(&announced_captures, &n, n - 1)) {}
}

/* ---- the fds kept for exported handles (caps.cache_exports) ----------------------- */

/* One door's kept fds, oldest first. Changed under export_lock; n is also read
 * without it, by a release that skips the lock when nothing is kept. */
typedef struct vmm_export_cache {
    _Atomic unsigned n;
    struct {
        vmm_handle h;
        int fd;
    } e[VMM_EXPORT_CACHE];
} vmm_export_cache;

/* Every door's kept fds: exports and releases of kept handles are rare next to
 * the driver calls around them, so one lock serves all. Never held across a
 * backend call. */
static pthread_mutex_t export_lock = PTHREAD_MUTEX_INITIALIZER;

/* The index of h in c, or -1. export_lock held. */
static int kept_find(const vmm_export_cache *c, vmm_handle h) {
    unsigned n = atomic_load_explicit(&c->n, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        if (c->e[i].h == h) return (int)i;
    return -1;
}

/* Closes kept fd i and moves the later ones down. export_lock held. */
static void kept_drop(vmm_export_cache *c, unsigned i) {
    unsigned n = atomic_load_explicit(&c->n, memory_order_relaxed);
    close(c->e[i].fd);
    memmove(&c->e[i], &c->e[i + 1], (n - i - 1) * sizeof c->e[0]);
    atomic_store(&c->n, n - 1);
}

/* A dup of the fd kept for h, or -1 when none is kept (or the dup failed). */
static int kept_dup(vmm_door *d, vmm_handle h) {
    vmm_export_cache *c = atomic_load(&d->exports);
    if (!c || !atomic_load(&c->n)) return -1;
    pthread_mutex_lock(&export_lock);
    int i = kept_find(c, h);
    int copy = i < 0 ? -1 : fcntl(c->e[i].fd, F_DUPFD_CLOEXEC, 0);
    pthread_mutex_unlock(&export_lock);
    return copy;
}

/* Keeps a dup of fd, just exported for h (the oldest kept fd closed when
 * VMM_EXPORT_CACHE are). Nothing is kept when the host is out of fds or memory:
 * the next export asks the backend again. */
static void kept_add(vmm_door *d, vmm_handle h, int fd) {
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return;
    pthread_mutex_lock(&export_lock);
    vmm_export_cache *c = atomic_load(&d->exports);
    if (!c && (c = calloc(1, sizeof *c))) atomic_store(&d->exports, c);
    if (!c || kept_find(c, h) >= 0) { /* no memory; or another thread kept one meanwhile */
        pthread_mutex_unlock(&export_lock);
        close(copy);
        return;
    }
    if (atomic_load(&c->n) == VMM_EXPORT_CACHE) kept_drop(c, 0);
    unsigned n = atomic_load(&c->n);
    c->e[n].h = h;
    c->e[n].fd = copy;
    atomic_store(&c->n, n + 1);
    pthread_mutex_unlock(&export_lock);
}

/* Closes the fd kept for h, before h is released: the backend may give the same
 * handle number to new memory afterwards (the host backend does). */
static void kept_forget(vmm_door *d, vmm_handle h) {
    vmm_export_cache *c = atomic_load(&d->exports);
    if (!c || !atomic_load(&c->n)) return;
    pthread_mutex_lock(&export_lock);
    int i = kept_find(c, h);
    if (i >= 0) kept_drop(c, (unsigned)i);
    pthread_mutex_unlock(&export_lock);
}

unsigned vmm_call_exports_kept(vmm_door *d) {
    vmm_export_cache *c = atomic_load(&d->exports);
    return c ? atomic_load(&c->n) : 0;
}

void vmm_call_close(vmm_door *d) {
    vmm_export_cache *c = atomic_exchange(&d->exports, NULL);
    if (c) {
        pthread_mutex_lock(&export_lock);
        while (atomic_load(&c->n)) kept_drop(c, atomic_load(&c->n) - 1);
        pthread_mutex_unlock(&export_lock);
        free(c);
    }
    d->b->ops->close(d->b);
}

int vmm_call_reserve(vmm_door *d, size_t size, size_t align, uintptr_t *va) {
    gh_assert(size && granular(d, size), "reserve a granularity multiple");
    gh_assert(align && granular(d, align) && !(align & (align - 1)), "reserve at a power-of-two multiple of the granularity");
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_RESERVE, d->b->ops->reserve(d->b, size, align, va));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_RESERVE, .heap = rc ? 0 : *va, .size = size,
                                              .arg = d->b->caps.granularity, .result = rc ? 0 : *va, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_unreserve(vmm_door *d, uintptr_t va, size_t size) {
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_UNRESERVE, d->b->ops->unreserve(d->b, va, size));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_UNRESERVE, .heap = va, .addr = va, .size = size, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_create(vmm_door *d, size_t size, vmm_handle *out) {
    gh_assert(size && granular(d, size), "physical memory comes in granularity multiples");
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_CREATE, d->b->ops->create(d->b, size, out));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_CREATE, .size = size, .result = rc ? 0 : *out, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_release(vmm_door *d, vmm_handle h) {
    kept_forget(d, h); /* first: once released, the number may name other memory */
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_RELEASE, d->b->ops->release(d->b, h));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_RELEASE, .result = h, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_map(vmm_door *d, uintptr_t va, size_t size, vmm_handle h) {
    gh_assert(granular(d, va) && granular(d, size), "map at granule boundaries");
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_MAP, d->b->ops->map(d->b, va, size, h));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_MAP, .addr = va, .size = size, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_unmap(vmm_door *d, uintptr_t va, size_t size) {
    gh_assert(granular(d, va) && granular(d, size), "unmap at granule boundaries");
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_UNMAP, d->b->ops->unmap(d->b, va, size));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_UNMAP, .addr = va, .size = size, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_set_access(vmm_door *d, uintptr_t va, size_t size, gpu_prot_t prot) {
    gh_assert(granular(d, va) && granular(d, size), "set access on whole mappings");
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_SET_ACCESS, d->b->ops->set_access(d->b, va, size, prot));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_ACCESS, .addr = va, .size = size, .arg = (uint64_t)prot, .rc = (int8_t)rc});
    uint64_t peers = atomic_load_explicit(&d->peers, memory_order_acquire);
    if (rc == GPU_OK && peers) rc = vmm_call_grant_peers(d, va, size, peers, prot); /* peer.c */
    return rc;
}

int vmm_call_grant(vmm_door *d, uintptr_t va, size_t size, int device, gpu_prot_t prot) {
    gh_assert(granular(d, va) && granular(d, size), "grant access on whole mappings");
    if (!d->b->ops->grant)
        return done(d, VMM_OP_GRANT, vmm_fail(d->b, GPU_ERR_NO_DRIVER, "the %s backend cannot grant peer access", d->b->caps.name));
    return done(d, VMM_OP_GRANT, d->b->ops->grant(d->b, va, size, device, prot));
}

int vmm_call_grant_peers(vmm_door *d, uintptr_t va, size_t size, uint64_t devices, gpu_prot_t prot) {
    for (int dev = 0; devices; dev++, devices >>= 1) {
        if (!(devices & 1)) continue;
        int rc = vmm_call_grant(d, va, size, dev, prot);
        if (rc != GPU_OK) return rc;
    }
    return GPU_OK;
}

int vmm_call_fence(vmm_door *d) {
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_FENCE, d->b->ops->fence(d->b));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_FENCE, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_memset(vmm_door *d, uintptr_t va, int byte, size_t size) {
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_MEMSET, d->b->ops->memset(d->b, va, byte, size));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_MEMSET, .addr = va, .size = size, .arg = (uint8_t)byte, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_copy(vmm_door *d, uintptr_t dst, uintptr_t src, size_t size) {
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_COPY, d->b->ops->copy(d->b, dst, src, size));
    if (rc == GPU_OK) atomic_fetch_add_explicit(&d->counts.copy_bytes, size, memory_order_relaxed);
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_COPY, .addr = src, .size = size, .result = dst, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_event_record(vmm_door *d, uintptr_t stream, vmm_event *out) {
    return done(d, VMM_OP_EVENT_RECORD, d->b->ops->event_record(d->b, stream, out));
}

int vmm_call_event_query(vmm_door *d, vmm_event ev) {
    int rc = d->b->ops->event_query(d->b, ev);
    return rc == GH_PENDING ? (atomic_fetch_add_explicit(&d->counts.calls[VMM_OP_EVENT_QUERY], 1, memory_order_relaxed), rc)
                              : done(d, VMM_OP_EVENT_QUERY, rc);
}

/* A context-wide record (fence_record, fence_order) would break a capture: one
 * announced is refused here, one the backend sees is refused there, and neither
 * counts as a failure. */
static bool captures_announced(void) { return atomic_load_explicit(&announced_captures, memory_order_relaxed) > 0; }
static int context_done(vmm_door *d, int rc) { return rc == GPU_ERR_CAPTURING ? rc : done(d, VMM_OP_EVENT_RECORD, rc); }

int vmm_call_fence_record(vmm_door *d, uintptr_t stream, vmm_event *out) {
    if (!d->b->ops->fence_record) return vmm_fail(d->b, GPU_ERR_BACKEND, "fence_record: not offered by this backend");
    return captures_announced() ? GPU_ERR_CAPTURING : context_done(d, d->b->ops->fence_record(d->b, stream, out));
}

int vmm_call_fence_order(vmm_door *d, uintptr_t stream, vmm_event *out) {
    if (!d->b->ops->fence_order) return vmm_fail(d->b, GPU_ERR_BACKEND, "fence_order: not offered by this backend");
    return captures_announced() ? GPU_ERR_CAPTURING : context_done(d, d->b->ops->fence_order(d->b, stream, out));
}

int vmm_call_event_wait(vmm_door *d, vmm_event ev) { return done(d, VMM_OP_EVENT_WAIT, d->b->ops->event_wait(d->b, ev)); }

void vmm_call_event_release(vmm_door *d, vmm_event ev) { d->b->ops->event_release(d->b, ev); }

bool vmm_call_capturing(vmm_door *d, uintptr_t stream) {
    if (captures_announced()) return true;
    if (stream && d->b->ops->capturing(d->b, stream)) return true;
    return d->b->ops->capturing(d->b, 0) != 0;
}

bool vmm_call_stream_capturing(vmm_door *d, uintptr_t stream) { return d->b->ops->capturing(d->b, stream) != 0; }

bool vmm_call_has_fence_record(const vmm_door *d) { return d->b->ops->fence_record != NULL; }

bool vmm_call_has_fence_order(const vmm_door *d) { return d->b->ops->fence_order != NULL; }

int vmm_call_unmap_undo(vmm_door *d, uintptr_t va, size_t size) {
    int rc = vmm_call_unmap(d, va, size);
    return rc == GPU_OK ? rc : vmm_call_unmap(d, va, size);
}

int vmm_call_remap_undo(vmm_door *d, uintptr_t va, size_t size, vmm_handle h, gpu_prot_t prot) {
    int rc = vmm_call_map(d, va, size, h);
    if (rc != GPU_OK) rc = vmm_call_map(d, va, size, h);
    if (rc != GPU_OK) return rc;
    rc = vmm_call_set_access(d, va, size, prot);
    if (rc != GPU_OK) rc = vmm_call_set_access(d, va, size, prot);
    if (rc != GPU_OK) (void)vmm_call_unmap_undo(d, va, size);
    return rc;
}

/* ---- file-backed memory (lib/file) ---------------------------------------------- */

/* An op the backend leaves NULL (a wrapper that predates it, or cuFile on the host
 * backend) is refused, counted as an error, never called. */
#define OFFERED(d, op, field)                                                                        \
    do {                                                                                             \
        if (!(d)->b->ops->field)                                                                     \
            return done((d), (op), vmm_fail((d)->b, GPU_ERR_NO_DRIVER, "the %s backend does not offer " #field, \
                                             (d)->b->caps.name));                                    \
    } while (0)

int vmm_call_staging_alloc(vmm_door *d, size_t size, void **out) {
    gh_assert(size && out, "staging memory of some size, somewhere to put it");
    OFFERED(d, VMM_OP_STAGING, staging_alloc);
    return done(d, VMM_OP_STAGING, d->b->ops->staging_alloc(d->b, size, out));
}

void vmm_call_staging_free(vmm_door *d, void *p, size_t size) {
    if (p && d->b->ops->staging_free) d->b->ops->staging_free(d->b, p, size);
}

int vmm_call_queue_open(vmm_door *d, unsigned slots, vmm_queue **out) {
    gh_assert(slots && out, "a queue has slots");
    OFFERED(d, VMM_OP_TRANSFER, queue_open);
    return done(d, VMM_OP_TRANSFER, d->b->ops->queue_open(d->b, slots, out));
}

void vmm_call_queue_close(vmm_door *d, vmm_queue *q) {
    if (q && d->b->ops->queue_close) d->b->ops->queue_close(d->b, q);
}

int vmm_call_queue_upload(vmm_door *d, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size) {
    OFFERED(d, VMM_OP_TRANSFER, queue_upload);
    return done(d, VMM_OP_TRANSFER, d->b->ops->queue_upload(d->b, q, slot, dst, src, size));
}

int vmm_call_queue_download(vmm_door *d, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size) {
    OFFERED(d, VMM_OP_TRANSFER, queue_download);
    return done(d, VMM_OP_TRANSFER, d->b->ops->queue_download(d->b, q, slot, dst, src, size));
}

int vmm_call_queue_wait(vmm_door *d, vmm_queue *q, unsigned slot) {
    OFFERED(d, VMM_OP_TRANSFER, queue_wait);
    return done(d, VMM_OP_TRANSFER, d->b->ops->queue_wait(d->b, q, slot));
}

int vmm_call_register_read_only(vmm_door *d, void *host, size_t size, uintptr_t *dev) {
    gh_assert(host && size && dev, "register a non-empty range");
    OFFERED(d, VMM_OP_REGISTER, register_read_only);
    return done(d, VMM_OP_REGISTER, d->b->ops->register_read_only(d->b, host, size, dev));
}

int vmm_call_unregister(vmm_door *d, void *host) {
    OFFERED(d, VMM_OP_REGISTER, unregister);
    return done(d, VMM_OP_REGISTER, d->b->ops->unregister(d->b, host));
}

bool vmm_call_has_direct(const vmm_door *d) {
    return d->b->ops->direct_open && d->b->ops->direct_read && d->b->ops->direct_close;
}

int vmm_call_direct_open(vmm_door *d, int fd, vmm_direct **out) {
    if (!vmm_call_has_direct(d))
        return done(d, VMM_OP_DIRECT, vmm_fail(d->b, GPU_ERR_NO_DRIVER, "the %s backend has no direct file reads (cuFile)",
                                               d->b->caps.name));
    return done(d, VMM_OP_DIRECT, d->b->ops->direct_open(d->b, fd, out));
}

int vmm_call_direct_read(vmm_door *d, vmm_direct *dd, uint64_t offset, size_t size, uintptr_t dst) {
    OFFERED(d, VMM_OP_DIRECT, direct_read);
    return done(d, VMM_OP_DIRECT, d->b->ops->direct_read(d->b, dd, offset, size, dst));
}

void vmm_call_direct_close(vmm_door *d, vmm_direct *dd) {
    if (dd && d->b->ops->direct_close) d->b->ops->direct_close(d->b, dd);
}

/* ---- memory shared between processes (lib/ipc) ---------------------------------- */

int vmm_call_exportable(vmm_door *d) {
    if (d->b->ops->export_fd && d->b->caps.exportable) return GPU_OK;
    return vmm_fail(d->b, d->b->ops->export_fd ? GPU_ERR_INVALID : GPU_ERR_NO_DRIVER, "%s",
                    d->b->caps.ipc_note[0] ? d->b->caps.ipc_note : "this backend cannot share memory with other processes");
}

int vmm_call_export_fd(vmm_door *d, vmm_handle h, int *fd) {
    gh_assert(fd, "somewhere to put the fd");
    int rc = vmm_call_exportable(d);
    if (rc != GPU_OK) return done(d, VMM_OP_EXPORT, rc);
    uint64_t t0 = trace_begin();
    const bool cache = d->b->caps.cache_exports;
    int copy = cache ? kept_dup(d, h) : -1;
    if (copy >= 0) { /* no backend call: not counted as one */
        *fd = copy;
        if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_EXPORT, .arg = 1, .result = h});
        return GPU_OK;
    }
    rc = done(d, VMM_OP_EXPORT, d->b->ops->export_fd(d->b, h, fd));
    if (rc == GPU_OK && cache) kept_add(d, h, *fd);
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_EXPORT, .result = h, .rc = (int8_t)rc});
    return rc;
}

int vmm_call_import_fd(vmm_door *d, int fd, size_t size, vmm_handle *out) {
    gh_assert(fd >= 0 && out && size && granular(d, size), "import a granularity multiple from an fd");
    OFFERED(d, VMM_OP_IMPORT, import_fd);
    uint64_t t0 = trace_begin();
    int rc = done(d, VMM_OP_IMPORT, d->b->ops->import_fd(d->b, fd, size, out));
    if (t0) door_trace(d, t0, &(trace_event){.op = TRACE_IMPORT, .size = size, .result = rc ? 0 : *out, .rc = (int8_t)rc});
    return rc;
}
