/*
 * wire.h — what travels on an IPC connection (wire.c), shared by the server
 * (server.c) and the client (client.c) and by nothing else.
 *
 * A connection carries one request and its reply, then the next request and
 * its reply, and so on: the importer keeps it (client.c), and never sends a
 * request before the reply to the last one is whole. An importer that closes
 * after one reply (an earlier build) is served the same. The socket is
 * SOCK_SEQPACKET, so each message arrives whole or not at all and in order. The request names
 * the export; the reply is one message for a refusal, and for a block one
 * message per IPC_CHUNK_FDS extents, each carrying its extents' sizes and, as
 * SCM_RIGHTS, their fds (Linux takes at most 253 fds per message). Every chunk
 * repeats the reply's header, so the client checks that they agree. Both ends
 * run on one machine, so fields are in the machine's byte order; the version
 * field is there for two gpuheap builds on one machine.
 */
#ifndef GPUHEAP_IPC_WIRE_H
#define GPUHEAP_IPC_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "ipc/ipc.h"

#define IPC_WIRE_REQUEST_MAGIC 0x51484721u /* "!GHQ" */
#define IPC_WIRE_REPLY_MAGIC 0x52484721u   /* "!GHR" */
#define IPC_WIRE_VERSION 1u
#define IPC_CHUNK_FDS 200u /* extents (and fds) per reply message */
/* A refusal's status is a public gpu_error_t: -1..-99 (error.h's internal
 * outcomes start at -100 and never leave a process). */
#define IPC_STATUS_MIN (-99)

typedef struct ipc_wire_request {
    uint32_t magic;   /* IPC_WIRE_REQUEST_MAGIC */
    uint16_t version; /* IPC_WIRE_VERSION */
    uint16_t zero;
    uint64_t server_token; /* the server the client means to reach */
    uint64_t export_token;
} ipc_wire_request;
_Static_assert(sizeof(ipc_wire_request) == 24, "a request has no padding");

typedef struct ipc_wire_reply {
    uint32_t magic;   /* IPC_WIRE_REPLY_MAGIC */
    uint16_t version; /* IPC_WIRE_VERSION */
    uint16_t zero;
    int32_t status;    /* GPU_OK or a negative gpu_error_t */
    uint32_t nextents; /* in the whole reply */
    uint64_t export_token;
    uint64_t offset, size, granularity;
    uint32_t first, count; /* the extents (and fds) this message carries */
    char message[IPC_MESSAGE_BYTES];
    uint64_t extent_size[IPC_CHUNK_FDS]; /* only count of them are sent */
} ipc_wire_reply;
_Static_assert(offsetof(ipc_wire_reply, extent_size) % 8 == 0, "extent sizes are aligned");
_Static_assert(IPC_CHUNK_FDS <= 253, "Linux's SCM_MAX_FD");

/* The bytes of a reply message that carries count extents. */
static inline size_t ipc_wire_reply_len(unsigned count) {
    return offsetof(ipc_wire_reply, extent_size) + (size_t)count * sizeof(uint64_t);
}

/* The server's socket address: "\0gpuheap-ipc.<pid>.<token as 16 hex digits>"
 * in the abstract namespace (no file; gone when the last fd of the listening
 * socket closes; shared by the processes of one network namespace). */
void ipc_wire_address(uint32_t pid, uint64_t server_token, struct sockaddr_un *addr, socklen_t *len);

/* Fills m with reply r's header and the sizes of extents [first, first+count);
 * returns the message's length. */
size_t ipc_wire_reply_fill(ipc_wire_reply *m, const ipc_reply *r, uint64_t export_token, unsigned first,
                           unsigned count);

/* Checks that a successful reply is coherent: 1..IPC_MAX_EXTENTS extents, a
 * power-of-two granularity, extents that are non-zero multiples of it, and the
 * block [offset, offset+size) inside them with offset in the first. True when
 * it is; else false with the fault written to why (each end words its own
 * message around it). */
bool ipc_wire_reply_check(const ipc_reply *r, char *why, size_t len);

#endif /* GPUHEAP_IPC_WIRE_H */
