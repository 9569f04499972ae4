/*
 * test_served.c — the interposer serving allocations from a heap on a driver
 * with the virtual memory API, without a GPU (suite 'unit'; meson runs it with
 * LD_PRELOAD=libgpuheap-preload.so).
 *
 *   test_served FAKE_VMM_DRIVER.so FAKE_RUNTIME.so
 *
 * Each case runs this program again as a child (--child MODE) with the fake
 * driver (fake_cuda.c + fake_cuda_vmm.c: a 1 GiB device whose memory is never
 * touched) as libcuda.so.1 and the fake runtime (fake_cudart.c) as
 * libcudart.so.13 on LD_LIBRARY_PATH, and reads the child's stderr:
 *  - under a cap (GPUHEAP_LIMIT), an allocation the heap refuses as out of
 *    memory is answered out of memory — CUDA_ERROR_OUT_OF_MEMORY from
 *    cuMemAlloc_v2, cudaErrorMemoryAllocation from cudaMalloc — and never
 *    reaches the driver's or the runtime's allocation, which would hold memory
 *    past the cap; freeing makes room again; the exit line counts the refusals;
 *  - without a cap, an allocation the heap cannot serve (the device is full)
 *    still goes to the real function, whose answer the program gets;
 *  - the free order: legacy from the first allocation, a non-blocking stream
 *    listed to wait as the legacy stream does; events once the program creates
 *    a context of its own or sets GPUHEAP_FREE_ORDER=event (the exit line says
 *    which, and why).
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

#define MiB ((size_t)1 << 20)
#define FAKE_BASE 0xfa4e00000000ull /* fake_cuda.c's cuMemAlloc_v2 pointers */
#define FAKE_RUNTIME_PTR 0xca0000000000ull /* fake_cudart.c's cudaMalloc pointer */

typedef int (*mem_alloc_fn)(unsigned long long *, size_t);
typedef int (*mem_free_fn)(unsigned long long);
typedef int (*cuda_malloc_fn)(void **, size_t);
typedef void (*seen_fn)(int *, int *, int *, size_t *, unsigned long long *);
typedef size_t (*created_fn)(void);
typedef int (*mallocs_fn)(void);

static char libdir[64]; /* libcuda.so.1 and libcudart.so.13 -> the fakes */

/* What the child calls, and what it asks the fakes. */
typedef struct calls {
    mem_alloc_fn mem_alloc;
    mem_free_fn mem_free;
    cuda_malloc_fn cuda_malloc;
    seen_fn seen;
    created_fn created;
    mallocs_fn runtime_mallocs;
} calls;

static bool calls_get(calls *c) {
    void *rt = dlopen("libcudart.so.13", RTLD_NOW | RTLD_LOCAL); /* as a Python extension loads it */
    c->mem_alloc = (mem_alloc_fn)dlsym(RTLD_DEFAULT, "cuMemAlloc_v2");
    c->mem_free = (mem_free_fn)dlsym(RTLD_DEFAULT, "cuMemFree_v2");
    c->cuda_malloc = (cuda_malloc_fn)dlsym(RTLD_DEFAULT, "cudaMalloc"); /* the interposer's */
    void *drv = dlopen("libcuda.so.1", RTLD_LAZY);
    c->seen = drv ? (seen_fn)dlsym(drv, "fake_cuda_seen") : NULL;
    c->created = drv ? (created_fn)dlsym(drv, "fake_cuda_created") : NULL;
    c->runtime_mallocs = rt ? (mallocs_fn)dlsym(rt, "fake_cudart_mallocs") : NULL;
    return c->mem_alloc && c->mem_free && c->cuda_malloc && c->seen && c->created && c->runtime_mallocs;
}

/* cuMemAlloc_v2 calls that reached the fake driver. */
static int driver_allocs(const calls *c) {
    int n_alloc, n_free, n_info;
    size_t size;
    unsigned long long freed;
    c->seen(&n_alloc, &n_free, &n_info, &size, &freed);
    return n_alloc;
}

/* Under GPUHEAP_LIMIT=64M. Exit status 0, or the step that went wrong. */
static int child_cap(void) {
    calls c;
    if (!calls_get(&c)) return 1;
    unsigned long long p = 0, q = 0;
    if (c.mem_alloc(&p, 32 * MiB) != 0 || !p || (p >> 40) == (FAKE_BASE >> 40)) return 2; /* the heap's */
    if (c.created() != 32 * MiB) return 3;
    if (c.mem_alloc(&q, 48 * MiB) != 2 || q) return 4; /* CUDA_ERROR_OUT_OF_MEMORY: 80 MiB > 64 MiB */
    void *r = NULL;
    if (c.cuda_malloc(&r, 48 * MiB) != 2 || r) return 5; /* cudaErrorMemoryAllocation */
    if (driver_allocs(&c) != 0 || c.runtime_mallocs() != 0) return 6; /* neither was passed on */
    if (c.created() != 32 * MiB) return 7;
    if (c.mem_free(p) != 0) return 8;
    if (c.mem_alloc(&q, 48 * MiB) != 0 || !q) return 9; /* the freed 32 MiB went back to make room */
    if (c.created() > 64 * MiB) return 10;
    if (c.cuda_malloc(&r, 32 * MiB) != 2) return 11; /* 48 + 32 > 64 again */
    if (c.mem_free(q) != 0) return 12;
    if (driver_allocs(&c) != 0 || c.runtime_mallocs() != 0) return 13;
    return 0;
}

/* No cap: past the fake device's 1 GiB the heap fails and the real functions answer. */
static int child_no_cap(void) {
    calls c;
    if (!calls_get(&c)) return 1;
    unsigned long long p = 0, q = 0;
    if (c.mem_alloc(&p, 8 * MiB) != 0 || (p >> 40) == (FAKE_BASE >> 40)) return 2; /* the heap's */
    if (c.mem_alloc(&q, 2048 * MiB) != 0 || q != FAKE_BASE + 0x100000) return 3; /* the driver's */
    void *r = NULL;
    if (c.cuda_malloc(&r, 2048 * MiB) != 0 || r != (void *)(uintptr_t)FAKE_RUNTIME_PTR) return 4; /* the runtime's */
    if (driver_allocs(&c) != 1 || c.runtime_mallocs() != 1) return 5;
    return c.mem_free(p) == 0 ? 0 : 6;
}

/* The free order: the first allocation sets legacy order (the exit line says
 * which); a blocking stream keeps it, a non-blocking one ends it (with
 * "non-blocking" as the argument). */
typedef int (*stream_create_fn)(void **, unsigned);
typedef int (*stream_destroy_fn)(void *);
typedef int (*ctx_create_fn)(void **, unsigned, int);
static int child_order(const char *what) {
    calls c;
    if (!calls_get(&c)) return 1;
    stream_create_fn create = (stream_create_fn)dlsym(RTLD_DEFAULT, "cuStreamCreate"); /* the interposer's */
    stream_destroy_fn destroy = (stream_destroy_fn)dlsym(RTLD_DEFAULT, "cuStreamDestroy_v2");
    ctx_create_fn ctx_create = (ctx_create_fn)dlsym(RTLD_DEFAULT, "cuCtxCreate_v2");
    if (!create || !destroy || !ctx_create) return 2;
    unsigned long long p = 0;
    if (c.mem_alloc(&p, 8 * MiB) != 0 || (p >> 40) == (FAKE_BASE >> 40)) return 3; /* the heap's */
    void *s = NULL, *n = NULL, *ctx = NULL;
    if (create(&s, 0) != 0 || !s) return 4; /* CU_STREAM_DEFAULT: blocking */
    if (strstr(what, "non-blocking") && (create(&n, 1) != 0 || !n)) return 5; /* CU_STREAM_NON_BLOCKING: listed */
    if (c.mem_free(p) != 0 || c.mem_alloc(&p, 8 * MiB) != 0) return 6; /* a release in order */
    if (n && destroy(n) != 0) return 7;
    if (strstr(what, "context")) (void)ctx_create(&ctx, 0, 0); /* the fake has none: only the order matters */
    return c.mem_free(p) == 0 ? 0 : 8;
}

static const char *free_order_env; /* GPUHEAP_FREE_ORDER for the next child (NULL: unset) */

static void child_prepare(void *arg) {
    const char *limit = arg;
    if (free_order_env) setenv("GPUHEAP_FREE_ORDER", free_order_env, 1); else unsetenv("GPUHEAP_FREE_ORDER");
    setenv("LD_LIBRARY_PATH", libdir, 1);
    setenv("GPUHEAP_STATS", "1", 1);
    unsetenv("GPUHEAP_RUN_PID");
    unsetenv("GPUHEAP_BACKEND");
    unsetenv("GPUHEAP_VERBOSE");
    setenv("GPUHEAP_IPC", "0", 1); /* the fake has no exportable memory */
    if (limit) setenv("GPUHEAP_LIMIT", limit, 1); else unsetenv("GPUHEAP_LIMIT");
}

/* Runs `--child mode` with the fakes, GPUHEAP_STATS=1 and GPUHEAP_LIMIT as given
 * (NULL: unset); returns the exit status, the child's stderr in err. */
static int child(const char *mode, const char *limit, char *err, size_t len) {
    char *const argv[] = {"test_served", "--child", (char *)mode, NULL};
    return child_run(argv, child_prepare, (void *)limit, err, len);
}

static void expect_in(const char *err, const char *what) {
    if (!strstr(err, what)) fail_msg("expected \"%s\" in stderr:\n%s", what, err);
}

static void test_out_of_memory_under_the_cap_is_the_answer(void **state) {
    (void)state;
    char err[8192];
    int rc = child("cap", "64M", err, sizeof err);
    if (rc) fail_msg("step %d: an allocation past the cap was not answered out of memory; stderr:\n%s", rc, err);
    expect_in(err, "3 refused as out of memory under the cap (GPUHEAP_LIMIT), 0 passed on");
}

static void test_without_a_cap_a_refused_allocation_passes_on(void **state) {
    (void)state;
    char err[8192];
    int rc = child("no-cap", NULL, err, sizeof err);
    if (rc) fail_msg("step %d: an allocation the heap could not serve did not reach the driver; stderr:\n%s", rc, err);
    expect_in(err, "0 refused as out of memory under the cap (GPUHEAP_LIMIT), 2 passed on");
}

static void test_free_order_legacy_while_streams_block(void **state) {
    (void)state;
    char err[8192];
    int rc = child("order-blocking", NULL, err, sizeof err);
    if (rc) fail_msg("step %d; stderr:\n%s", rc, err);
    expect_in(err, "free order: legacy");
}

static void test_free_order_lists_a_non_blocking_stream(void **state) {
    (void)state;
    char err[8192];
    int rc = child("order-non-blocking", NULL, err, sizeof err);
    if (rc) fail_msg("step %d; stderr:\n%s", rc, err);
    expect_in(err, "free order: legacy (freed blocks handed out at once, the context made to wait; 1 non-blocking streams listed");
}

static void test_free_order_ends_at_a_context(void **state) {
    (void)state;
    char err[8192];
    int rc = child("order-non-blocking-context", NULL, err, sizeof err);
    if (rc) fail_msg("step %d; stderr:\n%s", rc, err);
    expect_in(err, "free order: events (the program created a context of its own)");
}

static void test_free_order_event_asked_for(void **state) {
    (void)state;
    char err[8192];
    free_order_env = "event";
    int rc = child("order-blocking", NULL, err, sizeof err);
    free_order_env = NULL;
    if (rc) fail_msg("step %d; stderr:\n%s", rc, err);
    expect_in(err, "free order: events (GPUHEAP_FREE_ORDER=event)");
}

int main(int argc, char **argv) {
    const char *preload = getenv("LD_PRELOAD");
    if (!preload || !strstr(preload, "libgpuheap-preload.so")) {
        fprintf(stderr, "test_served runs under LD_PRELOAD=libgpuheap-preload.so (meson sets it)\n");
        return 77;
    }
    if (argc > 2 && !strcmp(argv[1], "--child")) {
        if (!strcmp(argv[2], "cap")) return child_cap();
        if (!strcmp(argv[2], "no-cap")) return child_no_cap();
        if (!strncmp(argv[2], "order-", 6)) return child_order(argv[2]);
        return 126;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: test_served FAKE_VMM_DRIVER.so FAKE_RUNTIME.so\n");
        return 2;
    }
    snprintf(libdir, sizeof libdir, "/tmp/gpuheap-fakevmm-XXXXXX");
    if (fake_libs_make(libdir, argv[1], argv[2]) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_memory_under_the_cap_is_the_answer),
        cmocka_unit_test(test_without_a_cap_a_refused_allocation_passes_on),
        cmocka_unit_test(test_free_order_legacy_while_streams_block),
        cmocka_unit_test(test_free_order_lists_a_non_blocking_stream),
        cmocka_unit_test(test_free_order_ends_at_a_context),
        cmocka_unit_test(test_free_order_event_asked_for),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fake_libs_remove(libdir);
    return rc;
}
