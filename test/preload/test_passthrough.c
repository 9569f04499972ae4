/*
 * test_passthrough.c — the interposer with a driver but no heap, and its line at
 * exit (suite 'unit'; meson runs it with LD_PRELOAD=libgpuheap-preload.so).
 *
 *   test_passthrough FAKE_DRIVER.so
 *
 * Each case runs this program again as a child (--child MODE) in an environment
 * of its own and reads the child's stderr:
 *  - with a driver (fake_cuda.c, symlinked as libcuda.so.1 on LD_LIBRARY_PATH)
 *    on which no heap can open — GPUHEAP_BACKEND misspelt, host, or a driver
 *    without the virtual memory API — cuMemAlloc_v2, cuMemFree_v2 and
 *    cuMemGetInfo_v2 reach the driver with the program's arguments, and the
 *    program gets the driver's answers unchanged;
 *  - with GPUHEAP_STATS=1 the interposer's exit line says that no heap was
 *    opened, why, and how many calls went to the driver; also where no driver
 *    loads at all, and in the process gpuheap-run started (GPUHEAP_RUN_PID)
 *    even when no CUDA call reached it. A process that used no CUDA and was
 *    not started by gpuheap-run stays silent, and so does every process
 *    without GPUHEAP_STATS;
 *  - the line is written at a normal exit only: the interposer installs no
 *    signal handler (the program finds SIGINT, SIGTERM at their defaults and an
 *    inherited ignored SIGHUP still ignored), and a program killed by SIGTERM
 *    writes no line (README.md, Interposer, says so);
 *  - under GPUHEAP_LIMIT, cuMemGetInfo_v2 reports the cap as the total and the
 *    room left under it as free (memory control).
 */
#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
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

#define FAKE_BASE 0xfa4e00000000ull

static const char *fake_path;
static char libdir[64]; /* holds libcuda.so.1 -> the fake */

typedef int (*mem_alloc_fn)(unsigned long long *, size_t);
typedef int (*mem_free_fn)(unsigned long long);
typedef int (*mem_get_info_fn)(size_t *, size_t *);
typedef void (*seen_fn)(int *, int *, int *, size_t *, unsigned long long *);

/* The child with a (fake) driver: the calls reach it untouched. Exit status 0,
 * or the step that went wrong. */
static int child_calls(void) {
    mem_alloc_fn mem_alloc = (mem_alloc_fn)dlsym(RTLD_DEFAULT, "cuMemAlloc_v2");
    mem_free_fn mem_free = (mem_free_fn)dlsym(RTLD_DEFAULT, "cuMemFree_v2");
    mem_get_info_fn mem_get_info = (mem_get_info_fn)dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2");
    if (!mem_alloc || !mem_free || !mem_get_info) return 1;
    unsigned long long p = 0;
    if (mem_alloc(&p, 12345) != 0 || p != FAKE_BASE + 0x100000) return 2; /* the driver's pointer */
    if (mem_free(p) != 0) return 3;
    size_t f = 0, t = 0;
    if (mem_get_info(&f, &t) != 0 || f != (size_t)3 << 30 || t != (size_t)4 << 30) return 4; /* nothing added */
    void *lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    seen_fn seen = lib ? (seen_fn)dlsym(lib, "fake_cuda_seen") : NULL;
    if (!seen) return 5; /* the interposer did not load the driver */
    int n_alloc, n_free, n_info;
    size_t size;
    unsigned long long freed;
    seen(&n_alloc, &n_free, &n_info, &size, &freed);
    if (n_alloc != 1 || size != 12345) return 6;
    if (n_free != 1 || freed != p) return 7;
    if (n_info != 1) return 8;
    return 0;
}

/* The child under GPUHEAP_LIMIT=1G: the driver's 4 GiB total and 3 GiB free are
 * reported as the cap and the room under it (no heap holds anything). */
static int child_cap(void) {
    mem_get_info_fn mem_get_info = (mem_get_info_fn)dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2");
    size_t f = 0, t = 0;
    if (!mem_get_info || mem_get_info(&f, &t) != 0) return 1;
    return t == (size_t)1 << 30 && f == (size_t)1 << 30 ? 0 : 2;
}

/* The child without a driver: the wrappers answer as a missing driver would. */
static int child_no_driver(void) {
    mem_alloc_fn mem_alloc = (mem_alloc_fn)dlsym(RTLD_DEFAULT, "cuMemAlloc_v2");
    mem_free_fn mem_free = (mem_free_fn)dlsym(RTLD_DEFAULT, "cuMemFree_v2");
    unsigned long long p = 0;
    if (mem_alloc(&p, 4096) != 3 || p) return 1; /* CUDA_ERROR_NOT_INITIALIZED */
    return mem_free(0x1000) == 3 ? 0 : 2;
}

/* The child that checks the signal dispositions it was given: the defaults,
 * and SIGHUP ignored by the parent. */
static int child_signals(void) {
    struct sigaction sa;
    if (sigaction(SIGINT, NULL, &sa) != 0 || sa.sa_handler != SIG_DFL) return 1;
    if (sigaction(SIGTERM, NULL, &sa) != 0 || sa.sa_handler != SIG_DFL) return 2;
    if (sigaction(SIGHUP, NULL, &sa) != 0 || sa.sa_handler != SIG_IGN) return 3;
    return child_calls() ? 4 : 0;
}

struct child_env {
    const char *mode;
    bool driver;
    const char *backend, *stats;
    bool run_pid;
};

static void child_prepare(void *arg) {
    const struct child_env *e = arg;
    unsetenv("GPUHEAP_VERBOSE");
    unsetenv("GPUHEAP_RUN_PID");
    if (e->driver) setenv("LD_LIBRARY_PATH", libdir, 1); else unsetenv("LD_LIBRARY_PATH");
    if (e->backend) setenv("GPUHEAP_BACKEND", e->backend, 1); else unsetenv("GPUHEAP_BACKEND");
    if (e->stats) setenv("GPUHEAP_STATS", e->stats, 1); else unsetenv("GPUHEAP_STATS");
    if (!strcmp(e->mode, "signals")) signal(SIGHUP, SIG_IGN); /* as nohup does; exec keeps it */
    if (e->run_pid) {
        char s[32];
        snprintf(s, sizeof s, "%d", (int)getpid()); /* exec keeps it, as in gpuheap-run */
        setenv("GPUHEAP_RUN_PID", s, 1);
    }
}

/* Runs `--child mode` with the driver (or none) and GPUHEAP_BACKEND, GPUHEAP_STATS
 * as given (NULL: unset); run_pid: GPUHEAP_RUN_PID is the child's own pid.
 * Returns the exit status (1000 + the signal when one ended it); the child's
 * stderr in err. */
static int child(const char *mode, bool driver, const char *backend, const char *stats, bool run_pid, char *err,
                 size_t len) {
    struct child_env e = {mode, driver, backend, stats, run_pid};
    char *const argv[] = {"test_passthrough", "--child", (char *)mode, NULL};
    return child_run(argv, child_prepare, &e, err, len);
}

/* The interposer's exit line in err, or NULL. */
static const char *exit_line(const char *err) { return strstr(err, "gpuheap-preload: "); }

static void expect_no_heap_line(const char *err, const char *why, const char *counts) {
    const char *line = exit_line(err);
    if (!line || !strstr(line, "no heap opened") || !strstr(line, why) ||
        !strstr(line, "every call was passed to the driver") || !strstr(line, counts))
        fail_msg("expected the no-heap line with \"%s\" and \"%s\"; stderr:\n%s", why, counts, err);
}

static void test_misspelt_backend_passes_through(void **state) {
    (void)state;
    char err[4096];
    int rc = child("calls", true, "hots", NULL, false, err, sizeof err);
    if (rc) fail_msg("step %d: a call did not reach the driver untouched; stderr:\n%s", rc, err);
    assert_non_null(strstr(err, "GPUHEAP_BACKEND=hots")); /* the library says so once */
    assert_null(exit_line(err));                           /* no --stats, no line */
    assert_int_equal(child("calls", true, "hots", "1", false, err, sizeof err), 0);
    expect_no_heap_line(err, "GPUHEAP_BACKEND=hots", "(1 allocations, 1 frees)");
}

static void test_host_backend_passes_through(void **state) {
    (void)state;
    char err[4096];
    assert_int_equal(child("calls", true, "host", "1", false, err, sizeof err), 0);
    expect_no_heap_line(err, "GPUHEAP_BACKEND=host", "(1 allocations, 1 frees)");
}

static void test_heap_that_cannot_open_passes_through(void **state) {
    (void)state;
    char err[4096];
    assert_int_equal(child("calls", true, NULL, "1", false, err, sizeof err), 0);
    /* The library's own reason: this driver lacks what the CUDA backend needs. */
    expect_no_heap_line(err, "libcuda.so.1 lacks", "(1 allocations, 1 frees)");
}

static void test_no_driver_line(void **state) {
    (void)state;
    if (dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) skip(); /* a real driver here */
    char err[4096];
    assert_int_equal(child("no-driver", false, NULL, "1", false, err, sizeof err), 0);
    expect_no_heap_line(err, "no CUDA driver", "(1 allocations, 1 frees)");
    /* gpuheap-run's program says so even when nothing reached the interposer. */
    assert_int_equal(child("nothing", false, NULL, "1", true, err, sizeof err), 0);
    expect_no_heap_line(err, "no CUDA driver", "(0 allocations, 0 frees)");
}

static void test_silent_where_cuda_was_not_used(void **state) {
    (void)state;
    char err[4096];
    assert_int_equal(child("nothing", true, NULL, "1", false, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_int_equal(child("nothing", true, NULL, NULL, true, err, sizeof err), 0);
    assert_string_equal(err, "");
}

/* Memory info under a cap (GPUHEAP_LIMIT): min(total, cap), and the room left. */
static void test_memory_info_under_a_cap(void **state) {
    (void)state;
    char err[4096];
    setenv("GPUHEAP_LIMIT", "1G", 1);
    int rc = child("cap", true, NULL, NULL, false, err, sizeof err);
    unsetenv("GPUHEAP_LIMIT");
    if (rc) fail_msg("step %d: cuMemGetInfo did not report the cap; stderr:\n%s", rc, err);
}

static void test_exit_line_at_normal_exit_only(void **state) {
    (void)state;
    char err[4096];
    int rc = child("signals", true, "hots", "1", false, err, sizeof err);
    if (rc) fail_msg("step %d: the interposer changed a signal disposition (or a call); stderr:\n%s", rc, err);
    expect_no_heap_line(err, "GPUHEAP_BACKEND=hots", "(1 allocations, 1 frees)");
    /* Killed by SIGTERM's default action: no line, as documented. */
    assert_int_equal(child("killed", true, "hots", "1", true, err, sizeof err), 1000 + SIGTERM);
    assert_null(exit_line(err));
}

int main(int argc, char **argv) {
    const char *preload = getenv("LD_PRELOAD");
    if (!preload || !strstr(preload, "libgpuheap-preload.so")) {
        fprintf(stderr, "test_passthrough runs under LD_PRELOAD=libgpuheap-preload.so (meson sets it)\n");
        return 77;
    }
    if (argc > 2 && !strcmp(argv[1], "--child")) {
        if (!strcmp(argv[2], "calls")) return child_calls();
        if (!strcmp(argv[2], "no-driver")) return child_no_driver();
        if (!strcmp(argv[2], "nothing")) return 0;
        if (!strcmp(argv[2], "cap")) return child_cap();
        if (!strcmp(argv[2], "signals")) return child_signals();
        if (!strcmp(argv[2], "killed")) {
            if (child_calls()) return 1;
            raise(SIGTERM);
            return 2;
        }
        return 126;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: test_passthrough FAKE_DRIVER.so\n");
        return 2;
    }
    fake_path = argv[1];
    snprintf(libdir, sizeof libdir, "/tmp/gpuheap-fakecuda-XXXXXX");
    if (!mkdtemp(libdir)) return 1;
    char link[128];
    snprintf(link, sizeof link, "%s/libcuda.so.1", libdir);
    char *abs = realpath(fake_path, NULL);
    if (!abs || symlink(abs, link) != 0) return 1;
    free(abs);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_misspelt_backend_passes_through),
        cmocka_unit_test(test_host_backend_passes_through),
        cmocka_unit_test(test_heap_that_cannot_open_passes_through),
        cmocka_unit_test(test_no_driver_line),
        cmocka_unit_test(test_silent_where_cuda_was_not_used),
        cmocka_unit_test(test_exit_line_at_normal_exit_only),
        cmocka_unit_test(test_memory_info_under_a_cap),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(link);
    rmdir(libdir);
    return rc;
}
