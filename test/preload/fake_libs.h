/*
 * fake_libs.h — a folder that a test's children find the fake CUDA libraries in.
 *
 * The interposer's host tests run children whose "driver" and "runtime" are small
 * fakes (fake_cuda*.c, fake_cudart.c) built beside them; a child finds them
 * through LD_LIBRARY_PATH under their real names. fake_libs_make makes a fresh
 * folder of links with those names, fake_libs_remove takes it away.
 */
#ifndef GPUHEAP_TEST_FAKE_LIBS_H
#define GPUHEAP_TEST_FAKE_LIBS_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *const fake_lib_names[2] = {"libcuda.so.1", "libcudart.so.13"};

/* Makes dir (a mkdtemp template, e.g. "/tmp/gpuheap-fake-XXXXXX", filled in)
 * holding libcuda.so.1 -> driver and libcudart.so.13 -> runtime. 0 or -1. */
static inline int fake_libs_make(char *dir, const char *driver, const char *runtime) {
    if (!mkdtemp(dir)) return -1;
    const char *const targets[2] = {driver, runtime};
    for (int i = 0; i < 2; i++) {
        char link[256];
        snprintf(link, sizeof link, "%s/%s", dir, fake_lib_names[i]);
        char *abs = realpath(targets[i], NULL);
        int rc = abs ? symlink(abs, link) : -1;
        free(abs);
        if (rc != 0) return -1;
    }
    return 0;
}

/* Removes what fake_libs_make made. */
static inline void fake_libs_remove(const char *dir) {
    for (int i = 0; i < 2; i++) {
        char link[256];
        snprintf(link, sizeof link, "%s/%s", dir, fake_lib_names[i]);
        unlink(link);
    }
    rmdir(dir);
}

#endif /* GPUHEAP_TEST_FAKE_LIBS_H */
