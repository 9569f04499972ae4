/*
 * test_gpu_peer.c — another device reaches a heap's memory once it is a peer.
 *
 * Memory mapped through the virtual memory API is reachable from exactly the
 * devices cuMemSetAccess named, whatever cudaDeviceEnablePeerAccess says. The
 * interposer turns a program's peer enables into heap_peer_add, which grants the
 * new peer every extent mapped so far and every extent mapped later. Here device
 * 1 writes, through the driver on its own context, into two blocks of device 0's
 * heap — one mapped before the peer was added, one after — and device 0 reads the
 * bytes back. Needs two GPUs that can reach each other; exits 77 otherwise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/cuda/loader.h"
#include "api/api.h"
#include "backend/fault/fault.h"
#include "core/internal.h"

#define MiB ((size_t)1 << 20)

static const struct cuda_fns *f;
static CUcontext ctx0, ctx1;

#define CU_OK(call)                                                                       \
    do {                                                                                  \
        CUresult r_ = (call);                                                             \
        if (r_ != CUDA_SUCCESS) fail_msg("%s: %s", #call, cuda_loader_error_name(r_));  \
    } while (0)

/* device 1 fills [p, p+n) with byte through its own context, and waits. */
static void fill_from_device1(void *p, unsigned char byte, size_t n) {
    CU_OK(f->CtxPushCurrent(ctx1));
    CUresult r = f->MemsetD8((CUdeviceptr)(uintptr_t)p, byte, n);
    if (r == CUDA_SUCCESS) r = f->CtxSynchronize();
    CUcontext popped;
    f->CtxPopCurrent(&popped);
    if (r != CUDA_SUCCESS) fail_msg("device 1 could not write device 0's heap memory: %s", cuda_loader_error_name(r));
}

/* device 0 reads n bytes at p and expects byte everywhere. */
static void expect_on_device0(const void *p, unsigned char byte, size_t n) {
    unsigned char *host = malloc(n);
    assert_non_null(host);
    CU_OK(f->CtxPushCurrent(ctx0));
    CUresult r = f->MemcpyDtoH(host, (CUdeviceptr)(uintptr_t)p, n);
    CUcontext popped;
    f->CtxPopCurrent(&popped);
    CU_OK(r);
    for (size_t i = 0; i < n; i += 4093)
        if (host[i] != byte) fail_msg("byte %zu is %#x, device 1 wrote %#x", i, host[i], byte);
    free(host);
}

static void test_peer_reaches_present_and_future_extents(void **state) {
    (void)state;
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_CUDA;
    cfg.device = 0;
    cfg.reserve_bytes = (size_t)64 << 30;
    gpu_heap_t *h;
    assert_int_equal(gpu_heap_create(&cfg, &h), GPU_OK);
    void *before = gpu_heap_malloc(h, 64 * MiB);  /* an extent of its own, mapped before */
    void *small = gpu_heap_malloc(h, 4096);       /* a shared extent */
    assert_non_null(before);
    assert_non_null(small);
    assert_int_equal(heap_peer_add(h, 1), GPU_OK);
    void *after = gpu_heap_malloc(h, 256 * MiB);  /* mapped after: granted as it is mapped */
    assert_non_null(after);
    fill_from_device1(before, 0x5a, 64 * MiB);
    fill_from_device1(small, 0x3c, 4096);
    fill_from_device1(after, 0xa5, 256 * MiB);
    expect_on_device0(before, 0x5a, 64 * MiB);
    expect_on_device0(small, 0x3c, 4096);
    expect_on_device0(after, 0xa5, 256 * MiB);
    /* A block that grows in place maps a new extent: the peer reaches it too. */
    void *grown = gpu_heap_realloc(h, after, 512 * MiB);
    assert_non_null(grown);
    fill_from_device1((char *)grown + 300 * MiB, 0x11, 64 * MiB);
    expect_on_device0((char *)grown + 300 * MiB, 0x11, 64 * MiB);
    print_message("device 1 wrote device 0's heap memory: before, shared, after and grown extents (peers %#llx)\n",
                  (unsigned long long)heap_peers(h));
    char msg[256];
    if (gpu_heap_check(h, msg, sizeof msg) != GPU_OK) fail_msg("heap check: %s", msg);
    assert_int_equal(gpu_heap_destroy(h), GPU_OK);
}

int main(void) {
    if (cuda_loader_get(&f) != GPU_OK || f->Init(0) != CUDA_SUCCESS) {
        fprintf(stderr, "test_gpu_peer: no CUDA driver: skipped\n");
        return 77;
    }
    int n = 0, can = 0;
    CUdevice d0, d1;
    if (f->DeviceGetCount(&n) != CUDA_SUCCESS || n < 2) {
        fprintf(stderr, "test_gpu_peer: %d device(s); two are needed: skipped\n", n);
        return 77;
    }
    f->DeviceGet(&d0, 0);
    f->DeviceGet(&d1, 1);
    int (*can_access)(int *, CUdevice, CUdevice) = (int (*)(int *, CUdevice, CUdevice))cuda_loader_proc("cuDeviceCanAccessPeer");
    if (!can_access || can_access(&can, d1, d0) != CUDA_SUCCESS || !can) {
        fprintf(stderr, "test_gpu_peer: device 1 cannot reach device 0: skipped\n");
        return 77;
    }
    f->DevicePrimaryCtxRetain(&ctx0, d0);
    f->DevicePrimaryCtxRetain(&ctx1, d1);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_peer_reaches_present_and_future_extents)};
    return cmocka_run_group_tests_name("gpu-peer", tests, NULL, NULL);
}
