/*
 * stats.c — a heap's statistics as JSON, and a report of every heap at exit.
 *
 * gpu_heap_stats gives a struct; tools, dashboards and the benchmarks want text
 * they can store and parse, and a person running a program wants one glance at
 * what the heap did without changing the program. So: gpu_heap_stats_json writes
 * the snapshot as one JSON object, walking GPU_STATS_FIELDS so that a new field
 * appears here without an edit; GPUHEAP_STATS=1 prints a one-line summary per heap
 * to stderr when the process exits (and when an explicit heap is destroyed, since
 * it is gone by then); GPUHEAP_STATS_JSON=FILE writes {"heaps": [...]} at exit.
 * The environment is read when the first heap is created (api.c), so a program
 * may set the variables itself before that.
 */
#include <pthread.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "obs/stats.h"

/* Text appended to a caller's buffer, counting what did not fit (snprintf's rule). */
typedef struct out_buf {
    char *buf;
    size_t len, used; /* used may exceed len: the length the whole text needs */
} out_buf;

static void out_printf(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(out_buf *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *at = o->used < o->len ? o->buf + o->used : NULL;
    size_t room = o->used < o->len ? o->len - o->used : 0;
    int n = vsnprintf(at, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->used += (size_t)n;
}

/* The JSON object of one heap's snapshot. */
static void json_of(const gpu_heap_t *h, const gpu_stats_t *s, out_buf *o) {
    out_printf(o, "{\"version\": %u, \"heap\": \"0x%llx\", \"backend\": \"%s\", \"device\": %d", s->version,
               (unsigned long long)h->base, h->door.b->caps.name, h->door.b->caps.device);
#define STATS_JSON_FIELD(name, doc) out_printf(o, ", \"%s\": %llu", #name, (unsigned long long)s->name);
    GPU_STATS_FIELDS(STATS_JSON_FIELD)
#undef STATS_JSON_FIELD
    out_printf(o, "}");
}

int stats_json(const gpu_heap_t *h, const gpu_stats_t *s, char *buf, size_t len) {
    out_buf o = {buf, len, 0};
    if (len) buf[0] = '\0';
    json_of(h, s, &o);
    return o.used > (size_t)INT32_MAX ? GPU_ERR_INVALID : (int)o.used;
}

/* ---- the report at exit ---------------------------------------------------------- */

static bool print_summary;        /* GPUHEAP_STATS=1 */
static const char *json_path;     /* GPUHEAP_STATS_JSON */

/* "1.5 GiB", "512 B": a size a person reads at a glance. */
static const char *human(uint64_t v, char *buf, size_t len) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double x = (double)v;
    size_t u = 0;
    while (x >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
        x /= 1024;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%llu B", (unsigned long long)v);
    else snprintf(buf, len, "%.1f %s", x, units[u]);
    return buf;
}

static void summary(gpu_heap_t *h, const char *when) {
    gpu_stats_t s;
    heap_stats(h, &s);
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32];
    fprintf(stderr,
            "gpuheap: heap 0x%llx (%s, device %d)%s: live %s in %llu blocks (peak %s); mapped %s in %llu extents "
            "(peak %s); idle %s, quarantined %s; %llu fences, %llu releases in legacy order; backend calls: %llu create, %llu map, %llu unmap, "
            "%llu copy (%s), %llu errors\n",
            (unsigned long long)h->base, h->door.b->caps.name, h->door.b->caps.device, when,
            human(s.live_bytes, a, sizeof a), (unsigned long long)s.live_blocks, human(s.peak_live_bytes, b, sizeof b),
            human(s.mapped_bytes, c, sizeof c), (unsigned long long)s.extents, human(s.peak_mapped_bytes, d, sizeof d),
            human(s.idle_bytes, e, sizeof e), human(s.quarantine_bytes, f, sizeof f), (unsigned long long)s.fences,
            (unsigned long long)s.order_releases,
            (unsigned long long)s.backend_create, (unsigned long long)s.backend_map,
            (unsigned long long)s.backend_unmap, (unsigned long long)s.backend_copy, human(s.copy_bytes, g, sizeof g),
            (unsigned long long)s.backend_errors);
}

static void summary_each(gpu_heap_t *h, void *arg) {
    (void)arg;
    summary(h, " at exit");
}

/* The JSON file being written at exit. */
typedef struct json_file {
    FILE *f;
    bool first;
} json_file;

/* Appends one heap's object to the JSON file's array. */
static void json_each(gpu_heap_t *h, void *arg) {
    json_file *jf = arg;
    gpu_stats_t s;
    heap_stats(h, &s);
    char small[2048];
    out_buf o = {small, sizeof small, 0};
    json_of(h, &s, &o);
    char *text = small;
    if (o.used >= sizeof small) {
        if (!(text = malloc(o.used + 1))) return;
        out_buf big = {text, o.used + 1, 0};
        json_of(h, &s, &big);
    }
    fprintf(jf->f, "%s  %s", jf->first ? "" : ",\n", text);
    jf->first = false;
    if (text != small) free(text);
}

static void at_exit(void) {
    if (print_summary) registry_each(summary_each, NULL);
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            fprintf(stderr, "gpuheap: GPUHEAP_STATS_JSON=%s: %s\n", json_path, strerror(errno));
            return;
        }
        fprintf(f, "{\"heaps\": [\n");
        json_file jf = {f, true};
        registry_each(json_each, &jf);
        fprintf(f, "\n]}\n");
        if (fclose(f) != 0) fprintf(stderr, "gpuheap: GPUHEAP_STATS_JSON=%s: %s\n", json_path, strerror(errno));
    }
}

static void env_init(void) {
    const char *v = getenv("GPUHEAP_STATS");
    print_summary = v && *v && strcmp(v, "0") != 0;
    const char *p = getenv("GPUHEAP_STATS_JSON");
    if (p && *p) json_path = p;
    if (print_summary || json_path) atexit(at_exit);
}

void stats_env_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, env_init);
}

void stats_heap_closing(gpu_heap_t *h) {
    if (print_summary) summary(h, " destroyed");
}
