/*
 * hooks.c — how the core tells the layers above it about a heap (heap.h).
 *
 * The core must never call up: a thread cache or a file mapping is not its
 * business. But when a heap closes, those layers must drop what they keep for
 * it, and a statistics snapshot must hear what they hold. So each such layer
 * registers a table of hooks once, and the core calls whatever is registered.
 * The list only grows, and only a handful of layers exist, so readers walk it
 * without a lock.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "core/internal.h"

static const heap_hooks *_Atomic hooks[HEAP_HOOKS_MAX];
static _Atomic size_t nhooks;
static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;

int heap_hooks_add(const heap_hooks *add) {
    int rc = GPU_OK;
    pthread_mutex_lock(&hooks_lock);
    size_t n = atomic_load(&nhooks);
    bool known = false;
    for (size_t i = 0; i < n; i++) known |= atomic_load(&hooks[i]) == add;
    if (!known && n == HEAP_HOOKS_MAX)
        rc = gh_note(GPU_ERR_INVALID, "more than %d layers registered heap hooks", HEAP_HOOKS_MAX);
    else if (!known) {
        atomic_store(&hooks[n], add);
        atomic_store_explicit(&nhooks, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&hooks_lock);
    return rc;
}

/* Calls member m of every registered table that has it. */
#define EACH_HOOK(m, ...)                                                          \
    do {                                                                           \
        size_t n_ = atomic_load_explicit(&nhooks, memory_order_acquire);          \
        for (size_t i_ = 0; i_ < n_; i_++) {                                       \
            const heap_hooks *k_ = atomic_load_explicit(&hooks[i_], memory_order_relaxed); \
            if (k_->m) k_->m(__VA_ARGS__);                                         \
        }                                                                          \
    } while (0)

void hooks_closing(gpu_heap_t *h) { EACH_HOOK(closing, h); }
void hooks_stats_locked(gpu_heap_t *h, gpu_stats_t *s) { EACH_HOOK(stats_locked, h, s); }
void hooks_stats(gpu_heap_t *h, gpu_stats_t *s) { EACH_HOOK(stats, h, s); }
void hooks_trimming(gpu_heap_t *h) { EACH_HOOK(trimming, h); }
void hooks_flush_locked(gpu_heap_t *h) { EACH_HOOK(flush_locked, h); }

bool hooks_room_locked(gpu_heap_t *h) {
    bool any = false;
    size_t n = atomic_load_explicit(&nhooks, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        const heap_hooks *k = atomic_load_explicit(&hooks[i], memory_order_relaxed);
        if (k->room_locked) any |= k->room_locked(h);
    }
    return any;
}
