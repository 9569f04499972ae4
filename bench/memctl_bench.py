#!/usr/bin/env python3
"""memctl_bench.py — what pause and resume cost, beside what a program would do instead.

For each size (1, 16, 64 GiB by default) on GPU 0, in one process:

  gpuheap, backup      gpu_pause(tag, GPU_PAUSE_BACKUP) then gpu_resume(tag) of one
                       tagged block, each followed by a device sync; the contents
                       are checked after every resume. The first cycle allocates
                       the pinned buffer (and is reported apart); the heap keeps
                       it, so the --reps steady cycles after it copy only
                       (gpuheap.trim(tag=...) frees it at the end)
  gpuheap, no backup   the same without GPU_PAUSE_BACKUP (contents not kept)
  cudart, copy         what a program does by hand: copy to a pinned host buffer +
                       cudaFree ("pause"), cudaMalloc + copy back ("resume"); the
                       pinned buffer's cudaHostAlloc is timed apart
  cudart, no copy      cudaFree, then cudaMalloc
  pinned bandwidth     cudaMemcpy device-to-host and host-to-device of the same
                       size with the pinned buffer: the ceiling for a backup

and reports milliseconds per GiB, GiB/s for the copying ones and their ratio to
the pinned bandwidth (steady cycles; the backup's first cycle on a line of its own). A benchmark, not a test: it checks only that the bytes
come back. Run it plainly, NOT under gpuheap-run (cudaMalloc must be the
driver's); it uses the package (python/gpuheap, bound to the build tree's
library or GPUHEAP_LIB) and the CUDA runtime through ctypes (libcudart:
CUDART_LIB, the one PyTorch ships, the system's):

    python3 bench/memctl_bench.py --json memctl-bench.json [--sizes 1,16,64] [--reps 3]

A size that does not fit (device memory, or host memory for the backup and
the pinned buffer, each in turn) is skipped and says why. Exit status 2 when
the machine cannot run it.
"""
import argparse
import ctypes
import ctypes.util
import glob
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GiB = 1 << 30
H2D, D2H = 1, 2  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost


# ---- host-side helpers (tested without a GPU: python/tests/test_bench.py) --------------------

def parse_sizes(text):
    """'1,16,64' -> [1, 16, 64] (GiB, positive)."""
    sizes = [float(s) for s in text.split(",") if s.strip()]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes are positive GiB counts separated by commas, not {text!r}")
    return [int(s) if s == int(s) else s for s in sizes]


def host_available(meminfo="/proc/meminfo"):
    """MemAvailable in bytes."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def why_not(need, have, what, margin=1.1):
    """None when need * margin fits in have, else the reason."""
    if need * margin <= have:
        return None
    return f"needs {need / GiB:.1f} GiB of {what} (with {int((margin - 1) * 100)}% spare), {have / GiB:.1f} GiB available"


def per_gib(ms_list, nbytes):
    """Median milliseconds per GiB."""
    return statistics.median(ms_list) / (nbytes / GiB)


def gibps(ms_list, nbytes):
    """GiB/s at the median time."""
    ms = statistics.median(ms_list)
    return (nbytes / GiB) / (ms / 1e3) if ms > 0 else float("inf")


def first_and_steady(ms_list):
    """A backup's cycles: the first (it allocates the pinned buffer) and the rest
    (the buffer kept); with one cycle only, it is both."""
    return ms_list[:1], ms_list[1:] or ms_list[:1]


def summarize(nbytes, raw):
    """Derived figures of one size's raw timings (lists of ms): per GiB, GiB/s, ratios.
    A backup's figures are its steady cycles', its first cycle's apart (first_*)."""
    out = {}
    if "backup" in raw:
        b = raw["backup"]
        (p1, ps), (r1, rs) = first_and_steady(b["pause_ms"]), first_and_steady(b["resume_ms"])
        out["backup"] = {"pause_ms_per_gib": per_gib(ps, nbytes), "resume_ms_per_gib": per_gib(rs, nbytes),
                         "pause_gibps": gibps(ps, nbytes), "resume_gibps": gibps(rs, nbytes),
                         "first_pause_ms_per_gib": per_gib(p1, nbytes), "first_resume_ms_per_gib": per_gib(r1, nbytes),
                         "first_pause_gibps": gibps(p1, nbytes), "first_resume_gibps": gibps(r1, nbytes),
                         "steady_cycles": len(b["pause_ms"]) - 1, "verified": b.get("verified")}
    if "nobackup" in raw:
        n = raw["nobackup"]
        out["nobackup"] = {"pause_ms_per_gib": per_gib(n["pause_ms"], nbytes),
                           "resume_ms_per_gib": per_gib(n["resume_ms"], nbytes)}
    if "copy" in raw:
        c = raw["copy"]
        out["copy"] = {"out_ms_per_gib": per_gib(c["out_ms"], nbytes), "back_ms_per_gib": per_gib(c["back_ms"], nbytes),
                       "out_gibps": gibps(c["out_ms"], nbytes), "back_gibps": gibps(c["back_ms"], nbytes),
                       "host_alloc_ms": c.get("host_alloc_ms"), "verified": c.get("verified")}
    if "nocopy" in raw:
        n = raw["nocopy"]
        out["nocopy"] = {"free_ms_per_gib": per_gib(n["free_ms"], nbytes),
                         "malloc_ms_per_gib": per_gib(n["malloc_ms"], nbytes)}
    if "pinned" in raw:
        p = raw["pinned"]
        out["pinned"] = {"d2h_gibps": gibps(p["d2h_ms"], nbytes), "h2d_gibps": gibps(p["h2d_ms"], nbytes)}
    if "backup" in out and "pinned" in out:
        out["ratios"] = {"pause_vs_d2h": out["backup"]["pause_gibps"] / out["pinned"]["d2h_gibps"],
                         "resume_vs_h2d": out["backup"]["resume_gibps"] / out["pinned"]["h2d_gibps"]}
    if "backup" in out and "copy" in out:
        out.setdefault("ratios", {}).update(
            pause_vs_copy_out=out["backup"]["pause_ms_per_gib"] / out["copy"]["out_ms_per_gib"],
            resume_vs_copy_back=out["backup"]["resume_ms_per_gib"] / out["copy"]["back_ms_per_gib"])
    if "nobackup" in out and "nocopy" in out:
        out.setdefault("ratios", {}).update(
            pause_vs_free=out["nobackup"]["pause_ms_per_gib"] / out["nocopy"]["free_ms_per_gib"],
            resume_vs_malloc=out["nobackup"]["resume_ms_per_gib"] / out["nocopy"]["malloc_ms_per_gib"])
    return out


def lines(gib, s):
    """The printed lines of one size's summary."""
    out = []
    if "backup" in s:
        b = s["backup"]
        text = (f"{gib:>4} GiB backup:    pause {b['pause_ms_per_gib']:7.2f} ms/GiB ({b['pause_gibps']:6.1f} GiB/s), "
                f"resume {b['resume_ms_per_gib']:7.2f} ms/GiB ({b['resume_gibps']:6.1f} GiB/s)")
        if "pinned" in s:
            p = s["pinned"]
            text += (f"; pinned D2H {p['d2h_gibps']:.1f}, H2D {p['h2d_gibps']:.1f} GiB/s "
                     f"({s['ratios']['pause_vs_d2h']:.2f}x, {s['ratios']['resume_vs_h2d']:.2f}x)")
        if b.get("steady_cycles"):
            text += f" [steady: {b['steady_cycles']} cycles, pinned buffer kept]"
        out.append(text)
        if b.get("steady_cycles"):
            out.append(f"{gib:>4} GiB backup, first cycle (pinned buffer allocated): pause "
                       f"{b['first_pause_ms_per_gib']:7.2f} ms/GiB ({b['first_pause_gibps']:6.1f} GiB/s), resume "
                       f"{b['first_resume_ms_per_gib']:7.2f} ms/GiB ({b['first_resume_gibps']:6.1f} GiB/s)")
    if "copy" in s:
        c = s["copy"]
        out.append(f"{gib:>4} GiB by hand:   copy out + cudaFree {c['out_ms_per_gib']:7.2f} ms/GiB, "
                   f"cudaMalloc + copy back {c['back_ms_per_gib']:7.2f} ms/GiB (pinned buffer: "
                   f"{c['host_alloc_ms'] or 0:.0f} ms to allocate)")
    if "nobackup" in s:
        n = s["nobackup"]
        text = (f"{gib:>4} GiB no backup: pause {n['pause_ms_per_gib']:7.3f} ms/GiB, "
                f"resume {n['resume_ms_per_gib']:7.3f} ms/GiB")
        if "nocopy" in s:
            m = s["nocopy"]
            text += f"; cudaFree {m['free_ms_per_gib']:.3f} ms/GiB, cudaMalloc {m['malloc_ms_per_gib']:.3f} ms/GiB"
        out.append(text)
    return out


def import_gpuheap():
    try:
        import gpuheap
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "python"))
        import gpuheap
    return gpuheap


def cudart_candidates():
    """Where libcudart may be: CUDART_LIB, one already loaded, PyTorch's, the system's."""
    cands = [os.environ.get("CUDART_LIB")]
    try:
        with open("/proc/self/maps") as f:
            cands += [line.split()[-1] for line in f if "libcudart" in line.split()[-1]]
    except OSError:
        pass
    try:
        import torch  # only to find the runtime it ships
        tdir = os.path.dirname(torch.__file__)
        cands += sorted(glob.glob(os.path.join(tdir, "lib", "libcudart*.so*")))
        cands += sorted(glob.glob(os.path.join(os.path.dirname(tdir), "nvidia", "cuda_runtime", "lib",
                                               "libcudart.so*")))
    except ImportError:
        pass
    cands += [ctypes.util.find_library("cudart")] + sorted(glob.glob("/usr/local/cuda/lib64/libcudart.so*"))
    seen = set()
    return [c for c in cands if c and not (c in seen or seen.add(c))]


# ---- the GPU part ---------------------------------------------------------------------------

class Cudart:
    """The CUDA runtime calls the benchmark needs, each checked."""

    def __init__(self):
        tried = []
        for cand in cudart_candidates():
            try:
                self.lib = ctypes.CDLL(cand)
                self.path = cand
                break
            except OSError as e:
                tried.append(f"{cand}: {e}")
        else:
            raise OSError("no libcudart: " + ("; ".join(tried) or "none found (set CUDART_LIB)"))
        L, c = self.lib, ctypes
        L.cudaGetErrorString.restype = c.c_char_p
        L.cudaMalloc.argtypes = [c.POINTER(c.c_void_p), c.c_size_t]
        L.cudaFree.argtypes = [c.c_void_p]
        L.cudaHostAlloc.argtypes = [c.POINTER(c.c_void_p), c.c_size_t, c.c_uint]
        L.cudaFreeHost.argtypes = [c.c_void_p]
        L.cudaMemcpy.argtypes = [c.c_void_p, c.c_void_p, c.c_size_t, c.c_int]
        L.cudaMemset.argtypes = [c.c_void_p, c.c_int, c.c_size_t]
        L.cudaMemGetInfo.argtypes = [c.POINTER(c.c_size_t), c.POINTER(c.c_size_t)]

    def check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: {self.lib.cudaGetErrorString(rc).decode()} ({rc})")

    def malloc(self, n):
        p = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(p), n), f"cudaMalloc({n})")
        return p.value

    def free(self, p):
        self.check(self.lib.cudaFree(p), "cudaFree")

    def host_alloc(self, n):
        p = ctypes.c_void_p()
        self.check(self.lib.cudaHostAlloc(ctypes.byref(p), n, 0), f"cudaHostAlloc({n})")
        return p.value

    def free_host(self, p):
        self.check(self.lib.cudaFreeHost(p), "cudaFreeHost")

    def copy(self, dst, src, n, kind):
        self.check(self.lib.cudaMemcpy(dst, src, n, kind), "cudaMemcpy")

    def memset(self, p, byte, n):
        self.check(self.lib.cudaMemset(p, byte, n), "cudaMemset")

    def sync(self):
        self.check(self.lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def mem_info(self):
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.check(self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
        return free.value, total.value


def timed(fn, sync):
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def holds(rt, dev_ptr, n, byte):
    """The first and last 4 KiB of the device range hold byte."""
    probe = ctypes.create_string_buffer(4096)
    for off in (0, n - 4096):
        rt.copy(ctypes.addressof(probe), dev_ptr + off, 4096, D2H)
        if probe.raw != bytes([byte]) * 4096:
            return False
    return True


def bench_gpuheap(rt, gpuheap, n, reps, backup):
    tag = f"memctl-bench-{'b' if backup else 'n'}"
    p = gpuheap.malloc(n, tag=tag)
    try:
        rt.memset(p, 0x5A, n)
        rt.sync()
        pause_ms, resume_ms, verified = [], [], True
        for _ in range(reps + 1 if backup else reps):  # with backup: the first cycle, then reps steady ones
            pause_ms.append(timed(lambda: gpuheap.pause(tag, backup=backup), rt.sync))
            resume_ms.append(timed(lambda: gpuheap.resume(tag), rt.sync))
            if backup:
                verified = verified and holds(rt, p, n, 0x5A)
        res = {"pause_ms": pause_ms, "resume_ms": resume_ms}
        if backup:
            res["verified"] = verified
        return res
    finally:
        gpuheap.free(p)
        if gpuheap.library().has("gpu_tag_trim"):
            gpuheap.trim(0, tag=tag)  # the tag's memory and its kept pinned buffer
        gpuheap.trim(0)  # the next measurement starts from the driver's memory


def bench_cudart(rt, n, reps):
    t0 = time.perf_counter()
    h = rt.host_alloc(n)
    host_alloc_ms = (time.perf_counter() - t0) * 1e3
    d = rt.malloc(n)
    try:
        rt.memset(d, 0x5A, n)
        rt.sync()
        pinned = {"d2h_ms": [], "h2d_ms": []}
        for _ in range(reps):
            pinned["d2h_ms"].append(timed(lambda: rt.copy(h, d, n, D2H), rt.sync))
            pinned["h2d_ms"].append(timed(lambda: rt.copy(d, h, n, H2D), rt.sync))
        copy = {"out_ms": [], "back_ms": [], "host_alloc_ms": host_alloc_ms, "verified": True}
        for _ in range(reps):
            def out():
                rt.copy(h, d, n, D2H)
                rt.free(d)

            copy["out_ms"].append(timed(out, rt.sync))
            box = []

            def back():
                box.append(rt.malloc(n))
                rt.copy(box[0], h, n, H2D)

            copy["back_ms"].append(timed(back, rt.sync))
            d = box[0]
            copy["verified"] = copy["verified"] and holds(rt, d, n, 0x5A)
        nocopy = {"free_ms": [], "malloc_ms": []}
        for _ in range(reps):
            nocopy["free_ms"].append(timed(lambda: rt.free(d), rt.sync))
            box = []
            nocopy["malloc_ms"].append(timed(lambda: box.append(rt.malloc(n)), rt.sync))
            d = box[0]
        return {"pinned": pinned, "copy": copy, "nocopy": nocopy}
    finally:
        rt.free(d)
        rt.free_host(h)


def main(argv=None):
    ap = argparse.ArgumentParser(description="gpuheap pause/resume against cudaMalloc + copy + cudaFree")
    ap.add_argument("--sizes", default="1,16,64", help="GiB, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (a backup's: steady cycles after the first)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    gpuheap = import_gpuheap()
    lib = gpuheap.library()
    if lib.under_run:
        print("memctl_bench: run me without gpuheap-run: the cudaMalloc baseline must be the driver's",
              file=sys.stderr)
        return 2
    if not lib.has("gpu_pause"):
        print(f"memctl_bench: {lib.path} has no memory control (gpu_pause)", file=sys.stderr)
        return 2
    try:
        rt = Cudart()
        rt.check(rt.lib.cudaSetDevice(0), "cudaSetDevice(0)")
        rt.mem_info()
    except (OSError, RuntimeError) as e:
        print(f"memctl_bench: no CUDA here: {e}", file=sys.stderr)
        return 2
    doc = {"library": lib.path, "cudart": rt.path, "reps": args.reps, "sizes": []}
    print(f"memctl_bench: {lib.path}, {rt.path}; {args.reps} repetitions per size", flush=True)
    for gib in sizes:
        n = int(gib * GiB)
        row = {"gib": gib, "bytes": n, "raw": {}, "skipped": {}}
        for kind in ("backup", "nobackup", "cudart"):
            dev_free, _ = rt.mem_info()
            why = why_not(n, dev_free, "device memory") or \
                (why_not(n, host_available(), "host memory") if kind in ("backup", "cudart") else None)
            if why:
                row["skipped"][kind] = why
                print(f"memctl_bench: {gib} GiB {kind}: skipped: {why}", flush=True)
                continue
            if kind == "cudart":
                row["raw"].update(bench_cudart(rt, n, args.reps))
            else:
                row["raw"][kind] = bench_gpuheap(rt, gpuheap, n, args.reps, kind == "backup")
        row["summary"] = summarize(n, row["raw"])
        for line in lines(gib, row["summary"]):
            print("memctl_bench: " + line, flush=True)
        doc["sizes"].append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"memctl_bench: wrote {args.json}")
    bad = [r["gib"] for r in doc["sizes"] if r["summary"].get("backup", {}).get("verified") is False]
    if bad:
        print(f"memctl_bench: contents did not come back after resume at {bad} GiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
