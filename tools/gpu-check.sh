#!/usr/bin/env bash
# tools/gpu-check.sh OUT — the verification run on a GPU machine, in one command:
# every test suite (gpu, unit, stress), then the demo, the stream-ordered pair
# benchmark and the growable array. Logs and JSON go to OUT (7 files); a short
# table comes last. cmocka is taken from .deps/*.deb when the machine lacks it
# (shared/GPU.md). BUILD_DIR picks the build folder (default build-gpu); COMMIT names
# the tree in the table's header where the copy's git metadata may lag (the device tool's).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu-check.sh OUT}
build=${BUILD_DIR:-build-gpu}
mkdir -p "$out"
if [ ! -f /usr/include/cmocka.h ] && compgen -G ".deps/*.deb" >/dev/null; then
  for f in .deps/*.deb; do dpkg -x "$f" /; done
fi
{ [ -f "$build/build.ninja" ] || meson setup "$build"; } >/dev/null 2>&1
if ! ninja -C "$build" >"$out/tests.log" 2>&1; then tail -30 "$out/tests.log"; exit 1; fi
meson test -C "$build" --suite gpu --suite unit --suite stress --print-errorlogs >>"$out/tests.log" 2>&1
tests_rc=$?
"$build/bench/gpuheap-demo" --json "$out/demo.json" >"$out/demo.txt" 2>&1
"$build/bench/gpuheap-async-pairs" --json "$out/async_pairs.json" >"$out/async_pairs.txt" 2>&1
"$build/bench/gpuheap-growable-array" 32 --json "$out/growable.json" >"$out/growable.txt" 2>&1

echo "== $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null), commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}"
grep -E "^ *[0-9]+/[0-9]+ " "$out/tests.log" | sed 's/  */ /g'
grep -E "^(Ok|Fail|Skipped|Timeout):" "$out/tests.log"
sed -n '/size |/,$p' "$out/demo.txt"
cat "$out/async_pairs.txt"
tail -3 "$out/growable.txt"
exit $tests_rc
