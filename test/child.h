/*
 * child.h — running this test program again as a child and reading its stderr.
 *
 * Several tests check what a fresh process does (the environment is read once
 * per process, the interposer prints its exit line at exit), so they fork, set
 * the environment in the child, exec /proc/self/exe with `--child MODE ...` and
 * read what the child wrote to stderr. child_run does that once for all of
 * them; cmocka.h must be usable where this is included.
 */
#ifndef GPUHEAP_TEST_CHILD_H
#define GPUHEAP_TEST_CHILD_H

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

/* Forks; in the child, stderr goes to a pipe, prepare(arg) runs (when not
 * NULL: set the environment there) and /proc/self/exe is exec'd with argv
 * (NULL-terminated; exit status 127 if the exec fails). Reads the child's
 * stderr into err (at most len - 1 bytes, NUL-terminated), waits for it and
 * returns its exit status, or 1000 + the signal when one ended it. */
static inline int child_run(char *const argv[], void (*prepare)(void *arg), void *arg, char *err, size_t len) {
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        if (prepare) prepare(arg);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < len && (r = read(fd[0], err + n, len - 1 - n)) > 0) n += (size_t)r;
    err[n] = '\0';
    close(fd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

/* Open fds of this process (for tests that prove none is left behind). */
static inline int open_fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));) n += de->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own */
}

/* A test whose forked children start threads (an IPC server) puts this at file
 * scope: ThreadSanitizer kills such a child unless told it is expected. */
#ifndef __has_feature
#define __has_feature(x) 0 /* gcc before 14 */
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define CHILD_TSAN_FORK_OK                           \
    const char *__tsan_default_options(void);        \
    const char *__tsan_default_options(void) { return "die_after_fork=0"; }
#else
#define CHILD_TSAN_FORK_OK
#endif

#endif
