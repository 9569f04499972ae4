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
    size_t reserve_bytes;        /* VA to reserve; 0 = as much as granted up to 64 TiB (host: 1 TiB), halving on refusal */
    size_t release_threshold;    /* idle bytes kept mapped before the heap gives memory back; SIZE_MAX = keep all */
    size_t host_budget;          /* host backend: physical bytes it may create; 0 = unlimited */
    size_t host_granularity;     /* host backend: mapping granularity; 0 = 2 MiB like the GPU */
    int verbose;                 /* 0 quiet, 1 errors to stderr, 2 also slow-path events */
} gpu_config_t;

/* Fills *cfg with the defaults, then applies the GPUHEAP_* environment variables
 * (README.md lists them). Returns GPU_ERR_INVALID for a malformed variable,
 * leaving that field at its default. */
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

/* gpu_malloc with GPU_ALLOC_* flags. GPU_ALLOC_OWNED rounds the usable size up to
 * the granularity (2 MiB on current GPUs). Unknown flags: GPU_ERR_INVALID. */
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
 * pointer), GPU_ERR_NOT_LIVE (double free or interior pointer); the heap is left
 * unchanged. The block is reused only once GPU work issued before this call has
 * finished. The plain form finds the heap from the pointer, whatever the current
 * device. */
int gpu_free(void *ptr);
int gpu_heap_free(gpu_heap_t *heap, void *ptr);

/* The usable size of a live block (>= the size asked for); 0 and an error for
 * anything else. The plain form finds the heap from the pointer. */
size_t gpu_malloc_usable_size(const void *ptr);
size_t gpu_heap_malloc_usable_size(gpu_heap_t *heap, const void *ptr);

/* ---- protection ---------------------------------------------------------- */

typedef enum gpu_prot_t {
    GPU_PROT_NONE = 0,       /* no access: any GPU access is an illegal-address error */
    GPU_PROT_READ = 1,       /* read-only: a write is refused (memset) or faults (kernel) */
    GPU_PROT_READ_WRITE = 3, /* the default */
} gpu_prot_t;

/* Sets the device's access to [ptr, ptr+size). The range must start at an
 * extent boundary inside a live block and, with size rounded up to the
 * granularity, be made of whole extents owned by that block — blocks from
 * gpu_malloc_flags(GPU_ALLOC_OWNED) and large blocks are. Otherwise
 * GPU_ERR_NOT_WHOLE_EXTENT and nothing changes. Faults are fences, not traps: on
 * a GPU a kernel that breaks the protection loses its CUDA context. Freeing the
 * block restores read-write access before the memory is reused. */
int gpu_protect(void *ptr, size_t size, int prot);
int gpu_heap_protect(gpu_heap_t *heap, void *ptr, size_t size, int prot);

/* ---- statistics and trimming --------------------------------------------- */

/* One list of fields, in bytes unless named a count. The X-macro keeps the
 * struct, the printer and the tests in step. */
#define GPU_STATS_FIELDS(X)                                                          \
    X(live_bytes, "usable bytes of live blocks")                                     \
    X(live_blocks, "live blocks")                                                    \
    X(peak_live_bytes, "highest live_bytes seen")                                    \
    X(mapped_bytes, "physical bytes mapped (live, idle and quarantined)")            \
    X(peak_mapped_bytes, "highest mapped_bytes seen")                                \
    X(idle_bytes, "mapped bytes in no block: reusable without driver calls")         \
    X(quarantine_bytes, "bytes freed but waiting for GPU work to finish")            \
    X(quarantine_blocks, "blocks freed but waiting for GPU work to finish")          \
    X(extents, "physical allocations mapped")                                        \
    X(reserved_bytes, "size of the VA reservation")                                  \
    X(granularity, "mapping granularity")                                            \
    X(fences, "device syncs the heap issued to release quarantined blocks")          \
    X(backend_reserve, "backend calls: reserve VA")                                  \
    X(backend_create, "backend calls: create physical memory")                       \
    X(backend_release, "backend calls: release physical memory")                     \
    X(backend_map, "backend calls: map")                                             \
    X(backend_unmap, "backend calls: unmap")                                         \
    X(backend_set_access, "backend calls: set access")                               \
    X(backend_errors, "backend calls that failed")

#define GPU_STATS_VERSION 1

typedef struct gpu_stats_t {
    uint32_t version; /* GPU_STATS_VERSION */
#define GPU_STATS_MEMBER(name, doc) uint64_t name;
    GPU_STATS_FIELDS(GPU_STATS_MEMBER)
#undef GPU_STATS_MEMBER
} gpu_stats_t;

/* A consistent snapshot of the heap's statistics. */
int gpu_heap_stats(gpu_heap_t *heap, gpu_stats_t *out);

/* Waits for GPU work on quarantined blocks (one device sync), then gives idle
 * physical memory back to the driver until at most keep_bytes stay idle. Only
 * whole idle extents are released. */
int gpu_heap_trim(gpu_heap_t *heap, size_t keep_bytes);

/* Checks every invariant of the heap: every byte of the reservation in exactly
 * one block, free blocks coalesced and indexed, every used byte backed by a
 * mapped extent, counts in step. Returns GPU_OK, or GPU_ERR_CORRUPT with the
 * first problem written to msg (may be NULL). Takes the heap's lock. */
int gpu_heap_check(gpu_heap_t *heap, char *msg, size_t msg_len);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* GPUHEAP_H */
