#!/usr/bin/env python3
"""bench/compare.py OUT — the before/after table of bench/compare.sh.

Reads OUT/before-N.json and OUT/after-N.json (gpuheap-bench --only pairs,threads) and
prints, per size, the median over rounds of gpuheap's warm pair (ns, batch loop) before
and after and their ratio, with each side's spread (min-max over rounds) so that a
reader can tell a change from the machine's noise; then the same for the threads
scenario's aggregate pairs per second at each thread count.
"""
import glob
import json
import statistics
import sys


def load(out, side):
    runs = []
    for path in sorted(glob.glob(f"{out}/{side}-*.json")):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def pair_ns(run):
    return {row["size"]: row["gpuheap_loop"]["median_ns"] for row in run.get("pairs", [])
            if not row["gpuheap_loop"].get("failed")}


def thread_rate(run):
    t = run.get("threads") or {}
    return {row["threads"]: row["gpuheap_pairs_per_s"] for row in t.get("rows", [])}


def size_label(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def table(title, key_label, before, after, fmt_key, higher_is_better):
    keys = sorted(set().union(*[set(r) for r in before + after])) if before + after else []
    print(f"\n{title}")
    print(f"{key_label:>10} | {'before':>10} {'(spread)':>17} | {'after':>10} {'(spread)':>17} | after/before")
    for k in keys:
        b = [r[k] for r in before if k in r]
        a = [r[k] for r in after if k in r]
        if not b or not a:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        ratio = ma / mb if mb else float("nan")
        note = "" if higher_is_better is None else ("  (higher is better)" if higher_is_better else "")
        print(f"{fmt_key(k):>10} | {mb:10.4g} ({min(b):7.4g}-{max(b):7.4g}) | {ma:10.4g} ({min(a):7.4g}-{max(a):7.4g}) | {ratio:6.3f}{note}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    before, after = load(out, "before"), load(out, "after")
    if not before or not after:
        sys.exit(f"compare.py: no before-*.json / after-*.json in {out}")
    device = after[0].get("device", "?")
    print(f"== gpuheap-bench pairs and threads, before vs after, {len(before)} rounds each, {device}")
    table("warm gpu_malloc+gpu_free pair, ns (median of rounds; lower is better)", "size",
          [pair_ns(r) for r in before], [pair_ns(r) for r in after], size_label, False)
    table("4 KiB pairs, aggregate pairs/s (median of rounds; higher is better)", "threads",
          [thread_rate(r) for r in before], [thread_rate(r) for r in after], str, None)


if __name__ == "__main__":
    main()
