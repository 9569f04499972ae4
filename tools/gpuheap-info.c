/*
 * gpuheap-info — what a heap gets on this machine: backend, device, granularity,
 * how much VA the driver granted, and the configuration read from GPUHEAP_*.
 *
 * The first thing to run when a program behaves differently under gpuheap: it
 * creates the default heap exactly as gpu_malloc would and prints its facts.
 */
#include <stdio.h>
#include <stdlib.h>

#include "gpuheap.h"

int main(void) {
    gpu_config_t cfg;
    if (gpu_config_init(&cfg) != GPU_OK) fprintf(stderr, "gpuheap-info: a GPUHEAP_* variable is malformed (see above)\n");
    gpu_heap_t *h;
    int rc = gpu_heap_create(&cfg, &h);
    if (rc != GPU_OK) {
        printf("no heap: %s\n", gpu_strerror(rc));
        return 1;
    }
    gpu_stats_t s;
    gpu_heap_stats(h, &s);
    const char *backend = cfg.backend == GPU_BACKEND_HOST ? "host" : "cuda";
    printf("backend          %s\n", backend);
    printf("device           %d\n", cfg.device);
    printf("granularity      %llu bytes\n", (unsigned long long)s.granularity);
    printf("reserved VA      %llu GiB\n", (unsigned long long)(s.reserved_bytes >> 30));
    if (cfg.release_threshold == SIZE_MAX)
        printf("release threshold keep all idle memory\n");
    else
        printf("release threshold %zu bytes\n", cfg.release_threshold);
    gpu_heap_destroy(h);
    return 0;
}
