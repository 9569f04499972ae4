#!/usr/bin/env bash
# bench/run-issue15.sh BASE_COMMIT OUT — issue 15's GPU run in one call, on a GPU machine
# (about 35 minutes on an H200; each step's output lands in OUT):
#
#  1. bench/compare.sh: BASE_COMMIT built beside this tree (build-cmp), this tree's GPU,
#     unit and stress suites, then gpuheap-bench's pairs and threads scenarios 3 rounds
#     each, alternating before and after; compare.txt has the side-by-side medians (~15 min)
#  2. gpuheap-pair-cost: a warm pair's time and driver calls per size (event records and
#     queries, and whether the malloc or the free made them; fences; maps) on the default
#     heap, an explicit heap and stream-ordered; pair-cost.txt (~1 min)
#  3. gpuheap-demo --json: the plain and the stream-ordered pair beside cudaMalloc and
#     cudaMallocAsync; demo.txt, demo.json (~2 min)
#  4. bench/frameworks.py (needs torch): the shape-changing CNN and GPT (and the pluggable
#     allocator) under caching, expandable segments, gpuheap-run and plain cudaMalloc,
#     3 rounds interleaved; frameworks/frameworks.{txt,json} (~12 min)
# Every step runs even if an earlier one failed; the exit status is the first failure's.
set -uo pipefail
base=${1:?usage: bench/run-issue15.sh BASE_COMMIT OUT}
out=${2:?usage: bench/run-issue15.sh BASE_COMMIT OUT}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
status=0
note() { [ "$1" -eq 0 ] || { [ "$status" -ne 0 ] || status=$1; echo "== step failed: $2 (rc $1)"; }; }

rm -rf "$out/base-src" && mkdir -p "$out/base-src"
git archive "$base" | tar -x -C "$out/base-src" || { echo "cannot export $base"; exit 1; }
echo "== 1. compare.sh against $base ($(date -u +%H:%M) UTC)"
bash bench/compare.sh "$out/base-src" "$out/compare" 3 2>&1 | tee "$out/compare.txt"
note "${PIPESTATUS[0]}" compare

echo "== 2. gpuheap-pair-cost ($(date -u +%H:%M) UTC)"
{
  build-cmp/bench/gpuheap-pair-cost &&
  build-cmp/bench/gpuheap-pair-cost --explicit &&
  build-cmp/bench/gpuheap-pair-cost --async
} 2>&1 | tee "$out/pair-cost.txt"
note "${PIPESTATUS[0]}" pair-cost

echo "== 3. gpuheap-demo ($(date -u +%H:%M) UTC)"
build-cmp/bench/gpuheap-demo --json "$out/demo.json" 2>&1 | tee "$out/demo.txt"
note "${PIPESTATUS[0]}" demo

echo "== 4. frameworks.py ($(date -u +%H:%M) UTC)"
python3 bench/frameworks.py --build build-cmp --out "$out/frameworks" --with-pluggable 2>&1 | tee "$out/frameworks.log"
note "${PIPESTATUS[0]}" frameworks
echo "== done ($(date -u +%H:%M) UTC), status $status"
exit "$status"
