/*
 * probe.c — a shared library that test_preload links, to check that the
 * interposer's dlsym keeps RTLD_NEXT relative to its caller.
 *
 * It defines getpid itself and asks dlsym(RTLD_NEXT, "getpid") for the next
 * one. Loaded after the interposer (as a dependency of the program), the right
 * answer is libc's getpid; an interposer whose dlsym called glibc's with a call
 * rather than a jump would make glibc search after the interposer instead, and
 * find this library's own getpid first.
 */
#include <dlfcn.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

pid_t getpid(void) { return (pid_t)syscall(SYS_getpid); }

void *probe_own_getpid(void) { return (void *)getpid; }

/* Not a tail call itself: glibc must see this library as the caller. */
void *probe_next_getpid(void) {
    void *volatile next = dlsym(RTLD_NEXT, "getpid");
    return next;
}
