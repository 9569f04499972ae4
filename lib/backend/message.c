/*
 * message.c — backend failure messages, one buffer per thread (backend.h).
 *
 * A backend call fails on the thread that made it, and the caller reads the
 * message on that same thread right after (vmm_error): a buffer per thread needs
 * no lock and can never attach another thread's words to a failure, which a
 * buffer per backend, written by whichever call failed last, could.
 */
#include <stdarg.h>
#include <stdio.h>

#include "backend/backend.h"

static _Thread_local char message[256];

int vmm_fail(vmm_backend *b, int err, const char *fmt, ...) {
    (void)b;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    return err;
}

const char *vmm_error(void) { return message; }
