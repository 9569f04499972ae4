/*
 * test_stats.c — the statistics agree with the backend's own books, and come out
 * right as JSON and at exit.
 *
 * The heap counts what it maps; the host backend counts, independently, the
 * physical memory it created, the handles and the mappings it holds. After every
 * step of a mixed workload (small, large and owned blocks, realloc in place, by
 * remap and by copy, protect, trim) the two must agree exactly, and the heap's
 * byte counts must add up: mapped = live + idle + quarantined + held by thread caches. gpu_heap_stats_json
 * must carry every field with the struct's value, and GPUHEAP_STATS_JSON must
 * write every live heap at exit (checked in a child process started with it).
 */
#include <sys/stat.h>

#include "util.h"

#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

/* The backend's own counts against the heap's statistics. */
static void books_agree_at(gpu_heap_t *h, const char *file, int line) {
    gpu_stats_t s = stats_at(h, file, line);
    vmm_host_counts c;
    vmm_host_counts_get(h->door.b, &c);
    if (s.mapped_bytes != c.physical_bytes || s.extents != c.handles || s.extents != c.mappings ||
        s.backend_create - s.backend_release != c.handles || s.backend_map - s.backend_unmap != c.mappings ||
        c.reservations != 1 || s.mapped_bytes != s.live_bytes + s.idle_bytes + s.quarantine_bytes + s.cached_bytes ||
        s.backend_reserve != 1)
        fail_at(file, line,
                "stats vs backend: mapped %llu / physical %zu, extents %llu / handles %zu / mappings %zu, "
                "create-release %llu, map-unmap %llu, reservations %zu, live+idle+quarantine+cached %llu",
                (unsigned long long)s.mapped_bytes, c.physical_bytes, (unsigned long long)s.extents, c.handles,
                c.mappings, (unsigned long long)(s.backend_create - s.backend_release),
                (unsigned long long)(s.backend_map - s.backend_unmap), c.reservations,
                (unsigned long long)(s.live_bytes + s.idle_bytes + s.quarantine_bytes + s.cached_bytes));
}
#define BOOKS_AGREE(h) books_agree_at((h), __FILE__, __LINE__)

/* A deterministic mixed workload; after each step the books agree, and the live
 * counts match what the test holds. */
static void test_stats_match_backend(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    BOOKS_AGREE(h);
    enum { SLOTS = 48 };
    void *p[SLOTS] = {0};
    uint64_t rng = 42, peak_live = 0;
    for (int step = 0; step < 3000; step++) {
        rng = mix64(rng);
        size_t i = rng % SLOTS;
        unsigned kind = (unsigned)(rng >> 8) % 10;
        if (!p[i]) {
            size_t size = kind < 6 ? 1 + (rng >> 16) % (64 * KiB) : kind < 9 ? (rng >> 16) % (9 * MiB) : 3 * MiB;
            p[i] = kind == 9 ? gpu_heap_malloc_flags(h, size, GPU_ALLOC_OWNED) : gpu_heap_malloc(h, size);
            assert_non_null(p[i]);
            if (kind == 9)
                assert_int_equal(gpu_heap_protect(h, p[i], gpu_heap_malloc_usable_size(h, p[i]), GPU_PROT_READ), GPU_OK);
        } else if (kind < 5) {
            assert_int_equal(gpu_heap_free(h, p[i]), GPU_OK);
            p[i] = NULL;
        } else if (kind < 8) {
            size_t size = 1 + (rng >> 20) % (6 * MiB);
            void *q = gpu_heap_realloc(h, p[i], size);
            assert_non_null(q);
            p[i] = q;
        } else if (kind == 8) {
            assert_int_equal(gpu_heap_trim(h, (rng >> 24) % (16 * MiB)), GPU_OK);
        }
        size_t live = 0, blocks = 0;
        for (size_t k = 0; k < SLOTS; k++)
            if (p[k]) live += gpu_heap_malloc_usable_size(h, p[k]), blocks++;
        if (live > peak_live) peak_live = live;
        gpu_stats_t s = STATS(h);
        assert_int_equal(s.live_bytes, live);
        assert_int_equal(s.live_blocks, blocks);
        assert_true(s.peak_live_bytes >= peak_live);
        BOOKS_AGREE(h);
    }
    for (size_t k = 0; k < SLOTS; k++) assert_int_equal(gpu_heap_free(h, p[k]), GPU_OK);
    assert_int_equal(gpu_heap_trim(h, 0), GPU_OK);
    BOOKS_AGREE(h);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.mapped_bytes, 0);
    assert_int_equal(s.live_blocks, 0);
    assert_true(s.backend_fence >= s.fences);
    assert_true(s.seal_events > 0); /* misses sealed the quarantine */
    assert_int_equal(s.backend_event_record, s.stream_events + s.seal_events);
    HEAP_DESTROY(h);
}

/* Growing a small block past a neighbour moves it by a copy: the copy and its
 * bytes are counted; a large block grows by remapping with no copy at all. */
static void test_stats_count_copies(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *a = gpu_heap_malloc(h, 1000);
    void *b = gpu_heap_malloc(h, 1000);
    assert_non_null(a);
    assert_non_null(b);
    size_t old = gpu_heap_malloc_usable_size(h, a);
    void *a2 = gpu_heap_realloc(h, a, 3 * MiB);
    assert_non_null(a2);
    gpu_stats_t s = STATS(h);
    assert_int_equal(s.backend_copy, 1);
    assert_int_equal(s.copy_bytes, old);
    BOOKS_AGREE(h);

    /* Doubling an owned block from 4 MiB to 256 MiB, with a block in its way. */
    void *big = gpu_heap_malloc(h, 4 * MiB);
    assert_non_null(big);
    for (size_t n = 8 * MiB; n <= 256 * MiB; n *= 2) {
        void *wall = gpu_heap_malloc_flags(h, 2 * MiB, GPU_ALLOC_OWNED);
        big = gpu_heap_realloc(h, big, n);
        assert_non_null(big);
        assert_int_equal(gpu_heap_free(h, wall), GPU_OK);
    }
    s = STATS(h);
    assert_int_equal(s.backend_copy, 1);
    assert_int_equal(s.copy_bytes, old);
    BOOKS_AGREE(h);
    assert_int_equal(gpu_heap_free(h, a2), GPU_OK);
    assert_int_equal(gpu_heap_free(h, b), GPU_OK);
    assert_int_equal(gpu_heap_free(h, big), GPU_OK);
    HEAP_DESTROY(h);
}

/* The value of "name": in a JSON text, or -1 when missing. */
static long long json_value(const char *json, const char *name) {
    char key[96];
    snprintf(key, sizeof key, "\"%s\": ", name);
    const char *at = strstr(json, key);
    return at ? strtoll(at + strlen(key), NULL, 10) : -1;
}

static void test_stats_json(void **state) {
    (void)state;
    gpu_heap_t *h = HEAP_NEW(0);
    void *p = gpu_heap_malloc(h, 5 * MiB);
    void *q = gpu_heap_malloc(h, 300);
    assert_non_null(p);
    assert_non_null(q);
    assert_int_equal(gpu_heap_free(h, q), GPU_OK);
    gpu_stats_t s = STATS(h);
    char buf[4096];
    int n = gpu_heap_stats_json(h, buf, sizeof buf);
    assert_true(n > 0 && (size_t)n < sizeof buf);
    assert_int_equal(strlen(buf), (size_t)n);
    assert_true(buf[0] == '{' && buf[n - 1] == '}');
    assert_non_null(strstr(buf, "\"backend\": \"host\""));
    assert_int_equal(json_value(buf, "version"), GPU_STATS_VERSION);
#define CHECK_FIELD(name, doc) \
    if (json_value(buf, #name) != (long long)s.name) fail_at(__FILE__, __LINE__, "%s: %s", #name, buf);
    GPU_STATS_FIELDS(CHECK_FIELD)
#undef CHECK_FIELD
    /* snprintf's rule: the whole length, whatever fits. */
    assert_int_equal(gpu_heap_stats_json(h, NULL, 0), n);
    char small[16];
    assert_int_equal(gpu_heap_stats_json(h, small, sizeof small), n);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(gpu_heap_stats_json(h, NULL, 8), GPU_ERR_INVALID);
    assert_int_equal(gpu_heap_free(h, p), GPU_OK);
    HEAP_DESTROY(h);
    assert_int_equal(gpu_heap_stats_json(h, buf, sizeof buf), GPU_ERR_DESTROYED);
}

/* ---- the report at exit, in a child process ------------------------------------ */

static const char *self_path;

/* The child: GPUHEAP_STATS_JSON is set; two heaps, one block live, exit. */
static int exit_report_child(void) {
    gpu_config_t cfg = host_config(8 * GiB, 0, 0);
    gpu_heap_t *a, *b;
    if (gpu_heap_create(&cfg, &a) != GPU_OK || gpu_heap_create(&cfg, &b) != GPU_OK) return 3;
    if (!gpu_heap_malloc(a, 3 * MiB)) return 4;
    return 0; /* exit runs the report */
}

static void test_stats_at_exit(void **state) {
    (void)state;
    char json[] = "/tmp/gpuheap-stats-XXXXXX";
    int fd = mkstemp(json);
    assert_true(fd >= 0);
    close(fd);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("GPUHEAP_STATS_JSON", json, 1);
        setenv("GPUHEAP_STATS", "1", 1);
        execl(self_path, self_path, "--exit-report-child", (char *)NULL);
        _exit(5);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    FILE *f = fopen(json, "r");
    assert_non_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    unlink(json);
    text[n] = '\0';
    assert_true(strncmp(text, "{\"heaps\": [", 11) == 0);
    const char *first = strstr(text, "\"live_blocks\": ");
    assert_non_null(first);
    const char *second = strstr(first + 1, "\"live_blocks\": ");
    assert_non_null(second);
    /* Two heaps, in registry order; one holds the live block. */
    long long l1 = strtoll(first + 15, NULL, 10), l2 = strtoll(second + 15, NULL, 10);
    assert_int_equal(l1 + l2, 1);
    assert_non_null(strstr(text, "\n]}"));
}

int main(int argc, char **argv) {
    self_path = argv[0];
    if (argc > 1 && strcmp(argv[1], "--exit-report-child") == 0) return exit_report_child();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_match_backend),
        cmocka_unit_test(test_stats_count_copies),
        cmocka_unit_test(test_stats_json),
        cmocka_unit_test(test_stats_at_exit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
