"""cupy_check.py — CuPy with gpuheap as its allocator (CFunctionAllocator).

CuPy takes an allocator as two C functions:
    void *malloc(void *param, size_t size, int device_id)
    void free(void *param, void *ptr, int device_id)
libgpuheap-preload.so exports them as gpu_cupy_malloc / gpu_cupy_free. This
script installs them, checks that CuPy's memory really comes from them, runs a
few array operations (elementwise, reduction, matrix product, sort, FFT, a
scan, a random array) and compares each with NumPy on the host.

    python3 cupy_check.py BUILD/lib/preload/libgpuheap-preload.so [OUT.json]
"""
import ctypes
import json
import sys

import cupy as cp
import numpy as np


def main():
    so = sys.argv[1]
    lib = ctypes.CDLL(so)
    malloc_fn = ctypes.cast(lib.gpu_cupy_malloc, ctypes.c_void_p).value
    free_fn = ctypes.cast(lib.gpu_cupy_free, ctypes.c_void_p).value
    allocator = cp.cuda.memory.CFunctionAllocator(0, malloc_fn, free_fn, lib)
    cp.cuda.set_allocator(allocator.malloc)

    results = {}
    a = cp.arange(1_000_000, dtype=cp.float64)
    results["allocator"] = type(a.data.mem).__name__
    results["ptr_alignment"] = int(a.data.ptr) & -int(a.data.ptr)

    ah = np.arange(1_000_000, dtype=np.float64)
    results["elementwise"] = bool(np.allclose(cp.asnumpy(cp.sin(a) * 2 + 1), np.sin(ah) * 2 + 1))
    results["sum"] = bool(np.isclose(float((a * a).sum()), float((ah * ah).sum()), rtol=1e-12))
    rs = np.random.RandomState(0)
    m1, m2 = rs.standard_normal((512, 384)), rs.standard_normal((384, 256))
    results["matmul"] = bool(np.allclose(cp.asnumpy(cp.asarray(m1) @ cp.asarray(m2)), m1 @ m2, rtol=1e-10, atol=1e-10))
    v = rs.standard_normal(300_001)
    results["sort"] = bool(np.array_equal(cp.asnumpy(cp.sort(cp.asarray(v))), np.sort(v)))
    results["fft"] = bool(np.allclose(cp.asnumpy(cp.fft.fft(cp.asarray(v[:4096]))), np.fft.fft(v[:4096])))
    results["cumsum"] = bool(np.allclose(cp.asnumpy(cp.cumsum(cp.asarray(v))), np.cumsum(v)))
    r = cp.random.default_rng(0).standard_normal(1 << 20)
    results["random_mean_near_0"] = bool(abs(float(r.mean())) < 0.01)
    big = [cp.ones(n, dtype=cp.uint8) for n in (1, 511, 513, 4 << 20, 100 << 20)]
    results["sizes"] = bool(all(int(b.sum()) == b.size for b in big))
    del big
    cp.cuda.Device(0).synchronize()

    ok = results["allocator"] == "CFunctionAllocatorMemory" and all(v for k, v in results.items() if isinstance(v, bool))
    results["ok"] = ok
    print("cupy_check:", json.dumps(results), flush=True)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
