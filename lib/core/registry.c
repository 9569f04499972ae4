/*
 * registry.c — the live heaps of the process.
 *
 * A pointer must find its heap whatever device is current (gpu_free, the
 * interposer), and a destroyed or made-up heap handle must be refused instead of
 * used. So every opened heap is listed here until it closes. Lookups by pointer
 * read the list without a lock (slots are atomic, and a heap leaves the list
 * before it is closed); adding, removing and walking take one mutex.
 *
 * Heaps that live as long as the process (is_default: the default heaps and the
 * tags' heaps) are listed a second time, in a list that only grows, so that out
 * of memory in one heap can have the others give their idle memory back
 * (backing.c) without this mutex — a caller of the backing door may hold it
 * (registry_call) — and without reading a heap that another thread destroys.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "core/heap.h"
#include "error.h"

#define REGISTRY_MAX 256

static gpu_heap_t *_Atomic registry[REGISTRY_MAX];
static _Atomic size_t registry_top; /* slots at and above it were never used: lookups stop there */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static gpu_heap_t *_Atomic lasting[REGISTRY_MAX]; /* is_default heaps, in the order added; never removed */
static _Atomic size_t nlasting;

int registry_add(gpu_heap_t *h) {
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < REGISTRY_MAX; i++) {
        if (!atomic_load(&registry[i])) {
            atomic_store(&registry[i], h);
            if (i >= atomic_load(&registry_top)) atomic_store(&registry_top, i + 1);
            size_t n = atomic_load(&nlasting);
            if (h->is_default && n < REGISTRY_MAX) { /* the slot before the count: a walker sees it filled */
                atomic_store_explicit(&lasting[n], h, memory_order_release);
                atomic_store_explicit(&nlasting, n + 1, memory_order_release);
            }
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

void registry_each_lasting(void (*fn)(gpu_heap_t *h, void *arg), void *arg) {
    size_t n = atomic_load_explicit(&nlasting, memory_order_acquire);
    for (size_t i = 0; i < n; i++) fn(atomic_load_explicit(&lasting[i], memory_order_acquire), arg);
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
