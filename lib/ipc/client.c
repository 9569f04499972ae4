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
 */
#include <errno.h>
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

/* Closes fds[0..n). */
static void close_all(const int *fds, unsigned n) {
    for (unsigned i = 0; i < n; i++) close(fds[i]);
}

/* Connects to the server h names. The socket, or a negative gpu_error_t noted. */
static int connect_to(const ipc_handle_fields *h) {
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
    return c;
}

/* Receives the reply's messages on c into reply and fds. On failure every fd
 * received is closed and *got is 0. */
static int receive(int c, const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *got) {
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
                err = m.status < 0 && m.status >= IPC_STATUS_MIN && nin == 0 && m.nextents == 0
                          ? gh_note(m.status, "the exporting process (pid %u) refused: %s", pid, reply->message)
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
        if (*got == reply->nextents) break;
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

static int request(const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds);

int ipc_request(const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds) {
    uint64_t t0 = trace_begin();
    int rc = request(h, reply, fds, max_fds, nfds);
    if (t0)
        trace_record(t0, &(trace_event){.op = TRACE_IPC_REQUEST, .size = h ? h->size : 0, .arg = nfds ? *nfds : 0,
                                         .rc = (int8_t)rc});
    return rc;
}

static int request(const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds) {
    if (!nfds) return gh_note(GPU_ERR_INVALID, "IPC request: NULL fd count");
    *nfds = 0;
    if (!h || !reply || (max_fds && !fds)) return gh_note(GPU_ERR_INVALID, "IPC request: NULL argument");
    memset(reply, 0, sizeof *reply);
    if (h->magic != IPC_HANDLE_MAGIC || h->version != IPC_HANDLE_VERSION || !h->pid || !h->server_token ||
        !h->export_token)
        return gh_note(GPU_ERR_INVALID, "IPC request: not a decoded handle (decode it with ipc_handle_decode)");
    int c = connect_to(h);
    if (c < 0) return c;
    ipc_wire_request q = {.magic = IPC_WIRE_REQUEST_MAGIC,
                          .version = IPC_WIRE_VERSION,
                          .server_token = h->server_token,
                          .export_token = h->export_token};
    ssize_t n;
    do n = send(c, &q, sizeof q, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    int err;
    if (n != (ssize_t)sizeof q)
        err = gh_note(GPU_ERR_BACKEND, "IPC request to pid %u: send: %s", (unsigned)h->pid,
                      n < 0 ? strerror(errno) : "short");
    else
        err = receive(c, h, reply, fds, max_fds, nfds);
    close(c);
    if (err && !reply->status) reply->status = err;
    return err;
}
