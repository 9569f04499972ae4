/*
 * config.c — the heap's settings: defaults, then GPUHEAP_* environment variables.
 *
 * Programs that cannot be changed (the interposer's users) are configured only
 * through the environment, so every setting of gpu_config_t has a variable, and
 * README.md lists them. A malformed value is reported and ignored, never fatal,
 * except GPUHEAP_BACKEND's (below). Two settings are the process's rather than
 * a heap's, read once when the first heap opens: GPUHEAP_LIMIT, the cap of
 * physical memory per device (gpu_set_limit changes it later), and
 * GPUHEAP_TAG_RESERVE, the VA each tag's heap reserves (region.c).
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "error.h"

bool config_parse_size(const char *s, size_t *out) {
    if (!s || !*s) return false;
    if (!strcasecmp(s, "max") || !strcasecmp(s, "unlimited")) {
        *out = SIZE_MAX;
        return true;
    }
    if (!isdigit((unsigned char)*s)) return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return false;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    default: return false;
    }
    if (*end) {
        end++;
        if (toupper((unsigned char)*end) == 'I') end++; /* KiB, MiB… */
        if (toupper((unsigned char)*end) == 'B') end++;
        if (*end) return false;
    }
    if (shift && v > (SIZE_MAX >> shift)) return false;
    *out = (size_t)(v << shift);
    return true;
}

/* Applies one size variable, if set; counts malformed ones in *bad. */
static void env_size(const char *name, size_t *field, int *bad) {
    const char *v = getenv(name);
    if (!v) return;
    size_t x;
    if (config_parse_size(v, &x))
        *field = x;
    else
        *bad = gh_error(GPU_ERR_INVALID, "%s=%s is not a size (examples: 4096, 64M, 2G, 64T, max)", name, v);
}

static void env_int(const char *name, int *field, int *bad) {
    const char *v = getenv(name);
    if (!v) return;
    char *end;
    long x = strtol(v, &end, 10);
    if (*v && !*end && x >= 0 && x < 1 << 20)
        *field = (int)x;
    else
        *bad = gh_error(GPU_ERR_INVALID, "%s=%s is not a non-negative integer", name, v);
}

/* A malformed GPUHEAP_BACKEND leaves the configuration with no backend, so that
 * gpu_heap_create and the default heaps refuse it (GPU_ERR_INVALID) instead of
 * opening CUDA, the default, under a name the user did not mean: "hots" would
 * end in "no CUDA driver" on a machine without a GPU, and on the GPU where the
 * user asked for the host. Not a gpu_backend_kind_t value. */
#define BACKEND_MALFORMED ((gpu_backend_kind_t)-1)

/* Says once per process, whatever GPUHEAP_VERBOSE is, that GPUHEAP_BACKEND is
 * malformed (at GPUHEAP_VERBOSE=1 gh_error prints it at every reading). */
static void backend_malformed_once(const char *value) {
    static atomic_bool told;
    if (atomic_exchange(&told, true) || gh_verbosity() >= 1) return;
    fprintf(stderr,
            "gpuheap: GPUHEAP_BACKEND=%.100s is not a backend (cuda, host or auto): heaps configured from the "
            "environment fail with \"invalid argument\" until it is fixed\n",
            value);
}

int gpu_config_init(gpu_config_t *cfg) {
    if (!cfg) return gh_error(GPU_ERR_INVALID, "gpu_config_init: cfg is NULL");
    memset(cfg, 0, sizeof *cfg);
    cfg->backend = GPU_BACKEND_AUTO;
    cfg->release_threshold = SIZE_MAX;
    cfg->thread_cache = (size_t)32 << 20;
    int bad = GPU_OK;
    const char *b = getenv("GPUHEAP_BACKEND");
    if (b && *b) { /* set but empty: as if unset */
        if (!strcasecmp(b, "cuda"))
            cfg->backend = GPU_BACKEND_CUDA;
        else if (!strcasecmp(b, "host"))
            cfg->backend = GPU_BACKEND_HOST;
        else if (!strcasecmp(b, "auto"))
            cfg->backend = GPU_BACKEND_AUTO;
        else {
            cfg->backend = BACKEND_MALFORMED;
            backend_malformed_once(b);
            bad = gh_error(GPU_ERR_INVALID, "GPUHEAP_BACKEND=%s: expected cuda, host or auto", b);
        }
    }
    env_size("GPUHEAP_RESERVE", &cfg->reserve_bytes, &bad);
    env_size("GPUHEAP_RELEASE_THRESHOLD", &cfg->release_threshold, &bad);
    env_size("GPUHEAP_HOST_BUDGET", &cfg->host_budget, &bad);
    env_size("GPUHEAP_HOST_GRANULARITY", &cfg->host_granularity, &bad);
    env_int("GPUHEAP_VERBOSE", &cfg->verbose, &bad);
    env_size("GPUHEAP_THREAD_CACHE", &cfg->thread_cache, &bad);
    env_size("GPUHEAP_PAGE_SIZE", &cfg->page_size, &bad);
    cfg->ipc = 1;
    const char *ipc = getenv("GPUHEAP_IPC");
    if (ipc && (!strcmp(ipc, "0") || !strcmp(ipc, "1")))
        cfg->ipc = ipc[0] == '1';
    else if (ipc)
        bad = gh_error(GPU_ERR_INVALID, "GPUHEAP_IPC=%s: expected 0 or 1", ipc);
    if (bad == GPU_OK) gh_ok();
    return bad;
}

/* ---- the process's settings ------------------------------------------------------- */

#define TAG_RESERVE_DEFAULT ((size_t)1 << 40) /* 1 TiB: room for many tags beside a 64 TiB default heap */

static size_t tag_reserve = TAG_RESERVE_DEFAULT;
static pthread_once_t process_once = PTHREAD_ONCE_INIT;

static void process_settings(void) {
    int bad = GPU_OK;
    size_t limit = 0;
    env_size("GPUHEAP_LIMIT", &limit, &bad);
    if (limit) heap_cap_set(limit);
    env_size("GPUHEAP_TAG_RESERVE", &tag_reserve, &bad);
    if (!tag_reserve) tag_reserve = TAG_RESERVE_DEFAULT;
    else if (tag_reserve == SIZE_MAX) tag_reserve = 0; /* "max": as much as granted, as the default heaps (reserve_bytes 0) */
}

void config_process_init(void) { pthread_once(&process_once, process_settings); }

size_t config_tag_reserve(void) {
    config_process_init();
    return tag_reserve;
}

int gpu_set_limit(size_t bytes) {
    config_process_init(); /* GPUHEAP_LIMIT is read first, so that this call wins */
    heap_cap_set(bytes);
    return gh_ok();
}

size_t gpu_limit(void) {
    config_process_init();
    return heap_cap();
}
