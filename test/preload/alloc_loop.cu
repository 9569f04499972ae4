// alloc_loop.cu — a plain CUDA program for the interposer's proof on a program
// built the nvcc way (the CUDA runtime linked statically: no cudaMalloc symbol
// for LD_PRELOAD to catch, only the driver entry points the runtime resolves).
//
//   nvcc -O2 -arch=sm_90 -o alloc_loop alloc_loop.cu
//   alloc_loop [ITERATIONS]                          # plain
//   gpuheap-run --stats alloc_loop [ITERATIONS]       # under gpuheap
//
// It keeps a ring of 16 live buffers of mixed sizes (100 B to 17 MiB). Every
// iteration checks and frees the oldest buffer with kernels (a wrong word is
// counted on the device), allocates a new one with cudaMalloc and fills it with
// a pattern of its own seed, so reuse of freed memory while a kernel still
// reads it, or an overlap of two live blocks, shows up as bad words. It also
// checks what a program may ask of its memory: cudaPointerGetAttributes says
// device memory, and the driver's range queries (found through
// cudaGetDriverEntryPointByVersion, as a library would) give the bounds of the
// allocation for an interior pointer. It prints a checksum of all patterns read
// (the same with and without the interposer), the time per
// cudaMalloc+cudaFree pair, and exits non-zero on any error.
#include <cuda.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            std::fprintf(stderr, "alloc_loop: %s: %s (line %d)\n", #call, cudaGetErrorString(e_), __LINE__); \
            std::exit(2);                                                                \
        }                                                                                \
    } while (0)

__device__ __host__ static unsigned pattern(unsigned seed, size_t i) { return seed * 2654435761u ^ (unsigned)(i * 40503u); }

__global__ void fill(unsigned *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = pattern(seed, i);
}

__global__ void verify(const unsigned *p, size_t n, unsigned seed, unsigned long long *bad, unsigned long long *sum) {
    unsigned long long local = 0, wrong = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned v = p[i];
        wrong += v != pattern(seed, i);
        local += v;
    }
    if (wrong) atomicAdd(bad, wrong);
    atomicAdd(sum, local);
}

typedef CUresult (*address_range_fn)(CUdeviceptr *, size_t *, CUdeviceptr);
typedef CUresult (*pointer_attribute_fn)(void *, CUpointer_attribute, CUdeviceptr);

int main(int argc, char **argv) {
    const long iterations = argc > 1 ? std::atol(argv[1]) : 2000;
    static const size_t sizes[] = {100, 1000, 4096, 65536, 1 << 20, 3 << 20, 17 << 20, 300000, 256, 2 << 20};
    const int nsizes = sizeof sizes / sizeof sizes[0];
    enum { RING = 16 };

    CHECK(cudaSetDevice(0));
    unsigned long long *counters; // [0] bad words, [1] checksum
    CHECK(cudaMalloc(&counters, 2 * sizeof *counters));
    CHECK(cudaMemset(counters, 0, 2 * sizeof *counters));

    address_range_fn range = nullptr;
    pointer_attribute_fn attribute = nullptr;
    cudaDriverEntryPointQueryResult q1, q2;
    CHECK(cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", (void **)&range, 12000, cudaEnableDefault, &q1));
    CHECK(cudaGetDriverEntryPointByVersion("cuPointerGetAttribute", (void **)&attribute, 12000, cudaEnableDefault, &q2));
    if (q1 != cudaDriverEntryPointSuccess || q2 != cudaDriverEntryPointSuccess) {
        std::fprintf(stderr, "alloc_loop: driver entry points not found\n");
        return 2;
    }

    size_t free0, total;
    CHECK(cudaMemGetInfo(&free0, &total));

    unsigned *ring[RING] = {};
    size_t words[RING] = {};
    unsigned seeds[RING] = {};
    long range_errors = 0;
    double pair_seconds = 0;
    for (long it = 0; it < iterations + RING; it++) {
        int slot = (int)(it % RING);
        if (ring[slot]) {
            verify<<<64, 256>>>(ring[slot], words[slot], seeds[slot], &counters[0], &counters[1]);
            CHECK(cudaGetLastError());
            auto t0 = std::chrono::steady_clock::now();
            CHECK(cudaFree(ring[slot])); // a kernel may still read it: reuse must wait
            pair_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            ring[slot] = nullptr;
        }
        if (it >= iterations) continue;
        size_t bytes = sizes[(it * 7) % nsizes];
        words[slot] = bytes / sizeof(unsigned);
        seeds[slot] = (unsigned)it + 1;
        auto t0 = std::chrono::steady_clock::now();
        CHECK(cudaMalloc(&ring[slot], bytes));
        pair_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        fill<<<64, 256>>>(ring[slot], words[slot], seeds[slot]);
        CHECK(cudaGetLastError());

        if (it % 97 == 0) { // what a library may ask about the pointer
            cudaPointerAttributes a;
            CHECK(cudaPointerGetAttributes(&a, ring[slot]));
            CUdeviceptr inside = (CUdeviceptr)ring[slot] + bytes / 2, base = 0, start = 0;
            size_t len = 0, rsize = 0;
            bool ok = a.type == cudaMemoryTypeDevice && a.device == 0;
            ok = ok && range(&base, &len, inside) == CUDA_SUCCESS && base == (CUdeviceptr)ring[slot] && len >= bytes;
            ok = ok && attribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, inside) == CUDA_SUCCESS &&
                 start == (CUdeviceptr)ring[slot];
            ok = ok && attribute(&rsize, CU_POINTER_ATTRIBUTE_RANGE_SIZE, inside) == CUDA_SUCCESS && rsize == len;
            if (!ok) {
                range_errors++;
                std::fprintf(stderr, "alloc_loop: range of %p+%zu: base %#llx size %zu start %#llx rsize %zu type %d\n",
                             (void *)ring[slot], bytes / 2, (unsigned long long)base, len, (unsigned long long)start,
                             rsize, (int)a.type);
            }
        }
    }
    unsigned long long host[2];
    CHECK(cudaMemcpy(host, counters, sizeof host, cudaMemcpyDeviceToHost));
    size_t free1;
    CHECK(cudaMemGetInfo(&free1, &total));
    CHECK(cudaFree(counters));
    CHECK(cudaDeviceSynchronize());

    std::printf("alloc_loop: %ld iterations, checksum %llu, bad words %llu, range errors %ld, "
                "cudaMalloc+cudaFree %.2f us per pair, free memory %zu MiB before / %zu MiB after of %zu MiB\n",
                iterations, host[1], host[0], range_errors, 1e6 * pair_seconds / (double)iterations, free0 >> 20,
                free1 >> 20, total >> 20);
    bool ok = host[0] == 0 && range_errors == 0;
    std::printf("alloc_loop: %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
