/*
 * vmm.c — the host backend's virtual memory: reservations, physical
 * allocations, mappings and access, with the books that let it refuse what the
 * CUDA driver would refuse.
 *
 * Each driver object has a host twin: a VA reservation is an anonymous PROT_NONE
 * mapping, a physical allocation is a memfd of exactly its size, cuMemMap is
 * mmap(MAP_FIXED|MAP_SHARED) of that memfd (still PROT_NONE, since a new mapping
 * is inaccessible until access is granted), and cuMemSetAccess is mprotect.
 * Unmapping puts a fresh anonymous PROT_NONE mapping back, so the range is plain
 * reservation again.
 *
 * The kernel alone would accept far more than the driver does (any page-aligned
 * sub-range, partial unmaps, mprotect of 4 KiB), so every request is checked
 * against the books first: sizes and addresses are granularity multiples, a
 * handle is mapped whole, unmap, set_access and grant take runs of whole
 * mappings, nothing is released while mapped. A refused request changes nothing
 * and says which rule it broke. The books and the kernel calls that must agree
 * with them are changed under the backend's lock.
 *
 * A device's memory is shared by every allocation on it, so the bytes created
 * are counted per device ordinal across every host backend of the process (one
 * heap's free memory is another's room, as on a GPU); a backend's budget
 * (GPUHEAP_HOST_BUDGET) caps that device-wide count, and a create past it is
 * refused as the driver refuses one: out of memory.
 *
 * A memfd is also what another process needs to share the memory (lib/ipc): an
 * export is a dup of the handle's memfd, an import keeps a dup of the fd it was
 * given as a handle of its own. The kernel frees the pages when the last fd and
 * the last mapping of the memfd go, in whichever process that happens.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend/host/host_internal.h"

/* ---- the books ---------------------------------------------------------------- */

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

/* The run of whole mappings that unmap, set_access and grant accept: sets
 * *first and *count, or refuses with GPU_ERR_INVALID and a message naming op.
 * Lock held. */
static int host_whole_mappings(host_backend *hb, const char *op, uintptr_t va, size_t size, size_t *first, size_t *count) {
    const char *why;
    if (size == 0 || host_wraps(va, size))
        return vmm_fail(&hb->base, GPU_ERR_INVALID, "host %s(va=%#" PRIxPTR ", size=%zu): empty or wrapping range", op, va, size);
    if (!host_mapping_run(hb, va, size, first, count, &why))
        return vmm_fail(&hb->base, GPU_ERR_INVALID, "host %s(va=%#" PRIxPTR ", size=%zu): %s", op, va, size, why);
    return GPU_OK;
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

bool host_range_usable(host_backend *hb, uintptr_t va, size_t size, gpu_prot_t need, const char **why) {
    *why = "the range wraps around";
    if (host_wraps(va, size)) return false;
    pthread_mutex_lock(&hb->lock);
    bool ok = host_range_accessible(hb, va, size, need, why);
    pthread_mutex_unlock(&hb->lock);
    return ok;
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

/* Reserves size bytes of VA at a multiple of align: over-reserve by align, then
 * trim the slop at both ends. */
int host_reserve(vmm_backend *b, size_t size, size_t align, uintptr_t *va) {
    host_backend *hb = host_of(b);
    if (!va || size == 0 || !host_aligned(size, hb->gran))
        return vmm_fail(b, GPU_ERR_INVALID, "host reserve(size=%zu): size must be a non-zero multiple of the granularity %zu", size, hb->gran);
    if (align < hb->gran || align & (align - 1))
        return vmm_fail(b, GPU_ERR_INVALID, "host reserve(align=%zu): a power of two of at least the granularity %zu", align, hb->gran);
    if (size > SIZE_MAX - align)
        return vmm_fail(b, GPU_ERR_OUT_OF_VA, "host reserve(size=%zu): too large", size);

    void *p = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return vmm_fail(b, GPU_ERR_OUT_OF_VA, "host reserve(size=%zu): mmap: %s", size, strerror(errno));
    uintptr_t raw = (uintptr_t)p, start = (raw + align - 1) & ~(uintptr_t)(align - 1);
    if (start > raw) munmap(p, start - raw);
    if (raw + align > start) munmap((void *)(start + size), raw + align - start);

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
int host_unreserve(vmm_backend *b, uintptr_t va, size_t size) {
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

/* The bytes every host backend of this process holds on hb's device. */
#define HOST_DEVICES 64
static _Atomic size_t device_bytes[HOST_DEVICES];
static _Atomic size_t *device_of(const host_backend *hb) {
    int d = hb->base.caps.device;
    return &device_bytes[d >= 0 && d < HOST_DEVICES ? d : HOST_DEVICES - 1];
}

/* Counts size bytes on hb's device; false (nothing counted) past hb's budget. */
static bool device_take(host_backend *hb, size_t size, size_t *in_use) {
    _Atomic size_t *dev = device_of(hb);
    size_t cur = atomic_load_explicit(dev, memory_order_relaxed);
    do {
        *in_use = cur;
        if (hb->budget && (size > hb->budget || cur > hb->budget - size)) return false;
    } while (!atomic_compare_exchange_weak_explicit(dev, &cur, cur + size, memory_order_relaxed, memory_order_relaxed));
    return true;
}

void host_device_give(host_backend *hb, size_t size) { atomic_fetch_sub_explicit(device_of(hb), size, memory_order_relaxed); }
size_t host_device_bytes(const host_backend *hb) { return atomic_load_explicit(device_of(hb), memory_order_relaxed); }

/* Creates size bytes of "physical" memory: a memfd, counted against the budget. */
int host_create(vmm_backend *b, size_t size, vmm_handle *out) {
    host_backend *hb = host_of(b);
    if (!out || size == 0 || !host_aligned(size, hb->gran))
        return vmm_fail(b, GPU_ERR_INVALID, "host create(size=%zu): size must be a non-zero multiple of the granularity %zu", size, hb->gran);

    pthread_mutex_lock(&hb->lock);
    int err = GPU_OK;
    size_t in_use;
    if (!device_take(hb, size, &in_use)) {
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY,
                       "host create(size=%zu): over the host budget (%zu of %zu bytes in use on device %d)", size, in_use,
                       hb->budget, hb->base.caps.device);
        goto out;
    }
    size_t slot = hb->free_head;
    if (!slot && !host_grow((void **)&hb->handles, &hb->cap_handles, hb->nhandles + 1, sizeof *hb->handles)) {
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host create(size=%zu): no host memory for the handle table", size);
        goto given_back;
    }
    int fd = memfd_create("gpuheap", MFD_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        err = vmm_fail(b, e == ENOMEM ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "host create(size=%zu): memfd_create: %s", size, strerror(e));
        goto given_back;
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        err = vmm_fail(b, e == ENOMEM || e == ENOSPC ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND, "host create(size=%zu): ftruncate: %s", size, strerror(e));
        goto given_back;
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
    goto out;
given_back:
    host_device_give(hb, size);
out:
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Releases an unmapped handle: closes its memfd and gives the bytes back to the budget. */
int host_release(vmm_backend *b, vmm_handle h) {
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
        if (r->imported) {
            hb->imported -= r->size;
            hb->imported_handles--;
        } else {
            hb->physical -= r->size;
            host_device_give(hb, r->size);
        }
        hb->live_handles--;
        *r = (host_handle){.fd = -1, .next_free = hb->free_head};
        hb->free_head = h;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* ---- sharing with other processes (lib/ipc) -------------------------------------- */

/* A dup of handle h's memfd, close-on-exec, for another process. */
int host_export_fd(vmm_backend *b, vmm_handle h, int *fd) {
    host_backend *hb = host_of(b);
    if (!b->caps.exportable) return vmm_fail(b, GPU_ERR_INVALID, "%s", b->caps.ipc_note);
    int err = GPU_OK;
    pthread_mutex_lock(&hb->lock);
    host_handle *r = host_handle_find(hb, h);
    int copy = r ? fcntl(r->fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (!r)
        err = vmm_fail(b, GPU_ERR_INVALID, "host export_fd(handle=%" PRIu64 "): not a live handle", h);
    else if (copy < 0)
        err = vmm_fail(b, errno == EMFILE || errno == ENFILE ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND,
                       "host export_fd(handle=%" PRIu64 "): dup: %s", h, strerror(errno));
    else
        *fd = copy;
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* A handle of its own over a dup of fd: a memfd (or any file that maps
 * MAP_SHARED) of exactly size bytes. Not counted against the budget: the memory
 * was created by whoever exported it. */
int host_import_fd(vmm_backend *b, int fd, size_t size, vmm_handle *out) {
    host_backend *hb = host_of(b);
    struct stat st;
    if (!out || size == 0 || !host_aligned(size, hb->gran))
        return vmm_fail(b, GPU_ERR_INVALID, "host import_fd(size=%zu): size must be a non-zero multiple of the granularity %zu",
                        size, hb->gran);
    if (fstat(fd, &st) != 0)
        return vmm_fail(b, GPU_ERR_INVALID, "host import_fd(fd=%d): fstat: %s", fd, strerror(errno));
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size)
        return vmm_fail(b, GPU_ERR_INVALID, "host import_fd(fd=%d, size=%zu): not memory of that size (%lld bytes)", fd, size,
                        (long long)st.st_size);
    pthread_mutex_lock(&hb->lock);
    int err = GPU_OK;
    size_t slot = hb->free_head;
    int copy = -1;
    if (!slot && !host_grow((void **)&hb->handles, &hb->cap_handles, hb->nhandles + 1, sizeof *hb->handles))
        err = vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host import_fd(size=%zu): no host memory for the handle table", size);
    else if ((copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
        err = vmm_fail(b, errno == EMFILE || errno == ENFILE ? GPU_ERR_OUT_OF_MEMORY : GPU_ERR_BACKEND,
                       "host import_fd(fd=%d): dup: %s", fd, strerror(errno));
    if (err == GPU_OK) {
        if (slot)
            hb->free_head = hb->handles[slot - 1].next_free;
        else
            slot = ++hb->nhandles;
        hb->handles[slot - 1] = (host_handle){.fd = copy, .size = size, .imported = true};
        hb->live_handles++;
        hb->imported += size;
        hb->imported_handles++;
        *out = slot;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* ---- mappings ------------------------------------------------------------------ */

/* Maps the whole handle h at va, inaccessible until set_access. */
int host_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h) {
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
int host_unmap(vmm_backend *b, uintptr_t va, size_t size) {
    host_backend *hb = host_of(b);
    size_t first, count;
    pthread_mutex_lock(&hb->lock);
    int err = host_whole_mappings(hb, "unmap", va, size, &first, &count);
    if (err == GPU_OK && !host_unback(va, size)) {
        err = vmm_fail(b, GPU_ERR_BACKEND, "host unmap(va=%#" PRIxPTR ", size=%zu): mmap: %s", va, size, strerror(errno));
    } else if (err == GPU_OK) {
        for (size_t i = first; i < first + count; i++) hb->handles[hb->maps[i].h - 1].mapped--;
        memmove(&hb->maps[first], &hb->maps[first + count], (hb->nmaps - first - count) * sizeof *hb->maps);
        hb->nmaps -= count;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Sets access on a range made of whole mappings. */
int host_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot) {
    host_backend *hb = host_of(b);
    int flags = host_prot_flags(prot);
    if (flags < 0)
        return vmm_fail(b, GPU_ERR_INVALID, "host set_access(va=%#" PRIxPTR ", size=%zu, prot=%d): unknown protection", va, size, (int)prot);
    size_t first, count;
    pthread_mutex_lock(&hb->lock);
    int err = host_whole_mappings(hb, "set_access", va, size, &first, &count);
    if (err == GPU_OK && mprotect((void *)va, size, flags) != 0) {
        err = vmm_fail(b, GPU_ERR_BACKEND, "host set_access(va=%#" PRIxPTR ", size=%zu): mprotect: %s", va, size, strerror(errno));
    } else if (err == GPU_OK) {
        for (size_t i = first; i < first + count; i++) hb->maps[i].prot = prot;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}

/* Peer access has no host twin (one process, one address space): the request is
 * checked against the same rules as set_access and recorded, so tests can see
 * that a peer was granted every extent. */
int host_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot) {
    host_backend *hb = host_of(b);
    size_t first, count;
    if (host_prot_flags(prot) < 0 || device < 0 || device >= 64 || device == b->caps.device)
        return vmm_fail(b, GPU_ERR_INVALID, "host grant(va=%#" PRIxPTR ", device=%d, prot=%d): bad device or protection", va,
                        device, (int)prot);
    pthread_mutex_lock(&hb->lock);
    int err = host_whole_mappings(hb, "grant", va, size, &first, &count);
    if (err == GPU_OK) {
        hb->grants++;
        hb->granted_devices |= (uint64_t)1 << device;
    }
    pthread_mutex_unlock(&hb->lock);
    return err;
}
