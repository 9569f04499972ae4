/*
 * map.c — file-backed GPU memory, the public calls: gpu_map_file,
 * gpu_sync_file, gpu_unmap_file (and their gpu_heap_ forms).
 *
 * The CUDA driver cannot take a regular file's descriptor as device memory
 * (DESIGN.md §3), so a "mapped file" here is one of two things. A loaded mapping
 * is a block of the heap that owns its extents, filled with the file's bytes and,
 * unless it is writable, protected read-only afterwards: the model-weights case,
 * loaded once, read by kernels at device-memory speed, and a stray write stopped
 * at once (load.c). A zero-copy mapping is the file's page-cache pages, mmap'ed
 * and registered read-only with the driver: nothing is copied, every device read
 * crosses the bus (map_zerocopy, below).
 *
 * This file checks the arguments, opens the range (io.c), builds the mapping
 * of the kind asked for, lists it (registry.c) and records each call in the
 * trace. A sync or an unmap finds the mapping from its address and holds it
 * busy while it writes it back (writeback.c) and, for an unmap, frees its block
 * or unregisters its pages.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "api/api.h"
#include "core/heap.h"
#include "error.h"
#include "file/file_internal.h"
#include "obs/trace.h"
#include "common.h"

#define FILE_ALL_FLAGS (GPU_MAP_WRITE | GPU_MAP_ZEROCOPY | GPU_MAP_CUFILE)

/* mmaps the range read-only and registers it with the device. */
static int map_zerocopy(gpu_heap_t *h, file_map *m) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    if (m->offset % (uint64_t)page)
        return gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\", GPU_MAP_ZEROCOPY): offset %" PRIu64 " is not a multiple of the page size %ld",
                       m->path, m->offset, page);
    m->host_len = gh_align_up(m->length, (size_t)page);
    void *host = mmap(NULL, m->host_len, PROT_READ, MAP_SHARED, m->fd, (off_t)m->offset);
    if (host == MAP_FAILED)
        return gh_note(errno == ENOMEM ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "gpu_map_file(\"%s\"): mmap of %zu bytes: %s",
                       m->path, m->host_len, strerror(errno));
    uintptr_t dev = 0;
    int rc = vmm_call_register_read_only(&h->door, host, m->host_len, &dev);
    if (rc != GPU_OK) {
        gh_note(rc, "gpu_map_file(\"%s\"): registering the page cache for the device: %s", m->path, vmm_error());
        munmap(host, m->host_len);
        return rc;
    }
    m->host = host;
    m->ptr = dev;
    return GPU_OK;
}

/* Records a map/sync/unmap call in the trace (trace.c): addr the mapping, size
 * its length, arg the file offset, flags the call's flags. */
static void trace_file(uint64_t t0, trace_op op, gpu_heap_t *h, uintptr_t addr, size_t size, uint64_t arg, unsigned flags, int rc) {
    trace_record(t0, &(trace_event){.op = (uint8_t)op, .heap = h ? h->base : 0, .addr = addr, .size = size, .arg = arg,
                                    .flags = (uint8_t)flags, .result = op == TRACE_MAP_FILE ? addr : 0, .rc = (int8_t)rc});
}

/* The mapping at ptr that a sync or unmap names, held busy (mapping_acquire):
 * of heap, or of any heap from the plain forms (any). *t0: the trace's clock.
 * Returns the error, reported. */
static int acquire_named(gpu_heap_t *heap, bool any, void *ptr, const char *call, uint64_t *t0, file_map **out) {
    gpu_heap_t *h = NULL;
    if (!any && !(h = api_heap(heap))) return gpu_last_error();
    *t0 = trace_begin();
    int rc = mapping_acquire(h, any, ptr, call, out);
    return rc == GPU_OK ? GPU_OK : gh_report(rc);
}

/* ---- the public calls ------------------------------------------------------------------------- */

int gpu_heap_map_file(gpu_heap_t *heap, const char *path, uint64_t offset, size_t length, unsigned flags, void **out) {
    if (!path || !out) return gh_error(GPU_ERR_INVALID, "gpu_map_file: %s is NULL", path ? "out" : "path");
    if (flags & ~(unsigned)FILE_ALL_FLAGS) return gh_error(GPU_ERR_INVALID, "gpu_map_file: unknown flags %#x", flags);
    if ((flags & GPU_MAP_ZEROCOPY) && (flags & (GPU_MAP_WRITE | GPU_MAP_CUFILE)))
        return gh_error(GPU_ERR_INVALID, "gpu_map_file: GPU_MAP_ZEROCOPY is read-only and loads nothing (not with %s)",
                        flags & GPU_MAP_WRITE ? "GPU_MAP_WRITE" : "GPU_MAP_CUFILE");
    gpu_heap_t *h = api_heap(heap);
    if (!h) return gpu_last_error();
    int rc = registry_hooks(); /* before the first mapping: the heap must tell us when it closes */
    if (rc != GPU_OK) return gh_report(rc);
    uint64_t t0 = trace_begin();

    size_t plen = strlen(path) + 1;
    file_map *m = calloc(1, sizeof *m + plen);
    if (!m) return gh_error(GPU_ERR_OUT_OF_MEMORY, "gpu_map_file: out of host memory");
    memcpy(m->path, path, plen);
    m->entry.heap = h;
    m->offset = offset;
    m->flags = flags;
    m->fd = -1;
    load_timing timing, *tm = NULL; /* GPUHEAP_FILE_TIMING=1: the phase breakdown (timing.c) */
    if (!(flags & GPU_MAP_ZEROCOPY) && file_timing_enabled()) {
        memset(&timing, 0, sizeof timing);
        tm = &timing;
        tm->begin = gh_mono_ns();
    }
    rc = io_open_range(path, offset, length, flags & GPU_MAP_WRITE, &m->fd, &m->length);
    if (tm) {
        tm->opened = gh_mono_ns();
        tm->bytes = m->length;
    }
    if (rc == GPU_OK) rc = flags & GPU_MAP_ZEROCOPY ? map_zerocopy(h, m) : load_mapping(h, m, tm);
    if (rc == GPU_OK && !(flags & (GPU_MAP_WRITE | GPU_MAP_ZEROCOPY))) {
        close(m->fd); /* a read-only copy needs the file no more */
        m->fd = -1;
    }
    if (rc != GPU_OK) {
        mapping_free(m);
        if (t0) trace_file(t0, TRACE_MAP_FILE, h, 0, length, offset, flags, rc);
        return gh_report(rc);
    }
    mapping_add(m);
    if (tm) {
        tm->end = gh_mono_ns();
        file_timing_print(tm, path);
    }
    if (t0) trace_file(t0, TRACE_MAP_FILE, h, m->ptr, m->length, offset, flags, GPU_OK);
    *out = (void *)m->ptr;
    gh_ok();
    return GPU_OK;
}

int gpu_map_file(const char *path, uint64_t offset, size_t length, unsigned flags, void **out) {
    return gpu_heap_map_file(NULL, path, offset, length, flags, out);
}

static int sync_file(gpu_heap_t *heap, bool any, void *ptr) {
    uint64_t t0 = 0;
    file_map *m;
    int rc = acquire_named(heap, any, ptr, "gpu_sync_file", &t0, &m);
    if (rc != GPU_OK) return rc;
    rc = sync_mapping(m, true);
    if (t0) trace_file(t0, TRACE_SYNC_FILE, m->entry.heap, m->ptr, m->length, m->offset, m->flags, rc);
    mapping_release(m);
    if (rc != GPU_OK) return gh_report(rc);
    gh_ok();
    return GPU_OK;
}

int gpu_heap_sync_file(gpu_heap_t *heap, void *ptr) { return sync_file(heap, false, ptr); }
int gpu_sync_file(void *ptr) { return sync_file(NULL, true, ptr); }

static int unmap_file(gpu_heap_t *heap, bool any, void *ptr, unsigned flags) {
    if (flags & ~(unsigned)GPU_UNMAP_DISCARD) return gh_error(GPU_ERR_INVALID, "gpu_unmap_file: unknown flags %#x", flags);
    uint64_t t0 = 0;
    file_map *m;
    int rc = acquire_named(heap, any, ptr, "gpu_unmap_file", &t0, &m);
    if (rc != GPU_OK) return rc;
    gpu_heap_t *h = m->entry.heap;
    if ((m->flags & GPU_MAP_WRITE) && !(flags & GPU_UNMAP_DISCARD)) rc = sync_mapping(m, false);
    if (rc == GPU_OK && m->block_size) {
        mapping_freeing(m, true);
        (void)heap_mark_file(h, (void *)m->ptr, false);
        rc = heap_free(h, (void *)m->ptr);
        if (rc == GPU_ERR_NOT_LIVE) {
            /* Someone freed the block with gpu_free during the unmap: it is gone. */
            mapping_drop(m);
            if (t0) trace_file(t0, TRACE_UNMAP_FILE, h, (uintptr_t)ptr, 0, 0, flags, rc);
            return gh_report(rc);
        }
        if (rc != GPU_OK) {
            (void)heap_mark_file(h, (void *)m->ptr, true);
            mapping_freeing(m, false);
        }
    } else if (rc == GPU_OK) {
        /* Zero-copy: no kernel may still read the pages once they are unregistered. */
        rc = vmm_call_fence(&h->door);
        if (rc == GPU_OK) rc = vmm_call_unregister(&h->door, m->host);
        if (rc != GPU_OK) gh_note(rc, "gpu_unmap_file(%p): %s", ptr, vmm_error());
    }
    if (t0) trace_file(t0, TRACE_UNMAP_FILE, h, m->ptr, m->length, m->offset, flags, rc);
    if (rc != GPU_OK) {
        mapping_release(m);
        return gh_report(rc);
    }
    mapping_drop(m);
    gh_ok();
    return GPU_OK;
}

int gpu_heap_unmap_file(gpu_heap_t *heap, void *ptr, unsigned flags) { return unmap_file(heap, false, ptr, flags); }
int gpu_unmap_file(void *ptr, unsigned flags) { return unmap_file(NULL, true, ptr, flags); }
