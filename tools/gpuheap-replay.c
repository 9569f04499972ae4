/*
 * gpuheap-replay — replays a recorded trace against gpuheap, cudaMalloc and
 * cudaMallocAsync, one after the other in this process, and compares them.
 *
 * For each allocator it reports the time its calls took, the peak physical
 * memory it held (replay_peers.h says how each is measured), and fragmentation =
 * peak physical / peak live bytes (live bytes as the program asked for them). A
 * trace is what GPUHEAP_TRACE=FILE wrote (plain or .gz). Without a GPU, or with
 * --backend host, gpuheap alone runs on its host backend: the CI tests use that.
 *
 * On the host every event completes at once, as if the GPU were never behind;
 * --lag MS makes the host backend's events complete MS milliseconds after their
 * record on the trace's own clock, so that blocks freed while the recorded
 * program's GPU still used them wait for their cover as they did then (a
 * training step's run-ahead is tens of milliseconds). --free-order legacy replays
 * gpuheap in legacy free order (gpu_set_free_order), as gpuheap-run runs a
 * program that uses no non-blocking stream.
 *
 *   gpuheap-replay [--backend cuda|host] [--lag MS] [--free-order event|legacy] [--only NAME] [--json FILE] TRACE
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cudart_util.h"
#include "gpuheap.h"
#include "replay_peers.h"
#include "trace_replay.h"

static void usage(FILE *f) {
    fprintf(f, "usage: gpuheap-replay [--backend cuda|host] [--lag MS] [--free-order event|legacy]\n"
               "                      [--only gpuheap|cudaMalloc|cudaMallocAsync] [--json FILE] TRACE[.gz]\n"
               "  Replays TRACE's malloc/free/realloc/trim calls against each allocator and prints\n"
               "  time, peak physical memory held and fragmentation (peak physical / peak live).\n"
               "  --lag MS (host backend): events complete MS ms after their record on the trace's clock.\n"
               "  --free-order legacy: gpuheap hands freed blocks out at once, the context made to wait\n"
               "  (gpu_set_free_order; what gpuheap-run does for a program in one context).\n");
}

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

/* The recorded heap's physical peak (handles created during the trace, less
 * those released) and the call that first reached it, with what the heap did
 * there: where to look when two runs of one program peak apart. */
static void print_recorded_peak(const tr_trace *t, const tr_summary *s) {
    if (!s->peak_physical) return; /* a trace that records no create (a heap made before it started) */
    printf("  recorded heap held at most %.1f MiB physical (handles created less released)", mib(s->peak_physical));
    if (s->peak_call == SIZE_MAX) {
        printf("\n");
        return;
    }
    const tr_event *c = &t->ev[s->peak_call];
    const tr_call_work *w = &s->peak_work;
    printf(",\n  first in call %zu of %zu, %s of %.1f MiB at %.3f s: %zu creates, %zu releases, %zu maps, "
           "%zu unmaps, %zu fences\n",
           s->peak_call_nth, s->calls, tr_op_name(c->op), mib(c->size), (double)(c->t_ns - s->start_ns) * 1e-9,
           w->creates, w->releases, w->maps, w->unmaps, w->fences);
}

int main(int argc, char **argv) {
    const char *path = NULL, *json = NULL, *only = NULL;
    bool host = false;
    double lag_ms = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            const char *b = argv[++i];
            if (strcmp(b, "host") && strcmp(b, "cuda")) {
                fprintf(stderr, "gpuheap-replay: unknown backend '%s' (cuda or host)\n", b);
                usage(stderr);
                return 2;
            }
            host = !strcmp(b, "host");
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            only = argv[++i];
            if (strcmp(only, "gpuheap") && strcmp(only, "cudaMalloc") && strcmp(only, "cudaMallocAsync")) {
                fprintf(stderr, "gpuheap-replay: unknown allocator '%s' for --only\n", only);
                usage(stderr);
                return 2;
            }
        } else if (!strcmp(argv[i], "--lag") && i + 1 < argc) {
            char *end;
            lag_ms = strtod(argv[++i], &end);
            if (*end || !(lag_ms >= 0 && lag_ms < 1e6)) {
                fprintf(stderr, "gpuheap-replay: --lag takes milliseconds, 0 to 1e6 (got '%s')\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--free-order") && i + 1 < argc) {
            const char *o = argv[++i];
            if (strcmp(o, "event") && strcmp(o, "legacy")) {
                fprintf(stderr, "gpuheap-replay: --free-order takes event or legacy (got '%s')\n", o);
                return 2;
            }
            (void)gpu_set_free_order(strcmp(o, "legacy") ? GPU_FREE_ORDER_EVENT : GPU_FREE_ORDER_LEGACY);
        } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
            json = argv[++i];
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    char err[512];
    tr_trace t;
    if (tr_load(path, &t, err, sizeof err) != 0) {
        fprintf(stderr, "gpuheap-replay: %s\n", err);
        return 1;
    }
    tr_summary s;
    tr_summarize(&t, &s);
    printf("trace %s: %zu events (%zu malloc, %zu free, %zu realloc, %zu other; %zu failed calls), %zu threads,\n"
           "  %.3f s long, peak live %.1f MiB; recorded heap mapped at most %.1f MiB in %zu maps\n",
           path, s.events, s.mallocs, s.frees, s.reallocs, s.others, s.failed_calls, s.threads, (double)s.span_ns * 1e-9,
           mib(s.peak_live), mib(s.peak_mapped), s.maps);
    print_recorded_peak(&t, &s);
    if (t.bad_lines || t.unknown_ops)
        printf("  (%zu lines did not parse, %zu events of ops this reader does not know)\n", t.bad_lines, t.unknown_ops);

    gpu_config_t cfg;
    gpu_config_init(&cfg);
    char device[256] = "host backend (not a GPU)";
    if (!host) {
        cudart_error e = 0;
        if (cudart_load(err, sizeof err) == 0 && ((e = cudart.cudaSetDevice(0)) != CUDART_SUCCESS ||
                                                  (e = cudart.cudaDeviceSynchronize()) != CUDART_SUCCESS))
            snprintf(err, sizeof err, "CUDA device 0: %s", cudart_strerror(e));
        if (!cudart.cudaMalloc || e != CUDART_SUCCESS) {
            printf("no GPU (%s): replaying on gpuheap's host backend alone\n", err);
            host = true;
        } else {
            cudart_device_name(0, device, sizeof device);
        }
    }
    if (host) cfg.backend = GPU_BACKEND_HOST;
    printf("device: %s\n\n", device);

    static const int kinds[] = {PEER_GPUHEAP, PEER_CUDA_MALLOC, PEER_CUDA_MALLOC_ASYNC};
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (json && !jf) fprintf(stderr, "gpuheap-replay: cannot write %s\n", json);
    if (jf)
        fprintf(jf, "{\"trace\": \"%s\", \"device\": \"%s\", \"events\": %zu, \"peak_live\": %llu, \"results\": [", path,
                device, s.events, (unsigned long long)s.peak_live);
    printf("%-16s %10s %10s %12s %14s %8s %7s %9s\n", "allocator", "time ms", "calls", "peak live MiB",
           "peak phys MiB", "frag", "failed", "conflicts");
    int status = 0;
    bool first = true;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        if ((host && kinds[k] != PEER_GPUHEAP) || (only && strcmp(only, peer_kind_name(kinds[k])))) continue;
        peer p;
        if (peer_open(&p, kinds[k], &cfg, err, sizeof err) != 0) {
            printf("%-16s %s\n", peer_kind_name(kinds[k]), err);
            status = 1;
            continue;
        }
        if (lag_ms > 0 && !peer_set_lag(&p, (uint64_t)(lag_ms * 1e6))) {
            printf("%-16s --lag needs gpuheap on the host backend (--backend host)\n", p.name);
            peer_close(&p);
            status = 1;
            continue;
        }
        tr_result r;
        if (tr_replay(&t, &p.a, &r) != 0) {
            printf("%-16s out of host memory\n", p.name);
            peer_close(&p);
            status = 1;
            continue;
        }
        uint64_t phys = peer_peak_physical(&p);
        double frag = r.peak_live ? (double)phys / (double)r.peak_live : 0;
        printf("%-16s %10.3f %10zu %12.1f %14.1f %8.3f %7zu %9zu\n", p.name, r.seconds * 1e3, r.calls, mib(r.peak_live),
               mib(phys), frag, r.failed, r.conflicts);
        if (r.failed) printf("  first failure: %s\n", r.first_error);
        peer_work w;
        bool counted = peer_driver_work(&p, &w);
        if (counted) /* what the replay cost the heap in driver work */
            printf("  %llu mappings, %llu unmaps, %llu fences, %llu seals, %llu releases in legacy order\n",
                   (unsigned long long)w.maps, (unsigned long long)w.unmaps, (unsigned long long)w.fences,
                   (unsigned long long)w.seals, (unsigned long long)w.releases);
        peer_work w2;
        bool halved = counted && peer_second_half(&p, &w2);
        if (halved) /* past the warm-up: what every later step goes on paying */
            printf("  in the second half of the calls: %llu mappings, %llu unmaps, %llu fences\n", (unsigned long long)w2.maps,
                   (unsigned long long)w2.unmaps, (unsigned long long)w2.fences);
        if (jf)
            fprintf(jf, "%s\n  {\"allocator\": \"%s\", \"seconds\": %.6f, \"calls\": %zu, \"failed\": %zu, "
                        "\"skipped\": %zu, \"conflicts\": %zu, \"peak_live\": %llu, \"peak_physical\": %llu, "
                        "\"fragmentation\": %.4f, \"copied_bytes\": %llu",
                    first ? "" : ",", p.name, r.seconds, r.calls, r.failed, r.skipped, r.conflicts,
                    (unsigned long long)r.peak_live, (unsigned long long)phys, frag,
                    (unsigned long long)r.copied_bytes);
        if (jf && counted) {
            fputs(", ", jf);
            peer_work_json(jf, &w);
        }
        if (jf && halved) {
            fputs(", \"second_half\": {", jf);
            peer_work_json(jf, &w2);
            fputc('}', jf);
        }
        if (jf) fputc('}', jf);
        first = false;
        peer_close(&p);
    }
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
    }
    printf("(time: the replayed calls only; peak physical: gpuheap peak_mapped_bytes, cudaMalloc device memory\n"
           " used (cudaMemGetInfo) at each new live peak, cudaMallocAsync pool reserved high-water mark)\n");
    tr_free(&t);
    return status;
}
