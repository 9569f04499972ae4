/*
 * test_config.c — what a malformed GPUHEAP_BACKEND does (suite 'unit').
 *
 * A misspelt backend ("hots") used to be reported only at GPUHEAP_VERBOSE=1
 * while the default heap went on to open CUDA, so the user saw "no CUDA driver"
 * (or got the GPU after asking for the host). Now gpu_config_init leaves no
 * valid backend: every heap made from that configuration, the default heaps
 * included, fails with GPU_ERR_INVALID, and stderr names the bad value once per
 * process whatever GPUHEAP_VERBOSE says. The default heaps read the environment
 * once per process, so those checks run in a fresh child (this program again,
 * with --child) whose stderr the test reads. Other variables keep their
 * behaviour: reported at GPUHEAP_VERBOSE=1, the field left at its default.
 */
#include "util.h"

#include "child.h"

struct child_env {
    const char *backend, *reserve;
};

static void child_prepare(void *arg) {
    const struct child_env *e = arg;
    unsetenv("GPUHEAP_VERBOSE");
    if (e->backend) setenv("GPUHEAP_BACKEND", e->backend, 1); else unsetenv("GPUHEAP_BACKEND");
    if (e->reserve) setenv("GPUHEAP_RESERVE", e->reserve, 1); else unsetenv("GPUHEAP_RESERVE");
}

/* Runs this program as `--child what` with GPUHEAP_BACKEND=backend (NULL:
 * unset) and GPUHEAP_VERBOSE unset; returns its exit status, its stderr in err. */
static int child(const char *what, const char *backend, const char *reserve, char *err, size_t len) {
    struct child_env e = {backend, reserve};
    char *const argv[] = {"test_config", "--child", (char *)what, NULL};
    int rc = child_run(argv, child_prepare, &e, err, len);
    assert_true(rc < 1000); /* it exited, no signal ended it */
    return rc;
}

static size_t count(const char *s, const char *needle) {
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

/* The child: the default heap (twice), gpu_config_init (twice) and
 * gpu_heap_create from the environment all fail with GPU_ERR_INVALID. Exit
 * status 0 when they did, else the step that did not. */
static int child_default_heap(void) {
    if (gpu_malloc(4096) != NULL || gpu_last_error() != GPU_ERR_INVALID) return 1;
    if (gpu_malloc(1) != NULL || gpu_last_error() != GPU_ERR_INVALID) return 2;
    if (gpu_heap_default() != NULL || gpu_last_error() != GPU_ERR_INVALID) return 3;
    gpu_config_t cfg;
    if (gpu_config_init(&cfg) != GPU_ERR_INVALID || gpu_config_init(&cfg) != GPU_ERR_INVALID) return 4;
    if (cfg.backend == GPU_BACKEND_AUTO || cfg.backend == GPU_BACKEND_CUDA || cfg.backend == GPU_BACKEND_HOST) return 5;
    gpu_heap_t *h = NULL;
    if (gpu_heap_create(&cfg, &h) != GPU_ERR_INVALID || h) return 6;
    if (gpu_heap_create(NULL, &h) != GPU_ERR_INVALID || h) return 7;
    /* A program that names its backend itself still gets its heap. */
    cfg.backend = GPU_BACKEND_HOST;
    if (gpu_heap_create(&cfg, &h) != GPU_OK) return 8;
    void *p = gpu_heap_malloc(h, 4096);
    if (!p || gpu_heap_free(h, p) != GPU_OK || gpu_heap_destroy(h) != GPU_OK) return 9;
    return 0;
}

/* The child for a well-formed value: gpu_config_init succeeds. */
static int child_config_ok(void) {
    gpu_config_t cfg;
    return gpu_config_init(&cfg) == GPU_OK ? (int)cfg.backend : 100;
}

/* The child for a bad size: INVALID, the default kept. */
static int child_bad_size(void) {
    gpu_config_t cfg;
    return gpu_config_init(&cfg) == GPU_ERR_INVALID && cfg.reserve_bytes == 0 ? 0 : 1;
}

static void test_misspelt_backend_fails_with_invalid(void **state) {
    (void)state;
    char err[4096];
    int rc = child("default-heap", "hots", NULL, err, sizeof err);
    if (rc) fail_msg("step %d of the child did not fail with GPU_ERR_INVALID; stderr:\n%s", rc, err);
    /* Once, without GPUHEAP_VERBOSE, naming the value; never "no CUDA driver". */
    assert_int_equal(count(err, "GPUHEAP_BACKEND=hots"), 1);
    assert_int_equal(count(err, "\n"), 1);
    assert_null(strstr(err, "no CUDA driver"));
    assert_non_null(strstr(err, "cuda, host or auto"));
}

static void test_good_backends_unchanged(void **state) {
    (void)state;
    char err[1024];
    assert_int_equal(child("config-ok", "host", NULL, err, sizeof err), GPU_BACKEND_HOST);
    assert_string_equal(err, "");
    assert_int_equal(child("config-ok", "CUDA", NULL, err, sizeof err), GPU_BACKEND_CUDA);
    assert_int_equal(child("config-ok", "auto", NULL, err, sizeof err), GPU_BACKEND_AUTO);
    assert_int_equal(child("config-ok", NULL, NULL, err, sizeof err), GPU_BACKEND_AUTO);
    /* Set but empty, as a shell's VAR=$UNSET gives: the default. */
    assert_int_equal(child("config-ok", "", NULL, err, sizeof err), GPU_BACKEND_AUTO);
    assert_string_equal(err, "");
}

static void test_other_variables_keep_their_behaviour(void **state) {
    (void)state;
    char err[1024];
    assert_int_equal(child("bad-size", NULL, "lots", err, sizeof err), 0);
    assert_string_equal(err, ""); /* reported at GPUHEAP_VERBOSE=1 only, as before */
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "--child")) {
        if (!strcmp(argv[2], "default-heap")) return child_default_heap();
        if (!strcmp(argv[2], "config-ok")) return child_config_ok();
        if (!strcmp(argv[2], "bad-size")) return child_bad_size();
        return 126;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_misspelt_backend_fails_with_invalid),
        cmocka_unit_test(test_good_backends_unchanged),
        cmocka_unit_test(test_other_variables_keep_their_behaviour),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
