/*
 * test_gpu_file.c — gpu_map_file on a real GPU (meson suite 'gpu').
 *
 * The host-backend suite compares bytes; this one proves what only a GPU shows:
 * that a loaded mapping holds the file in device memory (a kernel checks every
 * word against the pattern the file was written with), also when the load runs
 * through many small chunks on many threads and from an unaligned offset (then
 * the bytes are copied back and compared); that the driver refuses a write into
 * a read-only mapping (cuMemsetD8, which fails cleanly — a kernel's write would
 * lose the context, so no kernel writes here); that a kernel's writes reach the
 * file through gpu_sync_file and gpu_unmap_file, and not with GPU_UNMAP_DISCARD;
 * that a zero-copy mapping is readable by a kernel over the bus; and what cuFile
 * does where libcufile is installed.
 *
 * Files are written to $TMPDIR (default /tmp) and removed afterwards. Without a
 * driver or a device the program prints why and exits 77. The cuFile test runs
 * alone with the argument "cufile" (meson: gpu-file-cufile): where libcufile
 * cannot be used it is skipped (cmocka's skip) and the program exits 77, so
 * that meson reports SKIP instead of a pass that checked nothing.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cuda_util.h"
#include "gpuheap.h"

#define MiB ((size_t)1 << 20)

static char dir[128];

#define CU_OK(call)                                                                          \
    do {                                                                                     \
        CUresult cu_ok_r_ = (call);                                                          \
        if (cu_ok_r_ != CUDA_SUCCESS) fail_msg("%s: %s", #call, cu_util_errname(cu_ok_r_)); \
    } while (0)

#define GPU_OK_(call)                                                                                  \
    do {                                                                                               \
        int gpu_ok_r_ = (call);                                                                        \
        if (gpu_ok_r_ != GPU_OK) fail_msg("%s: %s", #call, gpu_strerror(gpu_ok_r_));                   \
    } while (0)

static CUdeviceptr dptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }

/* Writes words cu_pattern(seed, i) for size bytes (a multiple of 4) to dir/name. */
static const char *make_file(const char *name, size_t size, uint32_t seed, char *path, size_t len) {
    snprintf(path, len, "%s/%s", dir, name);
    uint32_t *w = malloc(size);
    assert_non_null(w);
    for (size_t i = 0; i < size / 4; i++) w[i] = cu_pattern(seed, i);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, w, size), (ssize_t)size);
    close(fd);
    free(w);
    return path;
}

static unsigned char *read_all(const char *path, size_t *size) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    unsigned char *d = malloc((size_t)st.st_size + 1);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, d, (size_t)st.st_size), (ssize_t)st.st_size);
    close(fd);
    *size = (size_t)st.st_size;
    return d;
}

/* A kernel counts the words of [p, p+bytes) that differ from seed's pattern. */
static void expect_pattern(const void *p, size_t bytes, uint32_t seed) {
    uint64_t bad = cu_check(dptr(p), bytes / 4, seed, 0);
    if (bad != 0) fail_msg("%p (%zu bytes, seed %u): %llu words wrong", p, bytes, seed, (unsigned long long)bad);
}

static void heap_ok(gpu_heap_t *h) {
    char msg[512] = "";
    int rc = gpu_heap_check(h, msg, sizeof msg);
    if (rc != GPU_OK) fail_msg("gpu_heap_check: %s: %s", gpu_strerror(rc), msg);
}

static int heap_setup(void **state) {
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_CUDA;
    cfg.reserve_bytes = (size_t)64 << 30;
    gpu_heap_t *h = NULL;
    if (gpu_heap_create(&cfg, &h) != GPU_OK) return -1;
    *state = h;
    return 0;
}

static int heap_teardown(void **state) {
    unsetenv("GPUHEAP_FILE_CHUNK");
    unsetenv("GPUHEAP_FILE_THREADS");
    return gpu_heap_destroy(*state) == GPU_OK ? 0 : -1;
}

/* ---- tests ---------------------------------------------------------------------- */

/* Whole files, default and small chunks: a kernel checks every word. */
static void test_load_checksum(void **state) {
    gpu_heap_t *h = *state;
    char path[256];
    size_t size = 40 * MiB + 12;
    make_file("checksum", size, 7, path, sizeof path);
    const char *chunks[] = {NULL, "1M", "64K"};
    for (int c = 0; c < 3; c++) {
        if (chunks[c]) setenv("GPUHEAP_FILE_CHUNK", chunks[c], 1);
        void *p = NULL;
        GPU_OK_(gpu_heap_map_file(h, path, 0, 0, 0, &p));
        expect_pattern(p, size, 7);
        gpu_stats_t s;
        GPU_OK_(gpu_heap_stats(h, &s));
        assert_int_equal(s.file_loaded_bytes, size);
        assert_int_equal(s.file_mappings, 1);
        heap_ok(h);
        GPU_OK_(gpu_heap_unmap_file(h, p, 0));
    }
    unlink(path);
}

/* An unaligned offset and length: copied back and compared byte for byte. */
static void test_load_offset(void **state) {
    gpu_heap_t *h = *state;
    char path[256];
    size_t size = 9 * MiB, off = 12345, len = 5 * MiB + 7;
    make_file("offset", size, 8, path, sizeof path);
    setenv("GPUHEAP_FILE_CHUNK", "256K", 1);
    void *p = NULL;
    GPU_OK_(gpu_heap_map_file(h, path, off, len, 0, &p));
    unsigned char *back = malloc(len), *file = read_all(path, &size);
    CU_OK(cu.cuMemcpyDtoH(back, dptr(p), len));
    assert_memory_equal(back, file + off, len);
    free(back);
    free(file);
    GPU_OK_(gpu_unmap_file(p, 0));
    unlink(path);
}

/* The driver refuses a memset into a read-only mapping; the contents stay. */
static void test_read_only_refuses_writes(void **state) {
    gpu_heap_t *h = *state;
    char path[256];
    size_t size = 6 * MiB;
    make_file("readonly", size, 9, path, sizeof path);
    void *p = NULL;
    GPU_OK_(gpu_heap_map_file(h, path, 0, 0, 0, &p));
    CUresult r = cu.cuMemsetD8(dptr(p), 0, MiB);
    if (r == CUDA_SUCCESS) {
        cu.cuCtxSynchronize();
        fail_msg("cuMemsetD8 into a read-only file mapping succeeded");
    }
    printf("# cuMemsetD8 into the read-only mapping: %s (refused, as expected)\n", cu_util_errname(r));
    expect_pattern(p, size, 9);
    assert_int_equal(gpu_free(p), GPU_ERR_INVALID);
    GPU_OK_(gpu_unmap_file(p, 0));
    heap_ok(h);
    unlink(path);
}

/* A kernel writes a writable mapping; sync and unmap carry it to the file. */
static void test_write_back_round_trip(void **state) {
    gpu_heap_t *h = *state;
    char path[256];
    size_t size = 20 * MiB + 8;
    make_file("writeback", size, 10, path, sizeof path);
    setenv("GPUHEAP_FILE_CHUNK", "1M", 1);
    void *p = NULL;
    GPU_OK_(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, &p));
    expect_pattern(p, size, 10);
    CU_OK(cu_fill(dptr(p), size / 4, 11, 0)); /* not waited for: sync must wait */
    GPU_OK_(gpu_sync_file(p));
    size_t got;
    uint32_t *w = (uint32_t *)read_all(path, &got);
    assert_int_equal(got, size);
    for (size_t i = 0; i < size / 4; i++)
        if (w[i] != cu_pattern(11, i)) fail_msg("after sync: word %zu is %#x, expected %#x", i, w[i], cu_pattern(11, i));
    free(w);

    CU_OK(cu_fill(dptr(p), size / 4, 12, 0));
    GPU_OK_(gpu_unmap_file(p, 0));
    w = (uint32_t *)read_all(path, &got);
    for (size_t i = 0; i < size / 4; i++)
        if (w[i] != cu_pattern(12, i)) fail_msg("after unmap: word %zu is %#x, expected %#x", i, w[i], cu_pattern(12, i));
    free(w);

    GPU_OK_(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_WRITE, &p));
    expect_pattern(p, size, 12);
    CU_OK(cu_fill(dptr(p), size / 4, 13, 0));
    GPU_OK_(gpu_unmap_file(p, GPU_UNMAP_DISCARD));
    w = (uint32_t *)read_all(path, &got);
    for (size_t i = 0; i < size / 4; i++)
        if (w[i] != cu_pattern(12, i)) fail_msg("after discard: word %zu changed", i);
    free(w);
    heap_ok(h);
    unlink(path);
}

/* A kernel reads a zero-copy mapping over the bus. */
static void test_zerocopy_kernel_read(void **state) {
    gpu_heap_t *h = *state;
    char path[256];
    size_t size = 24 * MiB + 4;
    make_file("zerocopy", size, 14, path, sizeof path);
    void *p = NULL;
    GPU_OK_(gpu_heap_map_file(h, path, 0, 0, GPU_MAP_ZEROCOPY, &p));
    expect_pattern(p, size, 14);
    gpu_stats_t s;
    GPU_OK_(gpu_heap_stats(h, &s));
    assert_int_equal(s.file_zerocopy_bytes, size);
    assert_int_equal(s.live_blocks, 0);
    GPU_OK_(gpu_sync_file(p));
    GPU_OK_(gpu_unmap_file(p, 0));
    heap_ok(h);
    unlink(path);
}

/* Set when test_cufile skipped: main then exits 77. */
static int cufile_skipped;

/* cuFile where present; where libcufile cannot be used the load is refused
 * cleanly (nothing allocated) and the test is skipped, not passed. */
static void test_cufile(void **state) {
    gpu_heap_t *h = *state;
    char path[256];
    size_t size = 16 * MiB + 4;
    make_file("cufile", size, 15, path, sizeof path);
    void *p = NULL;
    int rc = gpu_heap_map_file(h, path, 0, 0, GPU_MAP_CUFILE, &p);
    unlink(path);
    if (rc == GPU_ERR_NO_DRIVER) {
        gpu_stats_t s;
        GPU_OK_(gpu_heap_stats(h, &s));
        assert_int_equal(s.live_blocks, 0);
        assert_int_equal(s.file_mappings, 0);
        heap_ok(h);
        printf("# cuFile unavailable here (GPU_ERR_NO_DRIVER): skipped; GPUHEAP_VERBOSE=1 says why\n");
        cufile_skipped = 1;
        skip();
    }
    GPU_OK_(rc);
    expect_pattern(p, size, 15);
    GPU_OK_(gpu_unmap_file(p, 0));
    printf("# cuFile load checked\n");
    heap_ok(h);
}

int main(int argc, char **argv) {
    int only_cufile = argc > 1 && strcmp(argv[1], "cufile") == 0;
    if (argc > 1 && !only_cufile) {
        fprintf(stderr, "usage: %s [cufile]\n", argv[0]);
        return 1;
    }
    int rc = cu_util_init(0);
    if (rc == CU_UTIL_SKIP) {
        fprintf(stderr, "test_gpu_file: skipped: no usable GPU (reason above)\n");
        return CU_UTIL_SKIP;
    }
    if (rc != 0) return 1;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/gpuheap-gpu-file-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    printf("# device: %s\n", cu_util_device_name());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_checksum, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_load_offset, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_read_only_refuses_writes, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_write_back_round_trip, heap_setup, heap_teardown),
        cmocka_unit_test_setup_teardown(test_zerocopy_kernel_read, heap_setup, heap_teardown),
    };
    const struct CMUnitTest cufile_tests[] = {
        cmocka_unit_test_setup_teardown(test_cufile, heap_setup, heap_teardown),
    };
    if (only_cufile) {
        rc = cmocka_run_group_tests_name("gpu_file_cufile", cufile_tests, NULL, NULL);
        if (rc == 0 && cufile_skipped) rc = CU_UTIL_SKIP;
    } else {
        rc = cmocka_run_group_tests_name("gpu_file", tests, NULL, NULL);
    }
    rmdir(dir);
    return rc;
}
