/*
 * backend_host.c — the backend contract over host virtual memory, with the CUDA
 * driver's rules enforced.
 *
 * This backend exists so that the heap can be built, tested and fuzzed on a
 * machine with no GPU, and so that a test that breaks a driver rule fails here
 * the way it would fail on the GPU. Each driver object has a host twin: a VA
 * reservation is an anonymous PROT_NONE mapping, a physical allocation is a memfd
 * of exactly its size, cuMemMap is mmap(MAP_FIXED|MAP_SHARED) of that memfd (still
 * PROT_NONE, since a new mapping is inaccessible until access is granted), and
 * cuMemSetAccess is mprotect. Unmapping puts a fresh anonymous PROT_NONE mapping
 * back, so the range is plain reservation again.
 *
 * The kernel alone would accept far more than the driver does (any page-aligned
 * sub-range, partial unmaps, mprotect of 4 KiB), so the backend keeps its own
 * books — reservations, handles, and mappings sorted by address — and checks every
 * request against the rules of DESIGN.md §3 before it touches the kernel: sizes
 * and addresses are granularity multiples, a handle is mapped whole, unmap and
 * set_access take unions of whole mappings, nothing is released while mapped,
 * memset and copy need the access a kernel would need. A refused request changes
 * nothing and says which rule it broke.
 *
 * One mutex guards the books and the kernel calls that must agree with them; the
 * heap calls in from several threads at once. memset and copy check under the
 * lock and move bytes outside it: the range belongs to the caller, and the GPU
 * backend does not serialize them either.
 *
 * vmm_fail, shared by both backends, lives here as well, since this backend is
 * always built.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend/backend.h"

#define HOST_DEFAULT_GRANULARITY ((size_t)2 << 20) /* 2 MiB, as on current GPUs */
#define HOST_MAX_RESERVE ((size_t)1 << 40)         /* 1 TiB */

/* One physical allocation: a memfd of exactly size bytes. A free slot has fd -1
 * and links the free list through next_free. */
typedef struct host_handle {
    int fd;
    size_t size;
    size_t mapped;    /* how many live mappings use it */
    size_t next_free; /* free list link (slot index + 1; 0 ends the list) */
} host_handle;

/* One live mapping of a whole handle. */
typedef struct host_mapping {
    uintptr_t va;
    size_t size;
    vmm_handle h;
    gpu_prot_t prot;
} host_mapping;

/* One live reservation. */
typedef struct host_reservation {
    uintptr_t va;
    size_t size;
} host_reservation;

typedef struct host_backend {
    vmm_backend base; /* first, so a vmm_backend * is a host_backend * */
    pthread_mutex_t lock;
    size_t gran;
    size_t budget;    /* 0 = unlimited */
    size_t physical;  /* bytes created and not yet released */

    host_handle *handles; /* slot i is handle i + 1 */
    size_t nhandles, cap_handles, live_handles;
    size_t free_head;     /* first free slot (index + 1), 0 when none */

    host_mapping *maps;   /* sorted by va, never overlapping */
    size_t nmaps, cap_maps;

    host_reservation *res;
    size_t nres, cap_res;

    size_t grants;            /* peer access: successful grant calls, and the devices they named */
    uint64_t granted_devices;

    host_reservation *regs; /* zero-copy registrations (file.c): read-only ranges, unordered */
    size_t nregs, cap_regs;

    /* Stream order has nothing to wait for on the host; tests make events slow
     * (they complete after `event_delay` queries) and streams "captured". */
    unsigned *event_left;    /* slot i is event i + 1: queries still to fail; UINT_MAX = free */
    size_t nevents;
    unsigned event_delay;
    uintptr_t capturing[16]; /* streams marked as being captured */
    size_t ncapturing;
} host_backend;

static const vmm_ops host_ops;


/* ---- small helpers --------------------------------------------------------- */

/* The host backend behind a vmm_backend. */
static inline host_backend *host_of(vmm_backend *b) { return (host_backend *)b; }

/* True when x is a multiple of the granularity g (a power of two). */
static inline bool host_aligned(uintptr_t x, size_t g) { return (x & (g - 1)) == 0; }

/* True when [va, va+size) wraps around the address space. */
static inline bool host_wraps(uintptr_t va, size_t size) { return va + size < va; }

/* Grows a table of elem-sized entries so it holds at least need; false when the host is out. */
static bool host_grow(void **table, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need) n *= 2;
    void *t = realloc(*table, n * elem);
    if (!t) return false;
    *table = t;
    *cap = n;
    return true;
}

/* The live handle record for h, or NULL when h is not a live handle. */
static host_handle *host_handle_find(host_backend *hb, vmm_handle h) {
    if (h == 0 || h > hb->nhandles) return NULL;
    host_handle *r = &hb->handles[h - 1];
    return r->fd >= 0 ? r : NULL;
}

/* The reservation that contains all of [va, va+size), or NULL. */
static host_reservation *host_reservation_find(host_backend *hb, uintptr_t va, size_t size) {
    for (size_t i = 0; i < hb->nres; i++) {
        host_reservation *r = &hb->res[i];
        if (va >= r->va && va - r->va <= r->size && size <= r->size - (va - r->va)) return r;
    }
    return NULL;
}

/* Index of the first mapping that ends after va (the one containing va, or the
 * next one above it); nmaps when none. */
static size_t host_mapping_lower(const host_backend *hb, uintptr_t va) {
    size_t lo = 0, hi = hb->nmaps;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (hb->maps[mid].va + hb->maps[mid].size <= va) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* True when some mapping overlaps [va, va+size). */
static bool host_mapping_overlaps(const host_backend *hb, uintptr_t va, size_t size) {
    size_t i = host_mapping_lower(hb, va);
    return i < hb->nmaps && hb->maps[i].va < va + size;
}

/* Finds the run of mappings that is exactly [va, va+size): whole, contiguous,
 * nothing cut. Sets *first and *count; false (and a message in why) otherwise. */
static bool host_mapping_run(const host_backend *hb, uintptr_t va, size_t size, size_t *first,
                             size_t *count, const char **why) {
    size_t i = host_mapping_lower(hb, va);
    if (i == hb->nmaps || hb->maps[i].va > va) {
        *why = "the range does not start at a mapping (nothing is mapped there)";
        return false;
    }
    if (hb->maps[i].va != va) {
        *why = "the range starts inside a mapping; only whole mappings are accepted";
        return false;
    }
    uintptr_t end = va + size, at = va;
    size_t j = i;
    while (at < end) {
        if (j == hb->nmaps || hb->maps[j].va != at) {
            *why = "the range has a hole: part of it is not mapped";
            return false;
        }
        at += hb->maps[j].size;
        j++;
    }
    if (at != end) {
        *why = "the range ends inside a mapping; only whole mappings are accepted";
        return false;
    }
    *first = i;
    *count = j - i;
    return true;
}

/* True when every byte of [va, va+size) lies in contiguous mappings whose
 * protection includes need (GPU_PROT_READ or GPU_PROT_READ_WRITE). */
static bool host_range_accessible(const host_backend *hb, uintptr_t va, size_t size, gpu_prot_t need,
                                  const char **why) {
    size_t i = host_mapping_lower(hb, va);
    uintptr_t at = va, end = va + size;
    while (at < end) {
        if (i == hb->nmaps || hb->maps[i].va > at) {
            *why = "part of the range is not mapped";
            return false;
        }
        if (((unsigned)hb->maps[i].prot & (unsigned)need) != (unsigned)need) {
            *why = need == GPU_PROT_READ_WRITE ? "part of the range is not writable (set_access has not granted read-write)"
                                               : "part of the range is not readable (set_access has not granted read)";
            return false;
        }
        at = hb->maps[i].va + hb->maps[i].size;
        i++;
    }
    return true;
}

/* Puts plain reservation (anonymous, PROT_NONE) back over [va, va+size). */
static bool host_unback(uintptr_t va, size_t size) {
    void *p = mmap((void *)va, size, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p != MAP_FAILED;
}

/* The mprotect flags for a gpu_prot_t; -1 for a value the driver does not know. */
static int host_prot_flags(gpu_prot_t prot) {
    switch (prot) {
    case GPU_PROT_NONE: return PROT_NONE;
    case GPU_PROT_READ: return PROT_READ;
    case GPU_PROT_READ_WRITE: return PROT_READ | PROT_WRITE;
    }
    return -1;
}

/* ---- reservations ----------------------------------------------------------- */

/* Reserves size bytes of granularity-aligned VA: over-reserve by one granule,
 * then trim the slop at both ends. */
static int host_reserve(vmm_backend *b, size_t size, uintptr_t *va) {
    host_backend *hb = host_of(b);
    size_t g = hb->gran;
    if (!va || size == 0 || !host_aligned(size, g))
        return vmm_fail(b, GPU_ERR_INVALID, "host reserve(size=%zu): size must be a non-zero multiple of the granularity %zu", size, g);
    if (size > SIZE_MAX - g)
        return vmm_fail(b, GPU_ERR_OUT_OF_VA, "host reserve(size=%zu): too large", size);

    void *p = mmap(NULL, size + g, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return vmm_fail(b, GPU_ERR_OUT_OF_VA, "host reserve(size=%zu): mmap: %s", size, strerror(errno));
    uintptr_t raw = (uintptr_t)p, start = (raw + g - 1) & ~(uintptr_t)(g - 1);
    if (start > raw) munmap(p, start - raw);
    if (raw + g > start) munmap((void *)(start + size), raw + g - start);

    pthread_mutex_lock(&hb->lock);
    if (!host_grow((void **)&hb->res, &hb->cap_res, hb->nres + 1, sizeof *hb->res)) {
        pthread_mutex_unlock(&hb->lock);
        munmap((void *)start, size);
        return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host reserve(size=%zu): no host memory for the record", size);
    }
    hb->res[hb->nres++] = (host_reservation){start, size};
    pthread_mutex_unlock(&hb->lock);
    *va = start;
    return GPU_OK;
}

/* Gives back a whole reservation with nothing mapped in it. */
static int host_unreserve(vmm_backend *b, uintptr_t va, size_t size) {
    host_backend *hb = host_of(b);
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    size_t i = 0;
    while (i < hb->nres && hb->res[i].va != va) i++;
    if (i == hb->nres || hb->res[i].size != size) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host unreserve(va=%#" PRIxPTR ", size=%zu): not a reservation made by reserve", va, size);
    } else if (host_mapping_overlaps(hb, va, size)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host unreserve(va=%#" PRIxPTR ", size=%zu): memory is still mapped in the reservation", va, size);
    } else if (munmap((void *)va, size) != 0) {
        err = vmm_fail(b, GPU_ERR_BACKEND, "host unreserve(va=%#" PRIxPTR ", size=%zu): munmap: %s", va, size, strerror(errno));
    } else {
        hb->res[i] = hb->res[--hb->nres];
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* ---- physical allocations --------------------------------------------------- */

/* Creates size bytes of "physical" memory: a memfd, counted against the budget. */
static int host_create(vmm_backend *b, size_t size, vmm_handle *out) {
    host_backend *hb = host_of(b);
    if (!out || size == 0 || !host_aligned(size, hb->gran))
        return vmm_fail(b, GPU_ERR_INVALID, "host create(size=%zu): size must be a non-zero multiple of the granularity %zu", size, hb->gran);

    pthread_mutex_lock(&hb->lock);
    int err = GPU_OK;
    if (hb->budget && (size > hb->budget || hb->physical > hb->budget - size)) {
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host create(size=%zu): over the host budget (%zu of %zu bytes in use)",
                       size, hb->physical, hb->budget);
        goto out;
    }
    size_t slot = hb->free_head;
    if (!slot && !host_grow((void **)&hb->handles, &hb->cap_handles, hb->nhandles + 1, sizeof *hb->handles)) {
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host create(size=%zu): no host memory for the handle table", size);
        goto out;
    }
    int fd = memfd_create("gpuheap", MFD_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        err = vmm_fail(b, e == ENOMEM ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "host create(size=%zu): memfd_create: %s", size, strerror(e));
        goto out;
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        err = vmm_fail(b, e == ENOMEM || e == ENOSPC ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "host create(size=%zu): ftruncate: %s", size, strerror(e));
        goto out;
    }
    if (slot) {
        hb->free_head = hb->handles[slot - 1].next_free;
    } else {
        slot = ++hb->nhandles;
    }
    hb->handles[slot - 1] = (host_handle){.fd = fd, .size = size};
    hb->live_handles++;
    hb->physical += size;
    *out = slot;
out:
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Releases an unmapped handle: closes its memfd and gives the bytes back to the budget. */
static int host_release(vmm_backend *b, vmm_handle h) {
    host_backend *hb = host_of(b);
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    host_handle *r = host_handle_find(hb, h);
    if (!r) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host release(handle=%" PRIu64 "): not a live handle", h);
    } else if (r->mapped) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host release(handle=%" PRIu64 "): still mapped (%zu mapping(s)); unmap it first", h, r->mapped);
    } else {
        close(r->fd);
        hb->physical -= r->size;
        hb->live_handles--;
        *r = (host_handle){.fd = -1, .next_free = hb->free_head};
        hb->free_head = h;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* ---- mappings ------------------------------------------------------------------ */

/* Maps the whole handle h at va, inaccessible until set_access. */
static int host_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h) {
    host_backend *hb = host_of(b);
    size_t g = hb->gran;
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    host_handle *r = host_handle_find(hb, h);
    if (!r) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host map(va=%#" PRIxPTR ", size=%zu, handle=%" PRIu64 "): not a live handle", va, size, h);
    } else if (!host_aligned(va, g) || !host_aligned(size, g) || size == 0) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host map(va=%#" PRIxPTR ", size=%zu): address and size must be multiples of the granularity %zu", va, size, g);
    } else if (size != r->size) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host map(va=%#" PRIxPTR ", size=%zu, handle=%" PRIu64 "): a handle is mapped whole; its size is %zu", va, size, h, r->size);
    } else if (host_wraps(va, size) || !host_reservation_find(hb, va, size)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host map(va=%#" PRIxPTR ", size=%zu): the range is not inside one reservation", va, size);
    } else if (host_mapping_overlaps(hb, va, size)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host map(va=%#" PRIxPTR ", size=%zu): part of the range is already mapped", va, size);
    } else if (!host_grow((void **)&hb->maps, &hb->cap_maps, hb->nmaps + 1, sizeof *hb->maps)) {
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host map(va=%#" PRIxPTR ", size=%zu): no host memory for the record", va, size);
    } else if (mmap((void *)va, size, PROT_NONE, MAP_FIXED | MAP_SHARED, r->fd, 0) == MAP_FAILED) {
        int e = errno;
        host_unback(va, size); /* a failed MAP_FIXED may have removed the reservation underneath */
        err = vmm_fail(b, e == ENOMEM ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "host map(va=%#" PRIxPTR ", size=%zu): mmap: %s", va, size, strerror(e));
    } else {
        size_t i = host_mapping_lower(hb, va);
        memmove(&hb->maps[i + 1], &hb->maps[i], (hb->nmaps - i) * sizeof *hb->maps);
        hb->maps[i] = (host_mapping){va, size, h, GPU_PROT_NONE};
        hb->nmaps++;
        r->mapped++;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Unmaps a range made of whole mappings; it becomes plain reservation again. */
static int host_unmap(vmm_backend *b, uintptr_t va, size_t size) {
    host_backend *hb = host_of(b);
    size_t first, count;
    const char *why;
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    if (size == 0 || host_wraps(va, size)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host unmap(va=%#" PRIxPTR ", size=%zu): empty or wrapping range", va, size);
    } else if (!host_mapping_run(hb, va, size, &first, &count, &why)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host unmap(va=%#" PRIxPTR ", size=%zu): %s", va, size, why);
    } else if (!host_unback(va, size)) {
        err = vmm_fail(b, GPU_ERR_BACKEND, "host unmap(va=%#" PRIxPTR ", size=%zu): mmap: %s", va, size, strerror(errno));
    } else {
        for (size_t i = first; i < first + count; i++) hb->handles[hb->maps[i].h - 1].mapped--;
        memmove(&hb->maps[first], &hb->maps[first + count], (hb->nmaps - first - count) * sizeof *hb->maps);
        hb->nmaps -= count;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Sets access on a range made of whole mappings. */
static int host_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot) {
    host_backend *hb = host_of(b);
    int flags = host_prot_flags(prot);
    if (flags < 0)
        return vmm_fail(b, GPU_ERR_INVALID, "host set_access(va=%#" PRIxPTR ", size=%zu, prot=%d): unknown protection", va, size, (int)prot);
    size_t first, count;
    const char *why;
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    if (size == 0 || host_wraps(va, size)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host set_access(va=%#" PRIxPTR ", size=%zu): empty or wrapping range", va, size);
    } else if (!host_mapping_run(hb, va, size, &first, &count, &why)) {
        err = vmm_fail(b, GPU_ERR_INVALID, "host set_access(va=%#" PRIxPTR ", size=%zu): %s", va, size, why);
    } else if (mprotect((void *)va, size, flags) != 0) {
        err = vmm_fail(b, GPU_ERR_BACKEND, "host set_access(va=%#" PRIxPTR ", size=%zu): mprotect: %s", va, size, strerror(errno));
    } else {
        for (size_t i = first; i < first + count; i++) hb->maps[i].prot = prot;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Peer access has no host twin (one process, one address space): the request is
 * checked against the same rules as set_access and recorded, so tests can see
 * that a peer was granted every extent. */
static int host_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot) {
    host_backend *hb = host_of(b);
    size_t first, count;
    const char *why;
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    if (host_prot_flags(prot) < 0 || device < 0 || device >= 64 || device == b->caps.device)
        err = vmm_fail(b, GPU_ERR_INVALID, "host grant(va=%#" PRIxPTR ", device=%d, prot=%d): bad device or protection", va,
                       device, (int)prot);
    else if (size == 0 || host_wraps(va, size))
        err = vmm_fail(b, GPU_ERR_INVALID, "host grant(va=%#" PRIxPTR ", size=%zu): empty or wrapping range", va, size);
    else if (!host_mapping_run(hb, va, size, &first, &count, &why))
        err = vmm_fail(b, GPU_ERR_INVALID, "host grant(va=%#" PRIxPTR ", size=%zu): %s", va, size, why);
    else {
        hb->grants++;
        hb->granted_devices |= (uint64_t)1 << device;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* ---- device operations ----------------------------------------------------------- */

/* Nothing runs asynchronously on the host: every operation is done when it returns. */
static int host_fence(vmm_backend *b) {
    (void)b;
    return GPU_OK;
}

/* Fills a read-write range; refused where cuMemsetD8 would refuse. */
static int host_memset(vmm_backend *b, uintptr_t va, int byte, size_t size) {
    host_backend *hb = host_of(b);
    const char *why;
    if (size == 0) return GPU_OK;
    pthread_mutex_lock(&hb->lock);
    bool ok = !host_wraps(va, size) && host_range_accessible(hb, va, size, GPU_PROT_READ_WRITE, &why);
    pthread_mutex_unlock(&hb->lock);
    if (!ok) {
        if (host_wraps(va, size)) why = "the range wraps around";
        return vmm_fail(b, GPU_ERR_INVALID, "host memset(va=%#" PRIxPTR ", size=%zu): %s", va, size, why);
    }
    memset((void *)va, byte, size);
    return GPU_OK;
}

/* Copies between mapped ranges: src readable, dst writable. */
static int host_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size) {
    host_backend *hb = host_of(b);
    const char *why = "the range wraps around";
    if (size == 0) return GPU_OK;
    pthread_mutex_lock(&hb->lock);
    bool src_ok = !host_wraps(src, size) && host_range_accessible(hb, src, size, GPU_PROT_READ, &why);
    bool dst_ok = src_ok && !host_wraps(dst, size) && host_range_accessible(hb, dst, size, GPU_PROT_READ_WRITE, &why);
    pthread_mutex_unlock(&hb->lock);
    if (!src_ok)
        return vmm_fail(b, GPU_ERR_INVALID, "host copy(dst=%#" PRIxPTR ", src=%#" PRIxPTR ", size=%zu): source: %s", dst, src, size, why);
    if (!dst_ok)
        return vmm_fail(b, GPU_ERR_INVALID, "host copy(dst=%#" PRIxPTR ", src=%#" PRIxPTR ", size=%zu): destination: %s", dst, src, size, why);
    memmove((void *)dst, (const void *)src, size);
    return GPU_OK;
}

/* ---- open, close, counts ------------------------------------------------------------ */

/* Unmaps everything, closes every memfd and frees the backend. */
static void host_close(vmm_backend *b) {
    host_backend *hb = host_of(b);
    if (!hb) return;
    for (size_t i = 0; i < hb->nres; i++) munmap((void *)hb->res[i].va, hb->res[i].size);
    for (size_t i = 0; i < hb->nhandles; i++)
        if (hb->handles[i].fd >= 0) close(hb->handles[i].fd);
    free(hb->res);
    free(hb->maps);
    free(hb->handles);
    free(hb->event_left);
    free(hb->regs);
    pthread_mutex_destroy(&hb->lock);
    free(hb);
}

/* ---- stream order ------------------------------------------------------------ */

/* Records an event: a slot that completes after event_delay queries. */
static int host_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out) {
    host_backend *hb = (host_backend *)b;
    (void)stream;
    pthread_mutex_lock(&hb->lock);
    size_t i = 0;
    while (i < hb->nevents && hb->event_left[i] != UINT_MAX) i++;
    if (i == hb->nevents) {
        unsigned *grown = realloc(hb->event_left, (hb->nevents + 16) * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&hb->lock);
            return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "event_record: out of host memory");
        }
        for (size_t k = hb->nevents; k < hb->nevents + 16; k++) grown[k] = UINT_MAX;
        hb->event_left = grown;
        hb->nevents += 16;
    }
    hb->event_left[i] = hb->event_delay;
    pthread_mutex_unlock(&hb->lock);
    *out = (vmm_event)(i + 1);
    return GPU_OK;
}

/* The slot of a recorded event, or NULL. Called with the lock held. */
static unsigned *host_event_slot(host_backend *hb, vmm_event ev) {
    return ev >= 1 && ev <= hb->nevents && hb->event_left[ev - 1] != UINT_MAX ? &hb->event_left[ev - 1] : NULL;
}

static int host_event_query(vmm_backend *b, vmm_event ev) {
    host_backend *hb = (host_backend *)b;
    pthread_mutex_lock(&hb->lock);
    unsigned *left = host_event_slot(hb, ev);
    int rc = !left ? vmm_fail(b, GPU_ERR_INVALID, "event_query: %llu is not a recorded event", (unsigned long long)ev)
             : *left ? GH_PENDING : GPU_OK;
    if (left && *left) --*left;
    pthread_mutex_unlock(&hb->lock);
    return rc;
}

static int host_event_wait(vmm_backend *b, vmm_event ev) {
    host_backend *hb = (host_backend *)b;
    pthread_mutex_lock(&hb->lock);
    unsigned *left = host_event_slot(hb, ev);
    if (left) *left = 0;
    pthread_mutex_unlock(&hb->lock);
    return left ? GPU_OK : vmm_fail(b, GPU_ERR_INVALID, "event_wait: %llu is not a recorded event", (unsigned long long)ev);
}

static void host_event_release(vmm_backend *b, vmm_event ev) {
    host_backend *hb = (host_backend *)b;
    pthread_mutex_lock(&hb->lock);
    unsigned *left = host_event_slot(hb, ev);
    if (left) *left = UINT_MAX;
    pthread_mutex_unlock(&hb->lock);
}

/* The host has no queue: a context-wide event is an event like any other. */
static int host_fence_record(vmm_backend *b, vmm_event *out) { return host_event_record(b, 0, out); }

static int host_capturing(vmm_backend *b, uintptr_t stream) {
    host_backend *hb = (host_backend *)b;
    pthread_mutex_lock(&hb->lock);
    int on = 0;
    for (size_t i = 0; i < hb->ncapturing; i++) on |= hb->capturing[i] == stream;
    pthread_mutex_unlock(&hb->lock);
    return on;
}

void vmm_host_set_event_delay(vmm_backend *b, unsigned queries) {
    host_backend *hb = (host_backend *)b;
    pthread_mutex_lock(&hb->lock);
    hb->event_delay = queries;
    pthread_mutex_unlock(&hb->lock);
}

void vmm_host_set_capturing(vmm_backend *b, uintptr_t stream, bool on) {
    host_backend *hb = (host_backend *)b;
    pthread_mutex_lock(&hb->lock);
    size_t i = 0;
    while (i < hb->ncapturing && hb->capturing[i] != stream) i++;
    if (on && i == hb->ncapturing && hb->ncapturing < sizeof hb->capturing / sizeof hb->capturing[0])
        hb->capturing[hb->ncapturing++] = stream;
    if (!on && i < hb->ncapturing) hb->capturing[i] = hb->capturing[--hb->ncapturing];
    pthread_mutex_unlock(&hb->lock);
}

/* ---- transfers and zero-copy (file.c) ---------------------------------------------
 *
 * Copies run at once, on the calling thread; a queue only remembers how many
 * slots it has, so a slot out of range is refused as the GPU would misbehave.
 * The rules are the driver's: an upload needs a read-write destination, so
 * copying into a read-only mapping is refused, and a download a readable source.
 * A registration is the range itself (the "device" is the CPU), refused where it
 * overlaps another. */

typedef struct host_queue {
    unsigned slots;
} host_queue;

/* Page-aligned heap memory: the host has nothing to pin. */
static int host_staging_alloc(vmm_backend *b, size_t size, void **out) {
    void *p = NULL;
    long page = sysconf(_SC_PAGESIZE);
    int e = posix_memalign(&p, page > 0 ? (size_t)page : 4096, size);
    if (e) return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host staging_alloc(size=%zu): %s", size, strerror(e));
    *out = p;
    return GPU_OK;
}

static void host_staging_free(vmm_backend *b, void *p, size_t size) {
    (void)b;
    (void)size;
    free(p);
}

static int host_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out) {
    host_queue *q = malloc(sizeof *q);
    if (!q) return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host queue_open: out of host memory");
    q->slots = slots;
    *out = (vmm_queue *)q;
    return GPU_OK;
}

static void host_queue_close(vmm_backend *b, vmm_queue *q) {
    (void)b;
    free(q);
}

/* Checks a transfer against the rules, under the lock; the copy itself runs outside it. */
static int host_transfer_check(host_backend *hb, vmm_queue *q, unsigned slot, uintptr_t dev, size_t size,
                               gpu_prot_t need, const char *op) {
    const char *why = "the range wraps around";
    if (!q || slot >= ((host_queue *)q)->slots)
        return vmm_fail(&hb->base, GPU_ERR_INVALID, "host %s: slot %u is not a slot of the queue", op, slot);
    pthread_mutex_lock(&hb->lock);
    bool ok = !host_wraps(dev, size) && host_range_accessible(hb, dev, size, need, &why);
    pthread_mutex_unlock(&hb->lock);
    if (!ok)
        return vmm_fail(&hb->base, GPU_ERR_INVALID, "host %s(device=%#" PRIxPTR ", size=%zu): %s", op, dev, size, why);
    return GPU_OK;
}

static int host_queue_upload(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size) {
    int err = host_transfer_check(host_of(b), q, slot, dst, size, GPU_PROT_READ_WRITE, "queue_upload");
    if (err == GPU_OK && size) memcpy((void *)dst, src, size);
    return err;
}

static int host_queue_download(vmm_backend *b, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size) {
    int err = host_transfer_check(host_of(b), q, slot, src, size, GPU_PROT_READ, "queue_download");
    if (err == GPU_OK && size) memcpy(dst, (const void *)src, size);
    return err;
}

static int host_queue_wait(vmm_backend *b, vmm_queue *q, unsigned slot) {
    if (!q || slot >= ((host_queue *)q)->slots)
        return vmm_fail(b, GPU_ERR_INVALID, "host queue_wait: slot %u is not a slot of the queue", slot);
    return GPU_OK;
}

static int host_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev) {
    host_backend *hb = host_of(b);
    uintptr_t va = (uintptr_t)host;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    if (!size || !host_aligned(va, (size_t)page) || host_wraps(va, size))
        return vmm_fail(b, GPU_ERR_INVALID, "host register_read_only(%p, %zu): needs a non-empty page-aligned range", host, size);
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    for (size_t i = 0; i < hb->nregs && err == GPU_OK; i++)
        if (va < hb->regs[i].va + hb->regs[i].size && hb->regs[i].va < va + size)
            err = vmm_fail(b, GPU_ERR_INVALID, "host register_read_only(%p, %zu): overlaps the registration at %#" PRIxPTR,
                           host, size, hb->regs[i].va);
    if (err == GPU_OK && !host_grow((void **)&hb->regs, &hb->cap_regs, hb->nregs + 1, sizeof *hb->regs))
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host register_read_only: no host memory for the record");
    if (err == GPU_OK) hb->regs[hb->nregs++] = (host_reservation){va, size};
    pthread_mutex_unlock(&hb->lock);
    if (err == GPU_OK) *dev = va;
    return err;
}

static int host_unregister(vmm_backend *b, void *host) {
    host_backend *hb = host_of(b);
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    size_t i = 0;
    while (i < hb->nregs && hb->regs[i].va != (uintptr_t)host) i++;
    if (i == hb->nregs) err = vmm_fail(b, GPU_ERR_INVALID, "host unregister(%p): not a registered range", host);
    else hb->regs[i] = hb->regs[--hb->nregs];
    pthread_mutex_unlock(&hb->lock);
    return err;
}

static const vmm_ops host_ops = {
    .reserve = host_reserve,
    .unreserve = host_unreserve,
    .create = host_create,
    .release = host_release,
    .map = host_map,
    .unmap = host_unmap,
    .set_access = host_set_access,
    .grant = host_grant,
    .fence = host_fence,
    .memset = host_memset,
    .copy = host_copy,
    .event_record = host_event_record,
    .event_query = host_event_query,
    .event_wait = host_event_wait,
    .event_release = host_event_release,
    .fence_record = host_fence_record,
    .capturing = host_capturing,
    .staging_alloc = host_staging_alloc,
    .staging_free = host_staging_free,
    .queue_open = host_queue_open,
    .queue_close = host_queue_close,
    .queue_upload = host_queue_upload,
    .queue_download = host_queue_download,
    .queue_wait = host_queue_wait,
    .register_read_only = host_register_read_only,
    .unregister = host_unregister,
    .close = host_close,
};

int vmm_host_open(const gpu_config_t *cfg, vmm_backend **out) {
    if (!out) return vmm_fail(NULL, GPU_ERR_INVALID, "vmm_host_open: out is NULL");
    *out = NULL;
    size_t gran = cfg && cfg->host_granularity ? cfg->host_granularity : HOST_DEFAULT_GRANULARITY;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    /* A power of two that is a multiple of the page size is a power of two >= page. */
    if ((gran & (gran - 1)) != 0 || gran < (size_t)page)
        return vmm_fail(NULL, GPU_ERR_INVALID, "host backend: granularity %zu must be a power of two and a multiple of the page size %ld",
                             gran, page);

    host_backend *hb = calloc(1, sizeof *hb);
    if (!hb) return vmm_fail(NULL, GPU_ERR_OUT_OF_MEMORY, "host backend: no host memory for the backend");
    if (pthread_mutex_init(&hb->lock, NULL) != 0) {
        free(hb);
        return vmm_fail(NULL, GPU_ERR_BACKEND, "host backend: pthread_mutex_init failed");
    }
    hb->gran = gran;
    hb->budget = cfg ? cfg->host_budget : 0;
    hb->base.ops = &host_ops;
    hb->base.caps = (vmm_caps){
        .name = "host",
        .granularity = gran,
        .max_reserve = HOST_MAX_RESERVE,
        .device = cfg ? cfg->device : 0,
        .host_accessible = true,
    };
    snprintf(hb->base.caps.device_name, sizeof hb->base.caps.device_name, "host (no GPU)");
    *out = &hb->base;
    return GPU_OK;
}

void vmm_host_counts_get(vmm_backend *b, vmm_host_counts *out) {
    if (!out) return;
    *out = (vmm_host_counts){0};
    if (!b || b->ops != &host_ops) return;
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    out->physical_bytes = hb->physical;
    out->handles = hb->live_handles;
    out->mappings = hb->nmaps;
    out->reservations = hb->nres;
    out->grants = hb->grants;
    out->granted_devices = hb->granted_devices;
    pthread_mutex_unlock(&hb->lock);
}
