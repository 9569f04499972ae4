/*
 * client.c — the importing side of IPC (ipc.h): connect to the server a handle
 * names, ask for the export, and take the reply and its extents' fds.
 *
 * The fds come through the exporter's socket (SCM_RIGHTS), not through
 * pidfd_open + pidfd_getfd, although the latter would need no server thread:
 * pidfd_getfd needs PTRACE_MODE_ATTACH_REALCREDS over the exporter, which a
 * Yama ptrace_scope of 1 or more, a seccomp profile or a container without
 * CAP_SYS_PTRACE refuses even between processes of one uid; and it would hand
 * out any fd of the exporter, where the server hands out only the fds its
 * lookup chose for one export.
 *
 * The other process is not trusted to be well: every count, length and index in
 * the reply is checked before it is used, fds are taken with MSG_CMSG_CLOEXEC
 * (no fork-and-exec in another thread inherits them), every fd received is
 * closed on any failure, and a reply must arrive within IPC_CLIENT_TIMEOUT_MS.
 *
 * A connection is kept for the next request to the same server (one per server,
 * IPC_CLIENT_KEEP of them, the least recently used one closed for a new one):
 * a new connection per request cost a socket, a connect, the peer's
 * credentials, an accept and another wake-up of the server's thread. A kept
 * connection has a mutex, held across its request's round trip, so requests of
 * this process to one exporter go one at a time (its server answers one at a
 * time anyway). A connection stays kept only while it is in step: after a reply
 * received whole (a refusal included); one left mid-reply is closed. When the
 * server closed a kept connection meanwhile (it stopped, or closed the idlest of
 * its connections for a new one), the request finds it so before any reply
 * (send fails, or end of file) and goes again once on a new connection, which
 * then says whether the exporter is gone. A fork's child closes its copies of
 * the kept connections (atfork), so that two processes never share one.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common.h"
#include "error.h"
#include "ipc/ipc.h"
#include "ipc/wire.h"
#include "obs/trace.h"

/* A kept connection. key and peer_uid change under keep.lock and lock both;
 * fd under lock. */
typedef struct kept_conn {
    pthread_mutex_t lock; /* held across a request on fd */
    uint32_t pid;         /* the key: pid and server token; server_token 0: a free slot */
    uint64_t server_token;
    uint32_t peer_uid;    /* the server's uid, read when it was connected */
    int fd;               /* -1: none (connect when asked) */
    uint64_t used;        /* keep.clock when last taken */
} kept_conn;

/* keep.lock guards the keys and the clock; it is never held across a wait (a
 * slot's lock is only tried under it). Lock order: keep.lock, then a slot's. */
static struct {
    pthread_mutex_t lock;
    uint64_t clock;
    kept_conn slot[IPC_CLIENT_KEEP];
} keep = {.lock = PTHREAD_MUTEX_INITIALIZER};
static _Atomic unsigned kept_fds; /* slots whose fd is open */
static pthread_once_t keep_once = PTHREAD_ONCE_INIT;

static void keep_prepare(void) { pthread_mutex_lock(&keep.lock); }
static void keep_parent(void) { pthread_mutex_unlock(&keep.lock); }
/* A fork's child: its copies of the kept connections are closed (the parent
 * goes on using them), and the slots made afresh: a slot's lock may have been
 * held by a thread that the child does not have. */
static void keep_child(void) {
    for (unsigned i = 0; i < IPC_CLIENT_KEEP; i++) {
        kept_conn *k = &keep.slot[i];
        if (k->fd >= 0) close(k->fd);
        pthread_mutex_init(&k->lock, NULL);
        k->fd = -1;
        k->server_token = 0;
    }
    atomic_store(&kept_fds, 0);
    keep.clock = 0;
    pthread_mutex_unlock(&keep.lock);
}
static void keep_init(void) {
    for (unsigned i = 0; i < IPC_CLIENT_KEEP; i++) {
        pthread_mutex_init(&keep.slot[i].lock, NULL);
        keep.slot[i].fd = -1;
    }
    (void)pthread_atfork(keep_prepare, keep_parent, keep_child); /* refused: no atfork, as before keeping */
}

/* Closes k's connection. k->lock held. */
static void kept_close(kept_conn *k) {
    if (k->fd < 0) return;
    close(k->fd);
    k->fd = -1;
    atomic_fetch_sub(&kept_fds, 1);
}

/* The slot kept for h's server, locked; a free or the least recently used
 * unlocked slot given to it when there is none. NULL when every slot is busy
 * with another server's request (the caller connects for this request alone). */
static kept_conn *keep_take(const ipc_handle_fields *h) {
    pthread_once(&keep_once, keep_init);
    for (;;) {
        pthread_mutex_lock(&keep.lock);
        kept_conn *k = NULL;
        for (unsigned i = 0; i < IPC_CLIENT_KEEP && !k; i++)
            if (keep.slot[i].server_token == h->server_token && keep.slot[i].pid == h->pid) k = &keep.slot[i];
        if (k) {
            k->used = ++keep.clock;
            pthread_mutex_unlock(&keep.lock);
            pthread_mutex_lock(&k->lock); /* another request to this server may hold it: wait for it */
            if (k->server_token == h->server_token && k->pid == h->pid) return k;
            pthread_mutex_unlock(&k->lock); /* given to another server meanwhile: look again */
            continue;
        }
        /* None: a free slot, else the one used longest ago, if no request holds it. */
        kept_conn *idlest = NULL;
        for (unsigned i = 0; i < IPC_CLIENT_KEEP; i++) {
            kept_conn *x = &keep.slot[i];
            bool better = !idlest || (idlest->server_token && (!x->server_token || x->used < idlest->used));
            if (!better || pthread_mutex_trylock(&x->lock) != 0) continue;
            if (idlest) pthread_mutex_unlock(&idlest->lock);
            idlest = x;
        }
        if (idlest) {
            kept_close(idlest);
            idlest->pid = h->pid;
            idlest->server_token = h->server_token;
            idlest->used = ++keep.clock;
        }
        pthread_mutex_unlock(&keep.lock);
        return idlest;
    }
}

/* Closes fds[0..n). */
static void close_all(const int *fds, unsigned n) {
    for (unsigned i = 0; i < n; i++) close(fds[i]);
}

/* Connects to the server h names, and sets *uid to the server's. The socket,
 * or a negative gpu_error_t noted. */
static int connect_to(const ipc_handle_fields *h, uint32_t *uid) {
    int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c < 0) return gh_note(GPU_ERR_BACKEND, "IPC request: socket: %s", strerror(errno));
    struct timeval tv = {.tv_sec = IPC_CLIENT_TIMEOUT_MS / 1000, .tv_usec = (IPC_CLIENT_TIMEOUT_MS % 1000) * 1000};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* connect waits this long on a full backlog */
    struct sockaddr_un addr;
    socklen_t len;
    ipc_wire_address(h->pid, h->server_token, &addr, &len);
    int r;
    do r = connect(c, (struct sockaddr *)&addr, len);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EISCONN) { /* EISCONN: an interrupted connect went through */
        int e = errno;
        close(c);
        if (e == ECONNREFUSED || e == ENOENT)
            return gh_note(GPU_ERR_INVALID, "the exporting process (pid %u) is gone: nothing listens for this handle "
                                            "(the process exited, or stopped sharing memory)", (unsigned)h->pid);
        if (e == EAGAIN)
            return gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) accepted no connection within %d ms",
                           (unsigned)h->pid, IPC_CLIENT_TIMEOUT_MS);
        return gh_note(GPU_ERR_BACKEND, "IPC request to pid %u: connect: %s", (unsigned)h->pid, strerror(e));
    }
    /* A name in the abstract namespace can be bound by anyone: the server must
     * run as the uid the handle names, or it is not the exporter. */
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || clen != sizeof cred) {
        int e = errno;
        close(c);
        return gh_note(GPU_ERR_BACKEND, "IPC request to pid %u: SO_PEERCRED: %s", (unsigned)h->pid, strerror(e));
    }
    if ((uint32_t)cred.uid != h->uid) {
        close(c);
        return gh_note(GPU_ERR_INVALID, "the socket named by the handle of pid %u is held by uid %u, not the "
                                        "exporter's uid %u", (unsigned)h->pid, (unsigned)cred.uid, (unsigned)h->uid);
    }
    *uid = (uint32_t)cred.uid;
    return c;
}

/* How a request went on its connection, beside its result. */
typedef struct exchange {
    bool kept;    /* in: the connection served an earlier request */
    bool stale;   /* out: a kept connection that its server had closed before this request (nothing noted) */
    bool in_step; /* out: the reply was received whole, the connection can carry the next request */
} exchange;

/* Receives the reply's messages on c into reply and fds. On failure every fd
 * received is closed and *got is 0. */
static int receive(int c, const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *got,
                   exchange *x) {
    ipc_wire_reply m;
    union {
        char buf[CMSG_SPACE(sizeof(int) * IPC_CHUNK_FDS)];
        struct cmsghdr align;
    } ctl;
    unsigned pid = (unsigned)h->pid;
    int in[sizeof ctl.buf / sizeof(int)]; /* this message's fds, until checked */
    unsigned nin = 0;
    int err = GPU_OK;
    *got = 0;
    for (bool first = true;; first = false) {
        memset(&m, 0, ipc_wire_reply_len(0)); /* no stale header from the message before */
        struct iovec iov = {.iov_base = &m, .iov_len = sizeof m};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        ssize_t n;
        do n = recvmsg(c, &mh, MSG_CMSG_CLOEXEC);
        while (n < 0 && errno == EINTR);
        int e = errno;
        /* Take every fd that came, before anything else can fail. */
        nin = 0;
        bool overflow = false;
        if (n >= 0) {
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
                size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                    if (nin < sizeof in / sizeof in[0]) in[nin++] = fd;
                    else close(fd), overflow = true; /* cannot happen: they came in that buffer */
                }
            }
        }
        if (first && (n == 0 || (n < 0 && e == ECONNRESET)) && x->kept) { /* closed since the last request */
            x->stale = true;
            err = GPU_ERR_BACKEND;
            break;
        }
        if (first && (n == 0 || (n < 0 && e == ECONNRESET))) { /* its server stopped with us in the backlog */
            err = gh_note(GPU_ERR_INVALID, "the exporting process (pid %u) is gone: it closed the connection "
                                           "without a reply (it is exiting, or stopped sharing memory)", pid);
            break;
        }
        if (n < 0) {
            err = e == EAGAIN || e == EWOULDBLOCK
                      ? gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) sent no reply within %d ms", pid,
                                IPC_CLIENT_TIMEOUT_MS)
                      : gh_note(GPU_ERR_BACKEND, "IPC reply from pid %u: recvmsg: %s", pid, strerror(e));
            break;
        }
        if (n == 0) {
            err = gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) closed the connection before its reply "
                                           "was whole", pid);
            break;
        }
        if ((mh.msg_flags & MSG_CTRUNC) || overflow) {
            err = gh_note(GPU_ERR_BACKEND, "fds from pid %u were lost on the way (this process's open-file limit, "
                                           "RLIMIT_NOFILE, is reached?)", pid);
            break;
        }
        if ((mh.msg_flags & MSG_TRUNC) || (size_t)n < ipc_wire_reply_len(0) || m.magic != IPC_WIRE_REPLY_MAGIC ||
            m.version != IPC_WIRE_VERSION || (m.status == GPU_OK && m.export_token != h->export_token) ||
            m.count > IPC_CHUNK_FDS || (size_t)n != ipc_wire_reply_len(m.count) || m.count != nin) {
            err = gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) broke the IPC protocol (a message of "
                                           "%zd bytes, version %u, %u fds)", pid, n, (unsigned)m.version, nin);
            break;
        }
        if (first) {
            reply->status = m.status;
            memcpy(reply->message, m.message, strnlen(m.message, sizeof reply->message - 1));
            if (m.status != GPU_OK) {
                x->in_step = m.status < 0 && m.status >= IPC_STATUS_MIN && nin == 0 && m.nextents == 0;
                err = x->in_step ? gh_note(m.status, "the exporting process (pid %u) refused: %s", pid, reply->message)
                                 : gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) broke the IPC protocol (a "
                                                            "refusal with status %d, %u fds)", pid, (int)m.status, nin);
                break;
            }
            if (m.nextents == 0 || m.nextents > IPC_MAX_EXTENTS) {
                err = gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) sent a block of %u extents (1..%u)",
                              pid, (unsigned)m.nextents, IPC_MAX_EXTENTS);
                break;
            }
            if (m.nextents > max_fds) {
                err = gh_note(GPU_ERR_INVALID, "the block of pid %u has %u extents, more than the %u fds there "
                                               "is room for", pid, (unsigned)m.nextents, max_fds);
                break;
            }
            reply->nextents = m.nextents;
            reply->offset = m.offset;
            reply->size = m.size;
            reply->granularity = m.granularity;
        } else if (m.status != GPU_OK || m.nextents != reply->nextents || m.offset != reply->offset ||
                   m.size != reply->size || m.granularity != reply->granularity) {
            err = gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) sent chunks that disagree", pid);
            break;
        }
        if (m.first != *got || m.count == 0 || m.count > reply->nextents - *got) {
            err = gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) sent extents %u..%u after %u of %u", pid,
                          (unsigned)m.first, (unsigned)(m.first + m.count), *got, reply->nextents);
            break;
        }
        memcpy(fds + *got, in, (size_t)nin * sizeof(int));
        memcpy(reply->extent_size + *got, m.extent_size, (size_t)m.count * sizeof(uint64_t));
        *got += nin;
        nin = 0;
        if (*got == reply->nextents) {
            x->in_step = true;
            break;
        }
    }
    if (!err) {
        char why[128];
        if (!ipc_wire_reply_check(reply, why, sizeof why))
            err = gh_note(GPU_ERR_BACKEND, "the exporting process (pid %u) sent an incoherent reply: %s", pid, why);
        else if (reply->size != h->size)
            err = gh_note(GPU_ERR_INVALID, "the block of pid %u has %llu bytes, the handle says %llu", pid,
                          (unsigned long long)reply->size, (unsigned long long)h->size);
    }
    if (err) {
        close_all(in, nin);
        close_all(fds, *got);
        *got = 0;
    }
    return err;
}

/* Sends the request on c and receives the reply. */
static int exchange_on(int c, const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds,
                       exchange *x) {
    ipc_wire_request q = {.magic = IPC_WIRE_REQUEST_MAGIC,
                          .version = IPC_WIRE_VERSION,
                          .server_token = h->server_token,
                          .export_token = h->export_token};
    ssize_t n;
    do n = send(c, &q, sizeof q, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0 && x->kept && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)) {
        x->stale = true; /* its server closed it since the last request */
        return GPU_ERR_BACKEND;
    }
    if (n != (ssize_t)sizeof q)
        return gh_note(GPU_ERR_BACKEND, "IPC request to pid %u: send: %s", (unsigned)h->pid,
                       n < 0 ? strerror(errno) : "short");
    return receive(c, h, reply, fds, max_fds, nfds, x);
}

/* The request on the kept connection to h's server (connected first when there
 * is none, again once when it was stale); on a connection of its own when no
 * slot is free. *reused: no connect was needed. */
static int request(const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds,
                   bool *reused) {
    if (!nfds) return gh_note(GPU_ERR_INVALID, "IPC request: NULL fd count");
    *nfds = 0;
    if (!h || !reply || (max_fds && !fds)) return gh_note(GPU_ERR_INVALID, "IPC request: NULL argument");
    memset(reply, 0, sizeof *reply);
    if (h->magic != IPC_HANDLE_MAGIC || h->version != IPC_HANDLE_VERSION || !h->pid || !h->server_token ||
        !h->export_token)
        return gh_note(GPU_ERR_INVALID, "IPC request: not a decoded handle (decode it with ipc_handle_decode)");
    kept_conn *k = keep_take(h);
    int err;
    for (;;) {
        exchange x = {.kept = k && k->fd >= 0};
        int c;
        if (x.kept) {
            c = k->fd;
            if (k->peer_uid != h->uid) { /* the handle says another uid than the one connected */
                err = gh_note(GPU_ERR_INVALID, "the socket named by the handle of pid %u is held by uid %u, not the "
                                               "exporter's uid %u", (unsigned)h->pid, (unsigned)k->peer_uid,
                              (unsigned)h->uid);
                break;
            }
        } else {
            uint32_t uid = 0;
            if ((c = connect_to(h, &uid)) < 0) {
                err = c;
                break;
            }
            if (k) {
                k->fd = c;
                k->peer_uid = uid;
                atomic_fetch_add(&kept_fds, 1);
            }
        }
        *reused = x.kept;
        memset(reply, 0, sizeof *reply);
        err = exchange_on(c, h, reply, fds, max_fds, nfds, &x);
        if (!k || !x.in_step) { /* a connection of its own, or one out of step */
            if (k) kept_close(k);
            else close(c);
        }
        if (!x.stale) break;
    }
    if (k) pthread_mutex_unlock(&k->lock);
    if (err && !reply->status) reply->status = err;
    return err;
}

int ipc_request(const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds) {
    uint64_t t0 = trace_begin();
    bool reused = false;
    int rc = request(h, reply, fds, max_fds, nfds, &reused);
    if (t0)
        trace_record(t0, &(trace_event){.op = TRACE_IPC_REQUEST, .size = h ? h->size : 0, .arg = nfds ? *nfds : 0,
                                         .flags = reused, .rc = (int8_t)rc});
    return rc;
}

unsigned ipc_client_kept(void) { return atomic_load(&kept_fds); }

void ipc_client_disconnect(void) {
    pthread_once(&keep_once, keep_init);
    for (unsigned i = 0; i < IPC_CLIENT_KEEP; i++) {
        kept_conn *k = &keep.slot[i];
        pthread_mutex_lock(&k->lock); /* after the request on it, if one runs */
        kept_close(k);
        pthread_mutex_unlock(&k->lock);
    }
}
