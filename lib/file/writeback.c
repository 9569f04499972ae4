/*
 * writeback.c — gpu_sync_file and an unmap's write-back: the device's bytes of
 * a writable mapping back into its file.
 *
 * Write-back (GPU_MAP_WRITE) runs the other way from a load, on the calling
 * thread alone: device-to-host copies into up to four staging slots run ahead
 * of the pwrite()s of the older ones. It takes the heap's staging set with the
 * shape the load had (tune.c), so the set the load kept fits it (staging.c).
 * A sync first checks every mapping that kept its descriptor (writable or
 * zero-copy) against the file: one that shrank under its mapping is an error,
 * and nothing is written.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "file/file_internal.h"

#define FILE_WRITEBACK_SLOTS 4u

/* pwrite()s exactly n bytes at file offset at. */
static int write_all(int fd, void *buf, size_t n, uint64_t at) {
    size_t done;
    int err = io_rw(fd, buf, n, at, true, &done);
    if (err)
        return gh_note(GPU_ERR_BACKEND, "writing %zu bytes at offset %" PRIu64 ": %s", n - done, at + done,
                       err > 0 ? strerror(err) : "nothing written");
    return GPU_OK;
}

/* The length of piece i of a mapping cut in pieces of a staging slot's size. */
static inline size_t writeback_len(const file_map *m, const staging *st, size_t i) {
    size_t rest = m->length - i * st->slot_size;
    return rest < st->slot_size ? rest : st->slot_size;
}

/* Queues the device-to-host copy of the mapping's piece i into staging slot s. */
static int writeback_fetch(const file_map *m, staging *st, unsigned s, size_t i, bool *pending) {
    unsigned marker;
    vmm_queue *q = slot_queue(st, s, &marker);
    int rc = vmm_call_queue_download(&m->entry.heap->door, q, marker, slot_buf(st, s), m->ptr + i * st->slot_size,
                                     writeback_len(m, st, i));
    if (rc != GPU_OK) gh_note(rc, "copying to the host: %s", vmm_error());
    pending[s] = rc == GPU_OK;
    return rc;
}

/* Waits for the copy into staging slot s, which is then no longer pending. */
static int writeback_wait(const file_map *m, staging *st, unsigned s, bool *pending) {
    unsigned marker;
    vmm_queue *q = slot_queue(st, s, &marker);
    pending[s] = false;
    return vmm_call_queue_wait(&m->entry.heap->door, q, marker);
}

/* Copies the mapping's device bytes into the file: device-to-host copies run
 * ahead into up to FILE_WRITEBACK_SLOTS buffers while older ones are written. */
static int write_back(file_map *m) {
    file_tuning t = tuning_for(tuning_get(), m->length); /* as the load did: its kept staging set fits */
    staging *st;
    int rc = staging_take(m->entry.heap, t.threads * FILE_SLOTS_PER_THREAD, t.chunk, &st, NULL);
    if (rc != GPU_OK) return rc;
    unsigned nslots = st->nslots < FILE_WRITEBACK_SLOTS ? st->nslots : FILE_WRITEBACK_SLOTS;
    size_t chunk = st->slot_size, nchunks = m->length / chunk + (m->length % chunk != 0);
    bool pending[FILE_WRITEBACK_SLOTS] = {false};
    for (size_t i = 0; i < nslots && i < nchunks && rc == GPU_OK; i++) rc = writeback_fetch(m, st, (unsigned)i, i, pending);
    for (size_t i = 0; i < nchunks && rc == GPU_OK; i++) {
        unsigned s = (unsigned)(i % nslots);
        rc = writeback_wait(m, st, s, pending);
        if (rc != GPU_OK) {
            gh_note(rc, "copying to the host: %s", vmm_error());
            break;
        }
        rc = write_all(m->fd, slot_buf(st, s), writeback_len(m, st, i), m->offset + i * chunk);
        if (rc == GPU_OK && i + nslots < nchunks) rc = writeback_fetch(m, st, s, i + nslots, pending);
    }
    /* The set goes back only once no copy into it is in flight. */
    for (unsigned s = 0; s < nslots; s++)
        if (pending[s]) (void)writeback_wait(m, st, s, pending);
    staging_put(st);
    return rc;
}

/* The fence first: kernels still writing the mapping finish before it is read. */
int sync_mapping(file_map *m, bool durable) {
    if (m->fd < 0) return GPU_OK; /* a read-only loaded copy: nothing to check or write */
    struct stat st;
    if (fstat(m->fd, &st) != 0) return gh_note(GPU_ERR_BACKEND, "fstat(\"%s\"): %s", m->path, strerror(errno));
    uint64_t end = m->offset + m->length;
    if ((uint64_t)st.st_size < end)
        return gh_note(GPU_ERR_BACKEND, "\"%s\" shrank to %lld bytes while mapped (the mapping ends at %" PRIu64 "); nothing written",
                       m->path, (long long)st.st_size, end);
    if (!(m->flags & GPU_MAP_WRITE)) return GPU_OK;
    int rc = vmm_call_fence(&m->entry.heap->door); /* kernels that write the mapping have finished */
    if (rc != GPU_OK) return gh_note(rc, "waiting for GPU work before writing \"%s\" back: %s", m->path, vmm_error());
    rc = write_back(m);
    if (rc != GPU_OK) return rc;
    if (durable && fdatasync(m->fd) != 0) return gh_note(GPU_ERR_BACKEND, "fdatasync(\"%s\"): %s", m->path, strerror(errno));
    return GPU_OK;
}
