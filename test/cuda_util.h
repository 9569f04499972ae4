/*
 * cuda_util.h — the CUDA driver, loaded at run time, for the GPU tests.
 *
 * Tests must build on machines with no GPU and skip there (exit 77), so nothing
 * links against libcuda: cu_util_init takes each entry point a test needs from the
 * library's run-time loader (cuda_loader_proc in lib/cuda_loader.h), which opens
 * libcuda.so.1 once per process. cuda.h is used for its types only. The driver
 * functions are reached through the table `cu`, whose members carry the driver's
 * own names and prototypes (cu.cuMemcpyHtoD(...)), so a test reads like plain
 * driver code.
 *
 * Three hand-written PTX kernels, JIT-compiled by the driver for whatever card is
 * present, let a test write and verify device memory without the host ever reading
 * it byte by byte:
 *   fill      p[i] = cu_pattern(seed, i)
 *   check     counts i with p[i] != cu_pattern(seed, i)
 *   spin_fill thread 0 of each block spins for `cycles` SM clocks, then the block
 *             fills: a long-running kernel that still writes its buffer at the end.
 *
 * Not thread-safe: one test thread drives the helper (cu_util_init may be called
 * again from another thread to make the context current there).
 */
#ifndef GPUHEAP_TEST_CUDA_UTIL_H
#define GPUHEAP_TEST_CUDA_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda.h>

/* The exit code meson reads as "skipped". */
#define CU_UTIL_SKIP 77

/* Every driver function the tests and benchmarks use. Each entry becomes a member
 * of `cu` with the driver's prototype; where cuda.h renames a function to a
 * versioned symbol (cuMemAlloc -> cuMemAlloc_v2), the member takes the versioned
 * name too, and the driver is asked for the base name at CUDA_LOADER_VERSION
 * (12000), which answers that same version. */
#define CU_UTIL_FUNCS(X)          \
    X(cuInit)                     \
    X(cuDriverGetVersion)         \
    X(cuDeviceGet)                \
    X(cuDeviceGetCount)           \
    X(cuDeviceGetName)            \
    X(cuDeviceGetAttribute)       \
    X(cuDevicePrimaryCtxRetain)   \
    X(cuCtxSetCurrent)            \
    X(cuCtxGetCurrent)            \
    X(cuCtxSynchronize)           \
    X(cuGetErrorName)             \
    X(cuGetErrorString)           \
    X(cuMemAlloc)                 \
    X(cuMemFree)                  \
    X(cuMemAllocAsync)            \
    X(cuMemFreeAsync)             \
    X(cuMemcpyHtoD)               \
    X(cuMemcpyDtoH)               \
    X(cuMemsetD8)                 \
    X(cuMemsetD8Async)            \
    X(cuModuleLoadData)           \
    X(cuModuleGetFunction)        \
    X(cuLaunchKernel)             \
    X(cuStreamCreate)             \
    X(cuStreamDestroy)            \
    X(cuStreamSynchronize)        \
    X(cuStreamQuery)              \
    X(cuEventCreate)              \
    X(cuEventDestroy)             \
    X(cuEventRecord)              \
    X(cuEventQuery)               \
    X(cuEventSynchronize)         \
    X(cuEventElapsedTime)

typedef struct cu_util_fns {
#define CU_UTIL_MEMBER(name) __typeof__(name) *name;
    CU_UTIL_FUNCS(CU_UTIL_MEMBER)
#undef CU_UTIL_MEMBER
} cu_util_fns;

/* Filled by cu_util_init; all NULL before. */
extern cu_util_fns cu;

/* Loads the driver, resolves cu, makes device's primary context current on the
 * calling thread and loads the kernels. Returns 0; CU_UTIL_SKIP when there is no
 * driver or no such device (the reason printed to stderr); 1 on any other failure
 * (printed too). Later calls only make the context current again. */
int cu_util_init(int device);

/* Facts found by cu_util_init. */
CUcontext cu_util_context(void);
const char *cu_util_device_name(void);
int cu_util_sm_count(void);
/* SM clocks in one millisecond (from the device's nominal clock rate). */
long long cu_util_cycles_per_ms(void);

/* "CUDA_ERROR_INVALID_VALUE" for a result; never NULL. */
const char *cu_util_errname(CUresult r);

/* The value fill writes at element i for seed. */
static inline uint32_t cu_pattern(uint32_t seed, size_t i) { return seed ^ ((uint32_t)i * 2654435761u); }

/* Fills n 32-bit words at p with the pattern for seed; enqueued on stream s
 * (0: the legacy default stream), not waited for. */
CUresult cu_fill(CUdeviceptr p, size_t n, uint32_t seed, CUstream s);

/* Counts the words of [p, p+n) that differ from the pattern for seed. Runs on s,
 * waits for s, and returns the count, or UINT64_MAX when a driver call failed. */
uint64_t cu_check(CUdeviceptr p, size_t n, uint32_t seed, CUstream s);

/* Launches `blocks` blocks whose thread 0 first spins for `cycles` SM clocks;
 * then every block fills its share of [p, p+n) with the pattern for seed. Few
 * blocks leave the device room for other streams' work meanwhile. Not waited for. */
CUresult cu_spin_fill(CUdeviceptr p, size_t n, uint32_t seed, long long cycles, unsigned blocks, CUstream s);

/* The kernels' PTX source (for the build check and curious readers). */
extern const char cu_util_ptx[];

#endif /* GPUHEAP_TEST_CUDA_UTIL_H */
