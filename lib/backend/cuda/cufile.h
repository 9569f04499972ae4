/*
 * cufile.h — cuFile (NVIDIA GPUDirect Storage), loaded at run time, as three
 * calls: open a file for direct reads, read a range of it into device memory,
 * close it. The CUDA backend offers them as its direct_* operations; lib/file uses
 * them for GPU_MAP_CUFILE loads. libcufile is never linked: it is opened with
 * dlopen on first use, so gpuheap loads where it is absent and reports
 * GPU_ERR_NO_DRIVER there. The caller makes the CUDA context current.
 */
#ifndef GPUHEAP_CUFILE_H
#define GPUHEAP_CUFILE_H

#include <stddef.h>
#include <stdint.h>

/* Registers fd (kept open by the caller until cufile_close) with cuFile; loads
 * libcufile and opens its driver on the first call. GPU_OK, or an error with the
 * reason written to why: GPU_ERR_NO_DRIVER when libcufile is missing or refuses. */
int cufile_open(int fd, void **handle, char *why, size_t why_len);
/* Reads size bytes at file offset into device memory at dst. GPU_ERR_BACKEND on
 * a failed or short read (the file ended early). Thread-safe. */
int cufile_read(void *handle, uintptr_t dst, size_t size, uint64_t offset, char *why, size_t why_len);
void cufile_close(void *handle);

#endif /* GPUHEAP_CUFILE_H */
