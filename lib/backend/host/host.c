/*
 * host.c — the backend contract over host virtual memory, with the CUDA driver's
 * rules enforced: the backend's record, its table of operations, opening and
 * closing it, and the counts tests read.
 *
 * This backend exists so that the heap can be built, tested and fuzzed on a
 * machine with no GPU, and so that a test that breaks a driver rule fails here
 * the way it would fail on the GPU (DESIGN.md §3). Each driver object has a host
 * twin (vmm.c: a reservation is a PROT_NONE mapping, a physical allocation a
 * memfd, a mapping mmap of it, access mprotect), and the backend keeps the books
 * the driver keeps, so that it refuses what the driver would refuse. events.c
 * gives tests events that are not done yet and streams being captured;
 * transfer.c moves bytes for memset, copy and file-backed memory.
 *
 * One mutex guards the books and the kernel calls that must agree with them; the
 * heap calls in from several threads at once. Bytes are moved outside the lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend/host/host_internal.h"
#include "common.h"

#define HOST_DEFAULT_GRANULARITY ((size_t)2 << 20) /* 2 MiB, as on current GPUs */
#define HOST_MAX_RESERVE ((size_t)1 << 40)         /* 1 TiB */

/* ---- what every part needs ------------------------------------------------------ */

bool host_grow(void **table, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need) n *= 2;
    void *t = realloc(*table, n * elem);
    if (!t) return false;
    *table = t;
    *cap = n;
    return true;
}

size_t host_page_size(void) {
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (size_t)page : 4096;
}

/* ---- the backend ---------------------------------------------------------------- */

/* Unmaps everything, closes every memfd and frees the backend. */
static void host_close(vmm_backend *b) {
    host_backend *hb = host_of(b);
    if (!hb) return;
    for (size_t i = 0; i < hb->nres; i++) munmap((void *)hb->res[i].va, hb->res[i].size);
    for (size_t i = 0; i < hb->nhandles; i++)
        if (hb->handles[i].fd >= 0) close(hb->handles[i].fd);
    host_device_give(hb, hb->physical); /* handles never released leave the device with their backend */
    free(hb->res);
    free(hb->maps);
    free(hb->handles);
    free(hb->event_left);
    free(hb->event_ready);
    free(hb->regs);
    pthread_mutex_destroy(&hb->lock);
    free(hb);
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
    .fence_order = host_fence_order,
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
    .export_fd = host_export_fd,
    .import_fd = host_import_fd,
    .close = host_close,
};

int vmm_host_open(const gpu_config_t *cfg, vmm_backend **out) {
    if (!out) return vmm_fail(NULL, GPU_ERR_INVALID, "vmm_host_open: out is NULL");
    *out = NULL;
    size_t gran = cfg && cfg->host_granularity ? cfg->host_granularity : HOST_DEFAULT_GRANULARITY;
    size_t page = host_page_size();
    /* A power of two that is a multiple of the page size is a power of two >= page. */
    if (!gh_is_pow2(gran) || gran < page)
        return vmm_fail(NULL, GPU_ERR_INVALID, "host backend: granularity %zu must be a power of two and a multiple of the page size %zu",
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
        .exportable = !cfg || cfg->ipc,
    };
    if (!hb->base.caps.exportable)
        snprintf(hb->base.caps.ipc_note, sizeof hb->base.caps.ipc_note,
                 "this heap's memory cannot be shared with other processes: it was opened with ipc = 0 (GPUHEAP_IPC=0)");
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
    out->device_bytes = host_device_bytes(hb);
    out->staging_allocs = hb->staging_allocs;
    out->staging_bytes = hb->staging_bytes;
    out->handles = hb->live_handles;
    out->mappings = hb->nmaps;
    out->reservations = hb->nres;
    out->imported_bytes = hb->imported;
    out->imported_handles = hb->imported_handles;
    out->grants = hb->grants;
    out->orders = hb->orders;
    out->granted_devices = hb->granted_devices;
    pthread_mutex_unlock(&hb->lock);
}
