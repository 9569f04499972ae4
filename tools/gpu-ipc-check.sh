#!/usr/bin/env bash
# tools/gpu-ipc-check.sh OUT — the IPC proofs on a GPU machine, in one command
# (issue 13): builds gpuheap (meson, without the cmocka tests) and
# test/preload/ipc_pair.cu (nvcc: static CUDA runtime), then runs
#   a. ipc_pair plain, under gpuheap-run, and with only one side under gpuheap
#      (exporter under gpuheap: the plain importer's driver must refuse every
#      handle with invalid argument; importer under gpuheap: must work);
#   b. test/preload/ipc_torch.py, plain and under gpuheap-run, caching on and off;
#   c. test/preload/ipc_loop.py (3000 tensors), plain and under gpuheap-run;
#   d. bench/ipc_bench.c (gpuheap's IPC against cudaIpc*, N=200, 1 and 64 MiB);
#   a'. ipc_pair under compute-sanitizer memcheck with the interposer, both ways
#      of combining them: gpuheap-run inside the sanitizer, and
#      `env LD_PRELOAD=...` inside it (blocks up to 64 MiB) — last, as the slowest.
# Logs go to OUT (8 files: build.log, pair.log, sanitizer.log, torch.log,
# loop.log, bench.log, bench.json, summary.txt); the table is printed last.
# Every row is appended to summary.txt as soon as its step ends, so a run cut
# short still leaves what it did. Exit status 0 when every check that gpuheap
# must pass passed. Multicast stays off (shared/GPU.md). BUILD_DIR picks the
# build folder (default build-ipc); STEP_TIMEOUT bounds each step (default 150 s;
# a typical run takes about 5 minutes).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:?usage: tools/gpu-ipc-check.sh OUT}
build=${BUILD_DIR:-build-ipc}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
W=$(mktemp -d)
T() { timeout "${STEP_TIMEOUT:-150}" "$@"; }
summary="$out/summary.txt"
: >"$summary"
row() { printf '%-46s %-9s %s\n' "$1" "$2" "$3" >>"$summary"; }
failed=0
must() { [ "$1" = OK ] || failed=1; } # a check gpuheap must pass

# ---- build ---------------------------------------------------------------------
{
  echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  { [ -f "$build/build.ninja" ] || meson setup "$build" -Dtests=false; } && ninja -C "$build"
} >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
"$nvcc" -O2 -arch="sm_${cap:-90}" -o "$W/ipc_pair" test/preload/ipc_pair.cu >>"$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log"; exit 1; }
build=$(cd "$build" && pwd)
run="$build/tools/gpuheap-run"
so="$build/lib/preload/libgpuheap-preload.so"
card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)

# The interposer's IPC counts in a log, summed over its processes' exit lines:
# "g o c fg fo fc" (served get/open/close, then those that failed there).
ipc_counts() {
  grep -o 'IPC get/open/close: [0-9]*/[0-9]*/[0-9]* served by gpuheap, [0-9]*/[0-9]*/[0-9]* failed' "$1" |
    awk -F'[ /:,]+' '{g+=$5; o+=$6; c+=$7; fg+=$11; fo+=$12; fc+=$13} END {print g+0, o+0, c+0, fg+0, fo+0, fc+0}'
}
ipc_served() {
  # shellcheck disable=SC2046
  set -- $(ipc_counts "$1")
  echo "gpuheap get/open/close $1/$2/$3 (failed $4/$5/$6)"
}
# OK when gpuheap itself served at least G gets and O opens in the log, and none failed.
served_ok() {
  # shellcheck disable=SC2046
  set -- "$2" "$3" $(ipc_counts "$1")
  [ "$3" -ge "$1" ] && [ "$4" -ge "$2" ] && [ "$6" -eq 0 ] && [ "$7" -eq 0 ] && [ "$8" -eq 0 ] && echo OK || echo FAILED
}
verdict() { [ "$1" -eq 0 ] && echo OK || echo "FAILED"; }

# ---- a. ipc_pair -------------------------------------------------------------------
pair() { # LABEL CMD...
  local label=$1; shift
  echo "== $label: $*" >>"$out/pair.log"
  T "$@" >"$W/pair.txt" 2>&1; local rc=$?
  cat "$W/pair.txt" >>"$out/pair.log"; echo "rc $rc" >>"$out/pair.log"
  return $rc
}
pair plain "$W/ipc_pair"; r=$?
row "a  ipc_pair plain (cudaMalloc, legacy IPC)" "$(verdict $r)" "rc $r"; must "$(verdict $r)"
pair gpuheap-run "$run" --stats --verbose "$W/ipc_pair"; r=$?
v=$(verdict $r); [ "$(served_ok "$W/pair.txt" 6 6)" = OK ] || v=FAILED
row "a  ipc_pair under gpuheap-run" "$v" "rc $r, $(ipc_served "$W/pair.txt")"; must "$v"
pair "exporter under gpuheap, importer plain" "$run" --stats "$W/ipc_pair" --child-preload none
refused=$(grep -c 'cudaIpcOpenMemHandle failed: invalid argument' "$W/pair.txt")
[ "$refused" -eq 6 ] && v=OK || v=FAILED
row "a  exporter gpuheap, importer plain: refused" "$v" "$refused of 6 opens refused with invalid argument (documented)"; must "$v"
pair "exporter plain, importer under gpuheap" "$W/ipc_pair" --child-preload "$so"; r=$?
row "a  exporter plain, importer under gpuheap" "$(verdict $r)" "rc $r (driver handles passed on)"; must "$(verdict $r)"

# ---- b. ipc_torch.py ---------------------------------------------------------------------
declare -A torch_rc
for caching in on off; do
  for how in plain gpuheap-run; do
    envs=()
    [ "$caching" = off ] && envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    pre=()
    [ "$how" = gpuheap-run ] && pre=("$run" --stats)
    echo "== caching $caching, $how" >>"$out/torch.log"
    T env "${envs[@]}" "${pre[@]}" python3 test/preload/ipc_torch.py >"$W/torch.txt" 2>&1; r=$?
    cat "$W/torch.txt" >>"$out/torch.log"; echo "rc $r" >>"$out/torch.log"
    torch_rc[$caching,$how]=$r
    case $r in
      0) v=OK; d="$(grep -c ': OK$' "$W/torch.txt") checks OK" ;;
      3) v=REFUSED; d="PyTorch's own refusal (uncached allocator), before any IPC call" ;;
      *) v=FAILED; d="rc $r, $(grep -c 'FAILED' "$W/torch.txt") failed lines" ;;
    esac
    if [ "$how" = gpuheap-run ]; then
      d="$d, $(ipc_served "$W/torch.txt")"
      [ "$r" -eq 0 ] && [ "$(served_ok "$W/torch.txt" 1 1)" != OK ] && { v=FAILED; torch_rc[$caching,$how]=1; }
    fi
    row "b  ipc_torch caching $caching, $how" "$v" "$d"
  done
done
# Under gpuheap, each caching mode must end as it ends without it (OK, or PyTorch's refusal).
[ "${torch_rc[on,gpuheap-run]}" -eq 0 ] || failed=1
{ [ "${torch_rc[off,gpuheap-run]}" -eq "${torch_rc[off,plain]}" ] && [ "${torch_rc[off,plain]}" -ne 1 ]; } || failed=1

# ---- c. ipc_loop.py ------------------------------------------------------------------------
for how in plain gpuheap-run; do
  pre=()
  [ "$how" = gpuheap-run ] && pre=("$run" --stats)
  echo "== $how" >>"$out/loop.log"
  T "${pre[@]}" python3 test/preload/ipc_loop.py --count 3000 >"$W/loop.txt" 2>&1; r=$?
  cat "$W/loop.txt" >>"$out/loop.log"; echo "rc $r" >>"$out/loop.log"
  fds=$(awk '/^(producer|consumer) /{printf "%s fds %s, ", $1, $2}' "$W/loop.txt")
  smi=$(grep -o 'nvidia-smi used MiB [0-9None]*->[0-9None]*' "$W/loop.txt")
  d="${fds}${smi:-no nvidia-smi}"
  v=$(verdict $r)
  if [ "$how" = gpuheap-run ]; then
    d="$d, $(ipc_served "$W/loop.txt")"
    [ "$(served_ok "$W/loop.txt" 1 1)" = OK ] || v=FAILED
    must "$v"
  fi
  row "c  ipc_loop 3000 tensors, $how" "$v" "$d"
done

# ---- d. ipc_bench ------------------------------------------------------------------------
T "$build/bench/gpuheap-ipc-bench" --n 200 --json "$out/bench.json" >"$out/bench.log" 2>&1; r=$?
ratios=$(grep -o 'per handle: [0-9.]*x' "$out/bench.log" | awk '{print $3}' | paste -sd/ -)
row "d  ipc_bench N=200, 1 MiB / 64 MiB" "$(verdict $r)" "cudaIpc/gpuheap per handle ${ratios:-?} (above 1: gpuheap faster)"
[ $r -eq 0 ] || failed=1

# ---- a'. compute-sanitizer memcheck with the interposer ------------------------------
sanitize() { # LABEL CMD...
  local label=$1; shift
  echo "== $label" >>"$out/sanitizer.log"
  T "$san" --tool memcheck --target-processes all --error-exitcode 9 "$@" >"$W/san.txt" 2>&1; local rc=$?
  cat "$W/san.txt" >>"$out/sanitizer.log"; echo "rc $rc" >>"$out/sanitizer.log"
  local sums; sums=$(grep -o 'ERROR SUMMARY: [0-9]* error' "$W/san.txt" | awk '{print $3}' | paste -sd+ -)
  local v=FAILED
  grep -q 'ipc_pair: OK' "$W/san.txt" && [ "$rc" -eq 0 ] && v=OK
  row "a' memcheck, $label" "$v" "rc $rc, errors per process ${sums:-none reported}, $(ipc_served "$W/san.txt")"
  echo "$v"
}
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$san" ]; then
  v1=$(sanitize "gpuheap-run inside" "$run" --stats "$W/ipc_pair" --max-bytes 67108864 | tail -1)
  v2=$(sanitize "env LD_PRELOAD inside" env LD_PRELOAD="$so" GPUHEAP_STATS=1 "$W/ipc_pair" --max-bytes 67108864 | tail -1)
  # One working way is enough; both are reported.
  { [ "$v1" = OK ] || [ "$v2" = OK ]; } || failed=1
else
  row "a' memcheck" "SKIPPED" "no compute-sanitizer on PATH"
fi

# ---- the table -------------------------------------------------------------------------------
echo "== $card, commit $(git rev-parse --short HEAD 2>/dev/null)"
sed -n '/IPC per handle/,$p' "$out/bench.log"
cat "$summary"
rm -rf "$W"
exit $failed
