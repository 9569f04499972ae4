/*
 * error.h — gpuheap's one error convention, for code inside the library.
 *
 * A public call returns GPU_OK, a negative gpu_error_t or NULL; the calling
 * thread's last error and message say why, and the process-wide handler hears of
 * every failure. Inside the library a failure is first *noted* (gh_note: the
 * message kept for this thread, nothing reported, safe under any lock), and the
 * public entry point *reports* it once every lock is released (gh_report). A
 * layer that adds context to a message from further down uses gh_note_context.
 *
 * Internal outcomes that are not errors have names of their own below the public
 * codes, so that no public code means two things; they never leave the library.
 */
#ifndef GPUHEAP_ERROR_H
#define GPUHEAP_ERROR_H

#include "gpuheap.h"

/* Not errors: answers between layers that never reach a caller. */
enum {
    GH_MISS = -100,    /* a thread cache cannot serve this call: ask the heap */
    GH_PENDING = -101, /* an event's work has not finished yet (an event query) */
};

/* Records a message for err on the calling thread without reporting it: for code
 * that holds a lock. Returns err. */
int gh_note(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Puts fmt's text and ": " before the message noted last (the caller's context
 * for a note made further down). Returns err. */
int gh_note_context(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reports err with the message noted last: sets the thread's last error, calls
 * the handler, prints when verbose. The handler may call gpuheap; the last error
 * is err again when gh_report returns. Call with no lock held. Returns err. */
int gh_report(int err);
/* The message noted last on this thread and not yet reported ("" when none):
 * for a layer that hands a reason on in words (an IPC refusal to an importer). */
const char *gh_noted(void);
/* gh_note + gh_report. */
int gh_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The calling thread's last error (error.c); written by gh_ok and gh_report only. */
extern _Thread_local int gh_last_error;
/* A call succeeded: the thread's last error becomes GPU_OK. Returns GPU_OK.
 * Inline: every successful malloc and free ends here. */
static inline int gh_ok(void) { return gh_last_error = GPU_OK; }
/* GPUHEAP_VERBOSE, read once. */
int gh_verbosity(void);

#endif /* GPUHEAP_ERROR_H */
