/*
 * cuda_util.c — the CUDA driver for the GPU tests and the benchmarks, and the
 * test kernels as PTX.
 *
 * The driver is the library's own: cuda_loader (lib/backend_cuda.c) opens
 * libcuda.so.1 once per process, and each member of cu is looked up by its base
 * name through cuda_loader_proc, at the same ABI version and stream mode as the
 * library's table. That yields the version of each function matching the
 * prototypes cuda.h gives us, and the tests drive the very driver handle the heap
 * does.
 *
 * The kernels are written in PTX by hand so that the tests need no nvcc at build
 * time; the driver JIT-compiles them for the card at cu_util_init. They target
 * sm_52 with PTX ISA 7.0, which every driver from CUDA 11 on accepts and which
 * compiles for every later architecture (Hopper included).
 */
#include "cuda_util.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "backend/cuda/loader.h"
#include "gpuheap.h"

cu_util_fns cu;

/* Threads per block for every launch. */
#define CU_UTIL_BLOCK 256u

/* ---- the kernels ----------------------------------------------------------- */

/* All three walk [0, n) with a grid-stride loop, so any grid size covers any n.
 * The pattern is seed ^ (i * 2654435761) on 32 bits (cu_pattern in the header). */
const char cu_util_ptx[] =
    ".version 7.0\n"
    ".target sm_52\n"
    ".address_size 64\n"
    "\n"
    "// fill: p[i] = seed ^ (i * 2654435761) for i in [0, n)\n"
    ".visible .entry gh_fill_u32(\n"
    "    .param .u64 gh_fill_u32_p,\n"
    "    .param .u64 gh_fill_u32_n,\n"
    "    .param .u32 gh_fill_u32_seed)\n"
    "{\n"
    "    .reg .pred  %p<2>;\n"
    "    .reg .b32   %r<8>;\n"
    "    .reg .b64   %rd<8>;\n"
    "    ld.param.u64        %rd1, [gh_fill_u32_p];\n"
    "    ld.param.u64        %rd2, [gh_fill_u32_n];\n"
    "    ld.param.u32        %r1, [gh_fill_u32_seed];\n"
    "    cvta.to.global.u64  %rd1, %rd1;\n"
    "    mov.u32             %r2, %ctaid.x;\n"
    "    mov.u32             %r3, %ntid.x;\n"
    "    mov.u32             %r4, %tid.x;\n"
    "    mov.u32             %r5, %nctaid.x;\n"
    "    cvt.u64.u32         %rd3, %r4;\n"
    "    mad.wide.u32        %rd3, %r2, %r3, %rd3;\n" /* i = ctaid * ntid + tid */
    "    mul.wide.u32        %rd4, %r5, %r3;\n"       /* stride = nctaid * ntid */
    "FILL_LOOP:\n"
    "    setp.ge.u64         %p1, %rd3, %rd2;\n"
    "    @%p1 bra.uni        FILL_DONE;\n"
    "    cvt.u32.u64         %r6, %rd3;\n"
    "    mul.lo.u32          %r6, %r6, -1640531535;\n" /* 2654435761 as a 32-bit word */
    "    xor.b32             %r6, %r6, %r1;\n"
    "    shl.b64             %rd5, %rd3, 2;\n"
    "    add.s64             %rd5, %rd1, %rd5;\n"
    "    st.global.u32       [%rd5], %r6;\n"
    "    add.s64             %rd3, %rd3, %rd4;\n"
    "    bra.uni             FILL_LOOP;\n"
    "FILL_DONE:\n"
    "    ret;\n"
    "}\n"
    "\n"
    "// check: *bad += number of i in [0, n) with p[i] != seed ^ (i * 2654435761)\n"
    ".visible .entry gh_check_u32(\n"
    "    .param .u64 gh_check_u32_p,\n"
    "    .param .u64 gh_check_u32_n,\n"
    "    .param .u32 gh_check_u32_seed,\n"
    "    .param .u64 gh_check_u32_bad)\n"
    "{\n"
    "    .reg .pred  %p<3>;\n"
    "    .reg .b32   %r<8>;\n"
    "    .reg .b64   %rd<10>;\n"
    "    ld.param.u64        %rd1, [gh_check_u32_p];\n"
    "    ld.param.u64        %rd2, [gh_check_u32_n];\n"
    "    ld.param.u32        %r1, [gh_check_u32_seed];\n"
    "    ld.param.u64        %rd6, [gh_check_u32_bad];\n"
    "    cvta.to.global.u64  %rd1, %rd1;\n"
    "    cvta.to.global.u64  %rd6, %rd6;\n"
    "    mov.u32             %r2, %ctaid.x;\n"
    "    mov.u32             %r3, %ntid.x;\n"
    "    mov.u32             %r4, %tid.x;\n"
    "    mov.u32             %r5, %nctaid.x;\n"
    "    cvt.u64.u32         %rd3, %r4;\n"
    "    mad.wide.u32        %rd3, %r2, %r3, %rd3;\n"
    "    mul.wide.u32        %rd4, %r5, %r3;\n"
    "    mov.u64             %rd7, 0;\n" /* this thread's mismatches */
    "CHECK_LOOP:\n"
    "    setp.ge.u64         %p1, %rd3, %rd2;\n"
    "    @%p1 bra.uni        CHECK_DONE;\n"
    "    cvt.u32.u64         %r6, %rd3;\n"
    "    mul.lo.u32          %r6, %r6, -1640531535;\n"
    "    xor.b32             %r6, %r6, %r1;\n"
    "    shl.b64             %rd5, %rd3, 2;\n"
    "    add.s64             %rd5, %rd1, %rd5;\n"
    "    ld.global.u32       %r7, [%rd5];\n"
    "    setp.ne.u32         %p2, %r7, %r6;\n"
    "    selp.u64            %rd8, 1, 0, %p2;\n"
    "    add.s64             %rd7, %rd7, %rd8;\n"
    "    add.s64             %rd3, %rd3, %rd4;\n"
    "    bra.uni             CHECK_LOOP;\n"
    "CHECK_DONE:\n"
    "    setp.eq.u64         %p1, %rd7, 0;\n"
    "    @%p1 bra.uni        CHECK_RET;\n"
    "    red.global.add.u64  [%rd6], %rd7;\n"
    "CHECK_RET:\n"
    "    ret;\n"
    "}\n"
    "\n"
    "// spin_fill: thread 0 of each block spins `cycles` SM clocks, then the block\n"
    "// joins the fill of [0, n) with the pattern for seed.\n"
    ".visible .entry gh_spin_fill_u32(\n"
    "    .param .u64 gh_spin_fill_u32_p,\n"
    "    .param .u64 gh_spin_fill_u32_n,\n"
    "    .param .u32 gh_spin_fill_u32_seed,\n"
    "    .param .s64 gh_spin_fill_u32_cycles)\n"
    "{\n"
    "    .reg .pred  %p<3>;\n"
    "    .reg .b32   %r<8>;\n"
    "    .reg .b64   %rd<12>;\n"
    "    ld.param.u64        %rd1, [gh_spin_fill_u32_p];\n"
    "    ld.param.u64        %rd2, [gh_spin_fill_u32_n];\n"
    "    ld.param.u32        %r1, [gh_spin_fill_u32_seed];\n"
    "    ld.param.s64        %rd9, [gh_spin_fill_u32_cycles];\n"
    "    cvta.to.global.u64  %rd1, %rd1;\n"
    "    mov.u32             %r4, %tid.x;\n"
    "    setp.ne.u32         %p1, %r4, 0;\n"
    "    @%p1 bra            SPIN_JOIN;\n"
    "    mov.u64             %rd10, %clock64;\n"
    "SPIN_LOOP:\n"
    "    mov.u64             %rd11, %clock64;\n"
    "    sub.s64             %rd11, %rd11, %rd10;\n"
    "    setp.lt.s64         %p2, %rd11, %rd9;\n"
    "    @%p2 bra            SPIN_LOOP;\n"
    "SPIN_JOIN:\n"
    "    bar.sync            0;\n"
    "    mov.u32             %r2, %ctaid.x;\n"
    "    mov.u32             %r3, %ntid.x;\n"
    "    mov.u32             %r5, %nctaid.x;\n"
    "    cvt.u64.u32         %rd3, %r4;\n"
    "    mad.wide.u32        %rd3, %r2, %r3, %rd3;\n"
    "    mul.wide.u32        %rd4, %r5, %r3;\n"
    "SPIN_FILL_LOOP:\n"
    "    setp.ge.u64         %p1, %rd3, %rd2;\n"
    "    @%p1 bra.uni        SPIN_FILL_DONE;\n"
    "    cvt.u32.u64         %r6, %rd3;\n"
    "    mul.lo.u32          %r6, %r6, -1640531535;\n"
    "    xor.b32             %r6, %r6, %r1;\n"
    "    shl.b64             %rd5, %rd3, 2;\n"
    "    add.s64             %rd5, %rd1, %rd5;\n"
    "    st.global.u32       [%rd5], %r6;\n"
    "    add.s64             %rd3, %rd3, %rd4;\n"
    "    bra.uni             SPIN_FILL_LOOP;\n"
    "SPIN_FILL_DONE:\n"
    "    ret;\n"
    "}\n";

/* ---- state ----------------------------------------------------------------- */

static struct {
    bool ready;
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fill, check, spin_fill;
    CUdeviceptr bad;          /* the check kernel's mismatch counter */
    int sm_count;
    long long cycles_per_ms;
    char name[128];
} g;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

const char *cu_util_errname(CUresult r) {
    const char *s = NULL;
    if (cu.cuGetErrorName == NULL || cu.cuGetErrorName(r, &s) != CUDA_SUCCESS || s == NULL)
        return "CUDA_ERROR_(unknown)";
    return s;
}

CUcontext cu_util_context(void) { return g.ctx; }
const char *cu_util_device_name(void) { return g.name; }
int cu_util_sm_count(void) { return g.sm_count; }
long long cu_util_cycles_per_ms(void) { return g.cycles_per_ms; }

/* ---- loading the driver ---------------------------------------------------- */

/* Fills cu from the library's loader. CU_UTIL_SKIP when the driver is absent or
 * lacks an entry point. */
static int load_driver(void) {
    if (cuda_loader_get(NULL) != GPU_OK) {
        fprintf(stderr, "cuda_util: no CUDA driver: %s\n", cuda_loader_error());
        return CU_UTIL_SKIP;
    }
    /* #name is the base name even where cuda.h renames the member (cuMemAlloc is
     * the member cuMemAlloc_v2): the lookup at CUDA_LOADER_VERSION answers the
     * version that name stands for. */
#define CU_UTIL_RESOLVE(name)                                                           \
    cu.name = (__typeof__(cu.name))cuda_loader_proc(#name);                             \
    if (cu.name == NULL) {                                                              \
        fprintf(stderr, "cuda_util: the CUDA driver lacks %s; it is too old\n", #name); \
        memset(&cu, 0, sizeof cu);                                                      \
        return CU_UTIL_SKIP;                                                            \
    }
    CU_UTIL_FUNCS(CU_UTIL_RESOLVE)
#undef CU_UTIL_RESOLVE
    return 0;
}

/* Prints a failed driver call and returns 1 (a test failure, not a skip). */
static int fail(const char *what, CUresult r) {
    fprintf(stderr, "cuda_util: %s failed: %s\n", what, cu_util_errname(r));
    return 1;
}

static int init_locked(int device) {
    int rc = load_driver();
    if (rc != 0) return rc;

    CUresult r = cu.cuInit(0);
    if (r != CUDA_SUCCESS) {
        /* No device, no kernel module, a driver older than the toolkit: all mean
         * "this machine cannot run GPU tests", not "the tests failed". */
        const char *desc = NULL;
        cu.cuGetErrorString(r, &desc);
        fprintf(stderr, "cuda_util: no usable GPU: cuInit: %s (%s)\n", cu_util_errname(r), desc ? desc : "");
        return CU_UTIL_SKIP;
    }
    int count = 0;
    r = cu.cuDeviceGetCount(&count);
    if (r != CUDA_SUCCESS) return fail("cuDeviceGetCount", r);
    if (device < 0 || device >= count) {
        fprintf(stderr, "cuda_util: no GPU %d: the driver reports %d device(s)\n", device, count);
        return CU_UTIL_SKIP;
    }
    if ((r = cu.cuDeviceGet(&g.dev, device)) != CUDA_SUCCESS) return fail("cuDeviceGet", r);
    if ((r = cu.cuDeviceGetName(g.name, (int)sizeof g.name, g.dev)) != CUDA_SUCCESS)
        snprintf(g.name, sizeof g.name, "CUDA device %d", device);
    if ((r = cu.cuDevicePrimaryCtxRetain(&g.ctx, g.dev)) != CUDA_SUCCESS) return fail("cuDevicePrimaryCtxRetain", r);
    if ((r = cu.cuCtxSetCurrent(g.ctx)) != CUDA_SUCCESS) return fail("cuCtxSetCurrent", r);

    if (cu.cuDeviceGetAttribute(&g.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, g.dev) != CUDA_SUCCESS ||
        g.sm_count <= 0)
        g.sm_count = 16;
    int khz = 0;
    if (cu.cuDeviceGetAttribute(&khz, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, g.dev) != CUDA_SUCCESS || khz <= 0)
        khz = 2000000; /* a guess that errs long: 2 GHz */
    g.cycles_per_ms = khz;

    if ((r = cu.cuModuleLoadData(&g.mod, cu_util_ptx)) != CUDA_SUCCESS) return fail("cuModuleLoadData (PTX JIT)", r);
    if ((r = cu.cuModuleGetFunction(&g.fill, g.mod, "gh_fill_u32")) != CUDA_SUCCESS) return fail("cuModuleGetFunction fill", r);
    if ((r = cu.cuModuleGetFunction(&g.check, g.mod, "gh_check_u32")) != CUDA_SUCCESS) return fail("cuModuleGetFunction check", r);
    if ((r = cu.cuModuleGetFunction(&g.spin_fill, g.mod, "gh_spin_fill_u32")) != CUDA_SUCCESS)
        return fail("cuModuleGetFunction spin_fill", r);
    if ((r = cu.cuMemAlloc(&g.bad, sizeof(unsigned long long))) != CUDA_SUCCESS) return fail("cuMemAlloc (counter)", r);
    g.ready = true;
    return 0;
}

int cu_util_init(int device) {
    pthread_mutex_lock(&g_lock);
    int rc;
    if (g.ready) {
        CUresult r = cu.cuCtxSetCurrent(g.ctx);
        rc = r == CUDA_SUCCESS ? 0 : fail("cuCtxSetCurrent", r);
    } else {
        rc = init_locked(device);
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* ---- kernel wrappers --------------------------------------------------------- */

/* Blocks for a grid-stride pass over n words: enough to fill the device, at
 * least one. */
static unsigned grid_for(size_t n) {
    size_t want = (n + CU_UTIL_BLOCK - 1) / CU_UTIL_BLOCK;
    size_t cap = (size_t)g.sm_count * 16;
    if (want > cap) want = cap;
    return want ? (unsigned)want : 1u;
}

CUresult cu_fill(CUdeviceptr p, size_t n, uint32_t seed, CUstream s) {
    if (!g.ready) return CUDA_ERROR_NOT_INITIALIZED;
    unsigned long long pp = p, nn = n;
    unsigned int sd = seed;
    void *args[] = {&pp, &nn, &sd};
    return cu.cuLaunchKernel(g.fill, grid_for(n), 1, 1, CU_UTIL_BLOCK, 1, 1, 0, s, args, NULL);
}

uint64_t cu_check(CUdeviceptr p, size_t n, uint32_t seed, CUstream s) {
    if (!g.ready) return UINT64_MAX;
    CUresult r;
    unsigned long long count = 0;
    /* The counter is reset and read on s itself, so the result belongs to this
     * launch whatever stream s is. */
    if ((r = cu.cuMemsetD8Async(g.bad, 0, sizeof count, s)) != CUDA_SUCCESS) goto failed;
    unsigned long long pp = p, nn = n, bb = g.bad;
    unsigned int sd = seed;
    void *args[] = {&pp, &nn, &sd, &bb};
    if ((r = cu.cuLaunchKernel(g.check, grid_for(n), 1, 1, CU_UTIL_BLOCK, 1, 1, 0, s, args, NULL)) != CUDA_SUCCESS)
        goto failed;
    if ((r = cu.cuStreamSynchronize(s)) != CUDA_SUCCESS) goto failed;
    if ((r = cu.cuMemcpyDtoH(&count, g.bad, sizeof count)) != CUDA_SUCCESS) goto failed;
    return count;
failed:
    fprintf(stderr, "cuda_util: cu_check: %s\n", cu_util_errname(r));
    return UINT64_MAX;
}

CUresult cu_spin_fill(CUdeviceptr p, size_t n, uint32_t seed, long long cycles, unsigned blocks, CUstream s) {
    if (!g.ready) return CUDA_ERROR_NOT_INITIALIZED;
    unsigned long long pp = p, nn = n;
    unsigned int sd = seed;
    long long cy = cycles;
    void *args[] = {&pp, &nn, &sd, &cy};
    return cu.cuLaunchKernel(g.spin_fill, blocks ? blocks : 1u, 1, 1, CU_UTIL_BLOCK, 1, 1, 0, s, args, NULL);
}
