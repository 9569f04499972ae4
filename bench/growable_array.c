/*
 * growable_array.c — a device array that grows to tens of GiB without moving:
 * the classic use of a sparse address space, against the cudaMalloc way.
 *
 * gpuheap: gpu_reserve the largest size the array may reach, then gpu_commit each
 * growth in place. The pointer never changes and no byte is copied. The peer:
 * cudaMalloc a buffer twice as large, cudaMemcpy the old contents, cudaFree the
 * old one. Both grow by doubling from 64 MiB to the target (default 32 GiB; pass
 * another in GiB). The table gives the time of every growth step (the cudaMalloc
 * way includes the device sync that makes its copy complete) and the total, and
 * the bytes copied.
 *
 *   gpuheap-growable-array [GiB] [--json FILE]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "cudart_util.h"
#include "gpuheap.h"


static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    size_t target = 32 * GiB;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else target = (size_t)atoll(argv[i]) * GiB;
    }
    char why[256] = "cudaSetDevice(0) failed", name[128] = "?";
    if (cudart_load(why, sizeof why) != 0 || cudart.cudaSetDevice(0) != CUDART_SUCCESS) {
        printf("no GPU (%s): this benchmark needs one\n", why);
        return 0;
    }
    cudart_device_name(0, name, sizeof name);
    printf("growing a device array by doubling from 64 MiB to %zu GiB on %s\n", target / GiB, name);
    printf("%10s %14s %16s\n", "to", "gpuheap ms", "cudaMalloc ms");

    /* gpuheap: one reservation, commits in place. */
    char *a = gpu_reserve(target);
    if (!a) {
        printf("gpu_reserve: %s\n", gpu_strerror(gpu_last_error()));
        return 1;
    }
    gpu_stats_t before;
    gpu_heap_stats(NULL, &before);
    double heap_ms[64], cuda_ms[64], heap_total = 0, cuda_total = 0;
    int steps = 0;
    size_t have = 0;
    for (size_t want = 64 * MiB; want <= target; want *= 2, steps++) {
        double t0 = now_ms();
        if (gpu_commit(a + have, want - have) != GPU_OK) {
            printf("gpu_commit to %zu MiB: %s\n", want / MiB, gpu_strerror(gpu_last_error()));
            return 1;
        }
        heap_ms[steps] = now_ms() - t0;
        heap_total += heap_ms[steps];
        have = want;
    }
    gpu_stats_t after;
    gpu_heap_stats(NULL, &after);
    gpu_release(a);

    /* cudaMalloc: allocate twice the size, copy, free the old. */
    void *buf = NULL;
    size_t cur = 0, copied = 0;
    int k = 0;
    for (size_t want = 64 * MiB; want <= target; want *= 2, k++) {
        double t0 = now_ms();
        void *nb = NULL;
        if (cudart.cudaMalloc(&nb, want) != CUDART_SUCCESS) {
            printf("cudaMalloc(%zu MiB) failed\n", want / MiB);
            return 1;
        }
        if (cur) {
            cudart.cudaMemcpy(nb, buf, cur, CUDART_MEMCPY_DEVICE_TO_DEVICE);
            copied += cur;
            cudart.cudaFree(buf);
        }
        cudart.cudaDeviceSynchronize();
        cuda_ms[k] = now_ms() - t0;
        cuda_total += cuda_ms[k];
        buf = nb;
        cur = want;
    }
    cudart.cudaFree(buf);
    size_t to = 64 * MiB;
    for (int i = 0; i < steps; i++, to *= 2) printf("%8zu M %14.2f %16.2f\n", to / MiB, heap_ms[i], cuda_ms[i]);
    printf("%10s %14.2f %16.2f   (%.1fx)\n", "total", heap_total, cuda_total, cuda_total / heap_total);
    printf("bytes copied: gpuheap 0 (one pointer throughout), cudaMalloc way %zu MiB; gpuheap mapped %llu extents\n",
           copied / MiB,
           (unsigned long long)(after.extents - before.extents));
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{\"benchmark\":\"growable_array\",\"device\":\"%s\",\"target_gib\":%zu,\"gpuheap_ms\":%.3f,"
                       "\"cudaMalloc_ms\":%.3f,\"speedup\":%.2f,\"bytes_copied_gpuheap\":0,\"bytes_copied_cudaMalloc\":%zu}\n",
                    name, target / GiB, heap_total, cuda_total, cuda_total / heap_total, copied);
            fclose(f);
        }
    }
    return 0;
}
