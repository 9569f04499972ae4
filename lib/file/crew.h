/*
 * crew.h — a few threads kept between parallel jobs (crew.c).
 *
 * A file load runs on several threads (load.c). Creating them for every load
 * and joining them at its end costs a clone, a stack and a first driver call on
 * each new thread per load; a crew keeps them asleep between jobs instead, so
 * that the next job costs one wake-up. One caller at a time drives a crew (the
 * owner of the staging set it belongs to); its threads run only what that
 * caller hands them and take no lock of the caller's.
 */
#ifndef GPUHEAP_CREW_H
#define GPUHEAP_CREW_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define CREW_MAX 64u /* threads, the caller's own included (id 0) */

typedef struct crew crew;

/* One kept thread: its id in the crew and the job generation it has seen. */
typedef struct crew_seat {
    crew *c;
    unsigned id;
    uint64_t seen;
    pthread_t thread;
} crew_seat;

struct crew {
    pthread_mutex_t lock;
    pthread_cond_t go;   /* the threads wait here for the next job */
    pthread_cond_t done; /* the caller waits here for the job's end */
    pid_t pid;           /* the process that started the threads (a fork's child has none) */
    unsigned size;       /* threads started: ids 1..size */
    unsigned want;       /* ids 1..want take part in the current job */
    unsigned running;    /* of those, still working on it */
    uint64_t gen;        /* job generation, raised by every crew_start */
    bool stop;
    void (*fn)(void *arg, unsigned id);
    void *arg;
    crew_seat seat[CREW_MAX]; /* seat[0] unused: id 0 is the caller */
};

/* An empty crew (no threads yet). */
void crew_init(crew *c);
/* Runs fn(arg, id) for ids 1..n-1 on the crew's threads, starting those it
 * lacks first, and returns how many ids run (fewer where a thread could not
 * start: its share is left to the others). The caller runs id 0 itself and then
 * calls crew_wait before the next crew_start. */
unsigned crew_start(crew *c, unsigned n, void (*fn)(void *arg, unsigned id), void *arg);
/* Returns once every fn of the current job has returned. */
void crew_wait(crew *c);
/* Ends and joins the threads (no job running) and frees what crew_init made. */
void crew_destroy(crew *c);
/* Threads started so far (for messages and timing). */
unsigned crew_size(const crew *c);

#endif /* GPUHEAP_CREW_H */
