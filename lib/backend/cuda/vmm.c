/*
 * vmm.c — the CUDA backend's virtual memory operations: reserve and give back
 * address space, create and release physical memory, map and unmap it, set who
 * may access it (the owning device, or a peer), and hand memory to another
 * process as a file descriptor and take it from one.
 *
 * Each operation is one driver call with the primary context current (cuda.c):
 * reserve is cuMemAddressReserve, create is cuMemCreate (pinned device memory,
 * exportable as a POSIX file descriptor unless the heap was opened with ipc = 0
 * or the driver refused that handle type: cuda_ipc_probe), map is cuMemMap of
 * the whole handle at offset 0, set_access and grant are cuMemSetAccess for one
 * device, export and import are cuMemExportToShareableHandle and
 * cuMemImportFromShareableHandle. Legacy cuIpcGetMemHandle refuses memory made
 * this way (DESIGN.md §3); an fd passed over a Unix socket works. The driver
 * enforces the rules of DESIGN.md §3 itself; this file only turns its results
 * into gpu_error_t codes and messages that name the call and the driver's error
 * name.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend/cuda/cuda_internal.h"

/* Reserves size bytes of VA at a multiple of align. Refusals are OUT_OF_VA: the
 * heap halves the size and asks again. */
int cuda_reserve(vmm_backend *b, size_t size, size_t align, uintptr_t *va) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "reserve");
    if (err) return err;
    CUdeviceptr p = 0;
    CUresult r = cb->f->MemAddressReserve(&p, size, align, 0, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) {
        int code = r == CUDA_ERROR_OUT_OF_MEMORY || r == CUDA_ERROR_INVALID_VALUE ? GPU_ERR_OUT_OF_VA : cuda_code(r);
        return cuda_fail(cb, code, r, "cuMemAddressReserve(size=%zu, alignment=%zu)", size, align);
    }
    *va = (uintptr_t)p;
    return GPU_OK;
}

/* Gives a reservation back. */
int cuda_unreserve(vmm_backend *b, uintptr_t va, size_t size) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "unreserve");
    if (err) return err;
    CUresult r = cb->f->MemAddressFree((CUdeviceptr)va, size);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemAddressFree(va=%#" PRIxPTR ", size=%zu)", va, size);
    return GPU_OK;
}

/* The allocation properties of pinned memory on device dev. */
CUmemAllocationProp cuda_prop(CUdevice dev, CUmemAllocationHandleType types) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = (int)dev;
    prop.requestedHandleTypes = types;
    return prop;
}

/* Creates size bytes of device memory. */
int cuda_create(vmm_backend *b, size_t size, vmm_handle *out) {
    cuda_backend *cb = cuda_of(b);
    CUmemAllocationProp prop = cuda_prop(cb->dev, cb->handle_types);
    int err = cuda_enter(cb, "create");
    if (err) return err;
    CUmemGenericAllocationHandle h = 0;
    CUresult r = cb->f->MemCreate(&h, size, &prop, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemCreate(size=%zu, device=%d)", size, (int)cb->dev);
    *out = (vmm_handle)h;
    return GPU_OK;
}

/* Releases a handle. */
int cuda_release(vmm_backend *b, vmm_handle h) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "release");
    if (err) return err;
    CUresult r = cb->f->MemRelease((CUmemGenericAllocationHandle)h);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemRelease(handle=%#" PRIx64 ")", h);
    return GPU_OK;
}

/* Maps the whole handle at va. */
int cuda_map(vmm_backend *b, uintptr_t va, size_t size, vmm_handle h) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "map");
    if (err) return err;
    CUresult r = cb->f->MemMap((CUdeviceptr)va, size, 0, (CUmemGenericAllocationHandle)h, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemMap(va=%#" PRIxPTR ", size=%zu, handle=%#" PRIx64 ")", va, size, h);
    return GPU_OK;
}

/* Unmaps a range of whole mappings. */
int cuda_unmap(vmm_backend *b, uintptr_t va, size_t size) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "unmap");
    if (err) return err;
    CUresult r = cb->f->MemUnmap((CUdeviceptr)va, size);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS) return cuda_fail(cb, cuda_code(r), r, "cuMemUnmap(va=%#" PRIxPTR ", size=%zu)", va, size);
    return GPU_OK;
}

/* Sets device's access to a range of whole mappings: the owning device's
 * (set_access) or a peer's (grant), under the same rules. */
static int cuda_access(vmm_backend *b, uintptr_t va, size_t size, bool peer, int device, gpu_prot_t prot) {
    cuda_backend *cb = cuda_of(b);
    CUmemAccessDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = device;
    switch (prot) {
    case GPU_PROT_NONE: desc.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE; break;
    case GPU_PROT_READ: desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READ; break;
    case GPU_PROT_READ_WRITE: desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; break;
    default:
        return vmm_fail(b, GPU_ERR_INVALID, "cuMemSetAccess(va=%#" PRIxPTR ", size=%zu): unknown protection %d", va, size, (int)prot);
    }
    int err = cuda_enter(cb, peer ? "grant" : "set_access");
    if (err) return err;
    CUresult r = cb->f->MemSetAccess((CUdeviceptr)va, size, &desc, 1);
    cuda_leave(cb);
    if (r == CUDA_SUCCESS) return GPU_OK;
    if (peer)
        return cuda_fail(cb, cuda_code(r), r, "cuMemSetAccess(va=%#" PRIxPTR ", size=%zu, peer device=%d, prot=%d)", va, size,
                         device, (int)prot);
    return cuda_fail(cb, cuda_code(r), r, "cuMemSetAccess(va=%#" PRIxPTR ", size=%zu, prot=%d)", va, size, (int)prot);
}

/* Sets the device's access to a range of whole mappings. */
int cuda_set_access(vmm_backend *b, uintptr_t va, size_t size, gpu_prot_t prot) {
    return cuda_access(b, va, size, false, (int)cuda_of(b)->dev, prot);
}

/* Sets another device's access to a range of whole mappings (peer access). The
 * driver refuses a device that cannot reach this one (no P2P path). */
int cuda_grant(vmm_backend *b, uintptr_t va, size_t size, int device, gpu_prot_t prot) {
    return cuda_access(b, va, size, true, device, prot);
}

/* ---- memory shared between processes -------------------------------------------- */

/* Whether device cb's memory can be made exportable as a POSIX file descriptor;
 * when not, *why says what refused it. */
static bool probe_exportable(cuda_backend *cb, const char **why) {
    const struct cuda_fns *f = cb->f;
    int supported = 0;
    CUresult r = f->DeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, cb->dev);
    *why = r != CUDA_SUCCESS ? cuda_loader_error_name(r) : "the device does not support it";
    if (r != CUDA_SUCCESS || !supported) return false;
    /* The attribute can say yes where cuMemCreate still refuses (a VM, a driver
     * setting): one granule made exportable answers for certain. */
    CUmemAllocationProp prop = cuda_prop(cb->dev, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    CUmemGenericAllocationHandle h = 0;
    r = CUDA_ERROR_UNKNOWN;
    if (cuda_enter(cb, "probe") == GPU_OK) {
        r = f->MemCreate(&h, cb->base.caps.granularity, &prop, 0);
        if (r == CUDA_SUCCESS) f->MemRelease(h);
        cuda_leave(cb);
    }
    *why = cuda_loader_error_name(r);
    /* Out of memory says nothing about the handle type: trust the attribute. */
    return r == CUDA_SUCCESS || r == CUDA_ERROR_OUT_OF_MEMORY;
}

void cuda_ipc_probe(cuda_backend *cb, const gpu_config_t *cfg) {
    vmm_caps *caps = &cb->base.caps;
    cb->handle_types = CU_MEM_HANDLE_TYPE_NONE;
    caps->exportable = false;
    if (cfg && !cfg->ipc) {
        snprintf(caps->ipc_note, sizeof caps->ipc_note,
                 "this heap's memory cannot be shared with other processes: it was opened with ipc = 0 (GPUHEAP_IPC=0)");
        return;
    }
    /* Asked at every open, not once per process: a heap made beside another,
     * without the probe's granule made and released first, took 350-860 us for
     * its first allocation on an H200 instead of 150-265 (bench/RESULTS.md). */
    const char *why = NULL;
    if (probe_exportable(cb, &why)) {
        cb->handle_types = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        caps->exportable = true;
        caps->cache_exports = true; /* door.c keeps the fd: one driver export per handle */
        caps->ipc_note[0] = '\0';
        return;
    }
    cb->ops.export_fd = NULL; /* the door refuses exports with the note, never calls */
    snprintf(caps->ipc_note, sizeof caps->ipc_note,
             "this heap's memory cannot be shared with other processes: device %d refused exportable memory "
             "(POSIX_FILE_DESCRIPTOR handles: %s)", caps->device, why);
}

/* An fd for handle h, close-on-exec. */
int cuda_export_fd(vmm_backend *b, vmm_handle h, int *fd) {
    cuda_backend *cb = cuda_of(b);
    if (!b->caps.exportable) return vmm_fail(b, GPU_ERR_INVALID, "%s", b->caps.ipc_note);
    int err = cuda_enter(cb, "export_fd");
    if (err) return err;
    int out = -1;
    CUresult r = cb->f->MemExportToShareableHandle(&out, (CUmemGenericAllocationHandle)h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemExportToShareableHandle(handle=%#" PRIx64 ", POSIX_FILE_DESCRIPTOR)", h);
    /* The driver's fd need not be close-on-exec; a fork that execs meanwhile
     * keeps a copy (the same gap the transport's server documents). */
    if (fcntl(out, F_SETFD, FD_CLOEXEC) != 0) {
        int e = errno;
        close(out);
        return vmm_fail(b, GPU_ERR_BACKEND, "cuMemExportToShareableHandle: fcntl(FD_CLOEXEC): %s", strerror(e));
    }
    *fd = out;
    return GPU_OK;
}

/* A handle of this process for memory another process exported as fd. */
int cuda_import_fd(vmm_backend *b, int fd, size_t size, vmm_handle *out) {
    cuda_backend *cb = cuda_of(b);
    int err = cuda_enter(cb, "import_fd");
    if (err) return err;
    CUmemGenericAllocationHandle h = 0;
    CUresult r = cb->f->MemImportFromShareableHandle(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    cuda_leave(cb);
    if (r != CUDA_SUCCESS)
        return cuda_fail(cb, cuda_code(r), r, "cuMemImportFromShareableHandle(fd=%d, size=%zu)", fd, size);
    *out = (vmm_handle)h;
    return GPU_OK;
}
