#!/usr/bin/env python3
"""frameworks.py — PyTorch workloads whose shapes change every step, under each allocator.

A caching allocator shines when every training step asks for the same sizes. The
workloads here do not (test/preload/train_shapes.py): a CNN whose batch size
changes every step and a small GPT whose sequence length changes every step, plus
(with --with-fixed) the fixed-shape transformer of test/preload/train.py. Each
runs in these modes, each in a fresh process:

  caching      PyTorch's caching allocator, default settings
  expandable   the caching allocator with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  gpuheap      PYTORCH_NO_CUDA_MEMORY_CACHING=1 under gpuheap-run: every cudaMalloc
               served by gpuheap (GPUHEAP_STATS_JSON gives its peak physical memory)
  nocache      PYTORCH_NO_CUDA_MEMORY_CACHING=1 alone: plain cudaMalloc/cudaFree,
               the reference gpuheap's losses must equal bit for bit (the same
               calls, the same alignment; only where the memory comes from differs)
  gpuheap-paged the gpuheap mode with paged placement (GPUHEAP_PAGE_SIZE, --page-size:
               memory in shared pages, idle pages moved; README "Paged placement")
  pluggable    (only with --with-pluggable) gpu_torch_alloc/gpu_torch_free as a
               CUDAPluggableAllocator
  gpuheap-base (only with --base-build DIR) the gpuheap mode with another build —
               the commit before a change, measured in the same rounds (and
               gpuheap-paged-base beside gpuheap-paged when that is run)

--modes picks some of them (default: the first four; gpuheap-paged too when named).

Every workload and mode runs --reps times (3), interleaved: round r runs every
(workload, mode) once before round r+1 starts, so a machine's drift falls on all
of them. Seeds are fixed. For each (workload, mode) it records the losses, the
median step time of each run and their median and spread, and the peak physical
memory: gpuheap's peak_mapped_bytes (summed over its heaps) in the gpuheap and
pluggable modes, torch.cuda.max_memory_reserved otherwise. The losses of gpuheap
and pluggable are compared bit for bit with nocache's, and nocache with itself
across rounds (that the baseline is repeatable at all); caching and expandable
are compared with each other.

Writes OUT/frameworks.json (every run) and OUT/frameworks.txt (the table), and
prints the table. Exit status 1 when a run failed or gpuheap's losses differ from
nocache's while nocache repeats itself.

    python3 bench/frameworks.py --build BUILD --out OUT [--reps 3] [--steps 40]
                                [--workloads cnn,gpt] [--with-fixed] [--with-pluggable]
                                [--modes caching,expandable,gpuheap,nocache] [--base-build DIR] [--keep-traces]

On an H200 one run takes 10-25 s (most of it start-up), nocache runs the longest;
the default (2 workloads x 4 modes x 3 rounds = 24 runs) takes about 8-12 minutes.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(os.path.dirname(HERE), "test", "preload")

MODES = ("caching", "expandable", "gpuheap", "nocache", "gpuheap-paged")
HEAP_RUN = ("gpuheap", "gpuheap-base", "gpuheap-paged", "gpuheap-paged-base")  # under gpuheap-run, of --build and of --base-build
HEAP_STATS = HEAP_RUN + ("pluggable",)  # gpuheap's own peak physical memory


def command(workload, mode, build, steps, out_json, stats_json, page_size="2M", trace=None):
    """The argv and environment of one run (trace: a gpuheap mode records its calls there)."""
    env = dict(os.environ)
    for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING", "LD_PRELOAD", "GPUHEAP_STATS_JSON",
              "GPUHEAP_PAGE_SIZE", "GPUHEAP_TRACE"):
        env.pop(k, None)
    if workload == "fixed":
        script = [os.path.join(SCRIPTS, "train.py"), "--steps", str(steps)]
    else:
        script = [os.path.join(SCRIPTS, "train_shapes.py"), "--model", workload, "--steps", str(steps)]
    argv = [sys.executable] + script + ["--label", f"{workload}-{mode}", "--out", out_json]
    if mode == "expandable":
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    elif mode == "nocache":
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    elif mode in HEAP_RUN:
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
        env["GPUHEAP_STATS_JSON"] = stats_json
        if mode.startswith("gpuheap-paged"):
            env["GPUHEAP_PAGE_SIZE"] = page_size
        if trace:
            env["GPUHEAP_TRACE"] = trace
        argv = [os.path.join(build, "tools", "gpuheap-run"), "--"] + argv
    elif mode == "pluggable":
        env["GPUHEAP_STATS_JSON"] = stats_json
        argv += ["--pluggable", os.path.join(build, "lib", "preload", "libgpuheap-preload.so")]
    return argv, env


def heap_peak(stats_json):
    """gpuheap's peak physical bytes (peak_mapped_bytes summed over its heaps), or None."""
    try:
        with open(stats_json) as f:
            heaps = json.load(f)["heaps"]
    except (OSError, ValueError, KeyError):
        return None
    return sum(h.get("peak_mapped_bytes", 0) for h in heaps) if heaps else None


def run_one(workload, mode, rnd, args, work):
    tag = f"{workload}-{mode}-{rnd}"
    out_json = os.path.join(work, tag + ".json")
    stats_json = os.path.join(work, tag + ".stats.json")
    build = args.base_build if mode.endswith("-base") else args.build
    trace = os.path.join(work, tag + ".trace") if args.keep_traces and mode in HEAP_RUN else None
    argv, env = command(workload, mode, build, args.steps, out_json, stats_json, args.page_size, trace)
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=args.timeout)
    wall = time.monotonic() - t0
    with open(os.path.join(work, tag + ".log"), "w") as f:
        f.write(p.stdout)
    rec = {"workload": workload, "mode": mode, "round": rnd, "rc": p.returncode, "wall_s": round(wall, 1),
           "traced": trace is not None}
    if p.returncode != 0 or not os.path.exists(out_json):
        rec["error"] = p.stdout[-2000:]
        print(f"  {tag}: FAILED (rc {p.returncode})", flush=True)
        return rec
    with open(out_json) as f:
        r = json.load(f)
    rec.update({k: r.get(k) for k in ("losses_hex", "losses", "step_ms", "median_step_ms", "max_memory_allocated",
                                      "max_memory_reserved", "device", "torch")})
    rec["peak_physical_bytes"] = heap_peak(stats_json) if mode in HEAP_STATS else r.get("max_memory_reserved")
    if mode in HEAP_STATS:
        try:
            with open(stats_json) as f:
                rec["gpuheap_stats"] = json.load(f)["heaps"]
        except (OSError, ValueError, KeyError):
            rec["gpuheap_stats"] = None
    print(f"  {tag}: median step {rec['median_step_ms']:.2f} ms, peak physical "
          f"{(rec['peak_physical_bytes'] or 0) / 2**20:.0f} MiB ({wall:.0f} s)", flush=True)
    return rec


def summarize(runs, workloads, modes):
    res = {}
    for w in workloads:
        res[w] = {}
        for m in modes:
            ok = [r for r in runs if r["workload"] == w and r["mode"] == m and r["rc"] == 0 and r.get("losses_hex")]
            meds = [r["median_step_ms"] for r in ok]
            peaks = [r["peak_physical_bytes"] for r in ok if r.get("peak_physical_bytes")]
            res[w][m] = {
                "runs": len(ok),
                "failed": len([r for r in runs if r["workload"] == w and r["mode"] == m]) - len(ok),
                "median_step_ms": statistics.median(meds) if meds else None,
                "step_ms_spread": [min(meds), max(meds)] if meds else None,
                "each_run_median_step_ms": meds,
                "peak_physical_bytes": max(peaks) if peaks else None,
                "losses_hex": ok[0]["losses_hex"] if ok else None,
                "losses_same_every_round": all(r["losses_hex"] == ok[0]["losses_hex"] for r in ok) if ok else None,
                "heap_work": heap_work(ok),
            }
        ref = res[w].get("nocache", {}).get("losses_hex")
        for m in modes:
            cell = res[w][m]
            cell["losses_equal_nocache"] = None if not ref or not cell["losses_hex"] else (
                all(r["losses_hex"] == ref for r in runs
                    if r["workload"] == w and r["mode"] == m and r["rc"] == 0 and r.get("losses_hex")))
            base = res[w].get("caching", {}).get("median_step_ms")
            cell["step_vs_caching"] = cell["median_step_ms"] / base if base and cell["median_step_ms"] else None
            pbase = res[w].get("caching", {}).get("peak_physical_bytes")
            cell["physical_vs_caching"] = cell["peak_physical_bytes"] / pbase if pbase and cell["peak_physical_bytes"] else None
            ebase = res[w].get("expandable", {}).get("peak_physical_bytes")
            cell["physical_vs_expandable"] = (cell["peak_physical_bytes"] / ebase
                                              if ebase and cell["peak_physical_bytes"] else None)
            cref = res[w].get("caching", {})
            cell["losses_equal_caching"] = None if m == "caching" or not cref.get("losses_hex") or not cell["losses_hex"] \
                else all(r["losses_hex"] == cref["losses_hex"] for r in runs
                         if r["workload"] == w and r["mode"] == m and r["rc"] == 0 and r.get("losses_hex"))
    return res


def heap_work(ok):
    """The heap's driver work per run (its statistics at exit, the runs' median):
    fences, releases in legacy free order, seals and mappings; None for modes
    without gpuheap's statistics."""
    per_run = []
    for r in ok:
        heaps = r.get("gpuheap_stats") or []
        if heaps:
            per_run.append({k: sum(h.get(k, 0) or 0 for h in heaps)
                            for k in ("fences", "order_releases", "seal_events", "backend_map", "backend_unmap")})
    if not per_run:
        return None
    return {k: statistics.median(x[k] for x in per_run) for k in per_run[0]}


def table(res, modes, device):
    lines = [f"frameworks.py on {device}: median step (spread over rounds), peak physical memory, losses",
             f"{'workload':9} {'mode':11} | {'step ms':>8} {'spread':>15} {'vs caching':>10} | {'peak MiB':>9} "
             f"{'vs caching':>10} {'vs expand.':>9} | losses"]
    for w, cells in res.items():
        for m in modes:
            c = cells[m]
            if not c["runs"]:
                lines.append(f"{w:9} {m:11} | {'failed':>8}")
                continue
            sp = c["step_ms_spread"]
            loss = {True: "= nocache, bit for bit", False: "DIFFER from nocache", None: "-"}[c["losses_equal_nocache"]]
            if m == "nocache":
                loss = "repeatable" if c["losses_same_every_round"] else "NOT repeatable across rounds"
            elif m == "caching":
                loss = "(its own allocator: not compared with nocache)"
            elif c["losses_equal_nocache"] is None and c["losses_equal_caching"] is not None:
                loss = "= caching" if c["losses_equal_caching"] else "differ from caching"
            vs_exp = f"{c['physical_vs_expandable']:.3f}x" if c["physical_vs_expandable"] else "-"
            lines.append(f"{w:9} {m:11} | {c['median_step_ms']:8.2f} {f'{sp[0]:.2f}-{sp[1]:.2f}':>15} "
                         f"{(c['step_vs_caching'] or 0):9.3f}x | {(c['peak_physical_bytes'] or 0) / 2**20:9.0f} "
                         f"{(c['physical_vs_caching'] or 0):9.3f}x {vs_exp:>9} | {loss}")
    lines.append("(peak physical: gpuheap's peak_mapped_bytes for gpuheap/pluggable, "
                 "torch.cuda.max_memory_reserved otherwise; the column after it: vs expandable segments)")
    work = [(w, m, cells[m]["heap_work"]) for w, cells in res.items() for m in modes if cells[m].get("heap_work")]
    if work:
        lines.append("gpuheap's driver work per run (median over rounds): fences, releases in legacy free order, "
                     "seals, mappings / unmaps")
        for w, m, h in work:
            lines.append(f"  {w:9} {m:12} {h['fences']:6.0f} fences {h['order_releases']:7.0f} releases "
                         f"{h['seal_events']:7.0f} seals {h['backend_map']:6.0f} / {h['backend_unmap']:.0f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True, help="gpuheap's build directory (tools/gpuheap-run, lib/preload)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workloads", default="cnn,gpt")
    ap.add_argument("--with-fixed", action="store_true", help="also train.py's fixed-shape transformer")
    ap.add_argument("--with-pluggable", action="store_true", help="also gpu_torch_alloc/free as a pluggable allocator")
    ap.add_argument("--timeout", type=int, default=600, help="seconds one run may take")
    ap.add_argument("--modes", default=",".join(MODES[:4]), help="the modes to run, of " + ", ".join(MODES))
    ap.add_argument("--page-size", default="2M", help="GPUHEAP_PAGE_SIZE of the gpuheap-paged mode (2M)")
    ap.add_argument("--base-build", help="also the gpuheap mode with this build (mode gpuheap-base)")
    ap.add_argument("--keep-traces", action="store_true",
                    help="record each gpuheap run's calls (GPUHEAP_TRACE) to OUT/runs/TAG.trace, for gpuheap-replay "
                         "(those runs' steps then carry the recording's cost)")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    workloads = [w for w in args.workloads.split(",") if w] + (["fixed"] if args.with_fixed else [])
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}: choose from {MODES}")
    if args.base_build:
        args.base_build = os.path.abspath(args.base_build)
        modes += tuple(m + "-base" for m in ("gpuheap", "gpuheap-paged") if m in modes)
    modes += ("pluggable",) if args.with_pluggable else ()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "runs")
    os.makedirs(work, exist_ok=True)

    runs = []
    for rnd in range(1, args.reps + 1):
        print(f"round {rnd} of {args.reps}", flush=True)
        for w in workloads:
            for m in modes:
                try:
                    runs.append(run_one(w, m, rnd, args, work))
                except subprocess.TimeoutExpired:
                    runs.append({"workload": w, "mode": m, "round": rnd, "rc": -1, "error": "timeout"})
                    print(f"  {w}-{m}-{rnd}: TIMEOUT", flush=True)

    res = summarize(runs, workloads, modes)
    device = next((r["device"] for r in runs if r.get("device")), "unknown device")
    text = table(res, modes, device)
    if args.keep_traces:
        text += ("\n(--keep-traces: every gpuheap run recorded its calls and the peers did not; recording costs"
                 " 0.1-0.2 us a call and takes each call off the fast path, so compare steps without it)")
    print("\n" + text)
    with open(os.path.join(args.out, "frameworks.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "frameworks.json"), "w") as f:
        json.dump({"device": device, "torch": next((r["torch"] for r in runs if r.get("torch")), None),
                   "reps": args.reps, "steps": args.steps, "workloads": workloads, "modes": list(modes),
                   "traced": args.keep_traces,
                   "summary": res, "runs": runs}, f, indent=1)
    failed = any(r["rc"] != 0 for r in runs)
    differ = any(res[w][m]["losses_equal_nocache"] is False and res[w]["nocache"]["losses_same_every_round"]
                 for w in workloads for m in HEAP_RUN if m in modes and "nocache" in modes)
    return 1 if failed or differ else 0


if __name__ == "__main__":
    sys.exit(main())
