/*
 * trace_replay.c — the trace reader and the replay loop (see trace_replay.h).
 *
 * Reading is a hand-written scanner over fixed columns, because traces of real
 * programs run to millions of lines. The replay keeps one hash table from the
 * recording's addresses to the replay's blocks (open addressing, linear probing,
 * tombstones), so every call costs the allocator's time plus a few nanoseconds.
 */
#include "trace_replay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const names[] = {
    [TR_MALLOC] = "malloc", [TR_FREE] = "free", [TR_REALLOC] = "realloc", [TR_PROTECT] = "protect",
    [TR_TRIM] = "trim", [TR_RESERVE] = "reserve", [TR_UNRESERVE] = "unreserve", [TR_MAP] = "map",
    [TR_UNMAP] = "unmap", [TR_FENCE] = "fence", [TR_COPY] = "copy", [TR_MEMSET] = "memset",
    [TR_CREATE] = "create", [TR_RELEASE] = "release", [TR_ACCESS] = "access", [TR_MAP_FILE] = "map_file",
    [TR_SYNC_FILE] = "sync_file", [TR_UNMAP_FILE] = "unmap_file", [TR_EXPORT] = "export", [TR_IMPORT] = "import",
    [TR_IPC_OPEN] = "ipc_open", [TR_IPC_CLOSE] = "ipc_close", [TR_IPC_REQUEST] = "ipc_request",
    [TR_IPC_LOOKUP] = "ipc_lookup",
    [TR_UNKNOWN] = "unknown",
};

const char *tr_op_name(int op) { return op >= 0 && op <= TR_UNKNOWN ? names[op] : "unknown"; }

int tr_op_from_name(const char *name, size_t len) {
    for (int i = 0; i < TR_UNKNOWN; i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0) return i;
    return TR_UNKNOWN;
}

/* ---- parsing ------------------------------------------------------------------ */

/* The start of a trace's first line (lib/trace.c writes "# gpuheap trace 1"). */
#define TRACE_HEADER "# gpuheap trace"

static const char *skip_space(const char *p) {
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* An unsigned number, decimal or 0x-hex; NULL when there is none. */
static const char *scan_u64(const char *p, uint64_t *out) {
    p = skip_space(p);
    uint64_t v = 0;
    const char *start;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        start = p;
        for (;; p++) {
            int d;
            if (*p >= '0' && *p <= '9') d = *p - '0';
            else if (*p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
            else if (*p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
            else break;
            v = v << 4 | (uint64_t)d;
        }
    } else {
        start = p;
        while (*p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
    }
    if (p == start) return NULL;
    *out = v;
    return p;
}

static const char *scan_i64(const char *p, int64_t *out) {
    p = skip_space(p);
    bool neg = *p == '-';
    uint64_t v;
    if (!(p = scan_u64(p + neg, &v))) return NULL;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return p;
}

int tr_parse_line(const char *line, tr_event *e) {
    const char *p = skip_space(line);
    if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0') return 0;
    memset(e, 0, sizeof *e);
    uint64_t tid, flags;
    int64_t rc;
    if (!(p = scan_u64(p, &e->t_ns)) || !(p = scan_u64(p, &tid))) return -1;
    p = skip_space(p);
    const char *name = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
    if (p == name) return -1;
    e->op = tr_op_from_name(name, (size_t)(p - name));
    e->tid = (uint32_t)tid;
    if (!(p = scan_u64(p, &e->heap)) || !(p = scan_u64(p, &e->stream)) || !(p = scan_u64(p, &e->addr)) ||
        !(p = scan_u64(p, &e->size)) || !(p = scan_u64(p, &e->arg)) || !(p = scan_u64(p, &flags)) ||
        !(p = scan_u64(p, &e->result)) || !(p = scan_i64(p, &rc)) || !(p = scan_u64(p, &e->dur_ns)))
        return -1;
    e->flags = (uint32_t)flags;
    e->rc = (int32_t)rc;
    p = skip_space(p);
    return *p == '\0' || *p == '\n' || *p == '\r' ? 1 : -1;
}

int tr_push(tr_trace *t, const tr_event *e) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4096;
        tr_event *ev = realloc(t->ev, cap * sizeof *ev);
        if (!ev) return -1;
        t->ev = ev;
        t->cap = cap;
    }
    t->ev[t->n] = *e;
    t->ev[t->n].line = t->n;
    t->n++;
    return 0;
}

int tr_load(const char *path, tr_trace *t, char *err, size_t err_len) {
    memset(t, 0, sizeof *t);
    size_t len = strlen(path);
    bool gz = len > 3 && strcmp(path + len - 3, ".gz") == 0;
    FILE *f;
    if (gz) {
        /* The path goes to the shell quoted: single quotes, each ' written '\''. */
        size_t cap = 4 * len + 32;
        char *cmd = malloc(cap), *q = cmd;
        if (!cmd) return snprintf(err, err_len, "out of memory"), -1;
        q += sprintf(q, "gzip -dc '");
        for (const char *s = path; *s; s++) {
            if (*s == '\'') q += sprintf(q, "'\\''");
            else *q++ = *s;
        }
        sprintf(q, "'");
        f = popen(cmd, "r");
        free(cmd);
    } else {
        f = fopen(path, "r");
    }
    if (!f) return snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno)), -1;
    char line[1024];
    tr_event e;
    size_t lines = 0;
    bool header = false; /* the first line is lib/trace.c's "# gpuheap trace N" */
    while (fgets(line, sizeof line, f)) {
        if (lines++ == 0) header = strncmp(skip_space(line), TRACE_HEADER, sizeof TRACE_HEADER - 1) == 0;
        int r = tr_parse_line(line, &e);
        if (r < 0) t->bad_lines++;
        if (r <= 0) continue;
        if (e.op == TR_UNKNOWN) t->unknown_ops++;
        if (tr_push(t, &e) != 0) {
            gz ? pclose(f) : fclose(f);
            tr_free(t);
            return snprintf(err, err_len, "out of memory reading %s", path), -1;
        }
    }
    int status = gz ? pclose(f) : fclose(f);
    if (gz && status != 0) {
        tr_free(t);
        return snprintf(err, err_len, "gzip -dc %s failed", path), -1;
    }
    /* Something else (a text file, a binary) must not replay as a trace of the
     * one line that happens to parse: without the header, most lines must be
     * records. A trace cut short (a killed program) keeps its header; a
     * hand-made or filtered one without it still reads. */
    size_t n = t->n, bad = t->bad_lines;
    if (lines == 0 || (n == 0 && bad) || (!header && (n == 0 || bad >= n))) {
        tr_free(t);
        if (lines == 0) return snprintf(err, err_len, "%s is empty, not a gpuheap trace", path), -1;
        return snprintf(err, err_len,
                        "%s is not a gpuheap trace (%s; %zu of its %zu lines read as trace records)", path,
                        header ? "it has the header but no record" : "no \"" TRACE_HEADER "\" first line", n, lines),
               -1;
    }
    tr_sort(t);
    return 0;
}

static uint64_t order_key(const tr_event *e) { return e->op == TR_MALLOC ? e->t_ns + e->dur_ns : e->t_ns; }

static int cmp_event(const void *a, const void *b) {
    const tr_event *x = a, *y = b;
    uint64_t kx = order_key(x), ky = order_key(y);
    if (kx != ky) return kx < ky ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line;
}

void tr_sort(tr_trace *t) {
    if (t->n > 1) qsort(t->ev, t->n, sizeof *t->ev, cmp_event);
}

void tr_free(tr_trace *t) {
    free(t->ev);
    memset(t, 0, sizeof *t);
}

/* ---- the address table ---------------------------------------------------------- */

/* Recording address -> replay block. Key 0 is empty, 1 a tombstone (a trace
 * address is never 0 or 1: pointers are 256-byte aligned). */
typedef struct slot {
    uint64_t key;
    void *ptr;
    uint64_t size;
} slot;

typedef struct addr_map {
    slot *s;
    size_t cap, used, live;
} addr_map;

static size_t hash64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static slot *map_find(const addr_map *m, uint64_t key) {
    if (!m->cap) return NULL;
    for (size_t i = hash64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->s[i].key == key) return &m->s[i];
        if (m->s[i].key == 0) return NULL;
    }
}

static int map_put(addr_map *m, uint64_t key, void *ptr, uint64_t size);

static int map_grow(addr_map *m) {
    /* Mostly tombstones: rehash at the same size; otherwise double. */
    size_t cap = !m->cap ? 1024 : m->live * 4 < m->cap ? m->cap : m->cap * 2;
    addr_map n = {calloc(cap, sizeof(slot)), cap, 0, 0};
    if (!n.s) return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->s[i].key > 1) map_put(&n, m->s[i].key, m->s[i].ptr, m->s[i].size);
    free(m->s);
    *m = n;
    return 0;
}

static int map_put(addr_map *m, uint64_t key, void *ptr, uint64_t size) {
    if ((m->used + 1) * 4 > m->cap * 3 && map_grow(m) != 0) return -1;
    size_t i = hash64(key) & (m->cap - 1);
    while (m->s[i].key > 1) i = (i + 1) & (m->cap - 1);
    if (m->s[i].key == 0) m->used++;
    m->s[i] = (slot){key, ptr, size};
    m->live++;
    return 0;
}

static void map_del(addr_map *m, slot *s) {
    s->key = 1;
    m->live--;
}

/* ---- summary ------------------------------------------------------------------------ */

/* The application call on tid whose span holds t (its index in ev, and which
 * call it was in *nth), and what the backend did on that thread within it: the
 * call that set a peak. */
static size_t call_around(const tr_trace *t, uint32_t tid, uint64_t at, size_t *nth, tr_call_work *w) {
    size_t c = SIZE_MAX;
    for (size_t i = 0; i < t->n && c == SIZE_MAX; i++) {
        const tr_event *e = &t->ev[i];
        if (!tr_op_is_call(e->op)) continue;
        ++*nth;
        if (e->tid == tid && e->t_ns <= at && at <= e->t_ns + e->dur_ns) c = i;
    }
    if (c == SIZE_MAX) return *nth = 0, c;
    const tr_event *call = &t->ev[c];
    for (size_t i = 0; i < t->n; i++) {
        const tr_event *e = &t->ev[i];
        if (e->tid != tid || e->t_ns < call->t_ns || e->t_ns > call->t_ns + call->dur_ns || e->rc) continue;
        w->creates += e->op == TR_CREATE;
        w->releases += e->op == TR_RELEASE;
        w->maps += e->op == TR_MAP;
        w->unmaps += e->op == TR_UNMAP;
        w->fences += e->op == TR_FENCE;
    }
    return c;
}

void tr_summarize(const tr_trace *t, tr_summary *s) {
    memset(s, 0, sizeof *s);
    s->peak_call = SIZE_MAX;
    addr_map live = {0}, handles = {0};
    uint64_t live_bytes = 0, mapped = 0, physical = 0;
    const tr_event *peak_at = NULL;
    uint32_t tids[256];
    size_t ntids = 0;
    uint64_t first = UINT64_MAX, last = 0;
    for (size_t i = 0; i < t->n; i++) {
        const tr_event *e = &t->ev[i];
        s->events++;
        if (e->t_ns < first) first = e->t_ns;
        if (e->t_ns + e->dur_ns > last) last = e->t_ns + e->dur_ns;
        bool seen = false;
        for (size_t k = 0; k < ntids && !seen; k++) seen = tids[k] == e->tid;
        if (!seen && ntids < 256) tids[ntids++] = e->tid;
        s->calls += tr_op_is_call(e->op);
        if (e->rc != 0 && tr_op_is_call(e->op)) s->failed_calls++;
        switch (e->op) {
        case TR_MALLOC: s->mallocs++; break;
        case TR_FREE: s->frees++; break;
        case TR_REALLOC: s->reallocs++; break;
        case TR_MAP: s->maps++; break;
        case TR_UNMAP: s->unmaps++; break;
        case TR_FENCE: s->fences++; break;
        default: s->others++; break;
        }
        if (e->rc != 0) continue;
        slot *x;
        switch (e->op) {
        case TR_MALLOC:
            if ((x = map_find(&live, e->result))) live_bytes -= x->size, map_del(&live, x);
            if (map_put(&live, e->result, NULL, e->size) == 0) live_bytes += e->size;
            break;
        case TR_FREE:
            if ((x = map_find(&live, e->addr))) live_bytes -= x->size, map_del(&live, x);
            break;
        case TR_REALLOC:
            if ((x = map_find(&live, e->addr))) live_bytes -= x->size, map_del(&live, x);
            if ((x = map_find(&live, e->result))) live_bytes -= x->size, map_del(&live, x);
            if (map_put(&live, e->result, NULL, e->size) == 0) live_bytes += e->size;
            break;
        case TR_MAP: mapped += e->size; break;
        case TR_UNMAP: mapped -= e->size < mapped ? e->size : mapped; break;
        case TR_CREATE:
            if (map_put(&handles, e->result, NULL, e->size) == 0) physical += e->size;
            break;
        case TR_RELEASE:
            if ((x = map_find(&handles, e->result))) physical -= x->size, map_del(&handles, x);
            break;
        default: break;
        }
        if (live_bytes > s->peak_live) s->peak_live = live_bytes;
        if (mapped > s->peak_mapped) s->peak_mapped = mapped;
        if (physical > s->peak_physical) s->peak_physical = physical, peak_at = e;
    }
    if (peak_at) s->peak_call = call_around(t, peak_at->tid, peak_at->t_ns, &s->peak_call_nth, &s->peak_work);
    s->threads = ntids;
    s->start_ns = t->n ? first : 0;
    s->span_ns = t->n ? last - first : 0;
    free(live.s);
    free(handles.s);
}

/* ---- replay ----------------------------------------------------------------------- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void note_failure(tr_result *r, const tr_allocator *a, const char *what, uint64_t size) {
    if (r->failed++ == 0)
        snprintf(r->first_error, sizeof r->first_error, "%s %s(%llu) failed", a->name, what, (unsigned long long)size);
}

/* Runs one of an allocator's untimed hooks; the nanoseconds it took, for the
 * replay to leave out of its time. */
static uint64_t untimed_call(void (*hook)(void *ctx), void *ctx) {
    uint64_t t0 = now_ns();
    hook(ctx);
    return now_ns() - t0;
}

int tr_replay(const tr_trace *t, const tr_allocator *a, tr_result *r) {
    memset(r, 0, sizeof *r);
    addr_map m = {0};
    if (map_grow(&m) != 0) return -1;
    uint64_t live = 0, untimed = 0;
    size_t ncalls = 0, seen = 0;
    for (size_t i = 0; a->halfway && i < t->n; i++) ncalls += tr_op_is_call(t->ev[i].op);
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < t->n; i++) {
        const tr_event *e = &t->ev[i];
        if (!tr_op_is_call(e->op)) continue; /* the heap's own backend events */
        if (a->halfway && seen++ == ncalls / 2) untimed += untimed_call(a->halfway, a->ctx);
        if (e->rc != 0) {
            r->skipped++;
            continue;
        }
        if (a->clock) { /* untimed, like sample */
            uint64_t c0 = now_ns();
            a->clock(a->ctx, e->t_ns);
            untimed += now_ns() - c0;
        }
        slot *x;
        void *p;
        switch (e->op) {
        case TR_MALLOC:
            if ((x = map_find(&m, e->result))) { /* its free comes later in time order */
                r->conflicts++;
                r->calls++;
                a->free(a->ctx, x->ptr);
                live -= x->size;
                map_del(&m, x);
            }
            r->calls++;
            p = a->alloc(a->ctx, e->size, e->arg, e->flags);
            if (!p) {
                note_failure(r, a, "malloc", e->size);
                break;
            }
            if (map_put(&m, e->result, p, e->size) != 0) goto oom;
            live += e->size;
            break;
        case TR_FREE:
            if (!(x = map_find(&m, e->addr))) {
                r->skipped++;
                break;
            }
            r->calls++;
            if (a->free(a->ctx, x->ptr) != 0) note_failure(r, a, "free", x->size);
            live -= x->size;
            map_del(&m, x);
            break;
        case TR_REALLOC: {
            if (!(x = map_find(&m, e->addr))) {
                r->skipped++;
                break;
            }
            void *old = x->ptr;
            uint64_t old_size = x->size;
            map_del(&m, x);
            live -= old_size;
            if (e->result != e->addr && (x = map_find(&m, e->result))) {
                r->conflicts++;
                r->calls++;
                a->free(a->ctx, x->ptr);
                live -= x->size;
                map_del(&m, x);
            }
            if (a->realloc) {
                r->calls++;
                p = a->realloc(a->ctx, old, old_size, e->size);
            } else {
                r->calls += 2;
                p = a->alloc(a->ctx, e->size, 0, 0);
                if (p) {
                    size_t n = old_size < e->size ? old_size : e->size;
                    if (a->copy && n) {
                        r->calls++;
                        if (a->copy(a->ctx, p, old, n) != 0) note_failure(r, a, "copy", n);
                        else r->copied_bytes += n;
                    }
                    a->free(a->ctx, old);
                }
            }
            if (!p) { /* the old block stays, as realloc promises */
                note_failure(r, a, "realloc", e->size);
                if (map_put(&m, e->addr, old, old_size) != 0) goto oom;
                live += old_size;
                break;
            }
            if (map_put(&m, e->result, p, e->size) != 0) goto oom;
            live += e->size;
            break;
        }
        case TR_PROTECT:
            if (!a->protect || !(x = map_find(&m, e->addr))) {
                r->skipped++;
                break;
            }
            r->calls++;
            if (a->protect(a->ctx, x->ptr, e->size, (int)e->arg) != 0) note_failure(r, a, "protect", e->size);
            break;
        case TR_TRIM:
            if (!a->trim) {
                r->skipped++;
                break;
            }
            r->calls++;
            if (a->trim(a->ctx, e->size) != 0) note_failure(r, a, "trim", e->size);
            break;
        default:
            r->skipped++;
            break;
        }
        if (live > r->peak_live) {
            r->peak_live = live;
            if (a->sample) untimed += untimed_call(a->sample, a->ctx);
        }
    }
    if (a->finish && a->finish(a->ctx) != 0) note_failure(r, a, "finish", 0);
    r->seconds = (double)(now_ns() - t0 - untimed) * 1e-9;
    /* What the trace left live goes back, untimed. */
    for (size_t i = 0; i < m.cap; i++)
        if (m.s[i].key > 1) a->free(a->ctx, m.s[i].ptr);
    if (a->finish) (void)a->finish(a->ctx);
    free(m.s);
    return 0;
oom:
    free(m.s);
    return -1;
}
