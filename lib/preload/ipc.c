/*
 * ipc.c — which IPC memory-handle calls gpuheap answers, and which go to the
 * driver.
 *
 * Heap memory is mapped through the virtual memory API, which the driver's
 * legacy IPC (cudaIpcGetMemHandle, cuIpcGetMemHandle) refuses to export. So the
 * interposer answers those calls with libgpuheap's own IPC (lib/ipc: the
 * block's extents travel as file descriptors over a Unix socket), behind the
 * same 64-byte handle, and programs that share device buffers between processes
 * — PyTorch's torch.multiprocessing, a plain cudaIpc program — run unchanged
 * when both processes run under gpuheap-run. Three rules, one per call:
 *  - get: a pointer inside a heap exports the live block that contains it (CUDA
 *    wants an allocation's base; PyTorch passes its segment's, which is a heap
 *    block's start); any other pointer goes to the driver;
 *  - open: a handle gpuheap made (its magic and checksum say so) is opened by
 *    gpuheap; any other handle — one from a process without the interposer —
 *    goes to the driver, which opens it as before;
 *  - close: a pointer gpuheap imported is closed by gpuheap; any other goes to
 *    the driver.
 * Event handles are not touched: they are the driver's own business.
 *
 * A runtime hook that passes a call on makes the runtime call the driver wrapper
 * for the same call; pl_ipc_in_runtime tells the wrapper so, and it passes the
 * call straight on, so that each program call is decided and counted once.
 *
 * Errors: the library's code becomes the CUDA error a caller of these calls is
 * prepared for (a bad argument or a dead exporter: invalid value; no memory or
 * no address space: out of memory; memory the driver would not create
 * exportable: not supported; the transport or the driver failing: map failed),
 * and the reason goes through gpuheap's error path, printed at
 * GPUHEAP_VERBOSE=1.
 */
#include <stdio.h>
#include <string.h>

#include "ipc/share.h"
#include "preload.h"

_Thread_local bool pl_ipc_in_runtime;

/* ---- counters ------------------------------------------------------------------- */

static _Atomic uint64_t served[PL_IPC_OPS], failed[PL_IPC_OPS], passed[PL_IPC_OPS];

void pl_ipc_counts_get(pl_ipc_counts *out) {
    for (int op = 0; op < PL_IPC_OPS; op++) {
        out->served[op] = atomic_load_explicit(&served[op], memory_order_relaxed);
        out->failed[op] = atomic_load_explicit(&failed[op], memory_order_relaxed);
        out->passed[op] = atomic_load_explicit(&passed[op], memory_order_relaxed);
    }
}

/* A call the driver takes: counted once, by the level the program called. */
static int pass(pl_ipc_op op) {
    if (!pl_ipc_in_runtime) atomic_fetch_add_explicit(&passed[op], 1, memory_order_relaxed);
    return PL_IPC_PASS;
}

/* The CUDA code for a gpuheap result of op (CUresult and cudaError_t agree on each). */
static int cuda_code(pl_ipc_op op, int rc) {
    switch (rc) {
    case GPU_OK: return PL_CU_SUCCESS;
    case GPU_ERR_OUT_OF_MEMORY:
    case GPU_ERR_OUT_OF_VA: return PL_CU_ERROR_OUT_OF_MEMORY;
    case GPU_ERR_NO_DRIVER: /* an export: the driver refused exportable memory (documented for cudaIpcGetMemHandle) */
        return op == PL_IPC_GET ? PL_CU_ERROR_NOT_SUPPORTED : PL_CU_ERROR_NOT_INITIALIZED;
    case GPU_ERR_NO_DEVICE: return PL_CU_ERROR_NO_DEVICE;
    case GPU_ERR_BACKEND: return PL_CU_ERROR_MAP_FAILED;
    case GPU_ERR_CAPTURING: return PL_CU_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    case GPU_ERR_CORRUPT: return PL_CU_ERROR_UNKNOWN;
    default: return PL_CU_ERROR_INVALID_VALUE; /* bad argument, not a live block, the exporter gone, busy */
    }
}

/* A call gpuheap served: counted, and its result as the CUDA code. */
static int answer(pl_ipc_op op, int rc) {
    atomic_fetch_add_explicit(rc == GPU_OK ? &served[op] : &failed[op], 1, memory_order_relaxed);
    return cuda_code(op, rc);
}

/* ---- the three calls --------------------------------------------------------------- */

bool pl_ipc_range(uintptr_t p, uintptr_t *start, size_t *size) {
    return p && gh_ipc_range(p, start, size) == GPU_OK;
}

int pl_ipc_get(void *handle, uintptr_t p, const char *call) {
    if (pl_ipc_in_runtime) return PL_IPC_PASS;
    uintptr_t start;
    size_t size;
    if (pl_ipc_range(p, &start, &size))
        return answer(PL_IPC_GET, gh_error(GPU_ERR_INVALID,
                                           "%s(%#lx): memory imported from another process (a block at %#lx) cannot be "
                                           "exported again; export it from the process that allocated it",
                                           call, (unsigned long)p, (unsigned long)start));
    gpu_heap_t *h = pl_owner(p);
    if (!h) return pass(PL_IPC_GET);
    if (!handle) return answer(PL_IPC_GET, gh_error(GPU_ERR_INVALID, "%s(NULL, %#lx): no handle to fill", call, (unsigned long)p));
    int rc = heap_block_containing(h, p, &start, &size);
    if (rc != GPU_OK) {
        gh_note_context(rc, "%s(%#lx)", call, (unsigned long)p);
        return answer(PL_IPC_GET, gh_report(rc));
    }
    gpu_ipc_mem_handle_t out;
    rc = gpu_ipc_get_mem_handle(&out, (void *)start); /* reports its own errors */
    if (rc == GPU_OK) memcpy(handle, out.bytes, PL_IPC_HANDLE_SIZE);
    return answer(PL_IPC_GET, rc);
}

int pl_ipc_open(uintptr_t *out, const pl_ipc_handle *handle, unsigned flags, const char *call) {
    if (pl_ipc_in_runtime || !gh_ipc_handle_is_ours(handle->bytes)) return pass(PL_IPC_OPEN);
    if (!out) return answer(PL_IPC_OPEN, gh_error(GPU_ERR_INVALID, "%s: no pointer to fill", call));
    gpu_ipc_mem_handle_t h;
    memcpy(h.bytes, handle->bytes, PL_IPC_HANDLE_SIZE);
    void *p = NULL;
    int rc = gpu_ipc_open_mem_handle(&p, h, flags); /* reports its own errors */
    if (rc == GPU_OK) *out = (uintptr_t)p;
    return answer(PL_IPC_OPEN, rc);
}

int pl_ipc_close(uintptr_t p) {
    uintptr_t start;
    size_t size;
    if (pl_ipc_in_runtime || !pl_ipc_range(p, &start, &size)) return pass(PL_IPC_CLOSE);
    return answer(PL_IPC_CLOSE, gpu_ipc_close_mem_handle((void *)p)); /* reports its own errors */
}

void pl_ipc_note_driver_refusal(int code, const char *call) {
    if (code == PL_CU_SUCCESS || gh_verbosity() < 1) return;
    fprintf(stderr,
            "gpuheap-preload: %s: the driver refused the handle (CUDA error %d); it is not a gpuheap handle (no "
            "gpuheap magic and checksum), so it went to the driver: a handle from a process under gpuheap-run that "
            "was cut or changed on the way looks like this\n",
            call, code);
}
