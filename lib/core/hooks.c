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

/* Runs the statement after it once for every registered table k, in the order
 * registered. */
#define EACH_HOOKS(k)                                                                          \
    for (size_t i_ = 0, n_ = atomic_load_explicit(&nhooks, memory_order_acquire); i_ < n_; i_++) \
        for (const heap_hooks *k = atomic_load_explicit(&hooks[i_], memory_order_relaxed); k; k = NULL)

void hooks_closing(gpu_heap_t *h) { EACH_HOOKS(k) if (k->closing) k->closing(h); }
void hooks_stats_locked(gpu_heap_t *h, gpu_stats_t *s) { EACH_HOOKS(k) if (k->stats_locked) k->stats_locked(h, s); }
void hooks_stats(gpu_heap_t *h, gpu_stats_t *s) { EACH_HOOKS(k) if (k->stats) k->stats(h, s); }
void hooks_trimming(gpu_heap_t *h) { EACH_HOOKS(k) if (k->trimming) k->trimming(h); }
void hooks_flush_locked(gpu_heap_t *h) { EACH_HOOKS(k) if (k->flush_locked) k->flush_locked(h); }

size_t hooks_held_locked(gpu_heap_t *h) {
    size_t held = 0;
    EACH_HOOKS(k) if (k->held_locked) held += k->held_locked(h);
    return held;
}

bool hooks_room_locked(gpu_heap_t *h, bool past_budget) {
    bool any = false;
    EACH_HOOKS(k) if (k->room_locked) any |= k->room_locked(h, past_budget);
    return any;
}
