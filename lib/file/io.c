/*
 * io.c — the file itself: opening a range of it, and moving its bytes whole.
 *
 * gpu_map_file takes a path; what it maps must be a regular file that holds
 * the range asked for, checked once here before anything is allocated, so that
 * the loader (load.c) and write-back (writeback.c) can read and write whole
 * pieces and treat any short transfer as the file changing under them.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file/file_internal.h"
#include "error.h"

/* EINTR is tried again; a short transfer goes on from where it stopped. */
int io_rw(int fd, void *buf, size_t n, uint64_t at, bool write, size_t *done) {
    size_t k = 0;
    int err = 0;
    while (k < n) {
        char *p = (char *)buf + k;
        ssize_t r = write ? pwrite(fd, p, n - k, (off_t)(at + k)) : pread(fd, p, n - k, (off_t)(at + k));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            err = r < 0 ? errno : -1;
            break;
        }
        k += (size_t)r;
    }
    *done = k;
    return err;
}

/* Messages name gpu_map_file, the one caller. */
int io_open_range(const char *path, uint64_t offset, size_t length, bool write, int *fd_out, size_t *length_out) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below). */
    int fd = open(path, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): cannot open it %s: %s", path,
                       write ? "for reading and writing" : "for reading", strerror(errno));
    struct stat st;
    int rc = GPU_OK;
    if (fstat(fd, &st) != 0) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): fstat: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): it is a directory", path);
    } else if (!S_ISREG(st.st_mode)) {
        rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): not a regular file", path);
    } else if (offset >= (uint64_t)st.st_size) {
        rc = st.st_size == 0 ? gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): the file is empty", path)
                             : gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): offset %" PRIu64 " is at or past the end of the file (%lld bytes)",
                                       path, offset, (long long)st.st_size);
    } else {
        uint64_t avail = (uint64_t)st.st_size - offset;
        if (length == 0 && avail > SIZE_MAX) avail = SIZE_MAX; /* 32-bit hosts only */
        if (length == 0) length = (size_t)avail;
        if ((uint64_t)length > avail)
            rc = gh_note(GPU_ERR_INVALID, "gpu_map_file(\"%s\"): the range [%" PRIu64 ", +%zu) runs past the end of the file (%lld bytes)",
                         path, offset, length, (long long)st.st_size);
    }
    /* A regular file: blocking mode again (cuFile refuses an O_NONBLOCK descriptor). */
    int fl = rc == GPU_OK ? fcntl(fd, F_GETFL) : -1;
    if (rc == GPU_OK && (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0))
        rc = gh_note(GPU_ERR_BACKEND, "gpu_map_file(\"%s\"): fcntl: %s", path, strerror(errno));
    if (rc != GPU_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    *length_out = length;
    return GPU_OK;
}
