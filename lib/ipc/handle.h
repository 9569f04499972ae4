/*
 * handle.h — the bytes of an IPC memory handle (handle.c): what one process
 * hands another so that the other can ask for a block's memory.
 *
 * The public gpu_ipc_mem_handle_t is 64 opaque bytes. They name the exporting
 * process's transport server (its pid and a random server token: together the
 * server's socket name, server.c) and the export (a random export token the
 * exporter's lookup knows), and carry the block's size so that an importer can
 * check the reply against what it was given. A checksum over the rest makes a
 * corrupted or truncated byte string, or one that was never a handle, fail to
 * decode (GPU_ERR_INVALID) before any socket is touched. The checksum is not a
 * secret: what keeps a forger out is that the tokens are 64 random bits each
 * and that the server serves only its own uid (server.c).
 *
 * The struct below is the wire image, field for field: the encoder writes each
 * field little-endian at its offset, so the bytes are the same whatever the
 * compiler's padding or the machine's byte order.
 */
#ifndef GPUHEAP_IPC_HANDLE_H
#define GPUHEAP_IPC_HANDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IPC_HANDLE_BYTES 64u
#define IPC_HANDLE_MAGIC 0x50494847u /* "GHIP" as little-endian bytes */
#define IPC_HANDLE_VERSION 1u

/* A handle, decoded. magic, version, reserved and checksum are written by
 * ipc_handle_encode whatever the caller put there; decode fills every field. */
typedef struct ipc_handle_fields {
    uint32_t magic;        /* IPC_HANDLE_MAGIC */
    uint16_t version;      /* IPC_HANDLE_VERSION */
    uint16_t flags;        /* reserved: zero */
    uint32_t pid;          /* the exporting process, as it saw itself (getpid) */
    uint32_t uid;          /* its effective uid when its server started */
    uint64_t server_token; /* random per server start: a fork's child gets its own */
    uint64_t export_token; /* random per export: what the exporter's lookup knows */
    uint64_t size;         /* the block's size in bytes */
    uint64_t reserved[2];  /* zero */
    uint64_t checksum;     /* over bytes 0..55 as encoded */
} ipc_handle_fields;

_Static_assert(sizeof(ipc_handle_fields) == IPC_HANDLE_BYTES, "the handle's wire image is 64 bytes");
_Static_assert(offsetof(ipc_handle_fields, checksum) == IPC_HANDLE_BYTES - 8, "the checksum closes the handle");

/* Writes h as IPC_HANDLE_BYTES bytes: magic, version, zero reserved fields and
 * the checksum are stamped here. Cannot fail. */
void ipc_handle_encode(const ipc_handle_fields *h, unsigned char out[IPC_HANDLE_BYTES]);

/* Reads a handle: GPU_OK, or GPU_ERR_INVALID (with the reason noted) when the
 * checksum does not match, the magic or version is not ours, a reserved field is
 * not zero, or the pid or a token is zero. Touches no file and no socket. */
int ipc_handle_decode(const unsigned char in[IPC_HANDLE_BYTES], ipc_handle_fields *h);

/* True when the bytes were made by ipc_handle_encode (of any version: the
 * checksum matches and the magic is ours); notes nothing. The interposer asks
 * this to tell a gpuheap handle from a driver's cudaIpcMemHandle_t. */
bool ipc_handle_is_ours(const unsigned char in[IPC_HANDLE_BYTES]);

/* 64 random bits, never zero (getrandom): for server and export tokens.
 * GPU_OK, or GPU_ERR_BACKEND when the kernel gives none. */
int ipc_random64(uint64_t *out);

#endif /* GPUHEAP_IPC_HANDLE_H */
