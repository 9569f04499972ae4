/*
 * test_preload.c — libgpuheap-preload.so loaded into a program with no GPU:
 * everything passes through, nothing breaks (suite 'unit', run with LD_PRELOAD
 * and GPUHEAP_BACKEND=host by meson).
 *
 * It checks what a machine without a driver can show: the interposer is loaded
 * and its symbols win; dlsym still answers ordinary names, RTLD_NEXT stays
 * relative to the caller (probe.c), driver names resolve; the runtime hooks
 * report an initialization error when no CUDA runtime is loaded and the driver
 * wrappers CUDA_ERROR_NOT_INITIALIZED when no driver is (the answers the real
 * functions would have given, had they been found); and the framework entry
 * points allocate from the configured (host) heap at cudaMalloc's alignment;
 * gpu_preload_symbol hands out the API of the copy of gpuheap behind them.
 */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <cmocka.h>

void *probe_own_getpid(void);
void *probe_next_getpid(void);

/* The file name of the object that defines p. */
static const char *object_of(void *p) {
    Dl_info info;
    if (!p || !dladdr(p, &info) || !info.dli_fname) return "";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

static void *global(const char *name) { return dlsym(RTLD_DEFAULT, name); }

static void test_interposer_is_loaded(void **state) {
    (void)state;
    static const char *const names[] = {"dlsym", "cudaMalloc", "cudaFree", "cudaMemGetInfo", "cuMemAlloc_v2",
                                        "cuGetProcAddress_v2", "gpu_torch_alloc", "gpu_cupy_malloc",
                                        "cudaIpcGetMemHandle", "cudaIpcOpenMemHandle", "cudaIpcCloseMemHandle",
                                        "cuIpcGetMemHandle", "cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle",
                                        "cuIpcCloseMemHandle"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_string_equal(object_of(global(names[i])), "libgpuheap-preload.so");
    /* gpuheap's own API stays inside the interposer. */
    assert_null(global("gpu_malloc"));
}

static void test_dlsym_passes_through(void **state) {
    (void)state;
    assert_ptr_equal(global("strlen"), (void *)strlen);
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(libc);
    assert_ptr_equal(dlsym(libc, "strlen"), (void *)strlen);
    assert_null(dlsym(libc, "no_such_symbol_anywhere"));
    assert_null(global("cuNoSuchDriverFunction"));
    /* RTLD_NEXT from a library after the interposer finds libc's getpid, not
     * the library's own. */
    void *next = probe_next_getpid();
    assert_non_null(next);
    assert_ptr_not_equal(next, probe_own_getpid());
    assert_string_equal(object_of(next), "libc.so.6");
    dlclose(libc);
}

static void test_hooks_pass_through_without_cuda(void **state) {
    (void)state;
    if (dlopen("libcudart.so.13", RTLD_LAZY | RTLD_NOLOAD) || dlopen("libcudart.so.12", RTLD_LAZY | RTLD_NOLOAD))
        skip(); /* a CUDA runtime is loaded: nothing to show here */
    int (*cuda_malloc)(void **, size_t) = (int (*)(void **, size_t))global("cudaMalloc");
    int (*cuda_free)(void *) = (int (*)(void *))global("cudaFree");
    void *p = NULL;
    assert_int_equal(cuda_malloc(&p, 4096), 3); /* cudaErrorInitializationError: no runtime loaded */
    assert_null(p);
    assert_int_equal(cuda_free(NULL), 3);
    /* The driver wrappers answer as the driver does before cuInit, or as a
     * missing driver would: CUDA_ERROR_NOT_INITIALIZED. */
    int (*mem_alloc)(unsigned long long *, size_t) = (int (*)(unsigned long long *, size_t))global("cuMemAlloc_v2");
    int (*mem_free)(unsigned long long) = (int (*)(unsigned long long))global("cuMemFree_v2");
    int (*mem_get_info)(size_t *, size_t *) = (int (*)(size_t *, size_t *))global("cuMemGetInfo_v2");
    unsigned long long d = 0;
    size_t f = 0, t = 0;
    assert_int_equal(mem_alloc(&d, 4096), 3);
    assert_int_equal(d, 0);
    assert_int_equal(mem_free(0x1000), 3);
    assert_int_equal(mem_get_info(&f, &t), 3);
    /* IPC: a foreign pointer or handle goes to the missing function: the same answers */
    struct { unsigned char b[64]; } handle = {{0}};
    int (*ipc_get)(void *, void *) = (int (*)(void *, void *))global("cudaIpcGetMemHandle");
    int (*ipc_open)(unsigned long long *, __typeof__(handle), unsigned) =
        (int (*)(unsigned long long *, __typeof__(handle), unsigned))global("cuIpcOpenMemHandle_v2");
    int (*ipc_close)(void *) = (int (*)(void *))global("cudaIpcCloseMemHandle");
    assert_int_equal(ipc_get(&handle, (void *)0x1000), 3);
    assert_int_equal(ipc_open(&d, handle, 1), 3);
    assert_int_equal(ipc_close((void *)0x1000), 3);
}

/* The framework entry points serve the configured heap (host here), at
 * cudaMalloc's alignment: 512 B up to 512 B, then the size's power of two up to
 * 2 MiB. */
static void test_framework_entry_points(void **state) {
    (void)state;
    void *(*torch_alloc)(ssize_t, int, void *) = (void *(*)(ssize_t, int, void *))global("gpu_torch_alloc");
    void (*torch_free)(void *, ssize_t, int, void *) = (void (*)(void *, ssize_t, int, void *))global("gpu_torch_free");
    void *(*cupy_malloc)(void *, size_t, int) = (void *(*)(void *, size_t, int))global("gpu_cupy_malloc");
    void (*cupy_free)(void *, void *, int) = (void (*)(void *, void *, int))global("gpu_cupy_free");
    static const struct { size_t size, align; } cases[] = {
        {1, 512}, {300, 512}, {513, 1024}, {3000, 4096}, {65536, 65536}, {100000, 131072},
        {1536 * 1024, 2 << 20}, {3 << 20, 2 << 20},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* a small block first, so that natural alignment needs a split */
        void *pad = torch_alloc(256, 0, NULL);
        void *p = torch_alloc((ssize_t)cases[i].size, 0, NULL);
        void *q = cupy_malloc(NULL, cases[i].size, 0);
        assert_non_null(pad), assert_non_null(p), assert_non_null(q);
        assert_int_equal((uintptr_t)p % cases[i].align, 0);
        assert_int_equal((uintptr_t)q % cases[i].align, 0);
        memset(p, 0xab, cases[i].size); /* host backend: the bytes are ours */
        memset(q, 0xcd, cases[i].size);
        assert_int_equal(((unsigned char *)p)[cases[i].size - 1], 0xab);
        torch_free(p, (ssize_t)cases[i].size, 0, NULL);
        cupy_free(NULL, q, 0);
        torch_free(pad, 256, 0, NULL);
    }
    assert_null(torch_alloc(-1, 0, NULL));
}

/* gpu_preload_symbol gives the interposer's own copy of the API: its gpu_malloc
 * and gpu_free work on the heap the framework entry points serve. */
static void test_preload_symbol(void **state) {
    (void)state;
    void *(*symbol)(const char *) = (void *(*)(const char *))global("gpu_preload_symbol");
    assert_non_null(symbol);
    assert_string_equal(object_of(symbol("gpu_malloc")), "libgpuheap-preload.so");
    assert_null(symbol("no_such_function"));
    assert_null(symbol("gpu_torch_alloc")); /* exported by name already; the table is gpuheap.h's */
    assert_null(symbol(NULL));
    void *(*torch_alloc)(ssize_t, int, void *) = (void *(*)(ssize_t, int, void *))global("gpu_torch_alloc");
    size_t (*usable)(const void *) = (size_t(*)(const void *))symbol("gpu_malloc_usable_size");
    int (*gpu_free)(void *) = (int (*)(void *))symbol("gpu_free");
    int (*last_error)(void) = (int (*)(void))symbol("gpu_last_error");
    assert_non_null(usable), assert_non_null(gpu_free), assert_non_null(last_error);
    void *p = torch_alloc(5000, 0, NULL);
    assert_non_null(p);
    assert_true(usable(p) >= 5000); /* the same heap: the block is known */
    assert_int_equal(gpu_free(p), 0);
    assert_int_equal(gpu_free(p), -3); /* GPU_ERR_NOT_LIVE: freed once already */
    assert_int_equal(last_error(), -3);
}

int main(void) {
    const char *preload = getenv("LD_PRELOAD");
    if (!preload || !strstr(preload, "libgpuheap-preload.so")) {
        fprintf(stderr, "test_preload runs under LD_PRELOAD=libgpuheap-preload.so (meson sets it)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interposer_is_loaded),
        cmocka_unit_test(test_dlsym_passes_through),
        cmocka_unit_test(test_hooks_pass_through_without_cuda),
        cmocka_unit_test(test_framework_entry_points),
        cmocka_unit_test(test_preload_symbol),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
