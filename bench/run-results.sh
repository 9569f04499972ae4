#!/usr/bin/env bash
# bench/run-results.sh OUT — the GPU run behind bench/RESULTS.md, in one command.
#
# Builds a fresh tree, runs the stats and trace tests, then torch_bench.py (PyTorch's
# allocator, and gpuheap under PyTorch, which records the real trace), then
# gpuheap-bench with every scenario (replaying that trace), gpuheap-heaps, and gpuheap-replay on it.
# Leaves in OUT (at most 7 files): run.log, torch.log, torch.json, bench.log,
# bench.json, replay.json, torch-train.trace.gz. QUICK=1 passes --quick everywhere.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/run-results.sh OUT}
build=${BUILD_DIR:-build-gpu}
quick=${QUICK:+--quick}
mkdir -p "$out"
log="$out/run.log"
{
  echo "== $(date -u +%FT%TZ) commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  nproc
} >"$log"
[ -f "$build/build.ninja" ] || meson setup "$build" >>"$log" 2>&1
if ! ninja -C "$build" >>"$log" 2>&1; then
  tail -40 "$log"
  exit 1
fi
meson test -C "$build" stats trace --print-errorlogs >>"$log" 2>&1 || echo "stats/trace tests FAILED" | tee -a "$log"
tmp=$(mktemp -d)
python3 bench/torch_bench.py --out "$tmp/torch" --plugin "$build/bench/libtorch_gpuheap.so" \
  --trace "$tmp/torch-train.trace" $quick >"$out/torch.log" 2>&1
cp "$tmp/torch/torch.json" "$out/" 2>/dev/null
trace=""
if [ -s "$tmp/torch-train.trace" ]; then
  gzip -9 -c "$tmp/torch-train.trace" >"$out/torch-train.trace.gz"
  trace="--trace $out/torch-train.trace.gz"
fi
"$build/bench/gpuheap-bench" $quick $trace --json "$out/bench.json" >"$out/bench.log" 2>&1
"$build/bench/gpuheap-heaps" ${QUICK:+--rounds 3} >>"$out/bench.log" 2>&1 # a process's later heaps, against cudaMemPoolCreate
if [ -n "$trace" ]; then
  "$build/tools/gpuheap-replay" "$out/torch-train.trace.gz" --json "$out/replay.json" >>"$out/bench.log" 2>&1
fi
# Where a cold allocation's time goes: the cold scenario again under GPUHEAP_TRACE
# (one file per process: its rounds run in fresh processes), then the median
# duration of each backend call per size, in the fresh processes and beside the
# benchmark's default heap.
GPUHEAP_TRACE="$tmp/cold.%p.trace" "$build/bench/gpuheap-bench" --quick --only cold >/dev/null 2>&1
python3 - "$tmp"/cold.*.trace >>"$out/bench.log" 2>&1 <<'PY'
import sys, statistics
rows = {}
files = sorted(sys.argv[1:], key=lambda f: int(f.split(".")[-2]))
for i, f in enumerate(files):
    where = "second heap" if i == 0 else "fresh process"  # the benchmark itself started first
    for line in open(f):
        if line.startswith("#"):
            continue
        c = line.split()
        op, size, dur = c[2], int(c[6]), int(c[11])
        if op in ("malloc", "create", "map", "access", "reserve") and size >= (2 << 20):
            rows.setdefault((where, size if op != "reserve" else 0, op), []).append(dur)
print("\n== cold, traced: median duration of each call, us (reserve: the heap's VA, before the first malloc) ==")
for (where, size, op), d in sorted(rows.items()):
    print(f"{where:14s} {size >> 20:>8} MiB {op:8s} {statistics.median(d) / 1e3:10.1f}  (n={len(d)})")
PY
tail -c 6000 "$out/bench.log"
rm -rf "$tmp"
