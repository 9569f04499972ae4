#!/usr/bin/env bash
# bench/pair_cost.sh BUILD [SIZE ...] — instructions per warm gpu_malloc+gpu_free
# pair, counted by callgrind inside gpuheap-pair-cost's run_pairs (the measured
# pairs only, not the warm-up): a figure two builds can be compared by on a
# machine that other work shares. One valgrind run per size; host backend unless
# GPUHEAP_BACKEND says otherwise. PAIR_COST_ARGS adds arguments (--explicit, --async).
set -euo pipefail
build=${1:?usage: bench/pair_cost.sh BUILD [SIZE ...]}
shift
sizes=${*:-256 4K 64K 1M 16M 256M 1G}
pairs=${PAIR_COST_PAIRS:-5000}
export GPUHEAP_BACKEND=${GPUHEAP_BACKEND:-host}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf "%8s | %12s\n" size "instr/pair"
for s in $sizes; do
  valgrind --tool=callgrind --toggle-collect=run_pairs --callgrind-out-file="$tmp/cg" \
    "$build/bench/gpuheap-pair-cost" ${PAIR_COST_ARGS:-} --pairs "$pairs" "$s" >/dev/null 2>"$tmp/log"
  ir=$(sed -n 's/^summary: *//p' "$tmp/cg")
  printf "%8s | %12.1f\n" "$s" "$(echo "$ir / $pairs" | bc -l)"
done
