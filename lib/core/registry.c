/*
 * registry.c — the live heaps of the process.
 *
 * A pointer must find its heap whatever device is current (gpu_free, the
 * interposer), and a destroyed or made-up heap handle must be refused instead of
 * used. So every opened heap is listed here until it closes. Lookups by pointer
 * read the list without a lock (slots are atomic, and a heap leaves the list
 * before it is closed); adding, removing and walking take one mutex.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "core/heap.h"
#include "error.h"

#define REGISTRY_MAX 256

static gpu_heap_t *_Atomic registry[REGISTRY_MAX];
static _Atomic size_t registry_top; /* slots at and above it were never used: lookups stop there */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

int registry_add(gpu_heap_t *h) {
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < REGISTRY_MAX; i++) {
        if (!atomic_load(&registry[i])) {
            atomic_store(&registry[i], h);
            if (i >= atomic_load(&registry_top)) atomic_store(&registry_top, i + 1);
            pthread_mutex_unlock(&registry_lock);
            return GPU_OK;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return gh_note(GPU_ERR_INVALID, "more than %d heaps at once", REGISTRY_MAX);
}

void registry_remove(gpu_heap_t *h) {
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < REGISTRY_MAX; i++)
        if (atomic_load(&registry[i]) == h) atomic_store(&registry[i], NULL);
    pthread_mutex_unlock(&registry_lock);
}

gpu_heap_t *registry_find_ptr(uintptr_t p) {
    size_t top = atomic_load_explicit(&registry_top, memory_order_acquire);
    for (size_t i = 0; i < top; i++) {
        gpu_heap_t *h = atomic_load_explicit(&registry[i], memory_order_acquire);
        if (h && heap_owns(h, p)) return h;
    }
    return NULL;
}

void registry_each(void (*fn)(gpu_heap_t *h, void *arg), void *arg) {
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < REGISTRY_MAX; i++) {
        gpu_heap_t *h = atomic_load(&registry[i]);
        if (h) fn(h, arg);
    }
    pthread_mutex_unlock(&registry_lock);
}

bool registry_call(gpu_heap_t *h, uint64_t serial, void (*fn)(gpu_heap_t *h, void *arg), void *arg) {
    bool found = false;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < REGISTRY_MAX && !found; i++)
        found = atomic_load(&registry[i]) == h && h->serial == serial;
    if (found) fn(h, arg);
    pthread_mutex_unlock(&registry_lock);
    return found;
}

bool registry_has(const gpu_heap_t *h) {
    size_t top = atomic_load_explicit(&registry_top, memory_order_acquire);
    for (size_t i = 0; i < top; i++)
        if (atomic_load_explicit(&registry[i], memory_order_acquire) == h) return true;
    return false;
}
