/*
 * gpuheap.h — a malloc-style GPU heap over one huge virtual-address reservation.
 *
 * Each heap reserves one large range of GPU virtual addresses and carves it with a
 * segregated-fit allocator; physical memory is mapped behind the addresses only
 * where live blocks need it (the CUDA virtual memory API: cuMemCreate, cuMemMap,
 * cuMemSetAccess). Freed memory stays mapped ("idle") and is handed out again
 * without driver calls; blocks grow without copying; idle memory can be given back
 * from anywhere in the heap.
 *
 * Conventions for every function below:
 *  - Errors: functions returning a pointer return NULL on failure; functions
 *    returning int return GPU_OK (0) or a negative gpu_error code. Either way the
 *    calling thread's last error is set (gpu_last_error) and the error handler, if
 *    one is set, is called. A failed call changes nothing. Nothing aborts the
 *    process on bad input.
 *  - Heaps: every gpu_heap_* function takes the heap as its first argument; NULL
 *    there means the default heap of the calling thread's current CUDA device,
 *    created on first use. The plain gpu_* calls are the same as gpu_heap_*(NULL,…).
 *  - Thread safety: every function may be called from any thread at any time,
 *    except that gpu_heap_destroy must not race with other calls on that heap.
 *  - Alignment: every pointer returned is at least GPU_MIN_ALIGNMENT (256) bytes
 *    aligned, and every block's usable size is a multiple of 256.
 *  - Reuse safety: a block given to gpu_free is not handed out again, and its
 *    physical memory is not unmapped, while GPU work issued before the free may
 *    still use it (the same guarantee as cudaFree, without a device sync per free;
 *    see README.md, "Reuse safety").
 */
#ifndef GPUHEAP_H
#define GPUHEAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; what this header declares is its ABI. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define GPUHEAP_VERSION_MAJOR 0
#define GPUHEAP_VERSION_MINOR 1

#define GPU_MIN_ALIGNMENT 256

/* ---- errors ------------------------------------------------------------- */

typedef enum gpu_error_t {
    GPU_OK = 0,
    GPU_ERR_INVALID = -1,        /* a bad argument: size overflow, bad flags or alignment, NULL where a pointer is needed */
    GPU_ERR_NOT_OWNED = -2,      /* a pointer outside every heap reservation (foreign pointer) */
    GPU_ERR_NOT_LIVE = -3,       /* a pointer inside the heap that is not the start of a live block: double free or interior pointer */
    GPU_ERR_OUT_OF_MEMORY = -4,  /* the device (or host budget) has no physical memory left, even after idle memory was given back */
    GPU_ERR_OUT_OF_VA = -5,      /* the heap's address reservation has no free range large enough */
    GPU_ERR_NOT_WHOLE_EXTENT = -6, /* gpu_protect: the range is not made of whole extents owned by one block */
    GPU_ERR_NO_DRIVER = -7,      /* libcuda.so.1 could not be loaded, or lacks the virtual memory API */
    GPU_ERR_NO_DEVICE = -8,      /* the driver reports no usable device (or the device ordinal is out of range) */
    GPU_ERR_BACKEND = -9,        /* the driver (or host backend) failed in another way; the message names the call */
    GPU_ERR_BUSY = -10,          /* the block is being changed by another thread (e.g. realloc and free at once) */
    GPU_ERR_DESTROYED = -11,     /* the heap handle was destroyed */
    GPU_ERR_CORRUPT = -12,       /* gpu_heap_check found a broken invariant */
    GPU_ERR_CAPTURING = -13,     /* not allowed while a CUDA stream capture is in progress (see "Graph capture") */
    GPU_ERR_NOT_RESERVATION = -14, /* a sparse call on a pointer that is not a live gpu_reserve range */
    GPU_ERR_PAUSED = -15,        /* the memory of this tag is paused (gpu_pause): resume it first */
} gpu_error_t;

/* A static string describing an error code; never NULL. */
const char *gpu_strerror(int err);

/* The calling thread's most recent error (GPU_OK after a successful call). */
int gpu_last_error(void);

/* Called on every error with the code and a message naming the call and cause.
 * Runs on the thread that made the failing call, after the heap's lock is
 * released; it may call gpuheap functions. Pass NULL to remove it. Returns the
 * previous handler. The handler is process-wide. */
typedef void (*gpu_error_handler_t)(int err, const char *message, void *arg);
gpu_error_handler_t gpu_set_error_handler(gpu_error_handler_t handler, void *arg);

/* ---- heaps and configuration --------------------------------------------- */

typedef struct gpu_heap gpu_heap_t;

typedef enum gpu_backend_kind_t {
    GPU_BACKEND_AUTO = 0, /* CUDA when a driver and device are present, else an error */
    GPU_BACKEND_CUDA = 1, /* the CUDA driver, loaded at run time */
    GPU_BACKEND_HOST = 2, /* host memory with the driver's rules (tests, machines without a GPU) */
} gpu_backend_kind_t;

typedef struct gpu_config_t {
    gpu_backend_kind_t backend;
    int device;                  /* CUDA device ordinal (CUDA backend) */
    size_t reserve_bytes;        /* VA to reserve; 0 = as much as granted up to 64 TiB (host: 1 TiB), halving on refusal,
                                  * from half the last such heap's while that one lives */
    size_t release_threshold;    /* idle bytes kept mapped before the heap gives memory back; SIZE_MAX = keep all */
    size_t host_budget;          /* host backend: physical bytes the host heaps of its device may hold together
                                  * (a device's memory is shared); 0 = unlimited */
    size_t host_granularity;     /* host backend: mapping granularity; 0 = 2 MiB like the GPU */
    int verbose;                 /* 0 quiet, 1 errors to stderr, 2 also slow-path events */
    size_t thread_cache;         /* bytes of free blocks up to 4 KiB each thread may keep for itself, and up to sixteen times that of larger blocks: those up to a granule (a ring of one size at most eight times it, two times at first) and whole granules up to half this value and 16 MiB (each at most release_threshold), and one freed plain block of 64 MiB or more until the thread's next allocation; 0 = no thread caches */
    int ipc;                     /* 1 (gpu_config_init's default; GPUHEAP_IPC): physical memory is created so that blocks can be
                                  * shared with gpu_ipc_get_mem_handle; 0: plain memory, exports refused */
    size_t page_size;            /* 0 (the default): a block of a granule and more gets extents of its own. Else paged
                                  * placement (GPUHEAP_PAGE_SIZE): a power of two of at least the granularity; memory
                                  * is mapped in extents of this size that blocks of every size share, and an idle page
                                  * is moved to where the next block needs one — less memory held, a mapping per page
                                  * moved (README.md, "Paged placement") */
} gpu_config_t;

/* Fills *cfg with the defaults, then applies the GPUHEAP_* environment variables
 * (README.md lists them). Returns GPU_ERR_INVALID for a malformed variable,
 * leaving that field at its default — except a malformed GPUHEAP_BACKEND, which
 * leaves no valid backend (gpu_heap_create then refuses the configuration with
 * GPU_ERR_INVALID rather than open CUDA) and is printed to stderr once. */
int gpu_config_init(gpu_config_t *cfg);

/* Creates a heap. cfg NULL means gpu_config_init's result. Reserves the VA range
 * but maps no physical memory. Errors: GPU_ERR_INVALID, GPU_ERR_NO_DRIVER,
 * GPU_ERR_NO_DEVICE, GPU_ERR_OUT_OF_VA, GPU_ERR_BACKEND. */
int gpu_heap_create(const gpu_config_t *cfg, gpu_heap_t **out);

/* Waits for outstanding GPU work (one device sync), unmaps and releases all
 * physical memory and the reservation. Live blocks are freed with it. Calling it
 * on a default heap is refused (GPU_ERR_INVALID). */
int gpu_heap_destroy(gpu_heap_t *heap);

/* The default heap of the calling thread's current CUDA device (device 0 when no
 * context is current), created on first use from gpu_config_init. NULL on error. */
gpu_heap_t *gpu_heap_default(void);

/* ---- allocation ---------------------------------------------------------- */

enum {
    GPU_ALLOC_OWNED = 1u << 0, /* the block owns whole extents, so gpu_protect works on it */
    GPU_ALLOC_ZERO  = 1u << 1, /* device memory is zeroed before the call returns */
};

/* size bytes of device memory, 256-byte aligned. size 0 gives a unique minimal
 * block (free it as any other). NULL and GPU_ERR_OUT_OF_MEMORY / OUT_OF_VA /
 * INVALID (size too large) on failure. */
void *gpu_malloc(size_t size);
void *gpu_heap_malloc(gpu_heap_t *heap, size_t size);

/* n * size bytes, zeroed on the device before return. Overflow: GPU_ERR_INVALID. */
void *gpu_calloc(size_t n, size_t size);
void *gpu_heap_calloc(gpu_heap_t *heap, size_t n, size_t size);

/* align must be 0 or a power of two; values below 256 mean 256. Anything else
 * (3, 100, 255…) is GPU_ERR_INVALID. */
void *gpu_malloc_aligned(size_t size, size_t align);
void *gpu_heap_malloc_aligned(gpu_heap_t *heap, size_t size, size_t align);

/* gpu_malloc with GPU_ALLOC_* flags. GPU_ALLOC_OWNED starts the block on a granule
 * boundary and makes its usable size whole extents: at least the size rounded up
 * to the granularity (2 MiB on current GPUs), more when it reuses larger idle
 * extents (by at most an eighth of that or one granule). Unknown flags:
 * GPU_ERR_INVALID. */
void *gpu_malloc_flags(size_t size, unsigned flags);
void *gpu_heap_malloc_flags(gpu_heap_t *heap, size_t size, unsigned flags);

/* Resizes the block at ptr, keeping its contents up to the smaller size. Grows
 * in place when the addresses after the block are free; otherwise a block that
 * owns its extents is moved by remapping its physical memory (no device bytes
 * copied) and a small block is copied device-to-device. Shrinking gives back
 * physical memory where whole extents become unused. ptr NULL acts as
 * gpu_malloc; size 0 frees ptr and returns NULL. On failure returns NULL and the
 * block at ptr is unchanged. A block moved by realloc waits for one device sync
 * before its old addresses are unmapped. */
void *gpu_realloc(void *ptr, size_t size);
void *gpu_heap_realloc(gpu_heap_t *heap, void *ptr, size_t size);

/* Frees a block. NULL does nothing. Errors: GPU_ERR_NOT_OWNED (foreign
 * pointer), GPU_ERR_NOT_LIVE (double free or interior pointer), GPU_ERR_INVALID
 * (a gpu_reserve range or a gpu_map_file mapping: gpu_release / gpu_unmap_file
 * give those back), GPU_ERR_BUSY (another thread is changing the block); the heap
 * is left unchanged. The block is reused only once GPU work issued before this call has
 * finished. The plain form finds the heap from the pointer, whatever the current
 * device. */
int gpu_free(void *ptr);
int gpu_heap_free(gpu_heap_t *heap, void *ptr);

/* ---- free order: when a freed block may be handed out again -------------------
 *
 * GPU_FREE_ORDER_EVENT (the default): as gpu_free says, once the GPU has finished
 * the work issued before the free — an event recorded after it is seen complete,
 * or a device sync — so a block can wait while the GPU runs behind the CPU.
 *
 * GPU_FREE_ORDER_LEGACY: a freed block is handed out again at once. The next
 * allocation that wants quarantined memory records one event after all work
 * issued so far on the heap device's primary context and makes the context wait
 * for it (cuCtxRecordEvent, cuCtxWaitEvent), and every block freed before
 * becomes idle: all work submitted to the context from then on, on any stream
 * (non-blocking ones and streams created later too), runs after the old work;
 * nothing on the CPU waits. As with cudaFree's sync, this covers every stream of
 * the context. The caller promises that GPU work touching heap memory runs in
 * that context (not in a context of its own or a green context), and that no
 * stream of it is captured into a graph where the heap cannot see it: the heap
 * asks the legacy stream (which answers for blocking streams), the non-blocking
 * streams gpuheap-run lists, and counts gpu_capture_begin; a capture elsewhere
 * would be broken by the context-wide record. gpuheap-run sets it at start
 * (GPUHEAP_FREE_ORDER=event keeps events) and goes back to events the moment the
 * program creates a context of its own, a green context's stream or a 65th
 * non-blocking stream.
 *
 * Process-wide. Going back to GPU_FREE_ORDER_EVENT fences every heap that
 * released blocks in legacy order since its last fence, so that work issued from
 * then on may run in any context; while a stream capture is in progress that fence
 * cannot run: GPU_ERR_CAPTURING (the order is events from then on, and the fence
 * is owed until the next one). A backend without context-wide events and waits
 * (a driver before CUDA 12.5) stays with events. Errors: GPU_ERR_INVALID (no such order). */
typedef enum gpu_free_order_t {
    GPU_FREE_ORDER_EVENT = 0,
    GPU_FREE_ORDER_LEGACY = 1,
} gpu_free_order_t;
int gpu_set_free_order(gpu_free_order_t order);
gpu_free_order_t gpu_free_order(void);

/* The usable size of a live block (>= the size asked for); 0 and an error for
 * anything else. The plain form finds the heap from the pointer. */
size_t gpu_malloc_usable_size(const void *ptr);
size_t gpu_heap_malloc_usable_size(gpu_heap_t *heap, const void *ptr);

/* ---- stream-ordered allocation ---------------------------------------------
 *
 * stream is a CUstream (or cudaStream_t) of the heap's device; 0 is the legacy
 * default stream. A block freed with gpu_free_async(ptr, S) is reused at once by
 * gpu_malloc_async(…, S) — stream order makes that safe — and by other streams and
 * by gpu_malloc only once an event recorded on S after the free has completed
 * (found by a query, never a blocking sync, unless memory runs out). These calls
 * mix with gpu_malloc/gpu_free on the same heap; a block may be freed on another
 * stream than it was allocated on, or with gpu_free (and a gpu_malloc block with
 * gpu_free_async): the rule that applies is the one of the free. The caller
 * orders the free after the work that uses the block, as with cudaFreeAsync. A
 * stream may be destroyed right after a free on it; synchronize it first if a new
 * stream could get the same handle while the old one's work still runs (the pool
 * of freed blocks is keyed by the handle).
 */
void *gpu_malloc_async(size_t size, void *stream);
void *gpu_heap_malloc_async(gpu_heap_t *heap, size_t size, void *stream);
/* Errors as gpu_free. */
int gpu_free_async(void *ptr, void *stream);
int gpu_heap_free_async(gpu_heap_t *heap, void *ptr, void *stream);

/* ---- graph capture -----------------------------------------------------------
 *
 * The heap's own driver calls run in the relaxed capture mode
 * (cuThreadExchangeStreamCaptureMode), so VMM calls made while any thread captures
 * a stream do not invalidate the capture. A device sync would, so while a capture
 * is in progress the heap never fences or unmaps: it maps new memory instead of
 * waiting for quarantined blocks, and trimming waits (gpu_heap_trim returns
 * GPU_ERR_CAPTURING). The heap sees a capture in progress when a blocking stream
 * is being captured (the legacy stream reports it), when the stream given to a
 * gpu_*_async call is being captured, and between gpu_capture_begin and
 * gpu_capture_end — call those around a capture of a non-blocking stream that
 * other threads' gpu_malloc/gpu_free calls may run beside.
 *
 * During a capture of stream S:
 *  - gpu_malloc_async(size, S) and gpu_malloc allocate at once (no graph node):
 *    the address is fixed into the graph, and the block stays allocated, for every
 *    replay, until the caller frees it after the graph's last launch;
 *  - gpu_free_async(ptr, S) is refused with GPU_ERR_CAPTURING (a free inside a
 *    graph would let a later allocation reuse memory the graph's replays write);
 *  - gpu_free(ptr) of a block the graph does not use is fine: it is quarantined
 *    and reused only after a fence, which waits for the capture to end.
 */
void gpu_capture_begin(void);
void gpu_capture_end(void);

/* ---- sparse address spaces -----------------------------------------------------
 *
 * gpu_reserve gives a range of device addresses with no memory behind it;
 * gpu_commit and gpu_decommit back and unback sub-ranges whose start and length
 * are multiples of the granularity (gpu_heap_stats: granularity, 2 MiB on current
 * GPUs); gpu_release gives the whole range back. Data in committed ranges survives
 * commits and decommits elsewhere. Committing a partly committed range commits the
 * rest; decommitting an uncommitted range does nothing. Each commit maps one
 * extent per uncommitted gap, so gpu_protect works on ranges made of whole
 * commits; a decommit that cuts inside an earlier commit keeps the rest of it by
 * copying that part into new extents. A decommit, like a free, waits (one device
 * sync) for GPU work that may still use the range; so does gpu_release.
 * Errors: GPU_ERR_NOT_RESERVATION (ptr is not the start of a live reservation —
 * commit/decommit take any pointer inside one), GPU_ERR_INVALID (unaligned, or
 * outside the reservation), GPU_ERR_OUT_OF_MEMORY (what was committed before
 * stays committed and intact). The plain forms find the heap from the pointer.
 */
void *gpu_reserve(size_t size);
void *gpu_heap_reserve(gpu_heap_t *heap, size_t size);
int gpu_commit(void *ptr, size_t len);
int gpu_heap_commit(gpu_heap_t *heap, void *ptr, size_t len);
int gpu_decommit(void *ptr, size_t len);
int gpu_heap_decommit(gpu_heap_t *heap, void *ptr, size_t len);
int gpu_release(void *ptr);
int gpu_heap_release(gpu_heap_t *heap, void *ptr);

/* ---- protection ---------------------------------------------------------- */

typedef enum gpu_prot_t {
    GPU_PROT_NONE = 0,       /* no access: any GPU access is an illegal-address error */
    GPU_PROT_READ = 1,       /* read-only: a write is refused (memset) or faults (kernel) */
    GPU_PROT_READ_WRITE = 3, /* the default */
} gpu_prot_t;

/* Sets the device's access to [ptr, ptr+size). The range must start at an
 * extent boundary inside a live block and, with size rounded up to the
 * granularity, be made of whole extents owned by that block. Blocks from
 * gpu_malloc_flags(GPU_ALLOC_OWNED) always are, over their whole usable size. A
 * plain block owns only the extents that lie wholly inside it: one smaller than
 * the granularity owns none; a larger one owns whole extents when the heap mapped
 * new memory for it — except one of more than a granule and less than one and a
 * half, which leaves the rest of its new extent to other blocks and owns none —
 * but one cut from idle memory may start or end inside an extent shared with
 * other blocks (then only the whole extents inside it can be protected, or
 * none). Protection is guaranteed only with GPU_ALLOC_OWNED. Otherwise
 * GPU_ERR_NOT_WHOLE_EXTENT and nothing changes. Faults are fences, not traps: on
 * a GPU a kernel that breaks the protection loses its CUDA context. Freeing the
 * block restores read-write access before the memory is reused. */
int gpu_protect(void *ptr, size_t size, int prot);
int gpu_heap_protect(gpu_heap_t *heap, void *ptr, size_t size, int prot);

/* ---- file-backed memory ----------------------------------------------------
 *
 * CUDA cannot map a regular file as device memory, so gpu_map_file brings a
 * file's bytes [offset, offset+length) to the device in one of two ways:
 *  - loaded (the default): the bytes are copied into a block of the heap that
 *    owns its extents (pointer and size aligned to the granularity, 2 MiB), bytes
 *    past length zeroed. Without GPU_MAP_WRITE the block is then protected
 *    GPU_PROT_READ: a stray write is refused (memset) or faults (kernel). Reading
 *    is pipelined: several threads read() into pinned staging buffers while
 *    earlier buffers are copied to the device asynchronously. The staging buffers
 *    (GPUHEAP_FILE_THREADS x 2 x GPUHEAP_FILE_CHUNK bytes: 8 x 2 x 8 MiB by
 *    default) are pinned on the first load and kept for the heap's next loads
 *    until gpu_heap_trim or gpu_heap_destroy. Any offset works.
 *  - zero-copy (GPU_MAP_ZEROCOPY, read-only): the range is mmap'ed from the page
 *    cache and registered read-only with the driver; kernels read it over the bus
 *    (PCIe: ~50 GB/s against the device memory's TB/s) on every access. Good for
 *    data read once or sparsely, poor for data read often. offset must be a
 *    multiple of the host page size; the pointer has the page's alignment. It
 *    uses no device memory. If the file is truncated while mapped, the device
 *    keeps reading the pages it pinned at map time, but the host must not touch
 *    the range (SIGBUS); gpu_sync_file reports the truncation.
 * length 0 means "to the end of the file". Loaded mappings hold no file
 * descriptor unless writable; writable and zero-copy mappings hold one each.
 */
enum {
    GPU_MAP_WRITE = 1u << 0,    /* writable; gpu_sync_file and gpu_unmap_file write it back */
    GPU_MAP_ZEROCOPY = 1u << 1, /* no copy: the page cache, registered read-only (not with WRITE) */
    GPU_MAP_CUFILE = 1u << 2,   /* load with cuFile (libcufile, GPUDirect Storage) instead of read();
                                 * GPUHEAP_CUFILE=1 asks for it on every load, falling back to read() */
};
enum {
    GPU_UNMAP_DISCARD = 1u << 0, /* gpu_unmap_file: drop a writable mapping without writing it back */
};

/* Maps [offset, offset+length) of the regular file at path and sets *out to its
 * device address. Errors: GPU_ERR_INVALID for NULL path or out, unknown or
 * conflicting flags, a path that cannot be opened (missing, a directory, not a
 * regular file, no permission — the message names the cause), an empty range or
 * one that runs past the end of the file, a zero-copy offset not page-aligned;
 * GPU_ERR_OUT_OF_MEMORY (device or pinned host memory); GPU_ERR_NO_DRIVER for
 * GPU_MAP_CUFILE where libcufile cannot be used; GPU_ERR_BACKEND when reading
 * fails midway (an I/O error, or the file shrank while it was read). A failed
 * call leaves the heap and the file unchanged. Thread-safe; loads may run at once. */
int gpu_map_file(const char *path, uint64_t offset, size_t length, unsigned flags, void **out);
int gpu_heap_map_file(gpu_heap_t *heap, const char *path, uint64_t offset, size_t length, unsigned flags,
                      void **out);

/* For writable and zero-copy mappings, checks that the file still holds the
 * mapped range; for a GPU_MAP_WRITE mapping then waits for GPU work issued
 * before the call (one device sync), writes the device bytes back to the file
 * and fdatasyncs it. A read-only loaded mapping is a copy: nothing to do.
 * Errors: GPU_ERR_INVALID (ptr is not a file mapping's address, or it belongs to
 * another heap), GPU_ERR_BUSY (another thread is syncing or unmapping it),
 * GPU_ERR_BACKEND (the file shrank — nothing is written — or a write failed,
 * which may leave part of the file written). The plain form finds the mapping
 * from the pointer, whatever heap it is in. Thread-safe. */
int gpu_sync_file(void *ptr);
int gpu_heap_sync_file(gpu_heap_t *heap, void *ptr);

/* Ends a mapping. A GPU_MAP_WRITE mapping is written back first (as
 * gpu_sync_file, without the fdatasync) unless flags has GPU_UNMAP_DISCARD; if
 * that fails the mapping stays as it was and the error is returned. A loaded
 * block is freed like gpu_free (reused only after earlier GPU work); a zero-copy
 * range is unregistered after one device sync. gpu_free and gpu_realloc refuse a
 * loaded mapping (GPU_ERR_INVALID). Errors as gpu_sync_file. */
int gpu_unmap_file(void *ptr, unsigned flags);
int gpu_heap_unmap_file(gpu_heap_t *heap, void *ptr, unsigned flags);

/* ---- sharing memory between processes ----------------------------------------
 *
 * Other processes of the same user on the same machine can map a live block, as
 * cudaIpcGetMemHandle / cudaIpcOpenMemHandle do for cudaMalloc memory (the
 * driver refuses those for memory mapped through its virtual memory API). The
 * 64-byte handle may travel by any means; it names the exporting process, a
 * random token per export and the block's size. The importer asks the
 * exporter's gpuheap thread (a Unix socket that serves only its own uid) for the
 * block's physical memory as file descriptors and maps it at addresses of its
 * own. A handle is valid while its block is live and its exporter runs: a block
 * freed, moved or resized since is refused, never served. A block freed while
 * others have it open stays intact for them; its memory goes when the last
 * process lets go. Smaller blocks share extents with neighbours, which importers
 * map too: GPU_ALLOC_OWNED shares a block alone. gpu_protect stays in its
 * process. gpu_free, gpu_realloc and gpu_protect refuse an imported pointer
 * (GPU_ERR_NOT_OWNED): close it with gpu_ipc_close_mem_handle. README.md, "IPC".
 */
typedef struct gpu_ipc_mem_handle_t { unsigned char bytes[64]; } gpu_ipc_mem_handle_t; /* the size of cudaIpcMemHandle_t */

/* Fills *handle for the live block starting at ptr, of any heap; the same
 * block gives the same handle. Errors: GPU_ERR_INVALID (NULL argument, a
 * gpu_reserve range, a heap opened with ipc = 0), GPU_ERR_NOT_OWNED (in no
 * heap: foreign or imported), GPU_ERR_NOT_LIVE (freed, or an interior pointer),
 * GPU_ERR_NO_DRIVER (the driver refused exportable memory), GPU_ERR_BUSY,
 * GPU_ERR_PAUSED (the block's tag is paused: gpu_pause; an open of a handle
 * whose block was paused since is refused the same way), GPU_ERR_BACKEND (the
 * server could not start). Thread-safe. */
int gpu_ipc_get_mem_handle(gpu_ipc_mem_handle_t *handle, void *ptr);

/* Maps the block a handle names on the calling thread's current device and sets
 * *ptr to its start here. Opened again while open: the same pointer, one more
 * open; a handle of this process maps its block at a second address. flags: 0
 * or 1 (cudaIpcMemLazyEnablePeerAccess, ignored). Blocks until the exporter
 * answers. Errors: GPU_ERR_INVALID (NULL ptr, unknown flags; not a gpuheap
 * handle; another user's; the exporter exited or refused — a block freed since,
 * an unknown token: the message says which), GPU_ERR_OUT_OF_VA,
 * GPU_ERR_OUT_OF_MEMORY, GPU_ERR_BACKEND, the default heap's errors. A failed
 * call maps nothing and keeps no descriptor. Thread-safe. */
int gpu_ipc_open_mem_handle(void **ptr, gpu_ipc_mem_handle_t handle, unsigned flags);

/* Undoes one gpu_ipc_open_mem_handle of ptr (the pointer it gave). The last
 * close waits for GPU work issued before it (one device sync, as a free does)
 * and unmaps. Errors: GPU_ERR_INVALID (not an open import's pointer: never
 * opened, closed already, inside one), GPU_ERR_CAPTURING (the sync would break
 * a capture: nothing changes), GPU_ERR_BACKEND. Thread-safe. */
int gpu_ipc_close_mem_handle(void *ptr);

/* ---- statistics and trimming --------------------------------------------- */

/* One list of fields, in bytes unless named a count. The X-macro keeps the
 * struct, the printer and the tests in step. */
#define GPU_STATS_FIELDS(X)                                                          \
    X(live_bytes, "usable bytes of live blocks")                                     \
    X(live_blocks, "live blocks")                                                    \
    X(peak_live_bytes, "highest live bytes seen, thread caches' blocks included")   \
    X(mapped_bytes, "physical bytes mapped (live, idle, quarantined, cached)")      \
    X(peak_mapped_bytes, "highest mapped_bytes seen")                                \
    X(idle_bytes, "mapped bytes in no block: reusable without driver calls")         \
    X(quarantine_bytes, "bytes freed but waiting for GPU work to finish")            \
    X(quarantine_blocks, "blocks freed but waiting for GPU work to finish")          \
    X(extents, "physical allocations mapped")                                        \
    X(stream_free_bytes, "bytes freed on streams, reusable on their stream at once")  \
    X(stream_free_blocks, "blocks freed on streams")                                 \
    X(stream_events, "events the heap recorded to release stream-freed blocks")      \
    X(sparse_reserved_bytes, "VA held by gpu_reserve ranges")                         \
    X(sparse_committed_bytes, "bytes committed inside gpu_reserve ranges")            \
    X(file_loaded_bytes, "file bytes loaded into live blocks by gpu_map_file")         \
    X(file_zerocopy_bytes, "file bytes mapped zero-copy (page cache, not heap memory)") \
    X(file_mappings, "live gpu_map_file mappings")                                    \
    X(reserved_bytes, "size of the VA reservation")                                  \
    X(granularity, "mapping granularity")                                            \
    X(fences, "device syncs the heap issued to release quarantined blocks")          \
    X(backend_reserve, "backend calls: reserve VA")                                  \
    X(backend_create, "backend calls: create physical memory")                       \
    X(backend_release, "backend calls: release physical memory")                     \
    X(backend_map, "backend calls: map")                                             \
    X(backend_unmap, "backend calls: unmap")                                         \
    X(backend_set_access, "backend calls: set access")                               \
    X(backend_errors, "backend calls that failed")                                   \
    X(protected_extents, "extents whose access is not read-write (gpu_protect)")     \
    X(backend_fence, "backend calls: fence (a device sync)")                         \
    X(backend_memset, "backend calls: memset (calloc, GPU_ALLOC_ZERO)")              \
    X(backend_copy, "backend calls: device-to-device copy")                          \
    X(copy_bytes, "device bytes copied by the backend (realloc of shared blocks)")   \
    X(cached_bytes, "freed bytes thread caches hold for reuse (not in live_bytes)") \
    X(cached_blocks, "free blocks held by thread caches")                             \
    X(seal_events, "context-wide events the heap recorded to release its quarantine") \
    X(backend_event_record, "backend calls: record an event (stream frees and seals)") \
    X(extents_lost, "physical allocations given up: the backend refused their release, then mapping them back (leaked)") \
    X(ipc_exports, "blocks exported with gpu_ipc_get_mem_handle")                     \
    X(ipc_imports_open, "handles open in this process (gpu_ipc_open_mem_handle)")    \
    X(paused_bytes, "physical bytes of live blocks given back by gpu_pause")          \
    X(backup_bytes, "pinned host bytes holding paused contents")                     \
    X(backup_pinned_bytes, "pinned host bytes the heap holds for backups: paused contents, or the buffer kept for the next pause (gpu_heap_trim frees it)") \
    X(order_releases, "quarantine releases in legacy free order: the context made to wait, not the CPU (gpu_set_free_order)")

/* 5: extents_lost. 6: ipc_exports, ipc_imports_open. 7: paused_bytes, backup_bytes (memory control).
 * 8: backup_pinned_bytes. 9: order_releases. */
#define GPU_STATS_VERSION 9

typedef struct gpu_stats_t {
    uint32_t version; /* GPU_STATS_VERSION */
#define GPU_STATS_MEMBER(name, doc) uint64_t name;
    GPU_STATS_FIELDS(GPU_STATS_MEMBER)
#undef GPU_STATS_MEMBER
} gpu_stats_t;

/* A consistent snapshot of the heap's statistics. */
int gpu_heap_stats(gpu_heap_t *heap, gpu_stats_t *out);

/* The same snapshot as one JSON object: {"version": N, "backend": "cuda",
 * "device": 0, "<field>": <value>, … every field of GPU_STATS_FIELDS}, written to
 * buf (NUL-terminated, cut to len bytes; buf may be NULL when len is 0). Returns
 * the length of the whole object without the NUL, as snprintf does (so a return
 * >= len means it was cut), or a negative gpu_error_t. GPUHEAP_STATS=1 prints a
 * summary of every heap at exit (and of an explicit heap when it is destroyed);
 * GPUHEAP_STATS_JSON=FILE writes {"heaps": [ … ]} to FILE at exit. */
int gpu_heap_stats_json(gpu_heap_t *heap, char *buf, size_t len);

/* Empties the calling thread's cache of small freed blocks into the heap (other
 * threads empty theirs at their next allocation), waits for GPU work on
 * quarantined blocks (one device sync), then gives idle physical memory back to
 * the driver until at most keep_bytes stay idle, and frees the pinned buffer a
 * resume kept for the next pause (gpu_tag_trim reaches a tag's heaps). Only
 * whole idle extents are released. An extent whose release the driver refuses is mapped back and stays
 * idle (the driver's error is returned); one it will not map back either is
 * given up and counted in extents_lost. */
int gpu_heap_trim(gpu_heap_t *heap, size_t keep_bytes);

/* Checks every invariant of the heap: every byte of the reservation in exactly
 * one block, free blocks coalesced and indexed, every used byte backed by a
 * mapped extent, counts in step. Returns GPU_OK, or GPU_ERR_CORRUPT with the
 * first problem written to msg (may be NULL). Takes the heap's lock. */
int gpu_heap_check(gpu_heap_t *heap, char *msg, size_t msg_len);

/* ---- memory control ---------------------------------------------------------
 *
 * Two programs sharing a GPU (a trainer and an inference engine in RL
 * post-training, several models served by one process) must hand each other the
 * device's memory for a while and take it back later with every pointer — and
 * every CUDA graph captured over those pointers — still valid. gpuheap does this
 * per tag: memory allocated with a tag lives in a heap of its own (one per tag
 * and device, created on first use from gpu_config_init's configuration with a
 * smaller reservation, GPUHEAP_TAG_RESERVE, default 1 TiB, halving on refusal),
 * so no extent holds bytes of two tags or of a tag and untagged memory.
 * gpu_pause gives a tag's physical memory back to the driver while its
 * addresses stay reserved; gpu_resume maps new memory at the same addresses.
 *
 * Tag names are non-empty strings of at most GPU_TAG_MAX bytes, compared byte
 * for byte; anything else is GPU_ERR_INVALID. A process has at most 64 tags.
 * gpu_free, gpu_realloc, gpu_malloc_usable_size and the other calls on a pointer
 * find a tagged block's heap from the pointer, as for any block. gpu_reserve,
 * gpu_map_file and the gpu_heap_* calls with heap == NULL other than the
 * allocations (stats, trim, check) keep using the default heap.
 * Thread safety: every call below may be made from any thread; gpu_pause and
 * gpu_resume of one process run one at a time.
 */
#define GPU_TAG_MAX 63 /* longest tag name, bytes */

/* Opens a region on the calling thread: until the matching gpu_region_end,
 * every allocation this thread makes with heap == NULL (gpu_malloc, gpu_calloc,
 * gpu_malloc_aligned, gpu_malloc_flags, gpu_realloc(NULL, n), gpu_malloc_async,
 * and under the interposer cudaMalloc, cuMemAlloc and the framework entry
 * points) carries the tag of the innermost open region. Regions nest (up to 64
 * deep) and belong to their thread: other threads are not affected. Errors:
 * GPU_ERR_INVALID (bad tag name, too deep, too many tags). */
int gpu_region_begin(const char *tag);
/* Closes the innermost region of the calling thread. GPU_ERR_INVALID when no
 * region is open. */
int gpu_region_end(void);

/* gpu_malloc(size) with the given tag, on the current device, whatever region
 * is open. NULL with GPU_ERR_INVALID for a bad tag, GPU_ERR_PAUSED when the tag
 * is paused, or gpu_malloc's errors. */
void *gpu_malloc_tagged(size_t size, const char *tag);

enum {
    GPU_PAUSE_BACKUP = 1u << 0, /* gpu_pause: keep the contents of live blocks in pinned host memory */
};

/* Gives the physical memory of a tag (NULL: of every tag) back to the driver,
 * on every device, keeping every address. First waits for GPU work issued
 * before the call (one device sync), so that blocks freed earlier become idle
 * and live blocks are no longer in use; gives idle memory back; then, with
 * GPU_PAUSE_BACKUP, copies the live bytes to pinned host memory (queued copies,
 * copy-engine speed); then unmaps and releases every extent. Without the flag
 * the contents of live blocks are lost (a KV cache that will be recomputed).
 * While paused: gpu_malloc* (and gpu_malloc_tagged, regions, the interposer)
 * into the tag, gpu_realloc and gpu_protect of its blocks return
 * GPU_ERR_PAUSED and change nothing; gpu_free and gpu_free_async of its blocks
 * work (the memory becomes free, its bytes are not restored); touching its
 * memory on the GPU is an illegal address. Calls made while another thread is
 * pausing or resuming the tag get GPU_ERR_BUSY (frees wait instead). Pausing a
 * paused tag does nothing and returns GPU_OK (its backup, or lack of one, stays
 * as it is); pausing a tag never used marks it paused (its first allocations are
 * refused until gpu_resume). An extent whose release the driver refuses stays
 * mapped. Errors: GPU_ERR_INVALID (bad tag, unknown flags), GPU_ERR_CAPTURING (a
 * capture is in progress: the device sync would break it), GPU_ERR_OUT_OF_MEMORY
 * (no pinned host memory for the backup), GPU_ERR_BACKEND; then the tag's heap
 * on that device is unchanged. With several devices or tags (NULL), each heap
 * is paused in turn; an error of any of them is returned (the last one). */
int gpu_pause(const char *tag, unsigned flags);
/* Maps new physical memory at the addresses of a paused tag (NULL: every paused
 * tag) with the access it had (owner and peers, gpu_protect's protection),
 * copies the backed-up bytes back (queued copies, then one wait); the backup's
 * pinned buffer is kept for the tag's next pause (allocating pinned memory costs
 * far more than the copy) until gpu_tag_trim, or a larger backup replaces it.
 * Pointers, and graphs captured over them, stay valid; without a backup
 * the contents are undefined. Blocks freed while paused stay free, and memory
 * that no live block uses any more is not mapped again. Resuming a running tag
 * does nothing and returns GPU_OK. Errors: GPU_ERR_INVALID (bad tag),
 * GPU_ERR_OUT_OF_MEMORY (the device, or the limit below, has no room, even
 * after the other default and tag heaps gave their idle memory back) or
 * GPU_ERR_BACKEND: then everything this call mapped is given back, the tag stays
 * paused with its backup, and a later gpu_resume can succeed. */
int gpu_resume(const char *tag);
/* The statistics of a tag's heap on the current device (gpu_heap_stats'
 * snapshot: paused_bytes, backup_bytes...); all zero (version set) for a tag
 * named by a region or an allocation that has no heap on this device yet.
 * GPU_ERR_INVALID for a bad tag or out, or a tag never named. */
int gpu_tag_stats(const char *tag, gpu_stats_t *out);
/* gpu_heap_trim(heap, keep_bytes) on the heaps of a tag (NULL: of every tag), on
 * every device: idle memory back to the driver, and the pinned buffer that a
 * resume kept for the next pause's backup freed (a paused tag keeps its
 * backup). A tag never used has nothing to trim. Errors: GPU_ERR_INVALID (bad
 * tag), gpu_heap_trim's (the last one). */
int gpu_tag_trim(const char *tag, size_t keep_bytes);

/* Caps the physical memory all heaps of the process may hold on each device
 * (tagged and untagged together): bytes 0 or SIZE_MAX mean no cap, the default
 * unless GPUHEAP_LIMIT=SIZE (read when the first heap opens) sets one. Memory
 * held above a lowered cap stays; new memory is refused until the heaps are
 * below it. A heap that would pass the cap first gives its idle memory back,
 * then has the device's other default and tag heaps give theirs (out of device
 * memory does the same), then fails with GPU_ERR_OUT_OF_MEMORY (the message
 * names the cap). Under the interposer, cudaMemGetInfo and cuMemGetInfo report
 * min(total, cap) as total and the room left under the cap (never more than the
 * driver's free) as free.
 * Returns GPU_OK. Thread-safe. */
int gpu_set_limit(size_t bytes);
/* The cap in force: SIZE_MAX when there is none. */
size_t gpu_limit(void);

/* ---- tracing ------------------------------------------------------------- */

/* Starts recording every call on every heap of the process — malloc (all forms),
 * free, realloc, protect, trim, pause, resume, and the reserve, map, unmap, fence, copy and
 * memset backend calls behind them — to the file at path (replaced), one line
 * per event in the format README.md ("Trace format") describes. A call pays two
 * reads of the time-stamp counter and a store into its thread's buffer; a writer
 * thread formats full buffers. GPUHEAP_TRACE=FILE starts a trace when the first
 * heap is created and stops it at exit; there, %p in FILE becomes the process id. Errors: GPU_ERR_INVALID (path NULL or
 * empty, a trace already running, the file cannot be written). */
int gpu_trace_start(const char *path);

/* Stops recording, writes what every thread has buffered and closes the file.
 * GPU_OK, doing nothing, when no trace runs. A call running on another thread
 * meanwhile may be left out. Errors: GPU_ERR_INVALID (writing failed). */
int gpu_trace_stop(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* GPUHEAP_H */
