#!/usr/bin/env python3
"""torch_bench.py — PyTorch's caching allocator beside gpuheap, for bench/RESULTS.md.

PyTorch users compare gpuheap with the allocator they already have, so this
measures it the way gpuheap-bench measures cudaMalloc and cudaMallocAsync:

  pairs   warm raw_alloc + raw_delete, 256 B .. 4 GiB, timed in C++ (a small shared
          object built here with g++ against torch's headers and called through
          ctypes) in batches of 32 pairs; if g++ or the headers are missing it
          falls back to torch.cuda.caching_allocator_alloc/delete timed from
          Python, and says so in the JSON ("timed_in": "python").
  side    the same pairs and gpuheap's plain gpu_malloc + gpu_free (from the
          --plugin library's gpuheap) in one process, a batch of each in turn:
          both meet the machine as it is from one moment to the next, where the
          lent machines' speed moves by 2x within a minute (C++ shim only).
  random  RMM's random_allocations workload, the same generator as gpuheap-bench
          (same seed, same sizes), in C++: time per call and peak reserved bytes.
  train   a transformer encoder's training step (6 layers, d 512, batch 32x256):
          median step time and peak memory, with PyTorch's allocator (default,
          expandable_segments) and with gpuheap installed as a
          CUDAPluggableAllocator (bench/torch_gpuheap.c); one more gpuheap run
          records its allocation pattern with GPUHEAP_TRACE (the real trace of
          bench/traces/).

Each allocator runs in its own process (PyTorch's allocator settings are fixed at
start-up). The parent writes one JSON file.

    python3 bench/torch_bench.py --out DIR --plugin build/bench/libtorch_gpuheap.so
                                 [--trace FILE] [--quick]
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

SIZES = [256, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30, 4 << 30]
RANDOM = [(1, 10000), (64, 10000), (1024, 1000)]  # (max MiB, ops)

CPP = r"""
#include <c10/cuda/CUDACachingAllocator.h>
#include <chrono>
#include <cstdint>
#include <dlfcn.h>
#include <vector>

namespace A = c10::cuda::CUDACachingAllocator;
using clk = std::chrono::steady_clock;

static double ns_since(clk::time_point t0) {
    return std::chrono::duration<double, std::nano>(clk::now() - t0).count();
}

// Samples of `batch` warm pairs timed together, for each of the pair functions
// given, a batch of each in turn, until max_samples or budget_s (after 5);
// returns how many (or -1).
template <class... Pair>
static int sample(int max_samples, int batch, double budget_s, double **out, Pair... pair) {
    try {
        auto start = clk::now();
        int n = 0;
        while (n < max_samples) {
            int j = 0;
            auto one = [&](auto f) {
                auto t0 = clk::now();
                for (int k = 0; k < batch; k++) f();
                out[j++][n] = ns_since(t0) / batch;
            };
            (one(pair), ...);
            n++;
            if (n >= 5 && ns_since(start) > budget_s * 1e9) break;
        }
        return n;
    } catch (...) {
        return -1;
    }
}

static void torch_pair(size_t size) { A::raw_delete(A::raw_alloc(size)); }

extern "C" int tb_pairs(size_t size, int warm, int max_samples, int batch, double budget_s, double *out) {
    try {
        for (int i = 0; i < warm; i++) torch_pair(size);
    } catch (...) {
        return -1;
    }
    return sample(max_samples, batch, budget_s, &out, [&] { torch_pair(size); });
}

// The same pairs and gpuheap's plain ones (gpu_malloc and gpu_free, found through
// lib), a batch of each in turn; samples of each, how many (or -1).
extern "C" int tb_pairs_side(const char *lib, size_t size, int warm, int max_samples, int batch, double budget_s,
                             double *torch_out, double *heap_out) {
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    auto gm = h ? (void *(*)(size_t))dlsym(h, "gpu_malloc") : nullptr;
    auto gf = h ? (int (*)(void *))dlsym(h, "gpu_free") : nullptr;
    if (!gm || !gf) return -1;
    try {
        for (int i = 0; i < warm; i++) {
            torch_pair(size);
            void *p = gm(size);
            if (!p) return -1;
            gf(p);
        }
    } catch (...) {
        return -1;
    }
    double *out[] = {torch_out, heap_out};
    return sample(max_samples, batch, budget_s, out, [&] { torch_pair(size); }, [&] { gf(gm(size)); });
}

static uint64_t rng_next(uint64_t *s) {  // splitmix64, as gpuheap-bench
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// RMM's random_allocations, generated exactly as gpuheap-bench's random_trace.
extern "C" int tb_random(size_t max_size, size_t ops, uint64_t cap, uint64_t seed, double *seconds,
                         uint64_t *calls, uint64_t *peak_live) {
    try {
        std::vector<void *> live;
        std::vector<uint64_t> sizes;
        uint64_t live_bytes = 0, s = seed, n = 0, peak = 0;
        auto t0 = clk::now();
        for (size_t i = 0; i < ops; i++) {
            bool alloc = live.empty() || rng_next(&s) % 100 < 73;
            uint64_t size = 1 + rng_next(&s) % max_size;
            if (alloc && live_bytes + size > cap) alloc = false;
            if (alloc) {
                live.push_back(A::raw_alloc(size));
                sizes.push_back(size);
                live_bytes += size;
                if (live_bytes > peak) peak = live_bytes;
            } else {
                size_t k = rng_next(&s) % live.size();
                A::raw_delete(live[k]);
                live_bytes -= sizes[k];
                live[k] = live.back(), live.pop_back();
                sizes[k] = sizes.back(), sizes.pop_back();
            }
            n++;
        }
        for (void *p : live) A::raw_delete(p), n++;
        *seconds = ns_since(t0) * 1e-9;
        *calls = n;
        *peak_live = peak;
        return 0;
    } catch (...) {
        return -1;
    }
}
"""


def build_shim(out_dir):
    """Builds the C++ timing shim; returns its path or None (with the reason)."""
    import torch
    from torch.utils import cpp_extension
    src = os.path.join(out_dir, "torch_alloc_bench.cpp")
    so = os.path.join(out_dir, "torch_alloc_bench.so")
    with open(src, "w") as f:
        f.write(CPP)
    inc = cpp_extension.include_paths()
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    cuda_home = cpp_extension.CUDA_HOME or "/usr/local/cuda"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", src, "-o", so, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           *[f"-I{d}" for d in inc], f"-I{cuda_home}/include", f"-L{libdir}", "-lc10_cuda", "-lc10",
           f"-Wl,-rpath,{libdir}"]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"g++ failed to run: {e}"
    if r.returncode != 0:
        return None, "g++ failed: " + r.stderr[-800:]
    return so, f"built in {time.time() - t0:.1f} s"


def quantiles(v):
    v = sorted(v)
    n = len(v)
    if not n:
        return 0.0, 0.0
    med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    rank = min(n, max(1, int(n * 0.99 + 0.999999)))
    return med, v[rank - 1]


def child_pairs(shim, quick):
    import torch
    rows = []
    samples, budget = (300, 0.15) if quick else (2000, 0.4)
    if shim:
        lib = ctypes.CDLL(shim)
        lib.tb_pairs.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_double,
                                 ctypes.POINTER(ctypes.c_double)]
        buf = (ctypes.c_double * samples)()
        for s in SIZES:
            n = lib.tb_pairs(s, 200, samples, 32, budget, buf)
            med, p99 = quantiles(buf[:max(n, 0)])
            rows.append({"size": s, "median_ns": med, "p99_ns": p99, "samples": n, "batch": 32, "failed": n < 0})
        return rows, "c++"
    alloc, delete = torch.cuda.caching_allocator_alloc, torch.cuda.caching_allocator_delete
    for s in SIZES:
        for _ in range(200):
            delete(alloc(s))
        v, start = [], time.perf_counter_ns()
        while len(v) < samples:
            t0 = time.perf_counter_ns()
            for _ in range(32):
                delete(alloc(s))
            v.append((time.perf_counter_ns() - t0) / 32)
            if len(v) >= 5 and time.perf_counter_ns() - start > budget * 1e9:
                break
        med, p99 = quantiles(v)
        rows.append({"size": s, "median_ns": med, "p99_ns": p99, "samples": len(v), "batch": 32, "failed": False})
    return rows, "python"


def child_side(shim, plugin, quick):
    """The allocator's pairs and gpuheap's, a batch of each in turn in this process."""
    if not shim or not plugin or not os.path.exists(plugin):
        return []
    lib = ctypes.CDLL(shim)
    lib.tb_pairs_side.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_double, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]
    samples, budget = (300, 0.3) if quick else (2000, 0.8)
    a, b = (ctypes.c_double * samples)(), (ctypes.c_double * samples)()
    rows = []
    for s in SIZES:
        n = lib.tb_pairs_side(plugin.encode(), s, 200, samples, 32, budget, a, b)
        t, g = quantiles(a[:max(n, 0)]), quantiles(b[:max(n, 0)])
        rows.append({"size": s, "samples": n, "batch": 32, "failed": n < 0, "torch_median_ns": t[0],
                     "torch_p99_ns": t[1], "gpuheap_median_ns": g[0], "gpuheap_p99_ns": g[1],
                     "torch_over_gpuheap": t[0] / g[0] if n > 0 and g[0] else None})
    return rows


def child_random(shim):
    import torch
    if not shim:
        return []
    lib = ctypes.CDLL(shim)
    lib.tb_random.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_uint64,
                              ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_uint64),
                              ctypes.POINTER(ctypes.c_uint64)]
    rows = []
    for i, (mib, ops) in enumerate(RANDOM):
        # gpuheap-bench's seed for this (max, ops): 1234 + i*10 + j over its own tables.
        bench_i = [1, 4, 64, 256, 1024, 4096].index(mib)
        bench_j = [1000, 10000, 100000].index(ops)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        sec, calls, peak_live = ctypes.c_double(), ctypes.c_uint64(), ctypes.c_uint64()
        rc = lib.tb_random(mib << 20, ops, 16 << 30, 1234 + bench_i * 10 + bench_j, ctypes.byref(sec),
                           ctypes.byref(calls), ctypes.byref(peak_live))
        rows.append({"max_size": mib << 20, "ops": ops, "failed": rc != 0, "seconds": sec.value, "calls": calls.value,
                     "us_per_call": sec.value * 1e6 / max(calls.value, 1), "peak_live": peak_live.value,
                     "peak_reserved": torch.cuda.max_memory_reserved()})
    torch.cuda.empty_cache()
    return rows


def child_train(quick, plugin):
    import torch
    if not plugin:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=2048, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=6).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(32, 256, 512, device="cuda")
    warm, steps = (2, 5) if quick else (3, 15)
    times = []
    for i in range(warm + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= warm:
            times.append(time.perf_counter() - t0)
    res = {"steps": steps, "step_ms_median": quantiles(times)[0] * 1e3, "step_ms": [t * 1e3 for t in times],
           "loss": float(loss)}
    if plugin:
        lib = ctypes.CDLL(plugin)
        buf = ctypes.create_string_buffer(4096)
        lib.gpu_heap_stats_json.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        if lib.gpu_heap_stats_json(None, buf, 4096) > 0:
            st = json.loads(buf.value.decode())
            res["peak_physical"] = st["peak_mapped_bytes"]
            res["peak_live"] = st["peak_live_bytes"]
            res["gpuheap_stats"] = st
    else:
        res["peak_physical"] = torch.cuda.max_memory_reserved()
        res["peak_live"] = torch.cuda.max_memory_allocated()
    return res


def child(mode, args):
    import torch
    plugin = None
    if mode.startswith("gpuheap"):  # before anything touches CUDA's allocator
        plugin = os.path.abspath(args.plugin)
        alloc = torch.cuda.memory.CUDAPluggableAllocator(plugin, "gpuheap_torch_alloc", "gpuheap_torch_free")
        torch.cuda.memory.change_current_allocator(alloc)
    torch.cuda.init()
    out = {"mode": mode, "torch": torch.__version__, "device": torch.cuda.get_device_name(0),
           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    if not plugin:
        out["pairs"], out["timed_in"] = child_pairs(args.shim, args.quick)
        out["side"] = child_side(args.shim, os.path.abspath(args.plugin), args.quick)
        out["random"] = child_random(args.shim)
    out["train"] = child_train(args.quick, plugin)
    with open(args.result, "w") as f:
        json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--plugin", default="build/bench/libtorch_gpuheap.so")
    ap.add_argument("--trace", help="where the gpuheap run's trace goes")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--shim")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    os.makedirs(args.out, exist_ok=True)
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("torch_bench: no torch here")
    shim, why = build_shim(args.out)
    print(f"torch_bench: C++ timing shim: {why}", flush=True)
    modes = [("caching", {}), ("expandable", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
             ("gpuheap", {})]
    if args.trace:
        modes.append(("gpuheap-trace", {"GPUHEAP_TRACE": os.path.abspath(args.trace)}))
    results = {"shim": why}
    for mode, env in modes:
        res = os.path.join(args.out, f"torch-{mode}.json")
        cmd = [sys.executable, __file__, "--child", mode, "--out", args.out, "--plugin", args.plugin, "--result", res]
        if shim:
            cmd += ["--shim", shim]
        if args.quick:
            cmd.append("--quick")
        t0 = time.time()
        r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        print(f"torch_bench: {mode}: exit {r.returncode} in {time.time() - t0:.1f} s", flush=True)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-3000:], flush=True)
            results[mode] = {"failed": True, "stderr": r.stderr[-3000:]}
            continue
        with open(res) as f:
            results[mode] = json.load(f)
    path = os.path.join(args.out, "torch.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    for mode, _ in modes:
        r = results.get(mode, {})
        if "train" in r:
            t = r["train"]
            print(f"  {mode:14s} step {t['step_ms_median']:.2f} ms, peak physical {t.get('peak_physical', 0) / 2**20:.0f} MiB,"
                  f" peak live {t.get('peak_live', 0) / 2**20:.0f} MiB")
        for p in r.get("pairs", []):
            print(f"  {mode:14s} pair {p['size']:>11d} B: {p['median_ns']:.0f} ns (p99 {p['p99_ns']:.0f})")
        for p in r.get("side", []):
            if p["failed"]:
                print(f"  {mode:14s} beside gpuheap {p['size']:>11d} B: failed")
                continue
            print(f"  {mode:14s} beside gpuheap {p['size']:>11d} B: {p['torch_median_ns']:.0f} ns, gpuheap "
                  f"{p['gpuheap_median_ns']:.0f} ns: gpuheap {p['torch_over_gpuheap']:.2f}x faster")
    print(f"torch_bench: wrote {path}")


if __name__ == "__main__":
    main()
