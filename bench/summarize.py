#!/usr/bin/env python3
"""summarize.py — bench/RESULTS.md's tables from one GPU run's JSON files.

gpuheap-bench writes every figure of a run (bench.json), torch_bench.py PyTorch's
(torch.json); this turns them into Markdown tables where every gpuheap figure
stands beside its peers' from the same run and as a ratio to them, so that the
results page is regenerated rather than retyped:

    python3 bench/summarize.py bench.json torch.json > tables.md
"""
import json
import sys


def label(n):
    for unit, s in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << s and n % (1 << s) == 0:
            return f"{n >> s} {unit}"
    return f"{n} B"


def x(a, b):
    """a / b as a ratio, or n/a."""
    return f"{a / b:.2f}x" if a and b else "n/a"


def main():
    b = json.load(open(sys.argv[1]))
    t = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {}
    tp = {m: {r["size"]: r for r in t.get(m, {}).get("pairs", [])} for m in ("caching", "expandable")}
    print(f"Device: {b['device']}; gpuheap-bench {'--quick' if b['quick'] else '(full)'}, {b['date']} UTC.\n")

    print("### Warm malloc+free pairs (ns per pair, median of batches of 32; p99 in brackets)\n")
    print("| size | gpuheap | cudaMallocAsync | PyTorch caching | PyTorch expandable | cudaMalloc (alone) "
          "| vs cudaMallocAsync | vs PyTorch | vs expandable | vs cudaMalloc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in b.get("pairs", []):
        g, a, m = r["gpuheap_loop"], r["cudaMallocAsync_loop"] or {}, r["cudaMalloc_alone"] or {}
        c, e = tp["caching"].get(r["size"]) or {}, tp["expandable"].get(r["size"]) or {}
        med = lambda q: q.get("median_ns", 0)  # a run without a GPU has gpuheap alone: its peers are "—"
        lat = lambda q: f"{q['median_ns']:.0f} ({q['p99_ns']:.0f})" if q else "—"
        print(f"| {label(r['size'])} | {lat(g)} | {lat(a)} | {lat(c)} | {lat(e)} "
              f"| {f'{med(m):,.0f}' if m else '—'} | {x(med(a), med(g))} | {x(med(c), med(g))} "
              f"| {x(med(e), med(g))} | {x(med(m), med(g))} |")
    print()
    print("Where gpuheap's time goes (same run): loop median on an explicit CUDA heap / on a host-backend heap "
          "(bookkeeping alone, no driver):",
          ", ".join(f"{label(r['size'])} {r['gpuheap_explicit_heap_loop']['median_ns']:.0f} / "
                    f"{(r['gpuheap_host_backend_loop'] or {}).get('median_ns', 0):.0f}" for r in b.get("pairs", [])
                    if r.get("gpuheap_explicit_heap_loop")))
    print()

    if "trace_overhead" in b:
        print("### Trace recording overhead (ns per warm pair, same run)\n")
        print("| size | off | on (back-to-back) | overhead | off (bursts) | on (bursts) | overhead |")
        print("|---|---|---|---|---|---|---|")
        for r in b["trace_overhead"]:
            print(f"| {label(r['size'])} | {r['off_ns']:.0f} | {r['on_ns']:.0f} | +{r['overhead_ns']:.0f} "
                  f"| {r['burst_off_ns']:.0f} | {r['burst_on_ns']:.0f} | +{r['burst_overhead_ns']:.0f} |")
        print()

    if "threads" in b:
        rows = b["threads"]["rows"]
        g1, a1 = rows[0]["gpuheap_pairs_per_s"], rows[0]["cudaMallocAsync_pairs_per_s"]
        print("### Threads: warm 4 KiB pairs, aggregate million pairs/s\n")
        print("| threads | gpuheap | scaling | cudaMallocAsync | scaling | cudaMalloc | gpuheap vs cudaMallocAsync |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            g, a = r["gpuheap_pairs_per_s"], r["cudaMallocAsync_pairs_per_s"]
            print(f"| {r['threads']} | {g / 1e6:.2f} | {x(g, g1)} | {a / 1e6:.3f} | {x(a, a1)} "
                  f"| {r['cudaMalloc_pairs_per_s'] / 1e6:.4f} | {x(g, a)} |")
        print()

    if "threads_larger" in b:
        t = b["threads_larger"]
        rows = t["rows"]
        first = rows[0]["gpuheap_pairs_per_s"]
        sizes = " and ".join(label(z) for z in t["sizes"])
        print(f"### Threads: gpuheap's warm pairs at {sizes}, aggregate million pairs/s\n")
        print("| threads | " + " | ".join(f"{label(z)} | scaling" for z in t["sizes"]) + " |")
        print("|---|" + "---|---|" * len(t["sizes"]))
        for r in rows:
            cells = [f"{v / 1e6:.2f} | {x(v, f)}" for v, f in zip(r["gpuheap_pairs_per_s"], first)]
            print(f"| {r['threads']} | " + " | ".join(cells) + " |")
        print()

    if "growth" in b:
        gr = b["growth"]
        g = gr["gpuheap"]
        print(f"### Growth: realloc doubling {label(gr['from'])} -> {label(gr['to'])}\n")
        print("| allocator | total ms | device bytes copied | gpuheap faster by |")
        print("|---|---|---|---|")
        print(f"| gpuheap gpu_realloc | {g['seconds'] * 1e3:.3f} | {g['copied_bytes']:,} ({g['copy_calls']} copy calls) | |")
        for k, name in (("cudaMalloc", "cudaMalloc + cudaMemcpy + cudaFree"),
                        ("cudaMallocAsync", "cudaMallocAsync + cudaMemcpyAsync + cudaFreeAsync")):
            p = gr[k]
            print(f"| {name} | {p['seconds'] * 1e3:.3f} | {p['copied_bytes']:,} | {x(p['seconds'], g['seconds'])} |")
        print()

    if "cold" in b:
        print("### Cold: first allocation on an empty heap (µs, median; each round in a fresh process)\n")
        print("| size | gpuheap | cudaMalloc | cudaMallocAsync (+ sync, trimmed pool) | cudaMalloc / gpuheap "
              "| cudaMallocAsync / gpuheap | gpuheap, a second heap | cudaMalloc / second heap "
              "| gpu_malloc, the default heap made inside | cudaMalloc beside it | cudaMalloc / gpu_malloc |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in b["cold"]:
            second = r.get("gpuheap_second_heap_ns")
            tail = (f"| {second / 1e3:.1f} | {x(r['cudaMalloc_ns'], second)} |" if second is not None else "| | |")
            dflt, beside = r.get("gpu_malloc_default_heap_ns"), r.get("cudaMalloc_beside_default_ns")
            tail += (f" {dflt / 1e3:.1f} | {beside / 1e3:.1f} | {x(beside, dflt)} |" if dflt is not None else " | | |")
            print(f"| {label(r['size'])} | {r['gpuheap_ns'] / 1e3:.1f} | {r['cudaMalloc_ns'] / 1e3:.1f} "
                  f"| {r['cudaMallocAsync_ns'] / 1e3:.1f} | {x(r['cudaMalloc_ns'], r['gpuheap_ns'])} "
                  f"| {x(r['cudaMallocAsync_ns'], r['gpuheap_ns'])} {tail}")
        print()

    def peer_table(results, extra=None):
        by = {r["allocator"]: r for r in results}
        g = by.get("gpuheap", {})
        out = []
        for name in ("gpuheap", "gpuheap-rt0", "cudaMalloc", "cudaMallocAsync"):
            r = by.get(name)
            if not r:
                continue
            new = f" ({r['creates']:,} new)" if "creates" in r else ""
            work = f"{r['maps']:,}{new} / {r['unmaps']:,} / {r['fences']:,}" if "maps" in r else ""
            out.append((name, r["us_per_call"], r["peak_physical"], r["peak_live"], r["fragmentation"],
                        x(r["us_per_call"], g.get("us_per_call")) if name != "gpuheap" else "",
                        x(r["peak_physical"], g.get("peak_physical")) if name != "gpuheap" else "", r["failed"], work))
        if extra:
            out.append(extra)
        return out

    if "random" in b:
        tr = {(r["max_size"], r["ops"]): r for m in ("caching", "expandable") for r in t.get(m, {}).get("random", [])
              if m == "caching"}
        te = {(r["max_size"], r["ops"]): r for r in t.get("expandable", {}).get("random", [])}
        print("### Random (RMM random_allocations: p(alloc) 0.73, sizes 1 B..max, live <= 16 GiB)\n")
        print("µs per call; peak physical held and peak physical / peak live; 'vs gpuheap' = the row's figure / "
              "gpuheap's (above 1: gpuheap is faster or holds less). gpuheap-rt0 = GPUHEAP_RELEASE_THRESHOLD=0. "
              "Driver work: gpuheap's mappings (of them, new memory) / unmaps / fences in the case.\n")
        print("| max size, ops | allocator | µs/call | time vs gpuheap | peak physical MiB | phys / live "
              "| phys vs gpuheap | driver work |")
        print("|---|---|---|---|---|---|---|---|")
        for case in b["random"]:
            key = (case["max_size"], case["ops"])
            rows = peer_table(case["results"])
            for lab, src in (("PyTorch caching", tr), ("PyTorch expandable", te)):
                r = src.get(key)
                if r:
                    g = next((z for z in case["results"] if z["allocator"] == "gpuheap"), {})
                    rows.append((lab, r["us_per_call"], r["peak_reserved"], r["peak_live"],
                                 r["peak_reserved"] / r["peak_live"] if r["peak_live"] else 0,
                                 x(r["us_per_call"], g.get("us_per_call")), x(r["peak_reserved"], g.get("peak_physical")),
                                 r["failed"], ""))
            for i, (name, us, phys, live, frag, tv, pv, failed, work) in enumerate(rows):
                head = f"{label(case['max_size'])}, {case['ops'] // 1000}k" if i == 0 else ""
                print(f"| {head} | {name} | {us:.3f} | {tv} | {phys / 2**20:,.0f} | {frag:.3f} | {pv} | {work} |"
                      + (" FAILED" if failed else ""))
        print()

    if "replay" in b:
        rp = b["replay"]
        print(f"### Replay of a recorded trace ({rp['trace']}, {rp['events']} events)\n")
        print("| allocator | µs/call | time vs gpuheap | peak physical MiB | fragmentation (phys / live) "
              "| phys vs gpuheap | maps / unmaps / fences |")
        print("|---|---|---|---|---|---|---|")
        for name, us, phys, live, frag, tv, pv, failed, work in peer_table(rp["results"]):
            print(f"| {name} | {us:.3f} | {tv} | {phys / 2**20:,.0f} | {frag:.3f} | {pv} | {work} |"
                  + (" FAILED" if failed else ""))
        print()

    modes = [m for m in ("caching", "expandable", "gpuheap", "gpuheap-trace") if "train" in t.get(m, {})]
    if modes:
        base = t["caching"]["train"]["step_ms_median"] if "caching" in modes else 0
        print("### PyTorch training step (transformer encoder, 6 layers, d 512, batch 32x256)\n")
        print("| allocator | step ms (median) | vs caching | peak physical MiB | peak live MiB |")
        print("|---|---|---|---|---|")
        names = {"caching": "PyTorch caching (default)", "expandable": "PyTorch expandable_segments",
                 "gpuheap": "gpuheap (CUDAPluggableAllocator)", "gpuheap-trace": "gpuheap, GPUHEAP_TRACE on"}
        for m in modes:
            tr = t[m]["train"]
            print(f"| {names[m]} | {tr['step_ms_median']:.2f} | {x(tr['step_ms_median'], base)} "
                  f"| {tr.get('peak_physical', 0) / 2**20:,.0f} | {tr.get('peak_live', 0) / 2**20:,.0f} |")
        print()


if __name__ == "__main__":
    main()
