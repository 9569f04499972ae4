/*
 * gpuheap-info — what a heap gets on this machine: backend, device, granularity,
 * how much VA the driver granted, and the configuration read from GPUHEAP_*.
 *
 * The first thing to run when a program behaves differently under gpuheap: it
 * creates the default heap exactly as gpu_malloc would and prints its facts.
 * When no heap opens it says why (the library's own message) and, without a
 * driver or a device, that GPUHEAP_BACKEND=host runs gpuheap on host memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuheap.h"

static void usage(FILE *f) { fprintf(f, "usage: gpuheap-info [--help]\n"); }

static void help(void) {
    usage(stdout);
    printf("\n"
           "Creates a heap the way gpu_malloc creates its default heap (device 0, the\n"
           "configuration from the environment) and prints what it got: backend, device,\n"
           "mapping granularity, reserved virtual address space and release threshold.\n"
           "When no heap can be opened it prints why and exits 1.\n"
           "\n"
           "Environment (README.md, Configuration):\n"
           "  GPUHEAP_BACKEND            cuda, host or auto (auto = cuda)\n"
           "  GPUHEAP_RESERVE            virtual address space to reserve\n"
           "  GPUHEAP_RELEASE_THRESHOLD  idle bytes kept mapped\n"
           "  GPUHEAP_HOST_BUDGET        host backend: physical bytes of a device, all heaps\n"
           "  GPUHEAP_HOST_GRANULARITY   host backend: mapping granularity\n"
           "  GPUHEAP_THREAD_CACHE       bytes of small blocks each thread may keep\n"
           "  GPUHEAP_VERBOSE            1: every error to stderr\n"
           "A malformed value is reported here. GPUHEAP_TRACE, GPUHEAP_STATS and\n"
           "GPUHEAP_STATS_JSON act as in any program that creates a heap.\n"
           "\n"
           "Exit status: 0 a heap opened, 1 none could be opened, 2 bad usage.\n");
}

/* The library's message for the last error (gpu_strerror says only the code);
 * while the configuration is read, each malformed variable is printed. */
static char last_message[512];
static int reading_config;
static void keep_message(int err, const char *msg, void *arg) {
    (void)err, (void)arg;
    if (reading_config) fprintf(stderr, "gpuheap-info: malformed: %s\n", msg);
    snprintf(last_message, sizeof last_message, "%s", msg);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            help();
            return 0;
        }
        fprintf(stderr, "gpuheap-info: unknown argument '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    gpu_set_error_handler(keep_message, NULL);
    gpu_config_t cfg;
    reading_config = 1;
    (void)gpu_config_init(&cfg); /* a malformed variable is printed by keep_message */
    reading_config = 0;
    gpu_heap_t *h;
    last_message[0] = '\0';
    int rc = gpu_heap_create(&cfg, &h);
    if (rc != GPU_OK) {
        fprintf(stderr, "gpuheap-info: no heap: %s%s%s\n", gpu_strerror(rc), last_message[0] ? ": " : "", last_message);
        if (rc == GPU_ERR_NO_DRIVER || rc == GPU_ERR_NO_DEVICE)
            fprintf(stderr, "hint: without a GPU, GPUHEAP_BACKEND=host runs gpuheap on host memory "
                            "(try: GPUHEAP_BACKEND=host gpuheap-info)\n");
        return 1;
    }
    gpu_set_error_handler(NULL, NULL);
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
