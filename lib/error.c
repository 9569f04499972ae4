/*
 * error.c — the one error convention (error.h): the thread's last error and
 * message, the process-wide handler, the text of each code.
 *
 * Messages are per thread: a failure noted on one thread can never be reported
 * with another thread's words. The handler runs after every lock is released and
 * may call gpuheap itself (to log, to trim, to free something): whatever those
 * calls do to the thread's last error, the failure being reported stays the last
 * error when gh_report returns, and a failure inside the handler is not handed to
 * the handler again (that would recurse without end).
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "common.h"

_Thread_local int gh_last_error; /* error.h: gh_ok sets it inline at the end of every successful call */
static _Thread_local char last_message[512];
static _Thread_local bool in_handler; /* this thread is inside the error handler */
static _Atomic(gpu_error_handler_t) error_handler;
static void *_Atomic error_arg;

int gh_verbosity(void) {
    static _Atomic int level = -1;
    int v = atomic_load_explicit(&level, memory_order_relaxed);
    if (v < 0) {
        const char *s = getenv("GPUHEAP_VERBOSE");
        v = s ? atoi(s) : 0;
        atomic_store(&level, v);
    }
    return v;
}

_Noreturn void gh_assert_fail(const char *cond, const char *msg, const char *file, int line) {
    fprintf(stderr, "gpuheap: internal invariant broken at %s:%d: %s (%s)\n", file, line, msg, cond);
    abort();
}

int gh_note(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return err;
}

int gh_note_context(int err, const char *fmt, ...) {
    char head[256], rest[sizeof last_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(rest, last_message, sizeof rest);
    if (snprintf(last_message, sizeof last_message, "%s: %s", head, rest) < 0) last_message[0] = '\0';
    return err;
}

const char *gh_noted(void) { return last_message; }

int gh_report(int err) {
    gh_last_error = err;
    if (err == GPU_OK) return err;
    char message[sizeof last_message];
    snprintf(message, sizeof message, "%s", last_message[0] ? last_message : gpu_strerror(err));
    last_message[0] = '\0';
    if (gh_verbosity() >= 1) fprintf(stderr, "gpuheap: %s: %s\n", gpu_strerror(err), message);
    gpu_error_handler_t fn = atomic_load(&error_handler);
    if (fn && !in_handler) {
        in_handler = true;
        fn(err, message, atomic_load(&error_arg));
        in_handler = false;
    }
    gh_last_error = err; /* whatever the handler's own calls left there */
    return err;
}

int gh_error(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return gh_report(err);
}

int gpu_last_error(void) { return gh_last_error; }

gpu_error_handler_t gpu_set_error_handler(gpu_error_handler_t handler, void *arg) {
    atomic_store(&error_arg, arg);
    return atomic_exchange(&error_handler, handler);
}

const char *gpu_strerror(int err) {
    switch (err) {
    case GPU_OK: return "success";
    case GPU_ERR_INVALID: return "invalid argument";
    case GPU_ERR_NOT_OWNED: return "pointer not owned by any gpuheap heap";
    case GPU_ERR_NOT_LIVE: return "pointer is not a live block (double free or interior pointer)";
    case GPU_ERR_OUT_OF_MEMORY: return "out of device memory";
    case GPU_ERR_OUT_OF_VA: return "out of reserved address space";
    case GPU_ERR_NOT_WHOLE_EXTENT: return "range is not made of whole extents owned by one block";
    case GPU_ERR_NO_DRIVER: return "no CUDA driver";
    case GPU_ERR_NO_DEVICE: return "no usable CUDA device";
    case GPU_ERR_BACKEND: return "driver or backend call failed";
    case GPU_ERR_BUSY: return "block is being changed by another thread";
    case GPU_ERR_DESTROYED: return "heap handle is not a live heap";
    case GPU_ERR_CORRUPT: return "heap check found a broken invariant";
    case GPU_ERR_CAPTURING: return "not allowed while a stream capture is in progress";
    case GPU_ERR_NOT_RESERVATION: return "pointer is not a live gpu_reserve range";
    case GPU_ERR_PAUSED: return "the memory of this tag is paused (gpu_pause): resume it first";
    default: return "unknown gpuheap error";
    }
}
