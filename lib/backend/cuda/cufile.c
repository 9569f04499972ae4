/*
 * cufile.c — cuFile reads of a file straight into device memory, for the CUDA
 * backend's direct_* operations (GPU_MAP_CUFILE).
 *
 * cuFile moves file data to the GPU without staging it in the caller's buffers:
 * with the nvidia-fs kernel module and a supported file system by DMA from
 * storage, otherwise in its "compatibility mode" through bounce buffers of its own
 * (POSIX reads plus copies, much like lib/file's own pipeline). Which one runs is
 * the machine's business; bench/file_load measures it beside the POSIX path.
 *
 * The library is opened at run time with dlopen, like libcuda, so nothing here
 * needs cufile.h. The few types used are written out with cuFile's ABI: an error
 * is two ints (cuFile's code, then a CUresult), a file descriptor record is a
 * type tag, a union of an fd and a pointer, and a pointer to file-system ops.
 * Loading happens once per process; a failed load is not retried.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "backend/cuda/cufile.h"
#include "gpuheap.h"

/* CUfileError_t: cuFile's status (0 = success) and the CUDA driver's result. */
typedef struct cufile_status {
    int err;
    int cu_err;
} cufile_status;

/* CUfileDescr_t for a Linux fd (type CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1). */
typedef struct cufile_descr {
    int type;
    union {
        int fd;
        void *handle;
    } handle;
    const void *fs_ops;
} cufile_descr;

#define CUFILE_HANDLE_TYPE_OPAQUE_FD 1

static struct {
    cufile_status (*driver_open)(void);
    cufile_status (*handle_register)(void **fh, cufile_descr *descr);
    void (*handle_deregister)(void *fh);
    ssize_t (*read)(void *fh, void *dev, size_t size, off_t file_offset, off_t dev_offset);
} cufile;

static pthread_once_t cufile_once = PTHREAD_ONCE_INIT;
static int cufile_status_code = GPU_ERR_NO_DRIVER;
static char cufile_message[200];

/* Opens libcufile and its driver; runs once. */
static void cufile_load(void) {
    static const char *const names[] = {"libcufile.so.0", "libcufile.so", "/usr/local/cuda/lib64/libcufile.so.0"};
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *e = dlerror();
        snprintf(cufile_message, sizeof cufile_message, "libcufile.so.0 not found (%s)", e ? e : "dlopen failed");
        return;
    }
    void *p;
    if ((p = dlsym(lib, "cuFileDriverOpen")) != NULL) memcpy(&cufile.driver_open, &p, sizeof p);
    if ((p = dlsym(lib, "cuFileHandleRegister")) != NULL) memcpy(&cufile.handle_register, &p, sizeof p);
    if ((p = dlsym(lib, "cuFileHandleDeregister")) != NULL) memcpy(&cufile.handle_deregister, &p, sizeof p);
    if ((p = dlsym(lib, "cuFileRead")) != NULL) memcpy(&cufile.read, &p, sizeof p);
    if (!cufile.handle_register || !cufile.handle_deregister || !cufile.read) {
        snprintf(cufile_message, sizeof cufile_message, "libcufile lacks cuFileHandleRegister/Deregister/Read");
        return;
    }
    /* Registering a handle opens the driver implicitly; opening it first gives
     * its failure a message of its own. */
    if (cufile.driver_open) {
        cufile_status st = cufile.driver_open();
        if (st.err != 0) {
            snprintf(cufile_message, sizeof cufile_message, "cuFileDriverOpen: cuFile error %d (CUresult %d)", st.err,
                     st.cu_err);
            return;
        }
    }
    cufile_status_code = GPU_OK;
}

int cufile_open(int fd, void **handle, char *why, size_t why_len) {
    pthread_once(&cufile_once, cufile_load);
    if (cufile_status_code != GPU_OK) {
        snprintf(why, why_len, "cuFile unavailable: %s", cufile_message);
        return cufile_status_code;
    }
    cufile_descr d;
    memset(&d, 0, sizeof d);
    d.type = CUFILE_HANDLE_TYPE_OPAQUE_FD;
    d.handle.fd = fd;
    void *fh = NULL;
    cufile_status st = cufile.handle_register(&fh, &d);
    if (st.err != 0) {
        snprintf(why, why_len, "cuFileHandleRegister(fd=%d): cuFile error %d (CUresult %d)", fd, st.err, st.cu_err);
        return GPU_ERR_NO_DRIVER;
    }
    *handle = fh;
    return GPU_OK;
}

int cufile_read(void *handle, uintptr_t dst, size_t size, uint64_t offset, char *why, size_t why_len) {
    size_t done = 0;
    while (done < size) {
        ssize_t n = cufile.read(handle, (void *)(dst + done), size - done, (off_t)(offset + done), 0);
        if (n < 0) {
            /* -1 with errno for a system error; other negatives are cuFile's codes. */
            if (n == -1) snprintf(why, why_len, "cuFileRead(offset=%llu, size=%zu): %s", (unsigned long long)(offset + done),
                                  size - done, strerror(errno));
            else snprintf(why, why_len, "cuFileRead(offset=%llu, size=%zu): cuFile error %zd",
                          (unsigned long long)(offset + done), size - done, -n);
            return GPU_ERR_BACKEND;
        }
        if (n == 0) {
            snprintf(why, why_len, "cuFileRead: the file ended at %llu, before the %zu bytes asked for (it shrank?)",
                     (unsigned long long)(offset + done), size);
            return GPU_ERR_BACKEND;
        }
        done += (size_t)n;
    }
    return GPU_OK;
}

void cufile_close(void *handle) {
    if (handle && cufile.handle_deregister) cufile.handle_deregister(handle);
}
