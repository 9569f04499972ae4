/*
 * choose.c — which backend a heap gets.
 *
 * The configuration names the backend; the build says which ones exist. This is
 * the one place that knows both, so that the heap core opens "a backend" and
 * never tests a build flag. GPU_BACKEND_AUTO means CUDA: a heap never falls back
 * to host memory without being asked, since a program that thinks it holds GPU
 * memory and holds host memory fails far from the cause.
 */
#include "backend/door.h"

int vmm_open(const gpu_config_t *cfg, vmm_backend **out) {
    switch (cfg->backend) {
    case GPU_BACKEND_HOST: return vmm_host_open(cfg, out);
    case GPU_BACKEND_AUTO:
    case GPU_BACKEND_CUDA:
#if GPUHEAP_HAVE_CUDA
        return vmm_cuda_open(cfg, out);
#else
        return vmm_fail(NULL, GPU_ERR_NO_DRIVER, "gpuheap was built without the CUDA backend (no cuda.h at build time)");
#endif
    }
    return vmm_fail(NULL, GPU_ERR_INVALID, "unknown backend %d%s", (int)cfg->backend,
                    (int)cfg->backend == -1 ? " (GPUHEAP_BACKEND is not cuda, host or auto)" : "");
}
