// ipc_pair.cu — two processes sharing device memory through cudaIpc*, the way a
// plain CUDA program does it: the interposer's IPC proof on a program built the
// nvcc way (static CUDA runtime: only the driver entry points it resolves,
// cuIpcGetMemHandle & co, reach the interposer).
//
//   nvcc -O2 -arch=sm_90 -o ipc_pair ipc_pair.cu
//   ipc_pair [--max-bytes N] [--child-preload none|LIB]
//   ipc_pair                          # plain CUDA: legacy IPC of cudaMalloc memory
//   gpuheap-run --stats ipc_pair      # both processes under gpuheap
//
// --max-bytes leaves out the blocks larger than N (a run under a sanitizer).
// --child-preload sets the child's LD_PRELOAD (none: unset), to show what
// happens when only one of the two processes runs under gpuheap (README.md,
// Interposer, IPC): an exporter under gpuheap and an importer without it — the
// importer's driver refuses gpuheap's handles (invalid argument); the other way
// round, the interposer passes the driver's handles on and the pair works.
//
// The parent cudaMallocs blocks of 256 B, 4 KiB, 1 MiB, 3 MiB, 64 MiB and 1 GiB
// (under gpuheap the small ones share extents), fills each with a pattern of
// its own seed (a kernel), exports each with cudaIpcGetMemHandle and starts a
// child — itself again (fork + exec: a CUDA context does not survive a fork),
// which inherits gpuheap-run's environment — and hands it the handles through a
// pipe. The child opens each handle, checks the parent's pattern with a kernel
// (a wrong word is counted on the device), asks the driver for the range of an
// interior pointer (it must hold the block; for a gpuheap handle it is the
// block's base and at least its size), opens the first
// handle a second time (CUDA counts references and gives the same address),
// writes a pattern of its own, and closes everything. The parent then checks
// the child's pattern in its own blocks. One line per block and a verdict; exit
// status 0 only when every word matched and every call succeeded.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAIL(...)                                             \
    do {                                                      \
        std::fprintf(stderr, "ipc_pair[%s]: ", who);          \
        std::fprintf(stderr, __VA_ARGS__);                    \
        std::fprintf(stderr, "\n");                           \
        std::exit(2);                                         \
    } while (0)
#define CHECK(call)                                                                             \
    do {                                                                                        \
        cudaError_t e_ = (call);                                                                \
        if (e_ != cudaSuccess) FAIL("%s: %s (line %d)", #call, cudaGetErrorString(e_), __LINE__); \
    } while (0)

static const char *who = "parent";
static const size_t sizes[] = {256, 4096, 1 << 20, 3 << 20, 64 << 20, (size_t)1 << 30};
enum { NBLOCKS = sizeof sizes / sizeof sizes[0] };

struct message { // parent -> child, one per block, through the pipe
    unsigned long long size;
    unsigned seed;
    cudaIpcMemHandle_t handle;
};

__device__ __host__ static unsigned pattern(unsigned seed, size_t i) { return seed * 2654435761u ^ (unsigned)(i * 40503u); }

__global__ void fill(unsigned *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = pattern(seed, i);
}

__global__ void verify(const unsigned *p, size_t n, unsigned seed, unsigned long long *bad) {
    unsigned long long wrong = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        wrong += p[i] != pattern(seed, i);
    if (wrong) atomicAdd(bad, wrong);
}

// Wrong words in [p, p + bytes) against seed's pattern (counter: device scratch).
static unsigned long long bad_words(const void *p, size_t bytes, unsigned seed, unsigned long long *counter) {
    CHECK(cudaMemset(counter, 0, sizeof *counter));
    verify<<<256, 256>>>((const unsigned *)p, bytes / sizeof(unsigned), seed, counter);
    CHECK(cudaGetLastError());
    unsigned long long bad = 0;
    CHECK(cudaMemcpy(&bad, counter, sizeof bad, cudaMemcpyDeviceToHost));
    return bad;
}

static void fill_now(void *p, size_t bytes, unsigned seed) {
    fill<<<256, 256>>>((unsigned *)p, bytes / sizeof(unsigned), seed);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
}

static const char *human(size_t n, char *buf) {
    if (n >= (1u << 30)) std::snprintf(buf, 32, "%zu GiB", n >> 30);
    else if (n >= (1u << 20)) std::snprintf(buf, 32, "%zu MiB", n >> 20);
    else if (n >= 1024) std::snprintf(buf, 32, "%zu KiB", n >> 10);
    else std::snprintf(buf, 32, "%zu B", n);
    return buf;
}

static unsigned child_seed(unsigned seed) { return seed ^ 0x5eed0000u; }

// The child: reads nblocks messages from fd, checks, rewrites, closes. 0 if all held.
static int run_child(int fd, int nblocks) {
    who = "child";
    CHECK(cudaSetDevice(0));
    typedef CUresult (*range_fn)(CUdeviceptr *, size_t *, CUdeviceptr);
    range_fn range = nullptr;
    cudaDriverEntryPointQueryResult q;
    CHECK(cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", (void **)&range, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess) FAIL("cuMemGetAddressRange not found");
    unsigned long long *counter;
    CHECK(cudaMalloc(&counter, sizeof *counter));
    int failures = 0;
    if (nblocks < 1 || nblocks > NBLOCKS) FAIL("%d blocks announced, not 1..%d", nblocks, (int)NBLOCKS);
    for (int b = 0; b < nblocks; b++) {
        message m;
        size_t got = 0;
        while (got < sizeof m) {
            ssize_t r = read(fd, (char *)&m + got, sizeof m - got);
            if (r <= 0) FAIL("the pipe closed after %d blocks (%s)", b, r ? std::strerror(errno) : "end of file");
            got += (size_t)r;
        }
        char h[32];
        void *p = nullptr;
        cudaError_t e = cudaIpcOpenMemHandle(&p, m.handle, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            std::printf("ipc_pair: %-7s child: cudaIpcOpenMemHandle failed: %s\n", human(m.size, h), cudaGetErrorString(e));
            failures++;
            continue;
        }
        unsigned long long bad = bad_words(p, m.size, m.seed, counter);
        CUdeviceptr base = 0;
        size_t len = 0;
        CUresult rr = range(&base, &len, (CUdeviceptr)p + m.size / 2);
        // The range holds the block; for a gpuheap handle (its first bytes are
        // "GHIP") it is the exported block itself, as the interposer answers it;
        // from the driver, the allocation it mapped.
        bool gpuheap_handle = !std::memcmp(m.handle.reserved, "GHIP", 4);
        bool range_ok = rr == CUDA_SUCCESS && base <= (CUdeviceptr)p && (CUdeviceptr)p + m.size <= base + len;
        if (gpuheap_handle) range_ok = range_ok && base == (CUdeviceptr)p && len >= m.size;
        // A second open of the same handle: CUDA counts it and gives the same address.
        void *again = nullptr;
        bool reopen_ok = true, same_address = true;
        if (b == 0) {
            e = cudaIpcOpenMemHandle(&again, m.handle, cudaIpcMemLazyEnablePeerAccess);
            reopen_ok = e == cudaSuccess && bad_words(again, m.size, m.seed, counter) == 0;
            same_address = again == p;
            if (e == cudaSuccess) CHECK(cudaIpcCloseMemHandle(again));
        }
        fill_now(p, m.size, child_seed(m.seed));
        e = cudaIpcCloseMemHandle(p);
        std::printf("ipc_pair: %-7s child: opened at %p, %llu bad words, range %s (base %#llx, %zu bytes)%s, "
                    "close %s\n",
                    human(m.size, h), p, bad, range_ok ? "ok" : "WRONG", (unsigned long long)base, len,
                    b ? "" : (!reopen_ok ? ", second open FAILED" : same_address ? ", second open: same address"
                                                                                 : ", second open: another address (CUDA gives the same)"),
                    cudaGetErrorString(e));
        failures += bad != 0 || !range_ok || !reopen_ok || e != cudaSuccess;
    }
    CHECK(cudaFree(counter));
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !std::strcmp(argv[1], "--child")) return run_child(std::atoi(argv[2]), std::atoi(argv[3]));
    size_t max_bytes = (size_t)-1;
    const char *child_preload = nullptr;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "--max-bytes") && i + 1 < argc) max_bytes = std::strtoull(argv[++i], nullptr, 0);
        else if (!std::strcmp(argv[i], "--child-preload") && i + 1 < argc) child_preload = argv[++i];
        else {
            std::fprintf(stderr, "usage: %s [--max-bytes N] [--child-preload none|LIB]\n", argv[0]);
            return 2;
        }
    }
    int nblocks = 0;
    while (nblocks < NBLOCKS && sizes[nblocks] <= max_bytes) nblocks++;
    if (!nblocks) FAIL("--max-bytes leaves no block");
    CHECK(cudaSetDevice(0));
    void *blocks[NBLOCKS];
    message msgs[NBLOCKS];
    unsigned long long *counter;
    CHECK(cudaMalloc(&counter, sizeof *counter));
    for (int b = 0; b < nblocks; b++) {
        CHECK(cudaMalloc(&blocks[b], sizes[b]));
        msgs[b].size = sizes[b];
        msgs[b].seed = 1000u + (unsigned)b * 77u;
        fill_now(blocks[b], sizes[b], msgs[b].seed);
        CHECK(cudaIpcGetMemHandle(&msgs[b].handle, blocks[b]));
    }
    int fds[2];
    if (pipe(fds) != 0) FAIL("pipe: %s", std::strerror(errno));
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) FAIL("fork: %s", std::strerror(errno));
    if (pid == 0) { // a fresh process image: nothing of the parent's CUDA state survives
        close(fds[1]);
        char fd[16], n[16];
        std::snprintf(fd, sizeof fd, "%d", fds[0]);
        std::snprintf(n, sizeof n, "%d", nblocks);
        if (child_preload && !std::strcmp(child_preload, "none")) unsetenv("LD_PRELOAD");
        else if (child_preload) setenv("LD_PRELOAD", child_preload, 1);
        execl("/proc/self/exe", argv[0], "--child", fd, n, (char *)nullptr);
        std::fprintf(stderr, "ipc_pair[child]: exec: %s\n", std::strerror(errno));
        _exit(127);
    }
    close(fds[0]);
    for (int b = 0; b < nblocks; b++)
        if (write(fds[1], &msgs[b], sizeof msgs[b]) != (ssize_t)sizeof msgs[b]) FAIL("write to the child: %s", std::strerror(errno));
    close(fds[1]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) FAIL("waitpid: %s", std::strerror(errno));
    bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!child_ok)
        std::printf("ipc_pair: the child %s %d\n", WIFEXITED(status) ? "exited with" : "was killed by signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    int failures = 0;
    size_t total = 0;
    for (int b = 0; b < nblocks; b++) {
        char h[32];
        unsigned long long bad = bad_words(blocks[b], sizes[b], child_seed(msgs[b].seed), counter);
        std::printf("ipc_pair: %-7s parent: %llu words differ from the child's pattern\n", human(sizes[b], h), bad);
        failures += bad != 0;
        total += sizes[b];
        CHECK(cudaFree(blocks[b]));
    }
    CHECK(cudaFree(counter));
    bool ok = child_ok && failures == 0;
    std::printf("ipc_pair: %s (%d blocks, %zu bytes shared both ways)\n", ok ? "OK" : "FAILED", nblocks, total);
    return ok ? 0 : 1;
}
