/*
 * test_ipc_hooks.c — the interposer's IPC memory-handle hooks without a GPU
 * (suite 'unit'; meson runs it with LD_PRELOAD=libgpuheap-preload.so).
 *
 *   test_ipc_hooks FAKE_DRIVER.so FAKE_RUNTIME.so
 *
 * Each case runs this program again as a child (--child MODE) with the fake
 * driver (fake_cuda.c) as libcuda.so.1 and the fake runtime (fake_cudart.c) as
 * libcudart.so.13 on LD_LIBRARY_PATH, and reads the child's stderr:
 *  - pointers that are not heap memory and handles gpuheap did not make reach
 *    the driver with the program's arguments (the 64 handle bytes, the flags,
 *    the pointer), by every way a program finds the calls: the exported names
 *    (cuIpcGetMemHandle, cuIpcOpenMemHandle_v2, the pre-11.0 cuIpcOpenMemHandle,
 *    cuIpcCloseMemHandle) and cuGetProcAddress, which hands out the wrappers;
 *    the program gets the driver's answer, a refusal included (and at
 *    GPUHEAP_VERBOSE=1 a note that the handle was not gpuheap's);
 *  - a handle with gpuheap's magic but a wrong checksum is not gpuheap's: the
 *    driver gets it untouched;
 *  - event handles are not the interposer's: its symbols and cuGetProcAddress
 *    give the driver's own function;
 *  - the runtime's calls (cudaIpc*), passed on to a runtime that reaches the
 *    driver through the wrapped resolver, arrive at the driver untouched and are
 *    counted once in the exit line ("IPC get/open/close");
 *  - the whole loop that gpuheap serves, on the host backend (GPUHEAP_BACKEND=host,
 *    where a block's bytes are host memory): a block from gpu_torch_alloc exported
 *    through the hooks (from an interior pointer too), opened by an exec'd
 *    importer through the hooks, read there, answered by the range queries with
 *    the block's bounds, refused for export again, written, closed; the exporter
 *    sees the importer's bytes, and both exit lines count what was served.
 */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../child.h"
#include "fake_libs.h"

#define FAKE_BASE 0xfa4e00000000ull
#define FAKE_IMPORT (FAKE_BASE + 0x70000000)

typedef struct {
    unsigned char bytes[64];
} handle64;
typedef int (*get_fn)(handle64 *, unsigned long long);
typedef int (*open_fn)(unsigned long long *, handle64, unsigned);
typedef int (*close_fn)(unsigned long long);
typedef int (*getproc_fn)(const char *, void **, int, uint64_t, int *);
typedef void (*ipc_seen_fn)(int counts[4], unsigned char handle[64], unsigned *flags, unsigned long long *ptr);

static char libdir[64]; /* libcuda.so.1 and libcudart.so.13 -> the fakes */

/* The file name of the object that defines p. */
static const char *object_of(void *p) {
    Dl_info info;
    if (!p || !dladdr(p, &info) || !info.dli_fname) return "";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

/* What reached the fake driver. */
static void seen(int counts[4], handle64 *h, unsigned *flags, unsigned long long *ptr) {
    void *lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    ipc_seen_fn f = lib ? (ipc_seen_fn)dlsym(lib, "fake_cuda_ipc_seen") : NULL;
    if (!f) {
        fprintf(stderr, "the fake driver is not loaded\n");
        exit(90);
    }
    f(counts, h->bytes, flags, ptr);
}

/* A handle that is nobody's: 64 bytes of a pattern. */
static handle64 driver_handle(unsigned char seed) {
    handle64 h;
    for (int i = 0; i < 64; i++) h.bytes[i] = (unsigned char)(seed + 3 * i);
    return h;
}

/* The driver-level calls, by name and through cuGetProcAddress. Exit status 0,
 * or the step that went wrong. */
static int child_driver(void) {
    get_fn get = (get_fn)dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    open_fn open2 = (open_fn)dlsym(RTLD_DEFAULT, "cuIpcOpenMemHandle_v2");
    open_fn open1 = (open_fn)dlsym(RTLD_DEFAULT, "cuIpcOpenMemHandle");
    close_fn close = (close_fn)dlsym(RTLD_DEFAULT, "cuIpcCloseMemHandle");
    getproc_fn getproc = (getproc_fn)dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2");
    if (!get || !open2 || !open1 || !close || !getproc) return 1;
    if (strcmp(object_of((void *)open1), "libgpuheap-preload.so")) return 2; /* the old ABI is wrapped too */
    int counts[4];
    handle64 h, last;
    unsigned flags;
    unsigned long long ptr, p = 0;

    /* get: a foreign pointer goes to the driver, whose handle the program gets */
    if (get(&h, FAKE_BASE + 0x1234) != 0 || h.bytes[0] != 0x34 || h.bytes[63] != 0x5a) return 3;
    seen(counts, &last, &flags, &ptr);
    if (counts[0] != 1 || ptr != FAKE_BASE + 0x1234) return 4;

    /* open through cuGetProcAddress (how a static runtime finds it): the wrapper */
    open_fn open_resolved = NULL;
    int status = -1;
    if (getproc("cuIpcOpenMemHandle", (void **)&open_resolved, 12000, 0, &status) != 0 || status != 0) return 5;
    if (strcmp(object_of((void *)open_resolved), "libgpuheap-preload.so")) return 6;
    handle64 d = driver_handle(7);
    if (open_resolved(&p, d, 1) != 0 || p != FAKE_IMPORT) return 7;
    seen(counts, &last, &flags, &ptr);
    if (counts[1] != 1 || memcmp(last.bytes, d.bytes, 64) || flags != 1) return 8;

    /* gpuheap's magic ("GHIP") with a wrong checksum: not gpuheap's, untouched */
    handle64 forged = driver_handle(9);
    memcpy(forged.bytes, "GHIP", 4);
    forged.bytes[4] = 1, forged.bytes[5] = 0;
    if (open1(&p, forged, 0) != 0) return 9;
    seen(counts, &last, &flags, &ptr);
    if (counts[1] != 2 || memcmp(last.bytes, forged.bytes, 64) || flags != 0) return 10;

    /* the driver's refusal reaches the program as it is */
    handle64 bad = driver_handle(1);
    bad.bytes[1] = 0xee;
    p = 0;
    if (open2(&p, bad, 1) != 1 || p != 0) return 11;

    /* close: a pointer gpuheap did not import goes to the driver */
    if (close(FAKE_IMPORT) != 0) return 12;
    seen(counts, &last, &flags, &ptr);
    if (counts[2] != 1 || ptr != FAKE_IMPORT) return 13;

    /* event handles: the interposer defines none, and the resolver gives the
     * driver's own function */
    void *event_by_name = dlsym(RTLD_DEFAULT, "cuIpcGetEventHandle"); /* NULL: the driver is loaded locally */
    void *event_resolved = NULL;
    if (event_by_name && !strcmp(object_of(event_by_name), "libgpuheap-preload.so")) return 14;
    if (getproc("cuIpcGetEventHandle", &event_resolved, 12000, 0, &status) != 0) return 15;
    if (strcmp(object_of(event_resolved), "libcuda.so.1")) return 16;
    if (dlsym(RTLD_DEFAULT, "cudaIpcGetEventHandle") || dlsym(RTLD_DEFAULT, "cudaIpcOpenEventHandle")) return 17;
    return 0;
}

/* The runtime-level calls, passed on to a runtime that calls the wrapped driver. */
static int child_runtime(void) {
    if (!dlopen("libcudart.so.13", RTLD_NOW | RTLD_LOCAL)) return 1; /* as a Python extension loads it */
    int (*get)(handle64 *, void *) = (int (*)(handle64 *, void *))dlsym(RTLD_DEFAULT, "cudaIpcGetMemHandle");
    int (*open)(void **, handle64, unsigned) = (int (*)(void **, handle64, unsigned))dlsym(RTLD_DEFAULT, "cudaIpcOpenMemHandle");
    int (*close)(void *) = (int (*)(void *))dlsym(RTLD_DEFAULT, "cudaIpcCloseMemHandle");
    if (!get || !open || !close) return 2;
    if (strcmp(object_of((void *)open), "libgpuheap-preload.so")) return 3; /* the hook, not the runtime */
    int counts[4];
    handle64 h, last;
    unsigned flags;
    unsigned long long ptr;
    if (get(&h, (void *)(uintptr_t)(FAKE_BASE + 0x77)) != 0 || h.bytes[0] != 0x77) return 4;
    handle64 d = driver_handle(42);
    void *p = NULL;
    if (open(&p, d, 1) != 0 || (uintptr_t)p != FAKE_IMPORT) return 5;
    if (close(p) != 0) return 6;
    seen(counts, &last, &flags, &ptr);
    if (counts[0] != 1 || counts[1] != 1 || counts[2] != 1) return 7;
    if (memcmp(last.bytes, d.bytes, 64) || flags != 1 || ptr != FAKE_IMPORT) return 8;
    return 0;
}

/* ---- the whole loop on the host backend (no GPU): gpuheap handles served ---------- */

#define HOST_BYTES ((size_t)(1 << 20) + 4096)

static void to_hex(const handle64 *h, char *hex) {
    for (int i = 0; i < 64; i++) sprintf(hex + 2 * i, "%02x", h->bytes[i]);
}

static bool from_hex(const char *hex, handle64 *h) {
    if (strlen(hex) != 128) return false;
    for (int i = 0; i < 64; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return false;
        h->bytes[i] = (unsigned char)v;
    }
    return true;
}

/* The exporter: a host-heap block from the framework entry point, exported by
 * the driver-level hook from an interior pointer and by the runtime-level hook
 * (no runtime is loaded: gpuheap answers), then opened by an importer it starts. */
static int child_host_export(void) {
    void *(*torch_alloc)(ssize_t, int, void *) = (void *(*)(ssize_t, int, void *))dlsym(RTLD_DEFAULT, "gpu_torch_alloc");
    get_fn get = (get_fn)dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    int (*rt_get)(handle64 *, void *) = (int (*)(handle64 *, void *))dlsym(RTLD_DEFAULT, "cudaIpcGetMemHandle");
    if (!torch_alloc || !get || !rt_get) return 1;
    unsigned char *p = torch_alloc((ssize_t)HOST_BYTES, 0, NULL);
    if (!p) return 2;
    memset(p, 0xab, HOST_BYTES); /* host backend: the bytes are the process's own */
    handle64 h, h2;
    if (get(&h, (unsigned long long)(uintptr_t)(p + 1000)) != 0) return 3; /* an interior pointer: its block */
    if (rt_get(&h2, p) != 0) return 4;
    if (get(&h2, (unsigned long long)(uintptr_t)(p + HOST_BYTES + (8u << 20))) != 1) return 5; /* no live block */
    char hex[129];
    to_hex(&h, hex);
    pid_t pid = fork();
    if (pid < 0) return 6;
    if (pid == 0) {
        execl("/proc/self/exe", "test_ipc_hooks", "--child", "host-import", hex, (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return 7;
    if (WEXITSTATUS(status)) return 20 + WEXITSTATUS(status); /* the importer's step, plus 20 */
    for (size_t i = 0; i < HOST_BYTES; i++)
        if (p[i] != 0xcd) return 8; /* the importer's bytes */
    return 0;
}

/* The importer: opens the handle, reads the exporter's bytes, checks the range
 * queries, cannot export it again, writes its own bytes, closes. */
static int child_host_import(const char *hex) {
    handle64 h;
    if (!from_hex(hex, &h)) return 1;
    open_fn open2 = (open_fn)dlsym(RTLD_DEFAULT, "cuIpcOpenMemHandle_v2");
    close_fn close = (close_fn)dlsym(RTLD_DEFAULT, "cuIpcCloseMemHandle");
    get_fn get = (get_fn)dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    int (*range)(unsigned long long *, size_t *, unsigned long long) =
        (int (*)(unsigned long long *, size_t *, unsigned long long))dlsym(RTLD_DEFAULT, "cuMemGetAddressRange_v2");
    int (*attribute)(void *, int, unsigned long long) =
        (int (*)(void *, int, unsigned long long))dlsym(RTLD_DEFAULT, "cuPointerGetAttribute");
    if (!open2 || !close || !get || !range || !attribute) return 2;
    unsigned long long d = 0;
    if (open2(&d, h, 1) != 0 || !d) return 3;
    unsigned char *p = (unsigned char *)(uintptr_t)d;
    for (size_t i = 0; i < HOST_BYTES; i++)
        if (p[i] != 0xab) return 4;
    unsigned long long base = 0, start = 0;
    size_t len = 0, rsize = 0;
    if (range(&base, &len, d + 4242) != 0 || base != d || len < HOST_BYTES) return 5;
    if (attribute(&start, 11 /* RANGE_START_ADDR */, d + 7) != 0 || start != d) return 6;
    if (attribute(&rsize, 12 /* RANGE_SIZE */, d + 7) != 0 || rsize != len) return 7;
    handle64 again;
    if (get(&again, d) != 1) return 8; /* imported memory is not exported again */
    memset(p, 0xcd, HOST_BYTES);
    if (close(d) != 0) return 9;
    return 0;
}

struct child_env {
    const char *mode, *verbose;
};

static void child_prepare(void *arg) {
    const struct child_env *e = arg;
    setenv("LD_LIBRARY_PATH", libdir, 1);
    setenv("GPUHEAP_STATS", "1", 1);
    unsetenv("GPUHEAP_RUN_PID");
    if (!strncmp(e->mode, "host", 4)) setenv("GPUHEAP_BACKEND", "host", 1); else unsetenv("GPUHEAP_BACKEND");
    if (e->verbose) setenv("GPUHEAP_VERBOSE", e->verbose, 1); else unsetenv("GPUHEAP_VERBOSE");
}

/* Runs `--child mode` with the fakes, GPUHEAP_STATS=1 and GPUHEAP_VERBOSE as
 * given; returns the exit status, the child's stderr in err. */
static int child(const char *mode, const char *verbose, char *err, size_t len) {
    struct child_env e = {mode, verbose};
    char *const argv[] = {"test_ipc_hooks", "--child", (char *)mode, NULL};
    return child_run(argv, child_prepare, &e, err, len);
}

static void expect_in(const char *err, const char *what) {
    if (!strstr(err, what)) fail_msg("expected \"%s\" in stderr:\n%s", what, err);
}

static void test_driver_calls_pass_through(void **state) {
    (void)state;
    char err[8192];
    int rc = child("driver", NULL, err, sizeof err);
    if (rc) fail_msg("step %d: an IPC call did not reach the driver untouched; stderr:\n%s", rc, err);
    /* get 1, open 3 (one refused by the driver), close 1: all the driver's */
    expect_in(err, "IPC get/open/close 1/3/1");
    assert_null(strstr(err, "the driver refused")); /* quiet unless verbose */
}

static void test_driver_refusal_is_explained_when_verbose(void **state) {
    (void)state;
    char err[8192];
    assert_int_equal(child("driver", "1", err, sizeof err), 0);
    expect_in(err, "cuIpcOpenMemHandle_v2: the driver refused the handle (CUDA error 1)");
    expect_in(err, "not a gpuheap handle");
}

static void test_runtime_calls_pass_through_once(void **state) {
    (void)state;
    char err[8192];
    int rc = child("runtime", NULL, err, sizeof err);
    if (rc) fail_msg("step %d: a runtime IPC call did not reach the driver untouched; stderr:\n%s", rc, err);
    expect_in(err, "IPC get/open/close 1/1/1"); /* not 2/2/2: the driver wrapper did not count again */
}

static void test_host_backend_whole_loop(void **state) {
    (void)state;
    char err[16384];
    int rc = child("host-export", NULL, err, sizeof err);
    if (rc) fail_msg("step %d of the host loop failed (20+: the importer's); stderr:\n%s", rc, err);
    expect_in(err, "IPC get/open/close: 2/0/0 served by gpuheap, 1/0/0 failed there"); /* the exporter */
    expect_in(err, "IPC get/open/close: 0/1/1 served by gpuheap, 1/0/0 failed there"); /* the importer */
}

int main(int argc, char **argv) {
    const char *preload = getenv("LD_PRELOAD");
    if (!preload || !strstr(preload, "libgpuheap-preload.so")) {
        fprintf(stderr, "test_ipc_hooks runs under LD_PRELOAD=libgpuheap-preload.so (meson sets it)\n");
        return 77;
    }
    if (argc > 2 && !strcmp(argv[1], "--child")) {
        if (!strcmp(argv[2], "driver")) return child_driver();
        if (!strcmp(argv[2], "runtime")) return child_runtime();
        if (!strcmp(argv[2], "host-export")) return child_host_export();
        if (!strcmp(argv[2], "host-import") && argc > 3) return child_host_import(argv[3]);
        return 126;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: test_ipc_hooks FAKE_DRIVER.so FAKE_RUNTIME.so\n");
        return 2;
    }
    snprintf(libdir, sizeof libdir, "/tmp/gpuheap-fakeipc-XXXXXX");
    if (fake_libs_make(libdir, argv[1], argv[2]) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_driver_calls_pass_through),
        cmocka_unit_test(test_driver_refusal_is_explained_when_verbose),
        cmocka_unit_test(test_runtime_calls_pass_through_once),
        cmocka_unit_test(test_host_backend_whole_loop),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fake_libs_remove(libdir);
    return rc;
}
