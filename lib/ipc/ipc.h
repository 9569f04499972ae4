/*
 * ipc.h — the transport that carries a block's physical memory from one process
 * to another (server.c, client.c, wire.c), on its own: it knows nothing of
 * heaps or backends.
 *
 * The memory behind a block is a list of extents, each backed by a handle the
 * backend can export as a file descriptor (a memfd on the host backend, a
 * POSIX_FILE_DESCRIPTOR export of a cuMemCreate handle on CUDA). An exporting
 * process starts a server (one per process, on first use, again after a fork)
 * and gives out a handle naming it and an export token. An importing process
 * connects to that server with the handle, and the server asks the lookup
 * callback its owner registered for the block's extents and their fds, and sends
 * them back with SCM_RIGHTS. Only a process of the server's own uid is served.
 *
 * Errors follow error.h: GPU_OK or a negative gpu_error_t, the reason noted with
 * gh_note (nothing is reported here: the caller's public entry point does that).
 * Nothing aborts on bad input from the other process.
 */
#ifndef GPUHEAP_IPC_H
#define GPUHEAP_IPC_H

#include <stdint.h>

#include "ipc/handle.h"

#define IPC_MAX_EXTENTS 1024u   /* extents behind one block that a reply may carry */
#define IPC_MESSAGE_BYTES 160u  /* a refusal's reason, as the exporter wrote it */
#define IPC_SERVER_TIMEOUT_MS 2000 /* the server's patience with one peer's send */
#define IPC_CLIENT_TIMEOUT_MS 30000 /* a client's patience with the server's reply */
#define IPC_SERVER_CONNS 64 /* connections a server holds open; a new one closes the idlest */
#define IPC_CLIENT_KEEP 8   /* connections an importer keeps, one per server; a new one closes the least recent */

/* What an exporter says about a block: its place in its extents, and each
 * extent (one fd each, in order, beside the reply). */
typedef struct ipc_reply {
    int status;           /* GPU_OK, or the exporter's refusal (a negative gpu_error_t) */
    unsigned nextents;    /* extents behind the block; one fd each */
    uint64_t offset;      /* the block's start inside its first extent */
    uint64_t size;        /* the block's size in bytes */
    uint64_t granularity; /* the exporter's mapping granularity: a power of two */
    uint64_t extent_size[IPC_MAX_EXTENTS]; /* each a non-zero multiple of granularity */
    char message[IPC_MESSAGE_BYTES]; /* a refusal's reason ("" where there is none) */
} ipc_reply;

/* ---- server.c: the exporting side ---------------------------------------- */

/* Finds the block of an export token and the fds of its extents. Called on the
 * server's thread, with no lock of the transport held, one request at a time; it
 * should not block for long (every importer waits behind it).
 * Fill reply (status aside: the return value is the status) and put one fd per
 * extent in fds[0..*nfds), *nfds == reply->nextents <= max_fds. The server owns
 * fds[0..*nfds) once the callback returns, whatever it returns: it closes them
 * after sending (an importer gets its own copies). On refusal, return a negative
 * gpu_error_t and write the reason for the importer into reply->message. */
typedef int (*ipc_lookup_fn)(uint64_t export_token, ipc_reply *reply, int *fds, unsigned max_fds,
                             unsigned *nfds, void *arg);

/* Sets the callback that answers requests (NULL: every request is refused).
 * A request being answered keeps the callback it started with. Kept in a
 * fork's child. Thread-safe. */
void ipc_server_set_lookup(ipc_lookup_fn lookup, void *arg);

/* Starts this process's server if none runs here (first use, after
 * ipc_server_stop, or in a fork's child, which gets a new server token), and
 * fills h to name it with export_token and size. GPU_OK, GPU_ERR_INVALID (a zero
 * token), GPU_ERR_BACKEND (no socket, thread or random bits). Thread-safe. */
int ipc_server_handle(uint64_t export_token, uint64_t size, ipc_handle_fields *h);

/* Stops the server: no new connection is accepted, the request being answered
 * is finished (at most IPC_SERVER_TIMEOUT_MS per send), the thread is joined and
 * every fd the server opened is closed, its connections included (an importer
 * that kept one hears "gone" at its next request). Handles given out before no
 * longer connect ("gone"). No-op when none runs. When two threads stop at once,
 * one waits for the thread and the other may return first. Call it before the
 * lookup's state goes away (tests, the end of the process); never from the
 * lookup callback (it would wait for itself). */
void ipc_server_stop(void);

/* What the server has done since this process (or fork child) started. */
typedef struct ipc_server_counts {
    uint64_t starts;        /* servers started */
    uint64_t connections;   /* connections accepted (an importer keeps its own for many requests) */
    uint64_t served;        /* replies with extents sent whole */
    uint64_t refused_uid;   /* peers of another uid, refused */
    uint64_t refused_lookup; /* requests the lookup refused (or no lookup set) */
    uint64_t bad_requests;  /* malformed requests, or naming another server token */
    uint64_t failed;        /* replies not delivered: the peer left, a timeout, a bad lookup reply */
} ipc_server_counts;
void ipc_server_get_counts(ipc_server_counts *out);

/* The connections the server of this process holds open now (an fd each;
 * importers keep theirs between requests): for tests that count fds. */
unsigned ipc_server_connections(void);

/* ---- client.c: the importing side ---------------------------------------- */

/* Asks the exporter named by h (decoded with ipc_handle_decode) for its block:
 * fills reply and puts one fd per extent (O_CLOEXEC, owned by the caller) in
 * fds[0..*nfds). On any failure *nfds is 0 and every fd received was closed.
 * Errors: GPU_ERR_INVALID — the exporter is gone (exited, stopped its server, or
 *   the handle is from before a fork), refused (unknown export, another uid:
 *   reply->status and reply->message say so), the block has more than max_fds
 *   extents, or the reply does not fit h;
 *   GPU_ERR_BACKEND — a socket call failed, the exporter broke the protocol or
 *   sent no reply within IPC_CLIENT_TIMEOUT_MS, or fds were lost on the way (this
 *   process's RLIMIT_NOFILE). Blocks until the reply. The connection is kept for
 *   the next request to the same server (client.c): requests of this process to
 *   one server go one at a time, holding that connection's lock; no other lock. */
int ipc_request(const ipc_handle_fields *h, ipc_reply *reply, int *fds, unsigned max_fds, unsigned *nfds);

/* The connections this process keeps open to servers (an fd each): for tests
 * that count fds. */
unsigned ipc_client_kept(void);

/* Closes every kept connection (each after the request on it, if one runs);
 * the next request connects afresh. For tests, and a process that wants its fds
 * back; never needed for correctness. */
void ipc_client_disconnect(void);

#endif /* GPUHEAP_IPC_H */
