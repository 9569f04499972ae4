/*
 * test_ipc_transport.c — the IPC transport (lib/ipc) between real processes,
 * with no heap: this process exports "blocks" that its lookup callback makes up
 * as memfds of known bytes, and children ask for them.
 *
 * A child is either forked (it shares the parent's memory image) or forked and
 * exec'd from this binary with --ipc-child MODE HEX (it has nothing but the
 * handle's bytes, so nothing can lean on inherited state). It checks what it got
 * and says so by its exit status; the parent checks the server's counts. Every
 * test counts this process's fds before the server starts and after it stops,
 * and the children count theirs around each request: both stay flat, less the
 * connections the client keeps for its next request (ipc_client_kept).
 */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "error.h"
#include "child.h"
#include "ipc/ipc.h"
#include "ipc/wire.h"

CHILD_TSAN_FORK_OK

#define KiB ((uint64_t)1 << 10)
#define MiB ((uint64_t)1 << 20)
#define GRANULARITY (4 * KiB)

/* The blocks this process exports, known to every child (the same binary). */
typedef struct test_export {
    uint64_t token;
    unsigned nextents;
    uint64_t extent_size;
    uint64_t offset, size;
} test_export;
static const test_export exports[] = {
    {0x1111000000000001u, 3, 64 * KiB, 4 * KiB, 3 * 64 * KiB - 4 * KiB - 512},
    {0x2222000000000002u, 300, 4 * KiB, 128, 300 * 4 * KiB - 128 - 64}, /* two chunks of 200 and one of 100 */
    {0x3333000000000003u, 1, 2 * MiB, 0, 2 * MiB},
};
#define NEXPORTS (sizeof exports / sizeof exports[0])
#define UNKNOWN_TOKEN 0x7777000000000007u

static _Atomic unsigned lookups; /* lookup calls in this process */

/* The byte at offset o of extent i of the export with this token. */
static unsigned char pattern(uint64_t token, unsigned i, uint64_t o) {
    return (unsigned char)((token >> 56) ^ (i * 131u) ^ (o * 7u) ^ (o >> 9));
}

static const test_export *export_of(uint64_t token) {
    for (size_t i = 0; i < NEXPORTS; i++)
        if (exports[i].token == token) return &exports[i];
    return NULL;
}

/* The lookup: a memfd per extent, filled with the pattern. */
static int test_lookup(uint64_t token, ipc_reply *r, int *fds, unsigned max_fds, unsigned *nfds, void *arg) {
    (void)arg;
    lookups++;
    const test_export *e = export_of(token);
    if (!e) {
        snprintf(r->message, sizeof r->message, "no export with token %016llx", (unsigned long long)token);
        return GPU_ERR_INVALID;
    }
    if (e->nextents > max_fds) return GPU_ERR_INVALID;
    unsigned char buf[16 * KiB]; /* two servers may overlap while one stops */
    for (unsigned i = 0; i < e->nextents; i++) {
        int fd = memfd_create("ipc-test", MFD_CLOEXEC);
        if (fd < 0) return GPU_ERR_BACKEND;
        fds[(*nfds)++] = fd; /* the server's to close from here, whatever happens */
        if (ftruncate(fd, (off_t)e->extent_size) != 0) return GPU_ERR_BACKEND;
        for (uint64_t o = 0; o < e->extent_size; o += sizeof buf) {
            uint64_t n = e->extent_size - o < sizeof buf ? e->extent_size - o : sizeof buf;
            for (uint64_t k = 0; k < n; k++) buf[k] = pattern(token, i, o + k);
            if (pwrite(fd, buf, n, (off_t)o) != (ssize_t)n) return GPU_ERR_BACKEND;
        }
        r->extent_size[i] = e->extent_size;
    }
    r->nextents = e->nextents;
    r->offset = e->offset;
    r->size = e->size;
    r->granularity = GRANULARITY;
    return GPU_OK;
}

/* A lookup that breaks its contract: one fd for two extents. */
static int bad_lookup(uint64_t token, ipc_reply *r, int *fds, unsigned max_fds, unsigned *nfds, void *arg) {
    (void)token, (void)max_fds, (void)arg;
    fds[(*nfds)++] = memfd_create("ipc-test-bad", MFD_CLOEXEC);
    r->nextents = 2;
    return GPU_OK;
}

/* Open fds of this process, less the connections kept for the next request. */
static int fd_count(void) { return open_fd_count() - (int)ipc_client_kept(); }

/* The message noted for err on this thread, as a public call would report it. */
static char reported[512];
static void keep_message(int err, const char *message, void *arg) {
    (void)err, (void)arg;
    snprintf(reported, sizeof reported, "%s", message);
}
static const char *message_of(int err) {
    gpu_error_handler_t old = gpu_set_error_handler(keep_message, NULL);
    reported[0] = '\0';
    gh_report(err);
    gpu_set_error_handler(old, NULL);
    return reported;
}

/* ---- what a child checks (a forked or exec'd one: no cmocka here) ---------- */

/* Says what failed (and in which process); evaluates to 1, a child's exit status. */
#define CHILD_FAIL(...) \
    (fprintf(stderr, "pid %d: ", (int)getpid()), fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), 1)

/* Asks for the block h names and checks every byte, the sizes and the fds. */
static int check_block(const ipc_handle_fields *h) {
    const test_export *e = export_of(h->export_token);
    if (!e) return CHILD_FAIL("no such export");
    int before = fd_count();
    static ipc_reply r;
    static int fds[IPC_MAX_EXTENTS];
    unsigned n = 99;
    int err = ipc_request(h, &r, fds, IPC_MAX_EXTENTS, &n);
    if (err) return CHILD_FAIL("ipc_request: %d: %s", err, message_of(err));
    int bad = 0;
    if (n != e->nextents || r.nextents != e->nextents || r.offset != e->offset || r.size != e->size ||
        r.granularity != GRANULARITY || r.status != GPU_OK)
        bad = CHILD_FAIL("reply: %u fds, %u extents, offset %llu, size %llu", n, r.nextents,
                         (unsigned long long)r.offset, (unsigned long long)r.size);
    /* From this process's own server, its thread closes its copies as we count:
     * the fd count is checked after ipc_server_stop instead (teardown). */
    bool exact = h->pid != (uint32_t)getpid();
    if (!bad && exact && fd_count() != before + (int)n) bad = CHILD_FAIL("%d fds, expected %d", fd_count(), before + (int)n);
    for (unsigned i = 0; i < n && !bad; i++) {
        struct stat st;
        if (r.extent_size[i] != e->extent_size || fstat(fds[i], &st) != 0 || (uint64_t)st.st_size != e->extent_size)
            bad = CHILD_FAIL("extent %u: size %llu", i, (unsigned long long)r.extent_size[i]);
        const unsigned char *p = bad ? MAP_FAILED : mmap(NULL, e->extent_size, PROT_READ, MAP_SHARED, fds[i], 0);
        if (!bad && p == MAP_FAILED) bad = CHILD_FAIL("mmap extent %u", i);
        for (uint64_t o = 0; !bad && o < e->extent_size; o++)
            if (p[o] != pattern(e->token, i, o)) bad = CHILD_FAIL("extent %u byte %llu", i, (unsigned long long)o);
        if (p != MAP_FAILED) munmap((void *)p, e->extent_size);
    }
    for (unsigned i = 0; i < n; i++) close(fds[i]);
    if (!bad && exact && fd_count() != before) bad = CHILD_FAIL("fds: %d after, %d before", fd_count(), before);
    return bad;
}

/* Expects a refusal with err and a message containing words; no fd left. */
static int check_refused(const ipc_handle_fields *h, int want, const char *words) {
    bool exact = h->pid != (uint32_t)getpid(); /* see check_block */
    int before = fd_count();
    static ipc_reply r;
    int fds[8];
    unsigned n = 99;
    int err = ipc_request(h, &r, fds, 8, &n);
    const char *msg = message_of(err);
    if (err != want || n != 0 || !strstr(msg, words))
        return CHILD_FAIL("expected %d with \"%s\": got %d, %u fds: %s", want, words, err, n, msg);
    if (exact && fd_count() != before) return CHILD_FAIL("fds: %d after, %d before", fd_count(), before);
    return 0;
}

/* What a child does with the handle's bytes: MODE is block, unknown (the
 * handle names UNKNOWN_TOKEN), forged (the bytes must not decode). */
static int child_ask(const char *mode, const unsigned char bytes[IPC_HANDLE_BYTES]) {
    ipc_handle_fields h;
    int err = ipc_handle_decode(bytes, &h);
    if (!strcmp(mode, "forged"))
        return err == GPU_ERR_INVALID && strstr(message_of(err), "checksum") ? 0 : CHILD_FAIL("forged: %d", err);
    if (err) return CHILD_FAIL("decode: %s", message_of(err));
    if (!strcmp(mode, "block")) return check_block(&h);
    if (!strcmp(mode, "block3")) { /* three requests: one connection, kept between them */
        for (int i = 0; i < 3; i++) {
            int bad = check_block(&h);
            if (bad) return bad;
            if (ipc_client_kept() != 1) return CHILD_FAIL("%u connections kept", ipc_client_kept());
        }
        return 0;
    }
    if (!strcmp(mode, "unknown")) return check_refused(&h, GPU_ERR_INVALID, "no export with token");
    if (!strcmp(mode, "other-uid")) return check_refused(&h, GPU_ERR_INVALID, "serves only its own uid");
    return CHILD_FAIL("unknown mode %s", mode);
}

/* Runs child_ask in a forked child, or in this binary exec'd afresh; its exit status. */
static int run_child(bool exec, const char *mode, const unsigned char bytes[IPC_HANDLE_BYTES]) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!exec) _exit(child_ask(mode, bytes));
        char hex[2 * IPC_HANDLE_BYTES + 1];
        for (unsigned i = 0; i < IPC_HANDLE_BYTES; i++) sprintf(hex + 2 * i, "%02x", bytes[i]);
        execl("/proc/self/exe", "test_ipc_transport", "--ipc-child", mode, hex, (char *)NULL);
        _exit(CHILD_FAIL("exec: %s", strerror(errno)));
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- the tests --------------------------------------------------------------- */

/* The bytes of a handle this process serves for token. */
static void make_handle(uint64_t token, uint64_t size, unsigned char out[IPC_HANDLE_BYTES]) {
    ipc_handle_fields h;
    assert_int_equal(ipc_server_handle(token, size, &h), GPU_OK);
    assert_int_equal(h.pid, (uint32_t)getpid());
    assert_int_equal(h.uid, (uint32_t)geteuid());
    ipc_handle_encode(&h, out);
}

/* The server's counts since the test's setup (in a fork's child: since the fork).
 * The server counts a reply after sending it, maybe after its importer has
 * exited: a test that needs the last count stops the server first. */
static ipc_server_counts counts_at_start;
static ipc_server_counts counts(void) {
    ipc_server_counts c, b = counts_at_start;
    ipc_server_get_counts(&c);
    if (c.starts < b.starts) memset(&b, 0, sizeof b); /* a fork's child starts from zero */
    c.starts -= b.starts, c.connections -= b.connections, c.served -= b.served, c.refused_uid -= b.refused_uid;
    c.refused_lookup -= b.refused_lookup, c.bad_requests -= b.bad_requests, c.failed -= b.failed;
    return c;
}

static int fds_at_start;
static int setup(void **state) {
    (void)state;
    ipc_server_stop();
    ipc_client_disconnect();
    ipc_server_set_lookup(test_lookup, NULL);
    ipc_server_get_counts(&counts_at_start);
    fds_at_start = fd_count();
    return 0;
}
static int teardown(void **state) {
    (void)state;
    ipc_server_stop();
    ipc_client_disconnect();
    if (ipc_client_kept()) {
        print_error("%u connections still kept after ipc_client_disconnect\n", ipc_client_kept());
        return -1;
    }
    int now = fd_count();
    if (now != fds_at_start) {
        print_error("this process has %d fds after the test, %d before\n", now, fds_at_start);
        return -1;
    }
    return 0;
}

static void test_handle_round_trip_and_every_corrupt_byte(void **state) {
    (void)state;
    ipc_handle_fields h = {
        .pid = 4242, .uid = 1000, .server_token = 0x0123456789abcdefu, .export_token = 77, .size = 5};
    unsigned char b[IPC_HANDLE_BYTES], c[IPC_HANDLE_BYTES];
    ipc_handle_encode(&h, b);
    ipc_handle_fields d;
    assert_int_equal(ipc_handle_decode(b, &d), GPU_OK);
    assert_int_equal(d.magic, IPC_HANDLE_MAGIC);
    assert_int_equal(d.version, IPC_HANDLE_VERSION);
    assert_true(d.pid == 4242 && d.uid == 1000 && d.server_token == h.server_token);
    assert_true(d.export_token == 77 && d.size == 5);
    for (unsigned i = 0; i < IPC_HANDLE_BYTES; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            memcpy(c, b, sizeof c);
            c[i] ^= (unsigned char)(1u << bit);
            assert_int_equal(ipc_handle_decode(c, &d), GPU_ERR_INVALID);
        }
    }
    assert_non_null(strstr(message_of(GPU_ERR_INVALID), "checksum"));
    h.export_token = 0; /* encodes, but names nothing */
    ipc_handle_encode(&h, c);
    assert_int_equal(ipc_handle_decode(c, &d), GPU_ERR_INVALID);
    uint64_t x, y;
    assert_int_equal(ipc_random64(&x), GPU_OK);
    assert_int_equal(ipc_random64(&y), GPU_OK);
    assert_true(x && y && x != y);
}

static void test_forged_handle_refused_before_io(void **state) {
    (void)state;
    unsigned char b[IPC_HANDLE_BYTES];
    make_handle(exports[0].token, exports[0].size, b);
    b[offsetof(ipc_handle_fields, export_token)] ^= 1; /* another export, but the checksum says no */
    ipc_server_counts before = counts();
    assert_int_equal(run_child(false, "forged", b), 0);
    assert_int_equal(run_child(true, "forged", b), 0);
    assert_int_equal(counts().connections, before.connections); /* nobody connected */
}

/* Every export, to a forked child or an exec'd one: bytes, sizes, 300 fds in chunks. */
static void children_get_blocks(bool exec) {
    unsigned char b[IPC_HANDLE_BYTES];
    unsigned first = lookups;
    for (size_t i = 0; i < NEXPORTS; i++) {
        make_handle(exports[i].token, exports[i].size, b);
        assert_int_equal(run_child(exec, "block", b), 0);
    }
    ipc_server_stop();
    ipc_server_counts c = counts();
    assert_int_equal(c.served, NEXPORTS);
    assert_int_equal(c.failed + c.refused_uid + c.refused_lookup + c.bad_requests, 0);
    assert_int_equal(lookups - first, NEXPORTS);
}
static void test_forked_child_gets_blocks(void **state) { (void)state, children_get_blocks(false); }
static void test_execd_child_gets_blocks(void **state) { (void)state, children_get_blocks(true); }

static void test_unknown_export_refused(void **state) {
    (void)state;
    unsigned char b[IPC_HANDLE_BYTES];
    make_handle(UNKNOWN_TOKEN, 4096, b);
    assert_int_equal(run_child(false, "unknown", b), 0);
    assert_int_equal(run_child(true, "unknown", b), 0);
    ipc_server_stop();
    assert_int_equal(counts().refused_lookup, 2);
    assert_int_equal(counts().served, 0);
}

/* A fork's child closes its copies of the parent's server fds at once (the
 * socket and the wake fd), so that they never outlive the parent. */
static void test_fork_child_drops_inherited_server(void **state) {
    (void)state;
    unsigned char b[IPC_HANDLE_BYTES];
    make_handle(exports[0].token, exports[0].size, b);
    int parent = fd_count();
    pid_t pid = fork();
    if (pid == 0) _exit(fd_count() == parent - 2 ? 0 : CHILD_FAIL("%d fds, parent had %d", fd_count(), parent));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_exporter_gone(void **state) {
    (void)state;
    ipc_handle_fields mine, theirs;
    assert_int_equal(ipc_server_handle(exports[0].token, exports[0].size, &mine), GPU_OK);
    int up[2], hold[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(hold), 0);
    pid_t pid = fork();
    if (pid == 0) { /* the exporter: a fork's child, so a fresh server of its own */
        close(up[0]), close(hold[1]);
        ipc_handle_fields h;
        unsigned char b[IPC_HANDLE_BYTES];
        if (ipc_server_handle(exports[0].token, exports[0].size, &h) != GPU_OK) _exit(1);
        ipc_handle_encode(&h, b);
        if (write(up[1], b, sizeof b) != (ssize_t)sizeof b) _exit(2);
        char c;
        while (read(hold[0], &c, 1) > 0) {} /* until the parent closes hold */
        ipc_server_stop();
        _exit(counts().served == 1 && counts().starts == 1 ? 0 : 3);
    }
    close(up[1]), close(hold[0]);
    unsigned char b[IPC_HANDLE_BYTES];
    assert_int_equal(read(up[0], b, sizeof b), (ssize_t)sizeof b);
    close(up[0]);
    assert_int_equal(ipc_handle_decode(b, &theirs), GPU_OK);
    assert_int_equal(theirs.pid, (uint32_t)pid);
    assert_true(theirs.server_token != mine.server_token);
    assert_int_equal(check_block(&theirs), 0); /* this process imports from its child */
    close(hold[1]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char words[64];
    snprintf(words, sizeof words, "(pid %d) is gone", (int)pid);
    assert_int_equal(check_refused(&theirs, GPU_ERR_INVALID, words), 0);

    /* Stopping the server makes this process's own handles stale the same way;
     * the next handle starts a new server under a new token. */
    ipc_server_stop();
    snprintf(words, sizeof words, "(pid %d) is gone", (int)getpid());
    assert_int_equal(check_refused(&mine, GPU_ERR_INVALID, words), 0);
    ipc_handle_fields again;
    assert_int_equal(ipc_server_handle(exports[0].token, exports[0].size, &again), GPU_OK);
    assert_true(again.server_token != mine.server_token);
    assert_int_equal(check_block(&again), 0);
}

static void test_other_uid_refused(void **state) {
    (void)state;
    if (geteuid() != 0) skip(); /* only root can become another uid */
    unsigned char b[IPC_HANDLE_BYTES];
    make_handle(exports[0].token, exports[0].size, b);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(77);
        _exit(child_ask("other-uid", b));
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) skip();
    assert_int_equal(WEXITSTATUS(status), 0);
    ipc_server_stop();
    assert_int_equal(counts().refused_uid, 1);
    assert_int_equal(counts().served, 0);
}

/* Contract breaches answered without a leak: a lookup that gives too few fds,
 * and a caller with room for too few. */
static void test_bad_reply_and_small_room(void **state) {
    (void)state;
    ipc_handle_fields h;
    assert_int_equal(ipc_server_handle(exports[0].token, exports[0].size, &h), GPU_OK);
    static ipc_reply r;
    int fds[4];
    unsigned n = 9;
    assert_int_equal(ipc_request(&h, &r, fds, 2, &n), GPU_ERR_INVALID);
    assert_int_equal(n, 0);
    assert_non_null(strstr(message_of(GPU_ERR_INVALID), "more than the 2 fds"));
    ipc_server_set_lookup(bad_lookup, NULL);
    assert_int_equal(ipc_request(&h, &r, fds, 4, &n), GPU_ERR_BACKEND);
    assert_non_null(strstr(message_of(GPU_ERR_BACKEND), "1 fds for 2 extents"));
    ipc_server_set_lookup(NULL, NULL);
    assert_int_equal(ipc_request(&h, &r, fds, 4, &n), GPU_ERR_INVALID);
    assert_non_null(strstr(r.message, "exports nothing"));
    ipc_server_set_lookup(test_lookup, NULL);
    /* teardown checks that the server closed the bad lookup's fd and we closed ours */
}

/* h naming another export of its server. */
static ipc_handle_fields with_token(ipc_handle_fields h, uint64_t token) {
    h.export_token = token;
    return h;
}

/* One connection carries one request after another, from a child and from this
 * process (to its own server): one accept for many replies. */
static void test_connection_kept(void **state) {
    (void)state;
    unsigned char b[IPC_HANDLE_BYTES];
    make_handle(exports[0].token, exports[0].size, b);
    assert_int_equal(run_child(true, "block3", b), 0); /* three requests, one connection */
    ipc_handle_fields h;
    assert_int_equal(ipc_handle_decode(b, &h), GPU_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(check_block(&h), 0);
        assert_int_equal(ipc_client_kept(), 1);
    }
    ipc_handle_fields unknown = with_token(h, UNKNOWN_TOKEN);
    assert_int_equal(check_refused(&unknown, GPU_ERR_INVALID, "no export with token"), 0); /* leaves it in step */
    assert_int_equal(check_block(&h), 0);
    ipc_server_stop();
    ipc_server_counts c = counts();
    assert_int_equal(c.connections, 2); /* the child's, this process's */
    assert_int_equal(c.served, 3 + 4);
    assert_int_equal(c.refused_lookup, 1);
    assert_int_equal(c.failed, 0);
}

/* A kept connection that the server closed meanwhile — it stopped, or took so
 * many connections that it closed the idlest — is found so at the next request,
 * which goes again on a new connection: "gone" for a stopped server, the block
 * from a live one. */
static void test_kept_connection_closed_by_server(void **state) {
    (void)state;
    ipc_handle_fields h;
    assert_int_equal(ipc_server_handle(exports[2].token, exports[2].size, &h), GPU_OK);
    assert_int_equal(check_block(&h), 0);
    uint64_t connections = counts().connections;
    /* Twice as many connections as the server holds, never asking: ours is the idlest. */
    struct sockaddr_un addr;
    socklen_t len;
    ipc_wire_address(h.pid, h.server_token, &addr, &len);
    int raw[2 * IPC_SERVER_CONNS];
    for (unsigned i = 0; i < 2 * IPC_SERVER_CONNS; i++) {
        raw[i] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        assert_true(raw[i] >= 0);
        assert_int_equal(connect(raw[i], (struct sockaddr *)&addr, len), 0);
    }
    for (int i = 0; i < 2000 && counts().connections < connections + 2 * IPC_SERVER_CONNS; i++) usleep(1000);
    assert_int_equal(counts().connections, connections + 2 * IPC_SERVER_CONNS);
    assert_int_equal(ipc_server_connections(), IPC_SERVER_CONNS);
    assert_int_equal(check_block(&h), 0); /* on a new connection */
    assert_int_equal(counts().connections, connections + 2 * IPC_SERVER_CONNS + 1);
    for (unsigned i = 0; i < 2 * IPC_SERVER_CONNS; i++) close(raw[i]);
    /* A server stopped: "gone", though the connection was kept. */
    ipc_server_stop();
    char words[64];
    snprintf(words, sizeof words, "(pid %d) is gone", (int)getpid());
    assert_int_equal(check_refused(&h, GPU_ERR_INVALID, words), 0);
    assert_int_equal(ipc_client_kept(), 0);
}

/* The importer keeps IPC_CLIENT_KEEP connections at most: a new server's takes
 * the place of the one used longest ago. */
static void test_client_keeps_few(void **state) {
    (void)state;
    ipc_handle_fields first;
    for (unsigned i = 0; i < IPC_CLIENT_KEEP + 3; i++) {
        ipc_handle_fields h;
        assert_int_equal(ipc_server_handle(exports[0].token, exports[0].size, &h), GPU_OK);
        if (!i) first = h;
        assert_int_equal(check_block(&h), 0);
        assert_int_equal(ipc_client_kept(), i < IPC_CLIENT_KEEP ? i + 1 : IPC_CLIENT_KEEP);
        ipc_server_stop(); /* the next handle names a new server */
    }
    char words[64];
    snprintf(words, sizeof words, "(pid %d) is gone", (int)getpid());
    assert_int_equal(check_refused(&first, GPU_ERR_INVALID, words), 0);
}

/* A fork's child closes its copies of the kept connections (two processes must
 * never share one) and connects on its own; the parent's stays good. */
static void test_fork_child_drops_kept_connections(void **state) {
    (void)state;
    ipc_handle_fields h;
    assert_int_equal(ipc_server_handle(exports[0].token, exports[0].size, &h), GPU_OK);
    assert_int_equal(check_block(&h), 0);
    assert_int_equal(ipc_client_kept(), 1);
    assert_int_equal(ipc_server_connections(), 1);
    /* A refusal after it: the server has closed the block's fds once it answers. */
    ipc_handle_fields unknown = with_token(h, UNKNOWN_TOKEN);
    assert_int_equal(check_refused(&unknown, GPU_ERR_INVALID, "no export with token"), 0);
    int parent = open_fd_count();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* Gone: the kept connection, and the server's socket, wake fd and connection. */
        if (ipc_client_kept() != 0 || open_fd_count() != parent - 4)
            _exit(CHILD_FAIL("%u kept, %d fds, parent had %d", ipc_client_kept(), open_fd_count(), parent));
        _exit(check_block(&h)); /* from the parent's server, on a connection of its own */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint64_t connections = counts().connections;
    assert_int_equal(check_block(&h), 0); /* the parent's kept connection still carries requests */
    assert_int_equal(counts().connections, connections);
}

/* Threads of this process import from its own server while others start and
 * stop it: every request either gets its block whole or hears "gone". */
#define RACE_THREADS 4
#define RACE_ITERS 40
static void *race_thread(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    static _Thread_local ipc_reply r;
    int fds[IPC_MAX_EXTENTS];
    for (unsigned i = 0; i < RACE_ITERS; i++) {
        ipc_handle_fields h;
        if (ipc_server_handle(exports[0].token, exports[0].size, &h) != GPU_OK) return (void *)1;
        unsigned n;
        int err = ipc_request(&h, &r, fds, IPC_MAX_EXTENTS, &n);
        if (err == GPU_OK) {
            if (n != exports[0].nextents) return (void *)2;
            for (unsigned k = 0; k < n; k++) close(fds[k]);
        } else if (err != GPU_ERR_INVALID || n != 0) {
            return (void *)3;
        }
        if (id == 0 && i % 8 == 7) ipc_server_stop();
        if (id == 1 && i % 10 == 3) ipc_server_set_lookup(test_lookup, NULL);
    }
    return NULL;
}
static void test_threads_start_stop_and_request(void **state) {
    (void)state;
    pthread_t t[RACE_THREADS];
    for (uintptr_t i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race_thread, (void *)i), 0);
    for (unsigned i = 0; i < RACE_THREADS; i++) {
        void *rc;
        assert_int_equal(pthread_join(t[i], &rc), 0);
        assert_null(rc);
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--ipc-child")) {
        unsigned char b[IPC_HANDLE_BYTES];
        if (strlen(argv[3]) != 2 * IPC_HANDLE_BYTES) return CHILD_FAIL("bad hex");
        for (unsigned i = 0; i < IPC_HANDLE_BYTES; i++) {
            unsigned v;
            if (sscanf(argv[3] + 2 * i, "%2x", &v) != 1) return CHILD_FAIL("bad hex");
            b[i] = (unsigned char)v;
        }
        return child_ask(argv[2], b);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handle_round_trip_and_every_corrupt_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_handle_refused_before_io, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forked_child_gets_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_execd_child_gets_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_export_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_child_drops_inherited_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exporter_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_uid_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_reply_and_small_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_connection_closed_by_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_keeps_few, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_child_drops_kept_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_start_stop_and_request, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
