/*
 * transfer.c — the host backend's byte moving: memset and copy for the heap,
 * and for file-backed memory (lib/file) staging memory, copy queues and zero-copy
 * registration.
 *
 * The rules are the driver's, checked against the mapping books (vmm.c) under
 * the lock: memset and an upload need a read-write destination, copy and a
 * download a readable source, so writing into a read-only mapping is refused
 * where cuMemsetD8 or cuMemcpyHtoD would be. The bytes move outside the lock: the
 * range belongs to the caller, and the GPU backend does not serialize them
 * either. Copies run at once, on the calling thread; a queue only remembers how
 * many slots it has, so a slot out of range is refused as the GPU would
 * misbehave. Staging memory is page-aligned heap memory (there is nothing to
 * pin), and a registration is the range itself (the "device" is the CPU),
 * refused where it overlaps another.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend/host/host_internal.h"

/* Fills a read-write range; refused where cuMemsetD8 would refuse. */
int host_memset(vmm_backend *b, uintptr_t va, int byte, size_t size) {
    const char *why;
    if (size == 0) return GPU_OK;
    if (!host_range_usable(host_of(b), va, size, GPU_PROT_READ_WRITE, &why))
        return vmm_fail(b, GPU_ERR_INVALID, "host memset(va=%#" PRIxPTR ", size=%zu): %s", va, size, why);
    memset((void *)va, byte, size);
    return GPU_OK;
}

/* Copies between mapped ranges: src readable, dst writable. */
int host_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size) {
    host_backend *hb = host_of(b);
    const char *why;
    if (size == 0) return GPU_OK;
    if (!host_range_usable(hb, src, size, GPU_PROT_READ, &why))
        return vmm_fail(b, GPU_ERR_INVALID, "host copy(dst=%#" PRIxPTR ", src=%#" PRIxPTR ", size=%zu): source: %s", dst, src, size, why);
    if (!host_range_usable(hb, dst, size, GPU_PROT_READ_WRITE, &why))
        return vmm_fail(b, GPU_ERR_INVALID, "host copy(dst=%#" PRIxPTR ", src=%#" PRIxPTR ", size=%zu): destination: %s", dst, src, size, why);
    memmove((void *)dst, (const void *)src, size);
    return GPU_OK;
}

/* A queue: nothing to order, only how many slots it has. */
typedef struct host_queue {
    unsigned slots;
} host_queue;

/* Page-aligned heap memory: the host has nothing to pin. Counted, so that
 * tests see how often pinned memory would be allocated on a GPU. */
int host_staging_alloc(vmm_backend *b, size_t size, void **out) {
    void *p = NULL;
    int e = posix_memalign(&p, host_page_size(), size);
    if (e) return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host staging_alloc(size=%zu): %s", size, strerror(e));
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    hb->staging_allocs++;
    hb->staging_bytes += size;
    pthread_mutex_unlock(&hb->lock);
    *out = p;
    return GPU_OK;
}

void host_staging_free(vmm_backend *b, void *p, size_t size) {
    if (!p) return;
    host_backend *hb = host_of(b);
    pthread_mutex_lock(&hb->lock);
    hb->staging_bytes -= size;
    pthread_mutex_unlock(&hb->lock);
    free(p);
}

int host_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out) {
    host_queue *q = malloc(sizeof *q);
    if (!q) return vmm_fail(b, GPU_ERR_OUT_OF_MEMORY, "host queue_open: out of host memory");
    q->slots = slots;
    *out = (vmm_queue *)q;
    return GPU_OK;
}

void host_queue_close(vmm_backend *b, vmm_queue *q) {
    (void)b;
    free(q);
}

/* False, with the message written, when slot is not one of q's slots. */
static bool host_queue_slot(vmm_backend *b, vmm_queue *q, unsigned slot, const char *op) {
    if (q && slot < ((host_queue *)q)->slots) return true;
    (void)vmm_fail(b, GPU_ERR_INVALID, "host %s: slot %u is not a slot of the queue", op, slot);
    return false;
}

/* Checks a transfer against the rules; the copy itself runs outside the lock. */
static int host_transfer_check(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dev, size_t size, gpu_prot_t need,
                               const char *op) {
    const char *why;
    if (!host_queue_slot(b, q, slot, op)) return GPU_ERR_INVALID;
    if (!host_range_usable(host_of(b), dev, size, need, &why))
        return vmm_fail(b, GPU_ERR_INVALID, "host %s(device=%#" PRIxPTR ", size=%zu): %s", op, dev, size, why);
    return GPU_OK;
}

int host_queue_upload(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size) {
    int err = host_transfer_check(b, q, slot, dst, size, GPU_PROT_READ_WRITE, "queue_upload");
    if (err == GPU_OK && size) memcpy((void *)dst, src, size);
    return err;
}

int host_queue_download(vmm_backend *b, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size) {
    int err = host_transfer_check(b, q, slot, src, size, GPU_PROT_READ, "queue_download");
    if (err == GPU_OK && size) memcpy(dst, (const void *)src, size);
    return err;
}

int host_queue_wait(vmm_backend *b, vmm_queue *q, unsigned slot) {
    return host_queue_slot(b, q, slot, "queue_wait") ? GPU_OK : GPU_ERR_INVALID;
}

int host_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev) {
    host_backend *hb = host_of(b);
    uintptr_t va = (uintptr_t)host;
    if (!size || !host_aligned(va, host_page_size()) || host_wraps(va, size))
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

int host_unregister(vmm_backend *b, void *host) {
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

