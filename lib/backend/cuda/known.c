/*
 * known.c — what the CUDA backend learns of a device once per process.
 *
 * Opening a backend reads the device's name, its support for the virtual memory
 * API and its granularity (cuda_describe, cuda.c). None of it changes while the
 * process lives, so the answers are kept per device ordinal and a process's
 * later backends on that device copy them instead of asking the driver again. A
 * refusal to describe (no VMM support) is not kept: it is an error each open
 * reports. Whether memory can be exported is not kept here: its probe also
 * readies the driver for the heap's first allocation (vmm.c). Devices from
 * CUDA_KNOWN_MAX on are asked every time. One mutex guards the table.
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
