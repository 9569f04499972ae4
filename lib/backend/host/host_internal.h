/*
 * host_internal.h — the host backend's own names, shared by its files and by
 * nothing else (the heap sees only backend.h).
 *
 * The backend is one record (host_backend) holding the books the driver would
 * keep — reservations, handles, mappings sorted by address, registrations, event
 * slots — under one mutex, and one table of operations split by idea: host.c
 * opens and closes the backend; vmm.c keeps the books of address space,
 * physical memory and mappings and enforces the driver's rules on them;
 * events.c the fence, events and capture knobs; transfer.c memset and copy,
 * staging, queues and registration.
 */
#ifndef GPUHEAP_HOST_INTERNAL_H
#define GPUHEAP_HOST_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

/* One physical allocation: a memfd of exactly size bytes. A free slot has fd -1
 * and links the free list through next_free. */
typedef struct host_handle {
    int fd;
    size_t size;
    bool imported;    /* made by import_fd: another process's memory, not counted in physical */
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
    size_t budget;    /* 0 = unlimited: the most bytes the host backends of this device may hold together */
    size_t physical;  /* bytes this backend created and not yet released */
    size_t imported, imported_handles; /* handles made by import_fd and not yet released */

    host_handle *handles; /* slot i is handle i + 1 */
    size_t nhandles, cap_handles, live_handles;
    size_t free_head;     /* first free slot (index + 1), 0 when none */

    host_mapping *maps;   /* sorted by va, never overlapping */
    size_t nmaps, cap_maps;

    host_reservation *res;
    size_t nres, cap_res;

    size_t staging_allocs, staging_bytes; /* staging memory: allocations made, bytes not yet freed */
    size_t orders;            /* fence_order calls that succeeded */
    size_t grants;            /* peer access: successful grant calls, and the devices they named */
    uint64_t granted_devices;

    host_reservation *regs; /* zero-copy registrations (lib/file): read-only ranges, unordered */
    size_t nregs, cap_regs;

    /* Stream order has nothing to wait for on the host; tests make events slow
     * (they complete after `event_delay` queries) and streams "captured". */
    unsigned *event_left;    /* slot i is event i + 1: queries still to fail; UINT_MAX = free */
    uint64_t *event_ready;   /* slot i: the clock's time from which it may complete (a GPU's lag) */
    size_t nevents;
    unsigned event_delay;
    uint64_t clock_ns, lag_ns; /* vmm_host_set_clock: a replay's time, and how far the "GPU" trails it */
    uintptr_t capturing[16]; /* streams marked as being captured */
    size_t ncapturing;
} host_backend;

/* The host backend behind a vmm_backend. */
static inline host_backend *host_of(vmm_backend *b) { return (host_backend *)b; }

/* True when x is a multiple of the granularity g (a power of two). */
static inline bool host_aligned(uintptr_t x, size_t g) { return (x & (g - 1)) == 0; }

/* True when [va, va+size) wraps around the address space. */
static inline bool host_wraps(uintptr_t va, size_t size) { return va + size < va; }

/* host.c: what every part needs. */
/* Grows a table of elem-sized entries so it holds at least need; false when the host is out. */
bool host_grow(void **table, size_t *cap, size_t need, size_t elem);
/* The system's page size (4096 when it will not say). */
size_t host_page_size(void);

/* vmm.c: reservations, physical allocations, mappings, access. */
/* True when [va, va+size) lies in mappings that all grant at least need
 * (GPU_PROT_READ or GPU_PROT_READ_WRITE); else why says what is wrong. Takes
 * the lock. */
bool host_range_usable(host_backend *hb, uintptr_t va, size_t size, gpu_prot_t need, const char **why);
int host_reserve(vmm_backend *b, size_t size, size_t align, uintptr_t *va);
int host_unreserve(vmm_backend *b, uintptr_t va, size_t size);
int host_create(vmm_backend *b, size_t size, vmm_handle *out);
/* size bytes hb created leave its device's count (a release, or handles left at close). */
void host_device_give(host_backend *hb, size_t size);
size_t host_device_bytes(const host_backend *hb); /* what the host backends of hb's device hold */
int host_release(vmm_backend *b, vmm_handle h);
int host_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h);
int host_unmap(vmm_backend *b, uintptr_t va, size_t size);
int host_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot);
int host_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot);
int host_export_fd(vmm_backend *b, vmm_handle h, int *fd);
int host_import_fd(vmm_backend *b, int fd, size_t size, vmm_handle *out);

/* events.c: the fence, stream order and capture. */
int host_fence(vmm_backend *b);
int host_fence_record(vmm_backend *b, uintptr_t stream, vmm_event *out);
int host_fence_order(vmm_backend *b, uintptr_t stream, vmm_event *out);
int host_event_record(vmm_backend *b, uintptr_t stream, vmm_event *out);
int host_event_query(vmm_backend *b, vmm_event ev);
int host_event_wait(vmm_backend *b, vmm_event ev);
void host_event_release(vmm_backend *b, vmm_event ev);
int host_capturing(vmm_backend *b, uintptr_t stream);

/* transfer.c: device memory operations and file-backed memory's transfers. */
int host_memset(vmm_backend *b, uintptr_t va, int byte, size_t size);
int host_copy(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size);
int host_staging_alloc(vmm_backend *b, size_t size, void **out);
void host_staging_free(vmm_backend *b, void *p, size_t size);
int host_queue_open(vmm_backend *b, unsigned slots, vmm_queue **out);
void host_queue_close(vmm_backend *b, vmm_queue *q);
int host_queue_upload(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size);
int host_queue_download(vmm_backend *b, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size);
int host_queue_wait(vmm_backend *b, vmm_queue *q, unsigned slot);
int host_register_read_only(vmm_backend *b, void *host, size_t size, uintptr_t *dev);
int host_unregister(vmm_backend *b, void *host);

#endif /* GPUHEAP_HOST_INTERNAL_H */
