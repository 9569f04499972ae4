#!/usr/bin/env python3
"""memctl_torch.py — memory control proven on PyTorch, on a GPU.

The pattern README.md ("Python") shows, run for real: a model's weights in
region 'weights' (paused with backup) and a large KV-cache-like buffer in
region 'kv' (paused without backup: a forward pass rewrites it), a CUDA graph
captured over the forward pass, then, 20 times: pause both, let another
tensor as large as both use the freed memory, free it, resume, replay the
graph. PyTorch allocates through gpuheap-run's interposer with its caching
allocator off, so every tensor is a gpuheap block:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 build/tools/gpuheap-run python3 bench/memctl_torch.py --json memctl.json

(started plainly, the script runs itself that way: gpuheap-run from build/tools,
--gpuheap-run, or PATH). Checks, one summary line each; the exit status is 1
when any fails, 2 when the machine cannot run them:

  graph      the graph's replays agree with each other bit for bit
  freed      after pausing, torch.cuda.mem_get_info shows >= 99% of the tagged
             bytes free again (every cycle)
  reuse      a tensor of the tagged size, outside the regions, is allocated in
             that memory, written and read, then freed (every cycle); the kv
             buffer is sized so that it could not fit without the pause
  replay     after resume, the replay's output equals the one before the first
             pause bit for bit (every cycle): weights restored from the backup,
             the graph's addresses valid again
  flat       host RSS and device memory in use do not grow over the cycles
  cap-total  under GPUHEAP_LIMIT=2G (a child process) mem_get_info's total is
             the cap
  cap-oom    an allocation past the cap raises an out-of-memory error
             (torch.OutOfMemoryError; with caching off PyTorch's own
             AcceleratorError "CUDA error: out of memory"), and the
             process goes on
  cap-free   after freeing, an allocation that did not fit succeeds

The forward pass allocates nothing while it is captured (every result has a
buffer made beforehand, out=): with the caching allocator off, a tensor freed
during the capture would go back to gpuheap while the graph still writes it.
The capture runs inside gpuheap.capture(), since torch.cuda.graph captures a
non-blocking stream the heap cannot see by itself.

JSON results go to --json FILE.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GiB = 1 << 30
MiB = 1 << 20


# ---- host-side helpers (tested without a GPU: python/tests/test_bench.py) --------------------

def import_gpuheap():
    """The package, from the source tree when it is not installed."""
    try:
        import gpuheap
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "python"))
        import gpuheap
    return gpuheap


def parse_size(text):
    """'2G', '512M', '64K', '123' -> bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def rss_bytes(status="/proc/self/status"):
    """This process's resident set size in bytes (VmRSS)."""
    with open(status) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def growth(values, skip=1):
    """How much values grew after the first skip samples (warm-up): last - min of the rest."""
    rest = values[skip:] if len(values) > skip else values
    return rest[-1] - min(rest) if rest else 0


def kv_bytes_for(free_bytes, weight_bytes, fraction):
    """A kv buffer that, with the weights, takes fraction of the free memory,
    rounded down to 2 MiB: with fraction > 0.5 a tensor of their size cannot
    fit beside them, only in their place."""
    return max(0, int(free_bytes * fraction) - weight_bytes) // (2 * MiB) * (2 * MiB)


def find_gpuheap_run(given=None):
    """gpuheap-run: given, else the build tree's, else PATH's; None when none."""
    for cand in (given, os.path.join(REPO, "build", "tools", "gpuheap-run"), shutil.which("gpuheap-run")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def rerun_command(run, argv, env):
    """The command and environment that run this script under gpuheap-run with caching off."""
    return [run, sys.executable, os.path.abspath(__file__), *argv], {**env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}


class Checks:
    """Named checks: one summary line each, a JSON record, the exit status."""

    def __init__(self, prog="memctl_torch"):
        self.prog = prog
        self.results = {}

    def add(self, name, ok, detail, **data):
        self.results[name] = {"ok": bool(ok), "detail": detail, **data}
        print(f"{self.prog}: {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return ok

    def ok(self):
        return bool(self.results) and all(r["ok"] for r in self.results.values())

    def exit_status(self):
        return 0 if self.ok() else 1


def write_json(path, doc):
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"memctl_torch: wrote {path}")


# ---- the GPU part ---------------------------------------------------------------------------

class Model:
    """An MLP whose forward pass writes a KV-cache-like buffer and reads it back.

    Weights (W_i, b_i) are allocated in region 'weights', the kv buffer in
    region 'kv'; the input, the layers' outputs and the result are static
    buffers outside both, so that the forward pass allocates nothing."""

    def __init__(self, torch, gpuheap, d, layers, batch, kv_bytes):
        dev = torch.device("cuda")
        gen = torch.Generator(device=dev)
        gen.manual_seed(1234)
        with gpuheap.region("weights"):
            self.w = [torch.empty(d, d, device=dev).normal_(0, d ** -0.5, generator=gen) for _ in range(layers)]
            self.b = [torch.empty(d, device=dev).normal_(0, 0.01, generator=gen) for _ in range(layers)]
        rows = max(batch, kv_bytes // (d * 4))
        with gpuheap.region("kv"):
            self.kv = torch.empty(rows, d, device=dev)
        self.x = torch.empty(batch, d, device=dev).normal_(0, 1, generator=gen)
        self.h = [torch.empty(batch, d, device=dev) for _ in range(layers)]
        self.out = torch.empty(batch, d, device=dev)
        self.torch, self.batch = torch, batch

    def forward(self):
        torch = self.torch
        prev = self.x
        for w, b, h in zip(self.w, self.b, self.h):
            torch.addmm(b, prev, w, out=h)
            h.relu_()
            prev = h
        # The cache: every row written by this pass (so its contents before the
        # pass do not matter), then the last rows read.
        self.kv.copy_(prev[0:1].expand_as(self.kv))
        torch.add(prev, self.kv[-self.batch:], out=self.out)


def same_bits(torch, a, b):
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def child_cap(args):
    """Under GPUHEAP_LIMIT (2G): mem_get_info's total, an allocation past the
    cap, and one after a free. Writes {"total", "oom", "oom_type", "after_free"}."""
    import torch
    cap = parse_size(os.environ.get("GPUHEAP_LIMIT", "2G"))
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    res = {"cap": cap, "free": free, "total": total}
    a = torch.empty(cap * 3 // 4, dtype=torch.uint8, device="cuda")
    a.fill_(1)
    try:
        b = torch.empty(cap // 2, dtype=torch.uint8, device="cuda")
        b.fill_(2)
        torch.cuda.synchronize()
        res["oom"], res["oom_type"] = False, None
        del b
    except oom_types as e:
        res["oom"], res["oom_type"] = True, type(e).__name__
        res["oom_message"] = str(e).splitlines()[0][:300]
    except Exception as e:
        # With PYTORCH_NO_CUDA_MEMORY_CACHING=1 PyTorch checks cudaMalloc's answer
        # itself and raises its generic AcceleratorError ("CUDA error: out of
        # memory") for cudaErrorMemoryAllocation: still a clean out-of-memory
        # (not sticky: the process goes on, as cap-free shows). Anything else is
        # the wrong kind of failure.
        first = str(e).splitlines()[0] if str(e) else ""
        res["oom"] = "out of memory" in first
        res["oom_type"] = type(e).__name__ if res["oom"] else f"{type(e).__name__}: {e}"[:300]
        res["oom_message"] = first[:300]
    del a
    torch.cuda.synchronize()
    try:
        b = torch.empty(cap // 2, dtype=torch.uint8, device="cuda")
        b.fill_(3)
        torch.cuda.synchronize()
        res["after_free"] = int(b[-1].item()) == 3
        del b
    except Exception as e:
        res["after_free"], res["after_free_error"] = False, f"{type(e).__name__}: {e}"[:300]
    with open(args.child_out, "w") as f:
        json.dump(res, f)


def run_cap(checks, args):
    out = (args.json or "memctl_torch") + ".cap.json"
    env = {**os.environ, "GPUHEAP_LIMIT": "2G"}
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "cap", "--child-out", out], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not os.path.exists(out):
        tail = (r.stderr or r.stdout)[-600:].strip().replace("\n", " | ")
        for name in ("cap-total", "cap-oom", "cap-free"):
            checks.add(name, False, f"the GPUHEAP_LIMIT=2G child failed (exit {r.returncode}): {tail}")
        return None
    with open(out) as f:
        res = json.load(f)
    os.unlink(out)
    checks.add("cap-total", res["total"] == res["cap"],
               f"mem_get_info total {res['total'] / GiB:.3f} GiB under a {res['cap'] / GiB:.0f} GiB cap "
               f"(free {res['free'] / GiB:.3f} GiB)", total=res["total"], cap=res["cap"])
    checks.add("cap-oom", res["oom"], f"{res['cap'] * 3 // 4 / GiB:.2f} GiB held, {res['cap'] // 2 / GiB:.2f} GiB more: "
               f"{res.get('oom_type') or 'no error'}", oom_type=res.get("oom_type"))
    checks.add("cap-free", res["after_free"], f"after freeing, {res['cap'] // 2 / GiB:.2f} GiB "
               f"{'allocated and written' if res['after_free'] else 'failed: ' + res.get('after_free_error', '')}")
    return res


def cycle(torch, gpuheap, model, graph, ref, tagged, total, c):
    """One pause, reuse, resume and replay; what it saw goes into c."""
    torch.cuda.synchronize()
    before, _ = torch.cuda.mem_get_info()
    t0 = time.perf_counter()
    gpuheap.pause("weights", backup=True)
    gpuheap.pause("kv")
    c["pause_ms"] = (time.perf_counter() - t0) * 1e3
    paused, _ = torch.cuda.mem_get_info()
    c["freed"] = paused - before
    c["freed_fraction"] = c["freed"] / tagged if tagged else 0.0
    c["paused_bytes"] = gpuheap.stats()["paused_bytes"]
    try:
        other = torch.empty(tagged, dtype=torch.uint8, device="cuda")  # outside every region
        other.fill_(0x5A)
        step = max(1, tagged // 4096)
        c["reuse"] = int(other[::step].sum().item()) == 0x5A * other[::step].numel()
        c["reuse_fits_unpaused"] = before >= tagged
        del other
        torch.cuda.synchronize()
    except Exception as e:  # out of memory: the pause did not make room
        c["reuse"], c["reuse_error"] = False, f"{type(e).__name__}: {e}"[:300]
    t0 = time.perf_counter()
    gpuheap.resume("weights")
    gpuheap.resume("kv")
    c["resume_ms"] = (time.perf_counter() - t0) * 1e3
    graph.replay()
    torch.cuda.synchronize()
    c["replay_equal"] = same_bits(torch, model.out, ref)
    free_now, _ = torch.cuda.mem_get_info()
    c["device_used"] = total - free_now
    c["rss"] = rss_bytes()


def main_gpu(args, gpuheap):
    try:
        import torch
    except ImportError as e:
        print(f"memctl_torch: no PyTorch here ({e})", file=sys.stderr)
        return 2
    checks = Checks()
    doc = {"config": vars(args).copy(), "torch": torch.__version__, "library": gpuheap.library().path}
    if not torch.cuda.is_available():
        print("memctl_torch: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    torch.cuda.init()
    torch.ones(1, device="cuda").add_(1)  # context, kernels, handles: outside the regions
    doc["device"] = torch.cuda.get_device_name(0)
    free0, total = torch.cuda.mem_get_info()
    weight_bytes = args.layers * (args.d * args.d + args.d) * 4
    kv_bytes = parse_size(args.kv) if args.kv != "auto" else kv_bytes_for(free0, weight_bytes, args.fraction)
    model = Model(torch, gpuheap, args.d, args.layers, args.batch, kv_bytes)
    tagged = gpuheap.stats("weights")["live_bytes"] + gpuheap.stats("kv")["live_bytes"]
    doc.update(total=total, free_at_start=free0, weight_bytes=weight_bytes, kv_bytes=model.kv.numel() * 4,
               tagged_bytes=tagged)
    print(f"memctl_torch: {doc['device']}, {total / GiB:.1f} GiB; weights {weight_bytes / GiB:.2f} GiB "
          f"({args.layers} layers, d {args.d}), kv {model.kv.numel() * 4 / GiB:.2f} GiB; tagged "
          f"{tagged / GiB:.2f} GiB", flush=True)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model.forward()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with gpuheap.capture():
            with torch.cuda.graph(graph, stream=stream):
                model.forward()
        graph.replay()
        torch.cuda.synchronize()
        ref = model.out.clone()
        graph.replay()
        torch.cuda.synchronize()
        agree = same_bits(torch, model.out, ref)
    except Exception as e:
        checks.add("graph", False, f"capture or replay failed: {type(e).__name__}: {e}")
        doc["checks"] = checks.results
        write_json(args.json, doc)
        return 1
    checks.add("graph", agree, f"captured over {args.layers} layers and the kv buffer; two replays "
               f"{'agree' if agree else 'differ'} bit for bit")

    cycles = []
    for i in range(args.cycles):
        c = {"cycle": i}
        try:
            cycle(torch, gpuheap, model, graph, ref, tagged, total, c)
        except Exception as e:  # a failed call fails the checks below, with its words
            c.update(error=f"{type(e).__name__}: {e}"[:400], freed_fraction=c.get("freed_fraction", 0.0),
                     reuse=c.get("reuse", False), replay_equal=False, device_used=0, rss=rss_bytes())
            print(f"memctl_torch: cycle {i + 1}: {c['error']}", flush=True)
            for tag in ("weights", "kv"):
                try:
                    gpuheap.resume(tag)
                except gpuheap.Error:
                    pass  # not paused
            cycles.append(c)
            break
        cycles.append(c)
        print(f"memctl_torch: cycle {i + 1}/{args.cycles}: freed {c['freed_fraction'] * 100:.2f}%, reuse "
              f"{c['reuse']}, replay equal {c['replay_equal']}, pause {c['pause_ms']:.1f} ms, resume "
              f"{c['resume_ms']:.1f} ms, device {c['device_used'] / GiB:.2f} GiB, RSS {c['rss'] / MiB:.0f} MiB",
              flush=True)
    doc["cycles"] = cycles

    n = len(cycles)
    if n < args.cycles:
        checks.add("cycles", False, f"stopped at cycle {n}: {cycles[-1]['error']}")
    worst = min(c["freed_fraction"] for c in cycles)
    checks.add("freed", worst >= 0.99, f"{sum(c['freed_fraction'] >= 0.99 for c in cycles)}/{n} cycles gave back "
               f">= 99% of {tagged / GiB:.2f} GiB tagged (worst {worst * 100:.2f}%)", worst=worst)
    fits = any(c.get("reuse_fits_unpaused") for c in cycles)
    checks.add("reuse", all(c["reuse"] for c in cycles),
               f"{sum(c['reuse'] for c in cycles)}/{n} cycles allocated, wrote and read {tagged / GiB:.2f} GiB "
               f"outside the regions while paused ({'it would also have fit unpaused' if fits else 'only the pause made room'})",
               fits_unpaused=fits)
    checks.add("replay", all(c["replay_equal"] for c in cycles),
               f"{sum(c['replay_equal'] for c in cycles)}/{n} replays after resume equal the output before the "
               "first pause bit for bit")
    rss = [c["rss"] for c in cycles]
    dev = [c["device_used"] for c in cycles]
    tol = args.flat_mib * MiB
    checks.add("flat", growth(rss) <= tol and growth(dev) <= tol,
               f"over {n} cycles after the first: host RSS grew {growth(rss) / MiB:.1f} MiB, device memory in use "
               f"{growth(dev) / MiB:.1f} MiB (limit {args.flat_mib} MiB each)", rss_growth=growth(rss),
               device_growth=growth(dev))

    del graph, model
    torch.cuda.synchronize()
    doc["cap"] = run_cap(checks, args)
    doc["checks"] = checks.results
    doc["ok"] = checks.ok()
    write_json(args.json, doc)
    print(f"memctl_torch: {'all checks passed' if checks.ok() else 'FAILED'}")
    return checks.exit_status()


def parse_args(argv):
    ap = argparse.ArgumentParser(description="gpuheap memory control on PyTorch (pause, resume, a CUDA graph, the cap)")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--d", type=int, default=4096, help="model width")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kv", default="auto", help="kv buffer size (e.g. 40G); auto: weights + kv = --fraction of free memory")
    ap.add_argument("--fraction", type=float, default=0.55)
    ap.add_argument("--flat-mib", type=int, default=64, help="growth allowed over the cycles, host and device")
    ap.add_argument("--gpuheap-run", help="gpuheap-run to run under (default: build/tools, then PATH)")
    ap.add_argument("--child", choices=["cap"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cycles < 1:
        ap.error("--cycles must be at least 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    gpuheap = import_gpuheap()
    if args.child == "cap":
        child_cap(args)
        return 0
    if not gpuheap.library().under_run or os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
        run = find_gpuheap_run(args.gpuheap_run)
        if not run:
            print("memctl_torch: run me under gpuheap-run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (gpuheap-run not "
                  "found in build/tools or PATH; --gpuheap-run names it)", file=sys.stderr)
            return 2
        if os.environ.get("MEMCTL_TORCH_RERUN"):
            print("memctl_torch: still not under gpuheap-run after running through it", file=sys.stderr)
            return 2
        cmd, env = rerun_command(run, argv, {**os.environ, "MEMCTL_TORCH_RERUN": "1"})
        print(f"memctl_torch: running {' '.join(cmd)} with PYTORCH_NO_CUDA_MEMORY_CACHING=1", flush=True)
        os.execve(cmd[0], cmd, env)
    if not gpuheap.library().has("gpu_pause"):
        print(f"memctl_torch: {gpuheap.library().path} has no memory control (gpu_pause)", file=sys.stderr)
        return 2
    return main_gpu(args, gpuheap)


if __name__ == "__main__":
    sys.exit(main())
