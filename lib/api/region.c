/*
 * region.c — tags: which heap an allocation goes to, and the memory control
 * that works per tag (gpu_region_begin/end, gpu_malloc_tagged, gpu_pause,
 * gpu_resume, gpu_tag_stats, gpu_tag_trim).
 *
 * A trainer and an inference engine on one GPU must hand each other the
 * device's memory and take it back with every pointer valid. The heap core can
 * pause a whole heap (core/pause.c), so a tag is a heap of its own: one per
 * (device, tag), opened on first use from the default configuration with a
 * smaller reservation (GPUHEAP_TAG_RESERVE, 1 TiB, halving on refusal) and
 * registered like any heap, so that gpu_free and every call on a pointer find
 * it. Tagged blocks therefore never share an extent with another tag's or with
 * untagged ones, and pausing a tag pauses its heaps and nothing else.
 *
 * A region is per thread: a stack of tags, the innermost of which receives the
 * thread's allocations (gh_heap_for_alloc: the gpu_* allocations with heap ==
 * NULL, the interposer, the framework entry points). The tag table only grows
 * (at most TAGS_MAX names) and is read without a lock; a tag's heaps are
 * published once opened. Opening a tag's heap, pausing and resuming are
 * serialized by one lock, so that a heap opened for a paused tag starts paused
 * and two controls of one tag never cross; an allocation that finds its heap
 * takes no lock here.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "api/api.h"
#include "error.h"
#include "obs/trace.h"

#define TAGS_MAX 64
#define REGION_DEPTH_MAX 64
#define TAG_RESERVE_MIN ((size_t)1 << 30) /* a tag's reservation halves on refusal down to this */

typedef struct tag {
    char name[GPU_TAG_MAX + 1];
    gpu_heap_t *_Atomic heap[GH_DEVICES]; /* opened on first use, then fixed */
    bool paused; /* under ctl_lock: paused by gpu_pause and not resumed since; new heaps start paused */
} tag;

static tag tags[TAGS_MAX];
static _Atomic size_t ntags;                                   /* tags[0..ntags) are named */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER; /* the table's growth */
static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;   /* heaps opened, pause, resume */

static _Thread_local tag *regions[REGION_DEPTH_MAX];
static _Thread_local unsigned depth;

/* ---- tags ------------------------------------------------------------------------ */

/* GPU_OK for a tag name of 1 to GPU_TAG_MAX bytes; GPU_ERR_INVALID, noted, else. */
static int tag_check(const char *name, const char *call) {
    if (!name) return gh_note(GPU_ERR_INVALID, "%s: the tag is NULL", call);
    size_t n = strnlen(name, GPU_TAG_MAX + 1);
    if (!n || n > GPU_TAG_MAX) return gh_note(GPU_ERR_INVALID, "%s: a tag is 1 to %d bytes long", call, GPU_TAG_MAX);
    return GPU_OK;
}

static tag *tag_find(const char *name) {
    size_t n = atomic_load_explicit(&ntags, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(tags[i].name, name)) return &tags[i];
    return NULL;
}

/* The tag named name (valid), added when new; NULL and the error noted when the
 * table is full. */
static tag *tag_get(const char *name, int *rc) {
    tag *t = tag_find(name);
    if (t) return t;
    pthread_mutex_lock(&table_lock);
    t = tag_find(name);
    size_t n = atomic_load(&ntags);
    if (!t && n < TAGS_MAX) {
        t = &tags[n];
        strcpy(t->name, name);
        atomic_store_explicit(&ntags, n + 1, memory_order_release); /* the name before its publication */
    }
    pthread_mutex_unlock(&table_lock);
    if (!t) *rc = gh_note(GPU_ERR_INVALID, "tag %s: a process has at most %d tags", name, TAGS_MAX);
    return t;
}

/* The heap of tag t on device dev, opened on first use (paused when t is). The
 * error noted. */
static int tag_heap(tag *t, int dev, gpu_heap_t **out) {
    if (dev < 0 || dev >= GH_DEVICES) return gh_note(GPU_ERR_NO_DEVICE, "current device %d is out of range", dev);
    gpu_heap_t *h = atomic_load_explicit(&t->heap[dev], memory_order_acquire);
    int rc = GPU_OK;
    if (!h) {
        pthread_mutex_lock(&ctl_lock);
        h = atomic_load(&t->heap[dev]);
        if (!h) {
            gpu_config_t cfg = *gh_default_config();
            cfg.device = dev;
            cfg.reserve_bytes = config_tag_reserve();
            while ((rc = gh_heap_open_hidden(&cfg, &h)) == GPU_ERR_OUT_OF_VA && cfg.reserve_bytes / 2 >= TAG_RESERVE_MIN)
                cfg.reserve_bytes /= 2;
            size_t none;
            if (rc == GPU_OK && t->paused) (void)heap_pause(h, false, &none); /* empty: nothing to copy */
            if (rc == GPU_OK) atomic_store_explicit(&t->heap[dev], h, memory_order_release);
            else rc = gh_note_context(rc, "opening the heap of tag %s on device %d", t->name, dev);
        }
        pthread_mutex_unlock(&ctl_lock);
    }
    if (rc == GPU_OK) *out = h;
    return rc;
}

/* ---- regions ---------------------------------------------------------------------- */

int gpu_region_begin(const char *name) {
    int rc = tag_check(name, "gpu_region_begin");
    tag *t = rc == GPU_OK ? tag_get(name, &rc) : NULL;
    if (t && depth == REGION_DEPTH_MAX)
        rc = gh_note(GPU_ERR_INVALID, "gpu_region_begin(%s): regions nest at most %d deep", name, REGION_DEPTH_MAX);
    if (rc != GPU_OK) return gh_report(rc);
    regions[depth++] = t;
    return gh_ok();
}

int gpu_region_end(void) {
    if (!depth) return gh_error(GPU_ERR_INVALID, "gpu_region_end: no region is open on this thread");
    depth--;
    return gh_ok();
}

bool gh_region_open(void) { return depth != 0; }

gpu_heap_t *gh_heap_for_alloc(int dev) {
    if (!depth) return gh_heap_default_of(dev);
    gpu_heap_t *h;
    int rc = tag_heap(regions[depth - 1], dev, &h);
    if (rc == GPU_OK) return h;
    gh_report(rc);
    return NULL;
}

void *gpu_malloc_tagged(size_t size, const char *name) {
    int rc = tag_check(name, "gpu_malloc_tagged");
    tag *t = rc == GPU_OK ? tag_get(name, &rc) : NULL;
    gpu_heap_t *h = NULL;
    if (t) rc = tag_heap(t, gh_current_device(), &h);
    if (rc != GPU_OK) {
        gh_report(rc);
        return NULL;
    }
    return gpu_heap_malloc(h, size);
}

/* ---- memory control ------------------------------------------------------------- */

/* Pauses or resumes every heap of t, one trace line each; t->paused follows.
 * Returns the last error (noted). ctl_lock held. */
static int control_tag(tag *t, bool pause, bool backup) {
    int err = GPU_OK;
    bool any_paused = false;
    for (int d = 0; d < GH_DEVICES; d++) {
        gpu_heap_t *h = atomic_load_explicit(&t->heap[d], memory_order_acquire);
        if (!h) continue;
        size_t bytes = 0;
        uint64_t t0 = trace_begin();
        int rc = pause ? heap_pause(h, backup, &bytes) : heap_resume(h, &bytes);
        if (t0)
            trace_record(t0, &(trace_event){.op = pause ? TRACE_PAUSE : TRACE_RESUME, .heap = h->base, .addr = h->base,
                                            .size = bytes, .flags = pause && backup ? GPU_PAUSE_BACKUP : 0,
                                            .rc = (int8_t)rc});
        if (rc != GPU_OK)
            err = gh_note_context(rc, "%s(%s) on device %d", pause ? "gpu_pause" : "gpu_resume", t->name, d);
        any_paused |= !heap_is_running(h);
    }
    t->paused = any_paused || (pause && err == GPU_OK);
    return err;
}

/* gpu_pause and gpu_resume: one tag, or every tag (name NULL). */
static int control(const char *name, bool pause, bool backup, const char *call) {
    int rc = name ? tag_check(name, call) : GPU_OK;
    tag *one = NULL;
    if (rc == GPU_OK && name) one = pause ? tag_get(name, &rc) : tag_find(name);
    if (rc != GPU_OK) return gh_report(rc);
    if (name && !one) return gh_ok(); /* resuming a tag never used: it runs */
    pthread_mutex_lock(&ctl_lock);
    if (one) {
        rc = control_tag(one, pause, backup);
    } else {
        size_t n = atomic_load_explicit(&ntags, memory_order_acquire);
        for (size_t i = 0; i < n; i++) {
            int r = control_tag(&tags[i], pause, backup);
            if (r != GPU_OK) rc = r;
        }
    }
    pthread_mutex_unlock(&ctl_lock);
    return rc == GPU_OK ? gh_ok() : gh_report(rc);
}

int gpu_pause(const char *name, unsigned flags) {
    if (flags & ~(unsigned)GPU_PAUSE_BACKUP) return gh_error(GPU_ERR_INVALID, "gpu_pause: unknown flags %#x", flags);
    return control(name, true, flags & GPU_PAUSE_BACKUP, "gpu_pause");
}

int gpu_resume(const char *name) { return control(name, false, false, "gpu_resume"); }

int gpu_tag_stats(const char *name, gpu_stats_t *out) {
    if (!out) return gh_error(GPU_ERR_INVALID, "gpu_tag_stats: out is NULL");
    int rc = tag_check(name, "gpu_tag_stats");
    if (rc != GPU_OK) return gh_report(rc);
    tag *t = tag_find(name);
    int dev = gh_current_device();
    gpu_heap_t *h = t && dev >= 0 && dev < GH_DEVICES ? atomic_load_explicit(&t->heap[dev], memory_order_acquire) : NULL;
    if (!t) return gh_error(GPU_ERR_INVALID, "gpu_tag_stats(%s): no such tag (no region or tagged allocation named it)", name);
    if (!h) { /* named, nothing allocated on this device yet: an empty heap's figures */
        memset(out, 0, sizeof *out);
        out->version = GPU_STATS_VERSION;
        return gh_ok();
    }
    return gpu_heap_stats(h, out);
}

int gpu_tag_trim(const char *name, size_t keep_bytes) {
    int rc = name ? tag_check(name, "gpu_tag_trim") : GPU_OK;
    if (rc != GPU_OK) return gh_report(rc);
    tag *one = name ? tag_find(name) : NULL;
    size_t n = one ? 1 : name ? 0 : atomic_load_explicit(&ntags, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        tag *t = one ? one : &tags[i];
        for (int d = 0; d < GH_DEVICES; d++) {
            gpu_heap_t *h = atomic_load_explicit(&t->heap[d], memory_order_acquire);
            if (h && gpu_heap_trim(h, keep_bytes) != GPU_OK) rc = gpu_last_error();
        }
    }
    return rc == GPU_OK ? gh_ok() : rc;
}
