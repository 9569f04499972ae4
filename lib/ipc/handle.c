/*
 * handle.c — encoding and decoding an IPC memory handle (see handle.h), and the
 * random tokens that make one hard to guess.
 *
 * Decoding is the gate an importer passes before any I/O: the checksum first (a
 * corrupted byte anywhere fails there), then the fields one by one, each with a
 * message that says which. The checksum is FNV-1a over the first 56 bytes with a
 * final mix; every step of FNV-1a is a bijection of its state for a given byte,
 * so a handle that differs from a valid one in any single byte never checks.
 */
#include "ipc/handle.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "common.h"
#include "error.h"

/* Stores v little-endian at p. */
static void put_u16(unsigned char *p, uint16_t v) {
    for (unsigned i = 0; i < 2; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u32(unsigned char *p, uint32_t v) {
    for (unsigned i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (unsigned i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
/* Loads a little-endian value from p. */
static uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] | (unsigned)p[1] << 8); }
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (unsigned i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (unsigned i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The checksum of an encoded handle's first 56 bytes: FNV-1a, then a bijective
 * mix (splitmix64's finalizer) so that nearby inputs give unrelated sums. */
static uint64_t handle_checksum(const unsigned char *b) {
    uint64_t h = 0xcbf29ce484222325u; /* FNV offset basis */
    for (size_t i = 0; i < offsetof(ipc_handle_fields, checksum); i++) {
        h ^= b[i];
        h *= 0x100000001b3u; /* FNV prime */
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9u;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebu;
    h ^= h >> 31;
    return h;
}

#define AT(field) (out + offsetof(ipc_handle_fields, field))
#define FROM(field) (in + offsetof(ipc_handle_fields, field))

void ipc_handle_encode(const ipc_handle_fields *h, unsigned char out[IPC_HANDLE_BYTES]) {
    memset(out, 0, IPC_HANDLE_BYTES); /* flags and reserved are zero */
    put_u32(AT(magic), IPC_HANDLE_MAGIC);
    put_u16(AT(version), IPC_HANDLE_VERSION);
    put_u32(AT(pid), h->pid);
    put_u32(AT(uid), h->uid);
    put_u64(AT(server_token), h->server_token);
    put_u64(AT(export_token), h->export_token);
    put_u64(AT(size), h->size);
    put_u64(AT(checksum), handle_checksum(out));
}

int ipc_handle_decode(const unsigned char in[IPC_HANDLE_BYTES], ipc_handle_fields *h) {
    if (!in || !h) return gh_note(GPU_ERR_INVALID, "IPC handle: NULL argument");
    memset(h, 0, sizeof *h);
    uint64_t sum = get_u64(FROM(checksum));
    if (sum != handle_checksum(in))
        return gh_note(GPU_ERR_INVALID, "not a gpuheap IPC handle: its checksum does not match "
                                        "(the 64 bytes were corrupted or made up)");
    h->magic = get_u32(FROM(magic));
    h->version = get_u16(FROM(version));
    h->flags = get_u16(FROM(flags));
    h->pid = get_u32(FROM(pid));
    h->uid = get_u32(FROM(uid));
    h->server_token = get_u64(FROM(server_token));
    h->export_token = get_u64(FROM(export_token));
    h->size = get_u64(FROM(size));
    h->reserved[0] = get_u64(FROM(reserved));
    h->reserved[1] = get_u64(FROM(reserved) + 8);
    h->checksum = sum;
    if (h->magic != IPC_HANDLE_MAGIC)
        return gh_note(GPU_ERR_INVALID, "not a gpuheap IPC handle (magic 0x%08x)", (unsigned)h->magic);
    if (h->version != IPC_HANDLE_VERSION)
        return gh_note(GPU_ERR_INVALID, "IPC handle of version %u; this gpuheap reads version %u",
                       (unsigned)h->version, IPC_HANDLE_VERSION);
    if (h->flags || h->reserved[0] || h->reserved[1])
        return gh_note(GPU_ERR_INVALID, "IPC handle with reserved fields set (from a newer gpuheap?)");
    if (!h->pid || !h->server_token || !h->export_token)
        return gh_note(GPU_ERR_INVALID, "IPC handle with a zero pid or token");
    return GPU_OK;
}

bool ipc_handle_is_ours(const unsigned char in[IPC_HANDLE_BYTES]) {
    return in && get_u64(FROM(checksum)) == handle_checksum(in) && get_u32(FROM(magic)) == IPC_HANDLE_MAGIC;
}

int ipc_random64(uint64_t *out) {
    uint64_t v = 0;
    while (v == 0) { /* zero means "none" in a handle */
        ssize_t n = getrandom(&v, sizeof v, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n != (ssize_t)sizeof v)
            return gh_note(GPU_ERR_BACKEND, "getrandom: %s", n < 0 ? strerror(errno) : "short read");
    }
    *out = v;
    return GPU_OK;
}
