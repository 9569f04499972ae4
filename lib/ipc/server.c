/*
 * server.c — the exporting side of IPC (ipc.h): one thread per process that
 * answers importers' requests for a block's extents with their fds.
 *
 * The server starts on first use: the first handle made (ipc_server_handle).
 * It listens on a SOCK_SEQPACKET socket in the abstract namespace named from
 * the pid and a random server token (wire.h), so it needs no file, vanishes with
 * the process, and a stale handle finds nothing to connect to rather than a
 * stranger. An importer keeps its connection for its next requests (client.c),
 * so a connection carries one request after another: the server's thread polls
 * the listening socket and every connection it holds (at most IPC_SERVER_CONNS;
 * a new one closes the one idle longest, whose importer connects again when it
 * next asks), and answers each request that is there, one at a time: the peer's
 * uid (SO_PEERCRED, read once when the connection is accepted) must be the
 * server's, the request must name this server's token, and the registered lookup
 * callback fills the reply and the fds, which go out with SCM_RIGHTS in chunks of
 * IPC_CHUNK_FDS; the server then closes them and waits for the next request. A
 * request is read only when poll says it is there, and never waited for; every
 * send has IPC_SERVER_TIMEOUT_MS, so a stuck importer delays the others but
 * cannot stop the server. A connection whose reply could not go out whole, or
 * whose peer broke the protocol or is of another uid, is closed.
 *
 * A fork's child inherits the server's records and fds but not its thread. An
 * atfork handler closes the inherited fds in the child at once (a copy of the
 * parent's listening socket would keep the parent's name alive after the parent
 * exits, and importers would wait instead of hearing "gone") and forgets the
 * records; the child's first handle starts a server of its own with a new token.
 * For that the handler needs every fd the server holds to be in srv's records
 * whenever srv.lock is free: fds are recorded and closed under the lock, which
 * the atfork prepare handler takes. The lock is never held across a wait: the
 * listening socket is non-blocking, so accept4 under it returns at once; the
 * callback and every send and receive run without it. One gap remains: fds the
 * callback has opened but not yet returned when another thread forks are in no
 * record, so that child keeps copies (O_CLOEXEC: an exec closes them).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common.h"
#include "error.h"
#include "ipc/ipc.h"
#include "ipc/wire.h"
#include "obs/trace.h"

#define IPC_LISTEN_BACKLOG 64
#define IPC_BACKOFF_MS 10 /* after accept or poll fails for want of a resource */

/* One accepted connection. */
typedef struct ipc_conn {
    int fd;
    uint32_t uid;  /* the peer's, from SO_PEERCRED when accepted */
    int cred_err;  /* 0, or the errno of that SO_PEERCRED */
    uint64_t used; /* the server's request count when it last asked: the idlest goes first */
} ipc_conn;

/* One started server: its socket, its thread, its connections and what it
 * holds for the request it is answering. Freed by whoever unlinks it from
 * srv.runs. */
typedef struct ipc_run {
    struct ipc_run *next; /* srv.runs */
    uint32_t pid, uid;
    uint64_t token;
    int listen_fd; /* non-blocking */
    int wake_fd;   /* eventfd, written once by ipc_server_stop */
    pthread_t thread;
    /* Changed under srv.lock, by the thread only (so it reads them without). */
    unsigned nconns;
    ipc_conn conns[IPC_SERVER_CONNS];
    unsigned held;     /* fds[0..held) belong to the server until sent and closed */
    int fds[IPC_MAX_EXTENTS];
    uint64_t requests; /* requests read (the thread's own): the clock of ipc_conn.used */
    ipc_reply reply;   /* the lookup's answer (the thread's own) */
    ipc_wire_reply msg; /* one chunk on its way (the thread's own) */
} ipc_run;

/* srv.lock guards every field; it is never held across a wait or the callback. */
static struct {
    pthread_mutex_t lock;
    ipc_run *live; /* the run that serves this process; NULL: none */
    ipc_run *runs; /* every run not yet joined and closed, the live one included */
    ipc_lookup_fn lookup;
    void *lookup_arg;
    ipc_server_counts counts;
} srv = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int atfork_err; /* pthread_atfork's answer, read after atfork_once */

/* Closes fd if it is one. */
static void close_fd(int fd) {
    if (fd >= 0) close(fd);
}

/* Closes the fds run holds for the request it answered. Call with srv.lock held. */
static void run_drop_fds(ipc_run *run) {
    for (unsigned i = 0; i < run->held; i++) close_fd(run->fds[i]);
    run->held = 0;
}

/* Closes connection i, and moves the last one into its place. srv.lock held. */
static void run_close_conn(ipc_run *run, unsigned i) {
    close_fd(run->conns[i].fd);
    run->conns[i] = run->conns[--run->nconns];
}

/* Closes every fd of run and frees it. Call with srv.lock held (or in a fork's
 * child), the thread joined or not in this process. */
static void run_free(ipc_run *run) {
    run_drop_fds(run);
    while (run->nconns) run_close_conn(run, run->nconns - 1);
    close_fd(run->listen_fd);
    close_fd(run->wake_fd);
    free(run);
}

/* Forgets runs whose threads are in another process (a fork's parent): closes
 * their fds here, frees their records, zeroes the counts. srv.lock held. */
static void forget_runs(void) {
    while (srv.runs) {
        ipc_run *run = srv.runs;
        srv.runs = run->next;
        run_free(run);
    }
    srv.live = NULL;
    memset(&srv.counts, 0, sizeof srv.counts);
}

static void atfork_prepare(void) { pthread_mutex_lock(&srv.lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&srv.lock); }
static void atfork_child(void) {
    forget_runs();
    pthread_mutex_unlock(&srv.lock);
}
static void atfork_register(void) { atfork_err = pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Adds one to a count. */
#define COUNT(field)                   \
    do {                               \
        pthread_mutex_lock(&srv.lock); \
        srv.counts.field++;            \
        pthread_mutex_unlock(&srv.lock); \
    } while (0)

/* Sends one message with fds[0..nfds) attached. 0, or -1 with errno. */
static int send_msg(int c, const void *msg, size_t len, const int *fds, unsigned nfds) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * IPC_CHUNK_FDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        gh_assert(nfds <= IPC_CHUNK_FDS, "a chunk's fds fit its control buffer");
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do n = sendmsg(c, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0 && (size_t)n != len) errno = EMSGSIZE; /* a seqpacket send is whole or fails */
    return n >= 0 && (size_t)n == len ? 0 : -1;
}

/* Answers on c with a refusal: status and a reason, no fds. False when it
 * could not be sent (counted as failed). */
static bool refuse(ipc_run *run, int c, uint64_t export_token, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static bool refuse(ipc_run *run, int c, uint64_t export_token, int status, const char *fmt, ...) {
    ipc_reply *r = &run->reply;
    r->status = status;
    r->nextents = 0;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->message, sizeof r->message, fmt, ap);
        va_end(ap);
    }
    if (!r->message[0]) snprintf(r->message, sizeof r->message, "%s", gpu_strerror(status));
    size_t len = ipc_wire_reply_fill(&run->msg, r, export_token, 0, 0);
    if (send_msg(c, &run->msg, len, NULL, 0) == 0) return true;
    COUNT(failed);
    return false;
}

/* Answers the request waiting on connection cn (poll said one is there): checks
 * the peer and the request, asks the lookup, sends the reply. True when the
 * connection stays for the peer's next request; false when it is to be closed:
 * the peer left, a reply did not go out whole, the peer broke the protocol or
 * is of another uid. The caller closes what the lookup left (run_drop_fds). */
static bool serve(ipc_run *run, const ipc_conn *cn) {
    const int c = cn->fd;
    ipc_reply *r = &run->reply;
    memset(r, 0, sizeof *r);

    /* The request is read before anything is answered, even for a peer that will
     * be refused: closing a unix socket with unread data resets the peer, which
     * could then lose the refusal. Without a control buffer, fds a peer sends us
     * are dropped by the kernel (and MSG_CTRUNC set). Never waited for. */
    ipc_wire_request q;
    memset(&q, 0, sizeof q);
    struct iovec iov = {.iov_base = &q, .iov_len = sizeof q};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;
    do n = recvmsg(c, &mh, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true; /* nothing after all */
    if (n <= 0) return false; /* the peer closed (between requests: no failure) or reset */
    run->requests++;
    uint64_t token = (size_t)n == sizeof q ? q.export_token : 0; /* echoed in a refusal */

    if (cn->cred_err) {
        COUNT(failed);
        refuse(run, c, token, GPU_ERR_BACKEND, "the exporting process could not read the importer's credentials: %s",
               strerror(cn->cred_err));
        return false;
    }
    if (cn->uid != run->uid) {
        COUNT(refused_uid);
        refuse(run, c, token, GPU_ERR_INVALID, "the exporting process (uid %u) serves only its own uid, not uid %u",
               (unsigned)run->uid, (unsigned)cn->uid);
        return false;
    }
    if ((size_t)n != sizeof q || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || q.magic != IPC_WIRE_REQUEST_MAGIC ||
        q.version != IPC_WIRE_VERSION || q.zero) {
        COUNT(bad_requests);
        refuse(run, c, token, GPU_ERR_INVALID, "a malformed request (%zd bytes, version %u; this exporter speaks %u)", n,
               (unsigned)q.version, IPC_WIRE_VERSION);
        return false;
    }
    if (q.server_token != run->token) {
        COUNT(bad_requests);
        return refuse(run, c, q.export_token, GPU_ERR_INVALID, "the request names another server of pid %u",
                      (unsigned)run->pid);
    }

    pthread_mutex_lock(&srv.lock);
    ipc_lookup_fn lookup = srv.lookup;
    void *arg = srv.lookup_arg;
    pthread_mutex_unlock(&srv.lock);
    if (!lookup) {
        COUNT(refused_lookup);
        return refuse(run, c, q.export_token, GPU_ERR_INVALID, "the exporting process has no lookup: it exports nothing");
    }
    unsigned nfds = 0;
    uint64_t t0 = trace_begin();
    int status = lookup(q.export_token, r, run->fds, IPC_MAX_EXTENTS, &nfds, arg);
    if (t0)
        trace_record(t0, &(trace_event){.op = TRACE_IPC_LOOKUP, .size = status == GPU_OK ? r->size : 0, .arg = nfds,
                                         .rc = (int8_t)(status < INT8_MIN || status > INT8_MAX ? INT8_MIN : status)});
    pthread_mutex_lock(&srv.lock);
    run->held = nfds <= IPC_MAX_EXTENTS ? nfds : IPC_MAX_EXTENTS; /* the server's to close from here */
    pthread_mutex_unlock(&srv.lock);
    if (status != GPU_OK) {
        COUNT(refused_lookup);
        bool public_code = status < 0 && status >= IPC_STATUS_MIN;
        return refuse(run, c, q.export_token, public_code ? status : GPU_ERR_BACKEND, NULL);
    }
    r->status = GPU_OK;
    char why[128];
    bool fds_ok = nfds == r->nextents;
    for (unsigned i = 0; fds_ok && i < nfds; i++) fds_ok = run->fds[i] >= 0;
    if (!fds_ok) snprintf(why, sizeof why, "%u fds for %u extents", nfds, r->nextents);
    if (!fds_ok || !ipc_wire_reply_check(r, why, sizeof why)) {
        COUNT(failed);
        r->message[0] = '\0';
        return refuse(run, c, q.export_token, GPU_ERR_BACKEND, "the exporting process's lookup answered %s", why);
    }
    for (unsigned first = 0; first < r->nextents;) {
        unsigned count = r->nextents - first < IPC_CHUNK_FDS ? r->nextents - first : IPC_CHUNK_FDS;
        size_t len = ipc_wire_reply_fill(&run->msg, r, q.export_token, first, count);
        if (send_msg(c, &run->msg, len, run->fds + first, count) != 0) {
            COUNT(failed); /* the importer left or stalled: it closes what it got */
            return false;
        }
        first += count;
    }
    COUNT(served);
    return true;
}

/* Takes one connection from the backlog, if one waits: a record of its own (the
 * idlest connection closed when all are taken), its peer's uid, a send timeout. */
static void accept_one(ipc_run *run) {
    pthread_mutex_lock(&srv.lock);
    int c = accept4(run->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    int e = errno;
    ipc_conn *cn = NULL;
    if (c >= 0) {
        if (run->nconns == IPC_SERVER_CONNS) {
            unsigned idlest = 0;
            for (unsigned i = 1; i < run->nconns; i++)
                if (run->conns[i].used < run->conns[idlest].used) idlest = i;
            run_close_conn(run, idlest); /* its importer connects again when it next asks */
        }
        cn = &run->conns[run->nconns++];
        *cn = (ipc_conn){.fd = c, .used = run->requests};
        srv.counts.connections++;
    }
    pthread_mutex_unlock(&srv.lock);
    if (c < 0) {
        /* Out of fds or memory: the connection waits in the backlog; do not spin. */
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
            struct pollfd pf = {.fd = run->wake_fd, .events = POLLIN};
            poll(&pf, 1, IPC_BACKOFF_MS);
        }
        return;
    }
    struct timeval tv = {.tv_sec = IPC_SERVER_TIMEOUT_MS / 1000, .tv_usec = (IPC_SERVER_TIMEOUT_MS % 1000) * 1000};
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || clen != sizeof cred)
        cn->cred_err = errno ? errno : EINVAL;
    else
        cn->uid = (uint32_t)cred.uid;
}

/* The server's thread: accepts and answers until ipc_server_stop writes wake_fd. */
static void *server_main(void *arg) {
    ipc_run *run = arg;
    struct pollfd pf[2 + IPC_SERVER_CONNS];
    for (;;) {
        pf[0] = (struct pollfd){.fd = run->listen_fd, .events = POLLIN};
        pf[1] = (struct pollfd){.fd = run->wake_fd, .events = POLLIN};
        unsigned n = run->nconns;
        for (unsigned i = 0; i < n; i++) pf[2 + i] = (struct pollfd){.fd = run->conns[i].fd, .events = POLLIN};
        if (poll(pf, 2 + n, -1) < 0) {
            if (errno != EINTR) poll(pf + 1, 1, IPC_BACKOFF_MS);
            continue;
        }
        if (pf[1].revents) break;
        /* From the last: closing connection i moves the last one into its place,
         * one already seen. */
        for (unsigned i = n; i-- > 0;) {
            short ev = pf[2 + i].revents;
            if (!ev) continue;
            bool keep = (ev & POLLIN) && serve(run, &run->conns[i]);
            pthread_mutex_lock(&srv.lock);
            run_drop_fds(run);
            if (keep) run->conns[i].used = run->requests;
            else run_close_conn(run, i);
            pthread_mutex_unlock(&srv.lock);
        }
        if (pf[0].revents & POLLIN) accept_one(run);
    }
    return NULL;
}

/* Opens a run's socket and wake fd (no thread yet). srv.lock held, so that a
 * fork sees every fd in a record. */
static int run_open(uint64_t token, ipc_run **out) {
    ipc_run *run = calloc(1, sizeof *run);
    if (!run) return gh_note(GPU_ERR_BACKEND, "IPC server: out of host memory");
    run->pid = (uint32_t)getpid();
    run->uid = (uint32_t)geteuid();
    run->token = token;
    run->wake_fd = -1;
    run->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (run->listen_fd < 0) {
        int e = errno;
        run_free(run);
        return gh_note(GPU_ERR_BACKEND, "IPC server: socket: %s", strerror(e));
    }
    struct sockaddr_un addr;
    socklen_t len;
    ipc_wire_address(run->pid, token, &addr, &len);
    const char *call = "bind";
    int ok = bind(run->listen_fd, (struct sockaddr *)&addr, len) == 0;
    if (ok) call = "listen", ok = listen(run->listen_fd, IPC_LISTEN_BACKLOG) == 0;
    if (ok) call = "eventfd", ok = (run->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) >= 0;
    if (!ok) {
        int e = errno;
        run_free(run);
        return gh_note(GPU_ERR_BACKEND, "IPC server: %s: %s", call, strerror(e));
    }
    *out = run;
    return GPU_OK;
}

/* Starts this process's server if none runs here and writes its identity into
 * h (pid, uid, server token). */
static int server_ensure(ipc_handle_fields *h) {
    pthread_once(&atfork_once, atfork_register);
    if (atfork_err)
        return gh_note(GPU_ERR_BACKEND, "IPC server: pthread_atfork: %s", strerror(atfork_err));
    uint64_t token = 0;
    pthread_mutex_lock(&srv.lock);
    for (;;) {
        if (srv.live && srv.live->pid != (uint32_t)getpid()) forget_runs(); /* forked without atfork (raw clone) */
        if (srv.live || token) break;
        /* Drawn without the lock: getrandom may wait for entropy early at boot. */
        pthread_mutex_unlock(&srv.lock);
        int err = ipc_random64(&token);
        if (err) return gh_note_context(err, "IPC server token");
        pthread_mutex_lock(&srv.lock);
    }
    int err = GPU_OK;
    if (!srv.live) {
        ipc_run *run = NULL;
        err = run_open(token, &run);
        if (!err) {
            /* The thread takes no signal: a handler of the program never runs on it. */
            sigset_t all, old;
            sigfillset(&all);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            int e = pthread_create(&run->thread, NULL, server_main, run);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            if (e) {
                run_free(run);
                err = gh_note(GPU_ERR_BACKEND, "IPC server: pthread_create: %s", strerror(e));
            } else {
                run->next = srv.runs;
                srv.runs = srv.live = run;
                srv.counts.starts++;
            }
        }
    }
    if (!err) {
        h->pid = srv.live->pid;
        h->uid = srv.live->uid;
        h->server_token = srv.live->token;
    }
    pthread_mutex_unlock(&srv.lock);
    return err;
}

int ipc_server_handle(uint64_t export_token, uint64_t size, ipc_handle_fields *h) {
    if (!h) return gh_note(GPU_ERR_INVALID, "IPC handle: NULL handle");
    if (!export_token) return gh_note(GPU_ERR_INVALID, "IPC handle: zero export token");
    memset(h, 0, sizeof *h);
    int err = server_ensure(h);
    if (err) return err;
    h->magic = IPC_HANDLE_MAGIC;
    h->version = IPC_HANDLE_VERSION;
    h->export_token = export_token;
    h->size = size;
    return GPU_OK;
}

void ipc_server_set_lookup(ipc_lookup_fn lookup, void *arg) {
    pthread_mutex_lock(&srv.lock);
    srv.lookup = lookup;
    srv.lookup_arg = arg;
    pthread_mutex_unlock(&srv.lock);
}

void ipc_server_stop(void) {
    pthread_mutex_lock(&srv.lock);
    if (srv.live && srv.live->pid != (uint32_t)getpid()) forget_runs();
    ipc_run *run = srv.live;
    srv.live = NULL;
    pthread_mutex_unlock(&srv.lock);
    if (!run) return;
    uint64_t one = 1;
    ssize_t w = write(run->wake_fd, &one, sizeof one);
    gh_assert(w == (ssize_t)sizeof one, "an eventfd written once takes the write");
    pthread_join(run->thread, NULL);
    /* Unlinked and closed under the lock: a fork in between closes it in the
     * child from the list, and never an fd number reused meanwhile. */
    pthread_mutex_lock(&srv.lock);
    for (ipc_run **p = &srv.runs; *p; p = &(*p)->next) {
        if (*p == run) {
            *p = run->next;
            break;
        }
    }
    run_free(run);
    pthread_mutex_unlock(&srv.lock);
}

void ipc_server_get_counts(ipc_server_counts *out) {
    pthread_mutex_lock(&srv.lock);
    *out = srv.counts;
    pthread_mutex_unlock(&srv.lock);
}

unsigned ipc_server_connections(void) {
    pthread_mutex_lock(&srv.lock);
    unsigned n = srv.live && srv.live->pid == (uint32_t)getpid() ? srv.live->nconns : 0;
    pthread_mutex_unlock(&srv.lock);
    return n;
}
