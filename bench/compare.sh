#!/usr/bin/env bash
# bench/compare.sh BASE_SRC OUT [ROUNDS] — a change measured against the code before it,
# in one run on one machine: builds BASE_SRC (a source tree of the earlier commit, e.g.
# from `git archive`) and this tree, runs the GPU, unit and stress suites of this tree,
# then gpuheap-bench's pairs and threads scenarios ROUNDS times (default 3), alternating
# before and after so that the machine's drift falls on both. Leaves tests.log and
# before-N.json / after-N.json in OUT and prints the side-by-side medians last
# (bench/compare.py). cmocka comes from .deps/*.deb where the machine lacks it.
set -uo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/compare.sh BASE_SRC OUT [ROUNDS]}
out=${2:?usage: bench/compare.sh BASE_SRC OUT [ROUNDS]}
rounds=${3:-3}
mkdir -p "$out"
if [ ! -f /usr/include/cmocka.h ] && compgen -G ".deps/*.deb" >/dev/null; then
  for f in .deps/*.deb; do dpkg -x "$f" /; done
fi
build() { # $1: source dir; the build goes to $1/build-cmp
  { [ -f "$1/build-cmp/build.ninja" ] || meson setup "$1/build-cmp" "$1"; } >/dev/null 2>&1
  ninja -C "$1/build-cmp" >"$out/build-$2.log" 2>&1 || { tail -30 "$out/build-$2.log"; exit 1; }
}
build "$base" before
build . after
meson test -C build-cmp --suite gpu --suite unit --suite stress --print-errorlogs >"$out/tests.log" 2>&1
tests_rc=$?
for i in $(seq 1 "$rounds"); do
  "$base/build-cmp/bench/gpuheap-bench" --only pairs,threads --json "$out/before-$i.json" >/dev/null 2>&1
  build-cmp/bench/gpuheap-bench --only pairs,threads --json "$out/after-$i.json" >/dev/null 2>&1
done
echo "== $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no GPU'), $rounds rounds"
grep -E "^ *[0-9]+/[0-9]+ " "$out/tests.log" | sed 's/  */ /g'
grep -E "^(Ok|Fail|Skipped|Timeout):" "$out/tests.log"
python3 bench/compare.py "$out"
exit $tests_rc
