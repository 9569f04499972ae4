/*
 * trace_example.c — the small workload behind docs/example.trace and its picture
 * in README.md ("Seeing the heap").
 *
 * A training-like pattern on the host backend, so it runs anywhere: eight
 * long-lived "weights", six steps that allocate and free activations (1–4 MiB)
 * and many small temporaries, a trim in the middle, and a buffer grown by
 * realloc at the end. Run it with the trace on, then draw the trace:
 *
 *   build/bench/gpuheap-trace-example docs/example.trace
 *   tools/gpuheap-plot docs/example.trace -o docs/example.html --svg docs/example.svg
 */
#include <stdio.h>

#include "gpuheap.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "example.trace";
    gpu_config_t cfg;
    gpu_config_init(&cfg);
    cfg.backend = GPU_BACKEND_HOST;
    gpu_heap_t *h;
    if (gpu_trace_start(path) != GPU_OK || gpu_heap_create(&cfg, &h) != GPU_OK) {
        fprintf(stderr, "trace_example: %s\n", gpu_strerror(gpu_last_error()));
        return 1;
    }
    void *weights[8];
    for (int i = 0; i < 8; i++) weights[i] = gpu_heap_malloc(h, (size_t)(3 + i) << 20);
    for (int step = 0; step < 6; step++) {
        void *act[16], *tmp[32];
        for (int l = 0; l < 16; l++) act[l] = gpu_heap_malloc(h, ((size_t)(l % 4) + 1) << 20 | 12345);
        for (int k = 0; k < 32; k++) tmp[k] = gpu_heap_malloc(h, 1000 * (size_t)(k + 1));
        for (int k = 0; k < 32; k++) gpu_heap_free(h, tmp[k]);
        for (int l = 15; l >= 0; l--) gpu_heap_free(h, act[l]);
        if (step == 3) gpu_heap_trim(h, 0);
    }
    void *grow = gpu_heap_malloc(h, 8 << 20);
    for (int i = 0; i < 4; i++) grow = gpu_heap_realloc(h, grow, (size_t)(16 << 20) << i);
    gpu_heap_free(h, grow);
    for (int i = 0; i < 8; i++) gpu_heap_free(h, weights[i]);
    gpu_heap_destroy(h);
    return gpu_trace_stop() == GPU_OK ? 0 : 1;
}
