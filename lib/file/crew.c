/*
 * crew.c — a few threads kept between parallel jobs (see crew.h).
 *
 * The loader's threads used to be created for each gpu_map_file and joined at
 * its end. A crew starts them on first use and keeps them asleep on a condition
 * variable between jobs: a job raises the generation and wakes them; each thread
 * whose id is wanted runs the job's function and, the last one out, wakes the
 * caller. The threads block every signal (a handler of the program's never runs
 * on them) and live until crew_destroy, which staging.c calls where it frees
 * the staging set the crew belongs to: gpu_heap_trim and the heap's end.
 *
 * A fork's child inherits the crew's records but not its threads; crew_start
 * notices the other process id and starts new ones (the old records are
 * dropped, never joined).
 */
#include "file/crew.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static void *crew_main(void *arg) {
    crew_seat *s = arg;
    crew *c = s->c;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->stop && c->gen == s->seen) pthread_cond_wait(&c->go, &c->lock);
        if (c->stop) break;
        s->seen = c->gen;
        if (s->id > c->want) continue; /* a smaller job: not this thread */
        void (*fn)(void *, unsigned) = c->fn;
        void *fn_arg = c->arg;
        pthread_mutex_unlock(&c->lock);
        fn(fn_arg, s->id);
        pthread_mutex_lock(&c->lock);
        if (--c->running == 0) pthread_cond_signal(&c->done);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

void crew_init(crew *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->go, NULL);
    pthread_cond_init(&c->done, NULL);
    c->pid = getpid();
}

/* Starts threads up to id n-1; the caller alone drives the crew, and a new
 * thread waits for the generation after the current one. */
static void crew_grow(crew *c, unsigned n) {
    if (c->size + 1 >= n) return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (c->size + 1 < n) {
        crew_seat *s = &c->seat[c->size + 1];
        s->c = c;
        s->id = c->size + 1;
        s->seen = c->gen;
        if (pthread_create(&s->thread, NULL, crew_main, s) != 0) break;
        c->size++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

unsigned crew_start(crew *c, unsigned n, void (*fn)(void *arg, unsigned id), void *arg) {
    if (c->pid != getpid()) crew_init(c); /* a fork's child: the threads stayed behind */
    if (n > CREW_MAX) n = CREW_MAX;
    crew_grow(c, n);
    unsigned want = n ? n - 1 : 0;
    if (want > c->size) want = c->size;
    if (!want) return 0;
    pthread_mutex_lock(&c->lock);
    c->fn = fn;
    c->arg = arg;
    c->want = want;
    c->running = want;
    c->gen++;
    pthread_cond_broadcast(&c->go);
    pthread_mutex_unlock(&c->lock);
    return want;
}

void crew_wait(crew *c) {
    pthread_mutex_lock(&c->lock);
    while (c->running) pthread_cond_wait(&c->done, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

void crew_destroy(crew *c) {
    if (c->pid != getpid()) { /* a fork's child: no threads, and the parent's waiters still counted in the condvars */
        c->size = 0;
        return;
    }
    if (c->size) {
        pthread_mutex_lock(&c->lock);
        c->stop = true;
        pthread_cond_broadcast(&c->go);
        pthread_mutex_unlock(&c->lock);
        for (unsigned i = 1; i <= c->size; i++) pthread_join(c->seat[i].thread, NULL);
    }
    pthread_cond_destroy(&c->done);
    pthread_cond_destroy(&c->go);
    pthread_mutex_destroy(&c->lock);
    c->size = 0;
}

unsigned crew_size(const crew *c) { return c->size; }
