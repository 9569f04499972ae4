/*
 * test_file.c — gpu_map_file, gpu_sync_file and gpu_unmap_file on the host
 * backend (meson suite 'unit').
 *
 * The host backend's memory is ordinary CPU memory, so every loaded mapping is
 * compared byte for byte with the file it came from: whole files, offsets that
 * fall anywhere (inside a page, on a page, past a granule), ranges ending in a
 * partial page, and loads split over several threads and small chunks. Writable
 * mappings are changed through the pointer and the file is read back after
 * gpu_sync_file and gpu_unmap_file; GPU_UNMAP_DISCARD must leave it alone.
 * Zero-copy mappings are the page cache itself, and a truncated file must be
 * reported, not crash the process. Every bad input — missing file, directory,
 * FIFO, empty file, offsets past the end, bad flags, a path through a file, a
 * path we may not read (only as non-root: root reads everything), cuFile on a
 * backend without it, out of memory — is a clear error with the heap unchanged.
 * A white-box test checks the host backend's transfer and registration rules
 * directly (copying into a read-only mapping is refused, as on a GPU).
 *
 * Loads here use small chunks (GPUHEAP_FILE_CHUNK) where a test wants the
 * multi-threaded pipeline to run over files of a few MiB. Loads of different
 * shapes share one pinned staging set, and the size-aware defaults pick their
 * thread counts.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

#include "util.h"
#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

static char dir[64]; /* the test's scratch directory */

/* ---- files ------------------------------------------------------------------------ */

/* dir/name, in a static buffer per call site (callers copy when they keep two). */
static const char *path_of(const char *name, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", dir, name);
    return buf;
}

/* Writes size bytes of seed's pattern to dir/name; returns the path in buf. */
static const char *make_file(const char *name, size_t size, uint64_t seed, char *buf, size_t len) {
    path_of(name, buf, len);
    unsigned char *data = malloc(size ? size : 1);
    assert_non_null(data);
    pattern_fill(data, 0, size, seed);
    int fd = open(buf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        assert_true(w > 0);
        done += (size_t)w;
    }
    close(fd);
    free(data);
    return buf;
}

/* The file's whole contents (caller frees); *size set. */
static unsigned char *read_file(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    unsigned char *data = malloc((size_t)st.st_size + 1);
    assert_non_null(data);
    size_t done = 0;
    while (done < (size_t)st.st_size) {
        ssize_t r = read(fd, data + done, (size_t)st.st_size - done);
        assert_true(r > 0);
        done += (size_t)r;
    }
    close(fd);
    *size = (size_t)st.st_size;
    return data;
}

/* Fails unless [p, p+len) equals the file's [offset, offset+len). */
static void expect_file_bytes(const void *p, const char *path, size_t offset, size_t len) {
    size_t size;
    unsigned char *data = read_file(path, &size);
    assert_true(offset + len <= size);
    const unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        if (b[i] != data[offset + i]) {
            unsigned got = b[i], want = data[offset + i];
            free(data);
            fail_msg("%s: mapping byte %zu (file offset %zu) is 0x%02x, the file has 0x%02x", path, i, offset + i, got, want);
        }
    free(data);
}

/* The fields a failed call must leave alone. */
typedef struct snapshot {
    uint64_t live_blocks, live_bytes, file_loaded, file_zerocopy, file_mappings;
} snapshot;

static snapshot snap(gpu_heap_t *h) {
    gpu_stats_t s = STATS(h);
    return (snapshot){s.live_blocks, s.live_bytes, s.file_loaded_bytes, s.file_zerocopy_bytes, s.file_mappings};
}

#define EXPECT_UNCHANGED(h, before)                                                                   \
    do {                                                                                              \
        snapshot now_ = snap(h);                                                                      \
        if (memcmp(&now_, &(before), sizeof now_) != 0)                                               \
            fail_msg("heap changed: live %llu/%llu blocks/bytes (was %llu/%llu), file mappings %llu (was %llu)", \
                     (unsigned long long)now_.live_blocks, (unsigned long long)now_.live_bytes,       \
                     (unsigned long long)(before).live_blocks, (unsigned long long)(before).live_bytes, \
                     (unsigned long long)now_.file_mappings, (unsigned long long)(before).file_mappings); \
        CHECK_HEAP(h);                                                                                \
    } while (0)

/* Threads of this process (the loader's kept threads among them). */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* ---- fixtures ----------------------------------------------------------------------- */

static int group_setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/gpuheap-test-file-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    unsetenv("GPUHEAP_FILE_CHUNK");
    unsetenv("GPUHEAP_FILE_THREADS");
    unsetenv("GPUHEAP_CUFILE");
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int heap_setup(void **state) {
    *state = HEAP_NEW(0);
    return 0;
}

static int heap_teardown(void **state) {
    gpu_heap_t *h = *state;
    CHECK_HEAP(h);
    HEAP_DESTROY(h);
    unsetenv("GPUHEAP_FILE_CHUNK");
    unsetenv("GPUHEAP_FILE_THREADS");
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------- */

/* A whole file with a partial last page: every byte equal, the block's tail zero,
 * read-only, counted, and gone again after unmap. */
static void test_load_whole_file(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    size_t size = 5 * MiB + 1234;
    make_file("whole", size, 1, path, sizeof path);
    snapshot before = snap(h);

    void *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % (2 * MiB), 0);
    size_t usable = BLOCK_VALID(h, p, size);
    assert_int_equal(usable, 6 * MiB);
    expect_file_bytes(p, path, 0, size);
    ZERO_CHECK(p, size, usable - size);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.file_loaded_bytes, before.file_loaded + size);
    assert_int_equal(s.file_mappings, before.file_mappings + 1);
    assert_int_equal(s.live_blocks, before.live_blocks + 1);
    assert_int_equal(s.file_zerocopy_bytes, 0);
    CHECK_HEAP(h);

    ASSERT_OK(gpu_sync_file(p)); /* a read-only copy: nothing to do */
    ASSERT_OK(gpu_unmap_file(p, 0));
    EXPECT_UNCHANGED(h, before);
    ASSERT_ERROR(gpu_unmap_file(p, 0), GPU_ERR_INVALID); /* twice */
}

/* Ranges that start anywhere and end anywhere, including the file's last byte. */
static void test_load_offsets(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    size_t size = 3 * MiB + 777;
    make_file("offsets", size, 2, path, sizeof path);
    const struct {
        size_t offset, length;
    } cases[] = {
        {0, 1}, {1, 4095}, {4095, 2}, {4096, 4096}, {2 * MiB + 17, 0}, {size - 1, 1}, {size - 1, 0},
        {12345, 2 * MiB}, {0, 2 * MiB}, {0, 2 * MiB + 1}, {100, size - 100},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        void *p = NULL;
        ASSERT_OK(gpu_heap_map_file(h, path, cases[i].offset, cases[i].length, 0, &p));
        size_t len = cases[i].length ? cases[i].length : size - cases[i].offset;
        expect_file_bytes(p, path, cases[i].offset, len);
        assert_int_equal(STATS(h).file_loaded_bytes, len);
        ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
        CHECK_ALL(h);
    }
}

/* Small chunks and several threads: the pipeline, with a last chunk that is short. */
static void test_load_pipelined(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    size_t size = 3 * MiB + 5;
    make_file("pipelined", size, 3, path, sizeof path);
    int threads_before = thread_count();
    const char *threads[] = {"1", "3", "8"};
    for (size_t t = 0; t < 3; t++) {
        setenv("GPUHEAP_FILE_CHUNK", "64K", 1);
        setenv("GPUHEAP_FILE_THREADS", threads[t], 1);
        for (int rep = 0; rep < 3; rep++) {
            void *p = NULL;
            ASSERT_OK(gpu_heap_map_file(h, path, (size_t)rep * 4097, 0, 0, &p));
            expect_file_bytes(p, path, (size_t)rep * 4097, size - (size_t)rep * 4097);
            ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
        }
    }
    /* Lengths around the pieces' edges: the first small pieces (8 x 4 KiB with a
     * 64 KiB chunk), the switch to whole chunks (8 x 60 KiB: 4 + 8 + 16 + 32),
     * the shared-out tail. */
    setenv("GPUHEAP_FILE_CHUNK", "64K", 1);
    setenv("GPUHEAP_FILE_THREADS", "8", 1);
    const size_t lengths[] = {1,           511,         4095,         4097,         8191,           8193,
                              32 * KiB,    32 * KiB + 1, 64 * KiB - 1, 8 * 60 * KiB, 8 * 60 * KiB + 1, MiB + 4097,
                              3 * MiB};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        void *q = NULL;
        ASSERT_OK(gpu_heap_map_file(h, path, 3, lengths[i], 0, &q));
        expect_file_bytes(q, path, 3, lengths[i]);
        ASSERT_OK(gpu_heap_unmap_file(h, q, 0));
    }
    setenv("GPUHEAP_FILE_CHUNK", "4K", 1); /* the smallest chunk: 512-byte first pieces */
    void *q = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 1, 0, 0, &q));
    expect_file_bytes(q, path, 1, size - 1);
    ASSERT_OK(gpu_heap_unmap_file(h, q, 0));

    setenv("GPUHEAP_FILE_CHUNK", "not-a-size", 1); /* ignored: the default applies */
    void *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    expect_file_bytes(p, path, 0, size);
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    assert_true(thread_count() > threads_before); /* the loader's threads are kept between loads */
    ASSERT_OK(gpu_heap_trim(h, 0)); /* gives the staging buffers back too, and ends their threads */
    assert_int_equal(thread_count(), threads_before);
    CHECK_ALL(h);
}

static int write_first_byte(void *arg) {
    *(volatile unsigned char *)arg = 0x5a;
    return 0;
}

/* A read-only mapping stops a write at once; gpu_free and gpu_realloc refuse it. */
static void test_load_is_read_only(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    make_file("readonly", 3 * MiB, 4, path, sizeof path);
    void *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    int status = run_in_child(write_first_byte, p);
    assert_true(died_of_fault(status));
    status = run_in_child(write_first_byte, (char *)p + 3 * MiB + 100); /* the zeroed tail is read-only too */
    assert_true(died_of_fault(status));

    snapshot before = snap(h);
    ASSERT_ERROR(gpu_heap_free(h, p), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_free(p), GPU_ERR_INVALID);
    assert_null(gpu_heap_realloc(h, p, 8 * MiB));
    ASSERT_LAST_ERROR(GPU_ERR_INVALID);
    EXPECT_UNCHANGED(h, before);
    expect_file_bytes(p, path, 0, 3 * MiB);

    /* Ordinary blocks are still freed as usual beside a mapping. */
    void *q = gpu_heap_malloc_flags(h, 2 * MiB, GPU_ALLOC_OWNED);
    BLOCK_VALID(h, q, 2 * MiB);
    ASSERT_OK(gpu_heap_free(h, q));
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    CHECK_ALL(h);
}

/* Several threads map, check and unmap the same file at once. */
typedef struct concurrent_arg {
    gpu_heap_t *h;
    const char *path;
    size_t size;
    int failures;
} concurrent_arg;

static void *concurrent_worker(void *arg) {
    concurrent_arg *a = arg;
    size_t size;
    unsigned char *data = read_file(a->path, &size);
    for (int i = 0; i < 8; i++) {
        void *p = NULL;
        size_t off = (size_t)i * 1000;
        if (gpu_heap_map_file(a->h, a->path, off, 0, 0, &p) != GPU_OK) {
            a->failures++;
            continue;
        }
        a->failures += memcmp(p, data + off, size - off) != 0;
        a->failures += gpu_heap_unmap_file(a->h, p, 0) != GPU_OK;
    }
    free(data);
    return NULL;
}

static void test_load_concurrent(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    make_file("concurrent", 2 * MiB + 300, 5, path, sizeof path);
    setenv("GPUHEAP_FILE_CHUNK", "256K", 1);
    setenv("GPUHEAP_FILE_THREADS", "3", 1);
    pthread_t t[4];
    concurrent_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (concurrent_arg){h, path, 2 * MiB + 300, 0};
        assert_int_equal(pthread_create(&t[i], NULL, concurrent_worker, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL); /* all of them before any assert */
    for (int i = 0; i < 4; i++) assert_int_equal(a[i].failures, 0);
    assert_int_equal(STATS(h).file_mappings, 0);
    CHECK_ALL(h);
}

/* Loads at six offsets with the same thread count share one pinned staging set,
 * re-sliced and given the copy queues (one per thread) it lacks; write-back
 * goes through the same queues. */
static void test_load_streams(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    size_t size = 3 * MiB + 5;
    make_file("streams", size, 13, path, sizeof path);
    setenv("GPUHEAP_FILE_CHUNK", "64K", 1);
    const char *threads[] = {"1", "3", "8"};
    uint64_t staged = 0;
    for (size_t t = 0; t < 3; t++) {
        setenv("GPUHEAP_FILE_THREADS", threads[t], 1);
        for (size_t m = 0; m < 6; m++) {
            void *p = NULL;
            ASSERT_OK(gpu_heap_map_file(h, path, m * 4097, 0, 0, &p));
            expect_file_bytes(p, path, m * 4097, size - m * 4097);
            ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
            if (m == 0) staged = h->door.counts.calls[VMM_OP_STAGING];
            else assert_int_equal(h->door.counts.calls[VMM_OP_STAGING], staged); /* the same pinned set */
        }
    }
    for (size_t m = 0; m < 2; m++) {
        unsigned char *p = NULL;
        ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, (void **)&p));
        pattern_fill(p, 0, size, 70 + m);
        ASSERT_OK(gpu_sync_file(p));
        size_t fsize;
        unsigned char *data = read_file(path, &fsize);
        assert_int_equal(fsize, size);
        PATTERN_CHECK(data, 0, size, 70 + m);
        free(data);
        ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    }
    CHECK_ALL(h);
}

/* The size-aware defaults: a load of at most twice the staging set (threads x 2
 * x chunk x 2) runs on 12 threads (at most the CPUs), a larger one on 8; a
 * thread count set in the environment stays. The loader's kept threads tell. */
static void test_load_size_aware(void **state) {
    gpu_heap_t *h = *state;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned large = cpus > 0 && cpus < 8 ? (unsigned)cpus : 8, small = cpus > 0 && cpus < 12 ? (unsigned)cpus : 12;
    size_t limit = (size_t)large * 2 * 64 * KiB * 2; /* with a 64 KiB chunk set */
    char path[128];
    make_file("sizeaware", limit + 4096, 14, path, sizeof path);
    setenv("GPUHEAP_FILE_CHUNK", "64K", 1);
    unsetenv("GPUHEAP_FILE_THREADS");
    int before = thread_count();
    void *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, limit + 1, 0, &p)); /* larger: the plain default */
    expect_file_bytes(p, path, 0, limit + 1);
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    assert_int_equal(thread_count(), before + (int)large - 1);
    ASSERT_OK(gpu_heap_map_file(h, path, 7, limit, 0, &p)); /* at most twice the set: more threads */
    expect_file_bytes(p, path, 7, limit);
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    assert_int_equal(thread_count(), before + (int)small - 1);
    ASSERT_OK(gpu_heap_trim(h, 0));
    assert_int_equal(thread_count(), before);

    /* Threads set, chunk left to the rule: the set count stays. */
    setenv("GPUHEAP_FILE_THREADS", "3", 1);
    unsetenv("GPUHEAP_FILE_CHUNK");
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    expect_file_bytes(p, path, 0, limit + 4096);
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    assert_int_equal(thread_count(), before + 2);
    ASSERT_OK(gpu_heap_trim(h, 0));
    CHECK_ALL(h);
}

/* ---- write-back -------------------------------------------------------------------------- */

static void test_write_back(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    size_t size = 4 * MiB + 999, off = 8192 + 3, len = 3 * MiB + 11;
    make_file("writeback", size, 6, path, sizeof path);
    setenv("GPUHEAP_FILE_CHUNK", "64K", 1); /* many chunks through the write-back ring */

    unsigned char *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, off, len, GPU_MAP_WRITE, (void **)&p));
    expect_file_bytes(p, path, off, len);
    pattern_fill(p, 0, len, 60); /* the "kernel" rewrites the mapping */
    ASSERT_OK(gpu_sync_file(p));
    size_t fsize;
    unsigned char *data = read_file(path, &fsize);
    assert_int_equal(fsize, size);
    PATTERN_CHECK(data + off, 0, len, 60);
    PATTERN_CHECK(data, 0, off, 6); /* outside the range: untouched */
    for (size_t i = off + len; i < size; i++) assert_int_equal(data[i], pattern_byte(6, i));
    free(data);

    /* unmap writes back too. */
    memset(p + 5, 0xab, 1000);
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    data = read_file(path, &fsize);
    for (size_t i = 5; i < 1005; i++) assert_int_equal(data[off + i], 0xab);
    free(data);

    /* With the default pieces, a write-back stages through the set its load kept
     * (the small-load tuning sizes both alike) instead of pinning a new one. */
    unsetenv("GPUHEAP_FILE_CHUNK");
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, (void **)&p));
    uint64_t staged = h->door.counts.calls[VMM_OP_STAGING];
    ASSERT_OK(gpu_sync_file(p));
    assert_int_equal(h->door.counts.calls[VMM_OP_STAGING], staged);
    ASSERT_OK(gpu_unmap_file(p, 0));
    setenv("GPUHEAP_FILE_CHUNK", "64K", 1);

    /* ...unless told to discard. */
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, (void **)&p));
    unsigned char *before = read_file(path, &fsize);
    memset(p, 0, fsize);
    ASSERT_OK(gpu_unmap_file(p, GPU_UNMAP_DISCARD));
    data = read_file(path, &fsize);
    assert_memory_equal(data, before, fsize);
    free(data);
    free(before);
    CHECK_ALL(h);
}

/* A writable mapping whose file shrank: sync and unmap refuse (nothing written),
 * the mapping stays, and discarding ends it. */
static void test_write_back_after_truncate(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    make_file("shrinks", 3 * MiB, 7, path, sizeof path);
    unsigned char *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, (void **)&p));
    assert_int_equal(truncate(path, MiB), 0);
    memset(p, 1, 100);
    ASSERT_ERROR(gpu_sync_file(p), GPU_ERR_BACKEND);
    ASSERT_ERROR(gpu_heap_unmap_file(h, p, 0), GPU_ERR_BACKEND);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, MiB); /* not extended again */
    assert_int_equal(STATS(h).file_mappings, 1);
    ASSERT_OK(gpu_heap_unmap_file(h, p, GPU_UNMAP_DISCARD));
    assert_int_equal(STATS(h).file_mappings, 0);
    CHECK_ALL(h);
}

/* ---- zero-copy -------------------------------------------------------------------------- */

static void test_zerocopy(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    size_t size = 2 * MiB + 4097;
    make_file("zerocopy", size, 8, path, sizeof path);
    snapshot before = snap(h);
    void *p = NULL, *q = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY, &p));
    expect_file_bytes(p, path, 0, size);
    ASSERT_OK(gpu_heap_map_file(h, path, 8192, 5000, GPU_MAP_ZEROCOPY, &q)); /* the same pages again */
    expect_file_bytes(q, path, 8192, 5000);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.file_zerocopy_bytes, size + 5000);
    assert_int_equal(s.file_mappings, 2);
    assert_int_equal(s.live_blocks, before.live_blocks); /* no heap memory */
    assert_int_equal(s.file_loaded_bytes, 0);
    assert_true(died_of_fault(run_in_child(write_first_byte, p)));
    ASSERT_ERROR(gpu_free(p), GPU_ERR_NOT_OWNED); /* not a heap block */
    ASSERT_OK(gpu_sync_file(p));
    ASSERT_OK(gpu_unmap_file(q, 0));
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    EXPECT_UNCHANGED(h, before);

    /* Bad combinations. */
    ASSERT_ERROR(gpu_heap_map_file(h, path, 100, 0, GPU_MAP_ZEROCOPY, &p), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY | GPU_MAP_WRITE, &p), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY | GPU_MAP_CUFILE, &p), GPU_ERR_INVALID);
    EXPECT_UNCHANGED(h, before);
}

static int read_first_byte(void *arg) { return *(volatile unsigned char *)arg & 0; }

/* The file is truncated under a zero-copy mapping: the library never touches the
 * pages, so nothing faults; sync reports the truncation and unmap still works.
 * (The host itself must not read the range: that is SIGBUS, shown in a child.) */
static void test_zerocopy_truncated(void **state) {
    gpu_heap_t *h = *state;
    char path[128];
    make_file("zc-shrinks", 3 * MiB, 9, path, sizeof path);
    void *p = NULL;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY, &p));
    assert_int_equal(truncate(path, 0), 0);
    ASSERT_ERROR(gpu_sync_file(p), GPU_ERR_BACKEND);
    assert_true(died_of_fault(run_in_child(read_first_byte, p)));
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.file_zerocopy_bytes, 3 * MiB);
    ASSERT_OK(gpu_unmap_file(p, 0));
    assert_int_equal(STATS(h).file_mappings, 0);
    CHECK_ALL(h);
}

/* ---- bad input ------------------------------------------------------------------------------ */

static void test_bad_input(void **state) {
    gpu_heap_t *h = *state;
    char path[128], dpath[128], buf[192];
    size_t size = MiB + 3;
    make_file("bad", size, 10, path, sizeof path);
    snapshot before = snap(h);
    void *p = (void *)0x1234;

#define REFUSED(call, err)                 \
    do {                                   \
        ASSERT_ERROR((call), (err));       \
        assert_ptr_equal(p, (void *)0x1234); \
        EXPECT_UNCHANGED(h, before);       \
    } while (0)

    REFUSED(gpu_heap_map_file(h, path_of("missing", buf, sizeof buf), 0, 0, 0, &p), GPU_ERR_INVALID);
    REFUSED(gpu_heap_map_file(h, dir, 0, 0, 0, &p), GPU_ERR_INVALID);                 /* a directory */
    REFUSED(gpu_heap_map_file(h, dir, 0, 0, GPU_MAP_WRITE, &p), GPU_ERR_INVALID);
    snprintf(buf, sizeof buf, "%s/x", path);
    REFUSED(gpu_heap_map_file(h, buf, 0, 0, 0, &p), GPU_ERR_INVALID);                 /* through a file: ENOTDIR */
    path_of("fifo", dpath, sizeof dpath);
    assert_int_equal(mkfifo(dpath, 0644), 0);
    REFUSED(gpu_heap_map_file(h, dpath, 0, 0, 0, &p), GPU_ERR_INVALID);               /* not a regular file, no hang */
    make_file("empty", 0, 0, dpath, sizeof dpath);
    REFUSED(gpu_heap_map_file(h, dpath, 0, 0, 0, &p), GPU_ERR_INVALID);
    REFUSED(gpu_heap_map_file(h, path, size, 0, 0, &p), GPU_ERR_INVALID);             /* offset at the end */
    REFUSED(gpu_heap_map_file(h, path, size + 4096, 0, 0, &p), GPU_ERR_INVALID);      /* past it */
    REFUSED(gpu_heap_map_file(h, path, UINT64_MAX, 0, 0, &p), GPU_ERR_INVALID);
    REFUSED(gpu_heap_map_file(h, path, 0, size + 1, 0, &p), GPU_ERR_INVALID);         /* range past the end */
    REFUSED(gpu_heap_map_file(h, path, 10, size - 9, 0, &p), GPU_ERR_INVALID);
    REFUSED(gpu_heap_map_file(h, path, 1, SIZE_MAX, 0, &p), GPU_ERR_INVALID);
    REFUSED(gpu_heap_map_file(h, NULL, 0, 0, 0, &p), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_heap_map_file(h, path, 0, 0, 0, NULL), GPU_ERR_INVALID);
    REFUSED(gpu_heap_map_file(h, path, 0, 0, 1u << 7, &p), GPU_ERR_INVALID);          /* unknown flag */
    REFUSED(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_CUFILE, &p), GPU_ERR_NO_DRIVER); /* the host has no cuFile */
    setenv("GPUHEAP_CUFILE", "1", 1); /* a preference: falls back to read() */
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    unsetenv("GPUHEAP_CUFILE");
    expect_file_bytes(p, path, 0, size);
    ASSERT_OK(gpu_heap_unmap_file(h, p, 0));
    p = (void *)0x1234;

    /* A path we may not read: only a non-root process is refused (root reads all). */
    if (geteuid() != 0) {
        make_file("secret", 4096, 11, dpath, sizeof dpath);
        assert_int_equal(chmod(dpath, 0), 0);
        REFUSED(gpu_heap_map_file(h, dpath, 0, 0, 0, &p), GPU_ERR_INVALID);
        assert_int_equal(chmod(path, 0444), 0);
        REFUSED(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, &p), GPU_ERR_INVALID); /* no write permission */
        assert_int_equal(chmod(path, 0644), 0);
    } else {
        print_message("# running as root: the unreadable-file case is not testable here (root bypasses permissions)\n");
    }

    /* sync and unmap of things that are not mappings. */
    void *block = gpu_heap_malloc(h, 4096);
    BLOCK_VALID(h, block, 4096);
    before = snap(h);
    ASSERT_ERROR(gpu_sync_file(block), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_unmap_file(block, 0), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_unmap_file(NULL, 0), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_heap_sync_file(h, (void *)0x1000), GPU_ERR_INVALID);
    EXPECT_UNCHANGED(h, before);
    ASSERT_OK(gpu_heap_free(h, block));

    /* A mapping named with the wrong heap, or unknown unmap flags. */
    gpu_heap_t *other = HEAP_NEW(0);
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    ASSERT_ERROR(gpu_heap_unmap_file(other, p, 0), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_heap_sync_file(other, p), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_unmap_file(p, 0x80), GPU_ERR_INVALID);
    assert_int_equal(STATS(h).file_mappings, 1);
    assert_int_equal(STATS(other).file_mappings, 0);
    ASSERT_OK(gpu_unmap_file(p, 0));
    HEAP_DESTROY(other);
    CHECK_ALL(h);
#undef REFUSED
}

/* The heap cannot hold the file: out of memory, nothing left behind. */
static void test_out_of_memory(void **state) {
    (void)state;
    char path[128];
    make_file("big", 5 * MiB, 12, path, sizeof path);
    gpu_config_t cfg = host_config(1 * GiB, 0, 4 * MiB);
    gpu_heap_t *h = HEAP_CREATE(&cfg);
    snapshot before = snap(h);
    void *p = NULL;
    ASSERT_ERROR(gpu_heap_map_file(h, path, 0, 0, 0, &p), GPU_ERR_OUT_OF_MEMORY);
    EXPECT_UNCHANGED(h, before);
    /* Many threads already reading when the allocation fails: cancelled, nothing copied. */
    setenv("GPUHEAP_FILE_CHUNK", "64K", 1);
    setenv("GPUHEAP_FILE_THREADS", "8", 1);
    for (int i = 0; i < 4; i++) ASSERT_ERROR(gpu_heap_map_file(h, path, 0, 0, 0, &p), GPU_ERR_OUT_OF_MEMORY);
    EXPECT_UNCHANGED(h, before);
    ASSERT_OK(gpu_heap_map_file(h, path, MiB, 3 * MiB, 0, &p)); /* what fits still loads */
    expect_file_bytes(p, path, MiB, 3 * MiB);
    ASSERT_OK(gpu_unmap_file(p, 0));
    HEAP_DESTROY(h);
    unsetenv("GPUHEAP_FILE_CHUNK");
    unsetenv("GPUHEAP_FILE_THREADS");
}

/* Destroying a heap ends its mappings (no write-back); their addresses are then unknown. */
static void test_destroy_with_mappings(void **state) {
    (void)state;
    char path[128];
    make_file("destroy", 3 * MiB, 13, path, sizeof path);
    gpu_heap_t *h = HEAP_NEW(0);
    void *a, *b, *c;
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, 0, &a));
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY, &b));
    ASSERT_OK(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, &c));
    memset(c, 0, 100);
    HEAP_DESTROY(h);
    ASSERT_ERROR(gpu_unmap_file(a, 0), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_unmap_file(b, 0), GPU_ERR_INVALID);
    ASSERT_ERROR(gpu_sync_file(c), GPU_ERR_INVALID);
    unsigned char *data;
    size_t size;
    data = read_file(path, &size);
    PATTERN_CHECK(data, 0, size, 13); /* the discarded write never reached the file */
    free(data);
}

/* ---- the host backend's rules, white-box --------------------------------------------------- */

static void test_backend_rules(void **state) {
    (void)state;
    gpu_config_t cfg = host_config(64 * MiB, 0, 0);
    vmm_backend *b = NULL;
    assert_int_equal(vmm_host_open(&cfg, &b), GPU_OK);
    uintptr_t va = 0;
    vmm_handle hd = 0;
    assert_int_equal(b->ops->reserve(b, 8 * MiB, b->caps.granularity, &va), GPU_OK);
    assert_int_equal(b->ops->create(b, 2 * MiB, &hd), GPU_OK);
    assert_int_equal(b->ops->map(b, va, 2 * MiB, hd), GPU_OK);
    void *stage = NULL;
    assert_int_equal(b->ops->staging_alloc(b, 64 * KiB, &stage), GPU_OK);
    memset(stage, 7, 64 * KiB);
    vmm_queue *q = NULL;
    assert_int_equal(b->ops->queue_open(b, 2, &q), GPU_OK);

    /* No access yet: neither direction. */
    assert_int_equal(b->ops->queue_upload(b, q, 0, va, stage, 4096), GPU_ERR_INVALID);
    assert_int_equal(b->ops->queue_download(b, q, 0, stage, va, 4096), GPU_ERR_INVALID);
    /* Read-only: download yes, upload (a write) no. */
    assert_int_equal(b->ops->set_access(b, va, 2 * MiB, GPU_PROT_READ), GPU_OK);
    assert_int_equal(b->ops->queue_upload(b, q, 0, va, stage, 4096), GPU_ERR_INVALID);
    assert_int_equal(b->ops->queue_download(b, q, 1, stage, va, 4096), GPU_OK);
    assert_int_equal(b->ops->queue_wait(b, q, 1), GPU_OK);
    /* Read-write: both; a bad slot and a range past the mapping are refused. */
    assert_int_equal(b->ops->set_access(b, va, 2 * MiB, GPU_PROT_READ_WRITE), GPU_OK);
    assert_int_equal(b->ops->queue_upload(b, q, 0, va, stage, 64 * KiB), GPU_OK);
    assert_int_equal(b->ops->queue_wait(b, q, 0), GPU_OK);
    assert_int_equal(((unsigned char *)va)[65535], 7);
    assert_int_equal(b->ops->queue_upload(b, q, 2, va, stage, 4096), GPU_ERR_INVALID);
    assert_int_equal(b->ops->queue_wait(b, q, 5), GPU_ERR_INVALID);
    assert_int_equal(b->ops->queue_upload(b, q, 0, va + 2 * MiB - 4096, stage, 8192), GPU_ERR_INVALID);

    /* Registrations: page-aligned, never overlapping, undone exactly once. */
    uintptr_t dev = 0;
    assert_int_equal(b->ops->register_read_only(b, stage, 64 * KiB, &dev), GPU_OK);
    assert_int_equal(dev, (uintptr_t)stage);
    assert_int_equal(b->ops->register_read_only(b, (char *)stage + 4096, 4096, &dev), GPU_ERR_INVALID);
    assert_int_equal(b->ops->register_read_only(b, (char *)stage + 1, 4096, &dev), GPU_ERR_INVALID);
    assert_int_equal(b->ops->unregister(b, (char *)stage + 4096), GPU_ERR_INVALID);
    assert_int_equal(b->ops->unregister(b, stage), GPU_OK);
    assert_int_equal(b->ops->unregister(b, stage), GPU_ERR_INVALID);
    assert_null(b->ops->direct_open); /* no cuFile on the host */

    b->ops->queue_close(b, q);
    b->ops->staging_free(b, stage, 64 * KiB);
    assert_int_equal(b->ops->unmap(b, va, 2 * MiB), GPU_OK);
    assert_int_equal(b->ops->release(b, hd), GPU_OK);
    assert_int_equal(b->ops->unreserve(b, va, 8 * MiB), GPU_OK);
    b->ops->close(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_whole_file, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_offsets, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_pipelined, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_is_read_only, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_concurrent, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_streams, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_size_aware, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_write_back, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_write_back_after_truncate, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_zerocopy, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_zerocopy_truncated, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, heap_setup, heap_teardown),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_destroy_with_mappings),
        cmocka_unit_test(test_backend_rules),
    };
    return cmocka_run_group_tests_name("file", tests, group_setup, group_teardown);
}
