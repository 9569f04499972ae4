/*
 * backend.h — the contract between the heap and whatever provides virtual
 * addresses and physical memory.
 *
 * The heap never calls the CUDA driver directly. It asks a backend, through the
 * table below, for the handful of operations the CUDA virtual memory API offers:
 * reserve a VA range, create a physical allocation, map it whole at an address,
 * set access, unmap, release; plus the two device operations a heap needs around
 * them (a fence that waits for all issued GPU work, and memset/copy for calloc and
 * realloc). Every backend enforces the driver's rules (DESIGN.md §3), so a test on
 * the host backend fails where the GPU would:
 *   - sizes and addresses are multiples of caps.granularity;
 *   - a physical allocation is mapped whole, at offset 0;
 *   - unmap and set_access take ranges made of whole mappings only;
 *   - a new mapping is inaccessible until set_access grants access.
 *
 * Every function returns GPU_OK or a negative gpu_error_t, and may be called from
 * several threads at once (the heap calls it outside its lock). Facts about the
 * backend are data in vmm_caps, filled in at open time, not #ifdefs in the core.
 * The heap reaches these functions only through the door (door.h: vmm_call_*),
 * which asserts the preconditions, counts and traces every call, and is the only
 * place that tests whether an optional operation is offered.
 *
 * A failing operation writes its message with vmm_fail, into a buffer of the
 * calling thread (vmm_error): two threads failing at once never mix their words.
 */
#ifndef GPUHEAP_BACKEND_H
#define GPUHEAP_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "gpuheap.h"

typedef uint64_t vmm_handle; /* a physical allocation: CUmemGenericAllocationHandle or a host memfd slot */
typedef uint64_t vmm_event;  /* a point in a stream's order: a CUevent or a host event slot */
typedef struct vmm_queue vmm_queue;   /* a backend's copy queue between host and device (lib/file) */
typedef struct vmm_direct vmm_direct; /* a file opened for direct reads into device memory (cuFile) */

typedef struct vmm_caps {
    const char *name;         /* "cuda" or "host", for messages and the demo's label */
    size_t granularity;       /* map/create size and address quantum */
    size_t max_reserve;       /* largest reservation to try first */
    int device;               /* device ordinal the memory lives on */
    bool host_accessible;     /* true when the CPU can read the memory (host backend): tests compare bytes directly */
    char device_name[128];    /* "NVIDIA H200" or "host" */
    /* Sharing memory between processes (lib/ipc): true when every handle this
     * backend creates can be exported as a file descriptor (export_fd); else
     * ipc_note says why not, in words for the caller who asked for an export
     * (GPUHEAP_IPC=0, or the driver refused the export handle type at open). */
    bool exportable;
    /* True when export_fd is a driver call worth not repeating (CUDA's
     * cuMemExportToShareableHandle): the door then keeps one fd per exported
     * handle until the handle is released, and answers the next export of it
     * with a dup (door.c). False where an export is a dup anyway (host). */
    bool cache_exports;
    char ipc_note[160];
} vmm_caps;

typedef struct vmm_backend vmm_backend;

typedef struct vmm_ops {
    /* Reserves [*va, *va + size) with no memory behind it. size is a granularity
     * multiple; *va comes back a multiple of align (a power of two, at least the
     * granularity: a paged heap's page size, so that its page grid does not
     * depend on where the range lies). */
    int (*reserve)(vmm_backend *b, size_t size, size_t align, uintptr_t *va);
    /* Gives back a reservation made by reserve; nothing may be mapped in it. */
    int (*unreserve)(vmm_backend *b, uintptr_t va, size_t size);
    /* Creates size bytes of physical memory (a granularity multiple). Out of
     * memory is GPU_ERR_OUT_OF_MEMORY, nothing else. */
    int (*create)(vmm_backend *b, size_t size, vmm_handle *out);
    /* Releases a handle; it must not be mapped. */
    int (*release)(vmm_backend *b, vmm_handle h);
    /* Maps the whole handle at va (inside a reservation, unmapped, aligned). The
     * mapping starts inaccessible. */
    int (*map)(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h);
    /* Unmaps [va, va+size), which must be made of whole mappings. */
    int (*unmap)(vmm_backend *b, uintptr_t va, size_t size);
    /* Sets the owning device's access to a range of whole mappings. */
    int (*set_access)(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot);
    /* Sets another device's access to a range of whole mappings (peer access,
     * peer.c); the same rules as set_access. Optional: NULL where not offered. */
    int (*grant)(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot);
    /* Returns once all GPU work issued before the call, on any stream of the
     * device's context, has finished. */
    int (*fence)(vmm_backend *b);
    /* Fills device memory; done when the call returns. */
    int (*memset)(vmm_backend *b, uintptr_t va, int byte, size_t size);
    /* Copies device memory to device memory (ranges may overlap only if equal);
     * ordered after work already issued, done when the call returns. */
    int (*copy)(vmm_backend *b, uintptr_t dst, uintptr_t src, size_t size);
    /* Stream order, for stream-ordered allocation. A stream is a CUstream as an
     * integer; 0 is the legacy default stream. */
    /* Records an event on stream after the work issued there so far. */
    int (*event_record)(vmm_backend *b, uintptr_t stream, vmm_event *out);
    /* GPU_OK once the event's work has finished, GH_PENDING before; never blocks. */
    int (*event_query)(vmm_backend *b, vmm_event ev);
    /* Blocks until the event's work has finished. */
    int (*event_wait)(vmm_backend *b, vmm_event ev);
    /* Gives the event back. */
    void (*event_release)(vmm_backend *b, vmm_event ev);
    /* Records an event after all work issued so far on the device's context, on
     * any stream (cuCtxRecordEvent): a fence that does not block. Such a record
     * would break a capture in progress, so first it asks, in the same entry to
     * the driver: while stream (if not 0) or a blocking stream is being captured
     * it records nothing and returns GPU_ERR_CAPTURING. May be NULL (a driver
     * without context events). */
    int (*fence_record)(vmm_backend *b, uintptr_t stream, vmm_event *out);
    /* Records a context-wide event as fence_record does and, in the same entry,
     * makes the context wait for it (cuCtxWaitEvent): all work submitted to the
     * context later, on any of its streams (those created later too), runs after
     * all work issued so far on it. With out, the event is the caller's, to
     * query (when it completes, that work is done: the memory it used may be
     * unmapped) and release; without, the backend's own again at once. Refused
     * like fence_record while a capture is in progress, or a listed stream's
     * (vmm_cuda_order_track). May be NULL (a driver without context events or
     * context waits). */
    int (*fence_order)(vmm_backend *b, uintptr_t stream, vmm_event *out);
    /* 1 when stream is being captured into a graph (for stream 0: when any
     * blocking stream is, as the legacy stream reports it), 0 when not. */
    int (*capturing)(vmm_backend *b, uintptr_t stream);
    /* Host <-> device transfers and zero-copy, for file-backed memory (lib/file).
     * Staging memory is host memory the device copies from and to at full speed
     * (CUDA: pinned, cuMemHostAlloc; host: page-aligned malloc). */
    int (*staging_alloc)(vmm_backend *b, size_t size, void **out);
    void (*staging_free)(vmm_backend *b, void *p, size_t size);
    /* A queue of copies that run in order, asynchronously to the caller (CUDA: a
     * non-blocking stream the backend owns), with `slots` completion markers.
     * Several threads may use one queue at once, each with slots of its own.
     * Queues are independent of each other: copies on two queues may run at
     * the same time, and nothing issued or waited for on one waits for the
     * other (CUDA: one stream each), so a caller whose threads should not
     * serialize on one queue opens a queue per thread (lib/file). */
    int (*queue_open)(vmm_backend *b, unsigned slots, vmm_queue **out);
    void (*queue_close)(vmm_backend *b, vmm_queue *q);
    /* Enqueues a copy of size bytes from host src to device dst (which must be
     * mapped read-write) and marks slot after it; returns before the copy is
     * done. src must stay untouched until queue_wait(slot) returns. */
    int (*queue_upload)(vmm_backend *b, vmm_queue *q, unsigned slot, uintptr_t dst, const void *src, size_t size);
    /* The same from device src (readable) to host dst. */
    int (*queue_download)(vmm_backend *b, vmm_queue *q, unsigned slot, void *dst, uintptr_t src, size_t size);
    /* Returns once every copy marked with slot has finished (at once if none);
     * a failed copy's error comes back here. */
    int (*queue_wait)(vmm_backend *b, vmm_queue *q, unsigned slot);
    /* Registers [host, host+size) (page-aligned, e.g. a file's MAP_SHARED
     * mapping) read-only for the device and sets *dev to the device's address
     * of host (CUDA: cuMemHostRegister READ_ONLY; host backend: host itself).
     * Overlapping registrations are refused. */
    int (*register_read_only)(vmm_backend *b, void *host, size_t size, uintptr_t *dev);
    /* Undoes register_read_only; host is the address it was given. */
    int (*unregister)(vmm_backend *b, void *host);
    /* Optional (NULL where not offered): reads a file straight into device
     * memory (cuFile). direct_open takes an fd the caller keeps open until
     * direct_close. direct_read reads size bytes at file offset into device dst;
     * a short file is GPU_ERR_BACKEND. Unavailable: GPU_ERR_NO_DRIVER. */
    int (*direct_open)(vmm_backend *b, int fd, vmm_direct **out);
    int (*direct_read)(vmm_backend *b, vmm_direct *d, uint64_t offset, size_t size, uintptr_t dst);
    void (*direct_close)(vmm_backend *b, vmm_direct *d);
    /* Optional (NULL where not offered): physical memory shared between
     * processes as file descriptors (lib/ipc). export_fd sets *fd to a new
     * O_CLOEXEC descriptor of handle h, owned by the caller; h stays the
     * backend's, and the memory lives while either is open (CUDA:
     * cuMemExportToShareableHandle, POSIX_FILE_DESCRIPTOR, which needs h created
     * with that handle type: caps.exportable; host: a dup of the memfd).
     * import_fd makes a new handle of size bytes (a granularity multiple) from
     * an fd that export_fd made, in this process or another; the caller keeps fd
     * and closes it whatever happens (CUDA: cuMemImportFromShareableHandle; host:
     * a dup of fd, whose size must be size). The handle is mapped, given access
     * and released like one from create; it is not counted as created memory. */
    int (*export_fd)(vmm_backend *b, vmm_handle h, int *fd);
    int (*import_fd)(vmm_backend *b, int fd, size_t size, vmm_handle *out);
    /* Closes the backend; every handle is released and every range unreserved. */
    void (*close)(vmm_backend *b);
} vmm_ops;

struct vmm_backend {
    const vmm_ops *ops; /* filled at open: an optional op this backend (or its driver) does not offer is NULL */
    vmm_caps caps;
};

/* Opening a backend fills *out (allocated by the backend) or returns an error. */
int vmm_host_open(const gpu_config_t *cfg, vmm_backend **out);
int vmm_cuda_open(const gpu_config_t *cfg, vmm_backend **out);
/* The calling thread's current CUDA device (cuCtxGetDevice), 0 when no context is
 * current or no driver is loaded. */
int vmm_cuda_current_device(void);
/* Legacy free order's non-blocking streams (CUDA backend, process-wide): a
 * stream the program created that the legacy stream does not answer for in a
 * capture query is listed here (by the interposer, which sees it created), so
 * that fence_order asks it too and never breaks its capture. GPU_OK;
 * GPU_ERR_BUSY when the list is full (64; the caller then goes back to event
 * order). Untrack before the stream is destroyed. */
int vmm_cuda_order_track(uintptr_t stream);
void vmm_cuda_order_untrack(uintptr_t stream);
/* The dlsym the CUDA loader (cuda/loader.h) looks libcuda's cuGetProcAddress up
 * with; default dlsym. An interposer that replaces dlsym (lib/preload) hands the
 * real one over before anything loads the driver, so that the loader's table
 * holds the driver's own entry points, never the interposer's wrappers. */
void cuda_loader_use_dlsym(void *(*real_dlsym)(void *handle, const char *name));

/* Host-backend facts for tests: physical bytes created and not yet released,
 * live handles (imported ones included), live mappings and live reservations. */
typedef struct vmm_host_counts {
    size_t physical_bytes;   /* created by this backend and not yet released */
    size_t device_bytes;     /* the same, of every host backend of its device: what the budget caps */
    size_t handles;
    size_t mappings;
    size_t reservations;
    size_t imported_bytes;   /* handles made by import_fd and not yet released: their bytes and count */
    size_t imported_handles;
    size_t staging_allocs;   /* staging_alloc calls that succeeded (pinned memory on a GPU) */
    size_t staging_bytes;    /* staging memory allocated and not yet freed */
    size_t grants;           /* successful grant calls (peer access) */
    size_t orders;           /* successful fence_order calls (free order GPU_FREE_ORDER_LEGACY) */
    uint64_t granted_devices; /* the devices those calls named, one bit each (ordinals < 64) */
} vmm_host_counts;
void vmm_host_counts_get(vmm_backend *b, vmm_host_counts *out);
/* Host-backend knobs for tests of stream order and capture: an event recorded
 * from now on completes only after `queries` event_query calls (0: at once), and
 * a stream can be marked as being captured (stream 0: "a blocking stream is"). */
void vmm_host_set_event_delay(vmm_backend *b, unsigned queries);
/* A GPU that trails the CPU, for replays of recorded traces: the backend's clock
 * reads now_ns (the trace's time of the call being replayed), and an event
 * recorded from then on completes no sooner than lag_ns after its record on
 * that clock (event_wait still completes it at once). lag_ns 0: no lag. */
void vmm_host_set_clock(vmm_backend *b, uint64_t now_ns, uint64_t lag_ns);
void vmm_host_set_capturing(vmm_backend *b, uintptr_t stream, bool on);

/* message.c: backend failure messages, one buffer per thread. vmm_fail writes
 * the message of a failing operation (printf-style) and returns err; b may be
 * NULL (a failed open, which has no backend yet). vmm_error is the calling
 * thread's last message ("" when there was none). */
int vmm_fail(vmm_backend *b, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *vmm_error(void);

#endif /* GPUHEAP_BACKEND_H */
