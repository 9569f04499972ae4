/*
 * backend_call.c — the one door between the heap and its backend.
 *
 * Every backend call goes through a wrapper here that checks the preconditions
 * the driver would check (alignment, sizes), counts the call for the statistics,
 * and turns a failure into the heap's error convention with the backend's message
 * attached. Nothing here holds the heap's lock: the heap calls these outside it,
 * because driver VMM calls take microseconds to milliseconds and do not run in
 * parallel anyway (DESIGN.md §2).
 */
#include <stdio.h>

#include "internal.h"

/* Counts a call and, on failure, reports it through the error path. */
static int done(vmm_door *d, vmm_op op, int rc) {
    atomic_fetch_add_explicit(&d->counts.calls[op], 1, memory_order_relaxed);
    if (rc != GPU_OK) {
        atomic_fetch_add_explicit(&d->counts.errors, 1, memory_order_relaxed);
        if (d->verbose >= 2) fprintf(stderr, "gpuheap: %s backend: %s\n", d->b->caps.name, d->b->error);
    }
    return rc;
}

/* True when x is a multiple of the backend's granularity. */
static inline bool granular(const vmm_door *d, uintptr_t x) { return x % d->b->caps.granularity == 0; }

int vmm_call_reserve(vmm_door *d, size_t size, uintptr_t *va) {
    gh_assert(size && granular(d, size), "reserve a granularity multiple");
    return done(d, VMM_OP_RESERVE, d->b->ops->reserve(d->b, size, va));
}

int vmm_call_unreserve(vmm_door *d, uintptr_t va, size_t size) {
    return done(d, VMM_OP_UNRESERVE, d->b->ops->unreserve(d->b, va, size));
}

int vmm_call_create(vmm_door *d, size_t size, vmm_handle *out) {
    gh_assert(size && granular(d, size), "physical memory comes in granularity multiples");
    return done(d, VMM_OP_CREATE, d->b->ops->create(d->b, size, out));
}

int vmm_call_release(vmm_door *d, vmm_handle h) {
    return done(d, VMM_OP_RELEASE, d->b->ops->release(d->b, h));
}

int vmm_call_map(vmm_door *d, uintptr_t va, size_t size, vmm_handle h) {
    gh_assert(granular(d, va) && granular(d, size), "map at granule boundaries");
    return done(d, VMM_OP_MAP, d->b->ops->map(d->b, va, size, h));
}

int vmm_call_unmap(vmm_door *d, uintptr_t va, size_t size) {
    gh_assert(granular(d, va) && granular(d, size), "unmap at granule boundaries");
    return done(d, VMM_OP_UNMAP, d->b->ops->unmap(d->b, va, size));
}

int vmm_call_set_access(vmm_door *d, uintptr_t va, size_t size, gpu_prot_t prot) {
    gh_assert(granular(d, va) && granular(d, size), "set access on whole mappings");
    return done(d, VMM_OP_SET_ACCESS, d->b->ops->set_access(d->b, va, size, prot));
}

int vmm_call_fence(vmm_door *d) { return done(d, VMM_OP_FENCE, d->b->ops->fence(d->b)); }

int vmm_call_memset(vmm_door *d, uintptr_t va, int byte, size_t size) {
    return done(d, VMM_OP_MEMSET, d->b->ops->memset(d->b, va, byte, size));
}

int vmm_call_copy(vmm_door *d, uintptr_t dst, uintptr_t src, size_t size) {
    return done(d, VMM_OP_COPY, d->b->ops->copy(d->b, dst, src, size));
}

int vmm_call_back(vmm_door *d, uintptr_t va, size_t size, vmm_handle *out) {
    vmm_handle h;
    int rc = vmm_call_create(d, size, &h);
    if (rc != GPU_OK) return rc;
    rc = vmm_call_map(d, va, size, h);
    if (rc != GPU_OK) goto release;
    rc = vmm_call_set_access(d, va, size, GPU_PROT_READ_WRITE);
    if (rc != GPU_OK) goto unmap;
    *out = h;
    return GPU_OK;
unmap:
    (void)vmm_call_unmap(d, va, size);
release:
    (void)vmm_call_release(d, h);
    return rc;
}

int vmm_call_unback(vmm_door *d, uintptr_t va, size_t size, vmm_handle h) {
    int rc = vmm_call_unmap(d, va, size);
    if (rc != GPU_OK) return rc;
    return vmm_call_release(d, h);
}
