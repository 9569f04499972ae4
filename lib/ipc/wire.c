/*
 * wire.c — the pieces of the IPC protocol (wire.h) that both ends must agree
 * on: the server's socket name, a reply chunk's layout, and what makes a reply
 * coherent.
 *
 * The coherence check runs twice: in the server on what its lookup callback
 * produced (a bad callback becomes an error reply, not a bad mapping in another
 * process), and in the client on what arrived (the other process is not
 * trusted to be the same build, or well).
 */
#include "ipc/wire.h"

#include <stdio.h>
#include <string.h>

#include "common.h"

void ipc_wire_address(uint32_t pid, uint64_t server_token, struct sockaddr_un *addr, socklen_t *len) {
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    /* sun_path[0] stays '\0': the abstract namespace. The name is not
     * NUL-terminated on the wire; its length is in len. */
    int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1, "gpuheap-ipc.%u.%016llx", (unsigned)pid,
                     (unsigned long long)server_token);
    gh_assert(n > 0 && (size_t)n < sizeof addr->sun_path - 1, "the socket name fits sun_path");
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

size_t ipc_wire_reply_fill(ipc_wire_reply *m, const ipc_reply *r, uint64_t export_token, unsigned first,
                           unsigned count) {
    gh_assert(count <= IPC_CHUNK_FDS && first + count <= IPC_MAX_EXTENTS, "a chunk inside the reply");
    memset(m, 0, offsetof(ipc_wire_reply, extent_size));
    m->magic = IPC_WIRE_REPLY_MAGIC;
    m->version = IPC_WIRE_VERSION;
    m->status = r->status;
    m->nextents = r->nextents;
    m->export_token = export_token;
    m->offset = r->offset;
    m->size = r->size;
    m->granularity = r->granularity;
    m->first = first;
    m->count = count;
    /* The callback may have filled the whole array: copy at most one byte less. */
    memcpy(m->message, r->message, strnlen(r->message, sizeof m->message - 1));
    memcpy(m->extent_size, r->extent_size + first, (size_t)count * sizeof(uint64_t));
    return ipc_wire_reply_len(count);
}

bool ipc_wire_reply_check(const ipc_reply *r, char *why, size_t len) {
    if (r->nextents == 0 || r->nextents > IPC_MAX_EXTENTS) {
        snprintf(why, len, "%u extents (1..%u)", r->nextents, IPC_MAX_EXTENTS);
        return false;
    }
    if (!gh_is_pow2(r->granularity)) {
        snprintf(why, len, "granularity %llu, not a power of two", (unsigned long long)r->granularity);
        return false;
    }
    uint64_t total = 0;
    for (unsigned i = 0; i < r->nextents; i++) {
        uint64_t s = r->extent_size[i];
        if (s == 0 || s % r->granularity) {
            snprintf(why, len, "extent %u of %llu bytes, not a multiple of %llu", i, (unsigned long long)s,
                     (unsigned long long)r->granularity);
            return false;
        }
        if (__builtin_add_overflow(total, s, &total)) {
            snprintf(why, len, "extents whose sizes overflow 64 bits");
            return false;
        }
    }
    uint64_t end;
    if (r->offset >= r->extent_size[0] || __builtin_add_overflow(r->offset, r->size, &end) || end > total) {
        snprintf(why, len, "%llu bytes at offset %llu, outside %llu bytes of extents", (unsigned long long)r->size,
                 (unsigned long long)r->offset, (unsigned long long)total);
        return false;
    }
    return true;
}
