/*
 * known.c — what the CUDA backend learns of a device once per process.
 *
 * Opening a backend reads the device's name, its support for the virtual memory
 * API and its granularity (cuda_describe, cuda.c), and finds out whether its
 * memory can be made exportable — the IPC probe creates and releases one granule
 * (vmm.c). None of it changes while the process lives, so the answers are kept
 * per device ordinal and a process's later heaps on that device copy them
 * instead of asking the driver again (bench/RESULTS.md has what that saves a
 * heap's creation on an H200). A refusal to describe (no VMM support) is not
 * kept: it is an error each open reports. Devices from CUDA_KNOWN_MAX on are
 * asked every time. One mutex guards the table; opening is rare.
 */
#include <pthread.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define CUDA_KNOWN_MAX 64

static pthread_mutex_t known_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    bool described;
    size_t granularity;
    char device_name[sizeof ((vmm_caps *)0)->device_name];
    bool probed;
    bool exportable; /* the probe's answer; refused: why */
    const char *why; /* the driver's error name, static */
} known[CUDA_KNOWN_MAX];

static bool in_table(int ordinal) { return ordinal >= 0 && ordinal < CUDA_KNOWN_MAX; }

bool cuda_known_described(int ordinal, vmm_caps *caps) {
    if (!in_table(ordinal)) return false;
    pthread_mutex_lock(&known_lock);
    bool ok = known[ordinal].described;
    if (ok) {
        caps->granularity = known[ordinal].granularity;
        memcpy(caps->device_name, known[ordinal].device_name, sizeof caps->device_name);
    }
    pthread_mutex_unlock(&known_lock);
    return ok;
}

void cuda_known_describe_keep(int ordinal, const vmm_caps *caps) {
    if (!in_table(ordinal)) return;
    pthread_mutex_lock(&known_lock);
    known[ordinal].granularity = caps->granularity;
    memcpy(known[ordinal].device_name, caps->device_name, sizeof known[ordinal].device_name);
    known[ordinal].described = true;
    pthread_mutex_unlock(&known_lock);
}

int cuda_known_exportable(int ordinal, const char **why) {
    if (!in_table(ordinal)) return -1;
    pthread_mutex_lock(&known_lock);
    int v = known[ordinal].probed ? known[ordinal].exportable : -1;
    if (v == 0) *why = known[ordinal].why;
    pthread_mutex_unlock(&known_lock);
    return v;
}

void cuda_known_exportable_keep(int ordinal, bool exportable, const char *why) {
    if (!in_table(ordinal)) return;
    pthread_mutex_lock(&known_lock);
    known[ordinal].exportable = exportable;
    known[ordinal].why = why;
    known[ordinal].probed = true;
    pthread_mutex_unlock(&known_lock);
}
