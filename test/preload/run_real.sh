#!/usr/bin/env bash
# run_real.sh — the interposer's proofs on real programs (needs a GPU, nvcc,
# compute-sanitizer, python3 with torch and cupy).
#
#   bash test/preload/run_real.sh BUILD_DIR [OUT_DIR]
#
# 1. PyTorch, caching disabled (PYTORCH_NO_CUDA_MEMORY_CACHING=1), under
#    gpuheap-run: the training loop of train.py gives the same losses, bit for
#    bit, as the same run on plain cudaMalloc; its step time is compared with
#    PyTorch's caching allocator and with plain cudaMalloc (all in this run, on
#    this card).
# 2. PyTorch through CUDAPluggableAllocator with gpu_torch_alloc/gpu_torch_free:
#    the same losses.
# 3. alloc_loop.cu built with plain nvcc (static CUDA runtime): under gpuheap-run
#    its allocations land in the heap (the interposer's and the library's exit
#    summaries say how many), its checksum equals the plain run's, and
#    compute-sanitizer's memcheck over it under the interposer reports no error.
# 4. CuPy with gpu_cupy_malloc/gpu_cupy_free as its allocator: array operations
#    agree with NumPy.
# Everything printed goes to OUT_DIR/real.log; OUT_DIR/results.json holds the
# comparison (losses, medians, ratios, the card) and OUT_DIR/train_runs.json every
# training run. Exit status 0 only when every proof holds.
set -u -o pipefail
B=$(cd "${1:?usage: run_real.sh BUILD_DIR [OUT_DIR]}" && pwd)
OUT=${2:-$PWD/real-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
run="$B/tools/gpuheap-run"
so="$B/lib/preload/libgpuheap-preload.so"
W=$(mktemp -d)
exec > >(tee "$OUT/real.log") 2>&1

step() { echo; echo "== $*"; }
card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
step "card: $card"
export PYTHONUNBUFFERED=1

# ---- 3. a program built with plain nvcc ------------------------------------
step "3. alloc_loop (nvcc, static CUDA runtime)"
nvcc -O2 -arch=sm_90 -o "$W/alloc_loop" "$here/alloc_loop.cu"
if ldd "$W/alloc_loop" | grep -q libcudart; then echo "alloc_loop links libcudart dynamically"; static=false; else static=true; fi
echo "static CUDA runtime: $static"
T="timeout ${GPUHEAP_REAL_TIMEOUT:-150}" # no single step may take the whole run with it
$T "$W/alloc_loop" 3000 | tee "$W/loop_plain.txt"; rc_plain=$?
$T "$run" --stats "$W/alloc_loop" 3000 2>&1 | tee "$W/loop_heap.txt"; rc_heap=$?
step "3. compute-sanitizer memcheck under the interposer"
# gpuheap-run inside the sanitizer keeps whatever the sanitizer puts in LD_PRELOAD.
$T compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 "$run" --stats "$W/alloc_loop" 300 2>&1 |
    tee "$W/sanitizer.txt"
rc_sanitizer=$?

# ---- 4. CuPy ------------------------------------------------------------------
step "4. CuPy with gpu_cupy_malloc/gpu_cupy_free"
GPUHEAP_STATS=1 $T python3 "$here/cupy_check.py" "$so" "$W/cupy.json"; rc_cupy=$?

# ---- 1 and 2. PyTorch --------------------------------------------------------
train() { # LABEL [ENV...] -- [PREFIX...]
    local label=$1; shift
    step "PyTorch: $label"
    $T env "$@" python3 "$here/train.py" --label "$label" --out "$W/train-$label.json"
}
train cached
train cudaMalloc PYTORCH_NO_CUDA_MEMORY_CACHING=1
step "PyTorch: gpuheap-run"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 $T "$run" --stats python3 "$here/train.py" --label gpuheap-run --out "$W/train-gpuheap-run.json" 2>&1 |
    tee "$W/train-gpuheap-run.log"
step "PyTorch: pluggable"
GPUHEAP_STATS=1 $T python3 "$here/train.py" --label pluggable --pluggable "$so" --out "$W/train-pluggable.json" 2>&1 |
    tee "$W/train-pluggable.log"
# Second samples of the two timings the goal compares, and of the baseline's losses.
train cached-2
step "PyTorch: gpuheap-run-2"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 $T "$run" python3 "$here/train.py" --label gpuheap-run-2 --out "$W/train-gpuheap-run-2.json"
train cudaMalloc-2 PYTORCH_NO_CUDA_MEMORY_CACHING=1

# ---- the comparison --------------------------------------------------------------
step "results"
python3 - "$W" "$OUT" "$card" "$static" "$rc_plain" "$rc_heap" "$rc_sanitizer" "$rc_cupy" <<'PY'
import glob, json, os, re, sys
W, OUT, card, static, rc_plain, rc_heap, rc_san, rc_cupy = sys.argv[1:9]
runs = {}
for p in sorted(glob.glob(os.path.join(W, "train-*.json"))):
    with open(p) as f:
        r = json.load(f)
    runs[r["label"]] = r
json.dump(runs, open(os.path.join(OUT, "train_runs.json"), "w"), indent=1)

def same(a, b):
    return a in runs and b in runs and runs[a]["losses_hex"] == runs[b]["losses_hex"]

def maxdiff(a, b):
    if a not in runs or b not in runs: return None
    return max(abs(x - y) for x, y in zip(runs[a]["losses"], runs[b]["losses"]))

def med(*labels):
    v = [runs[l]["median_step_ms"] for l in labels if l in runs]
    return sum(v) / len(v) if v else None

def grab(path, pattern):
    try:
        txt = open(path).read()
    except OSError:
        return None
    m = re.findall(pattern, txt)
    return m[-1] if m else None

cached, plain, heap, plug = med("cached", "cached-2"), med("cudaMalloc", "cudaMalloc-2"), med("gpuheap-run", "gpuheap-run-2"), med("pluggable")
res = {
    "card": card,
    "pytorch": {
        "median_step_ms": {"caching": cached, "cudaMalloc": plain, "gpuheap-run": heap, "pluggable": plug,
                           "each_run": {k: v["median_step_ms"] for k, v in runs.items()}},
        "gpuheap_run_over_caching": heap / cached if heap and cached else None,
        "cudaMalloc_over_gpuheap_run": plain / heap if heap and plain else None,
        "pluggable_over_caching": plug / cached if plug and cached else None,
        "losses_equal": {
            "gpuheap-run vs cudaMalloc": same("gpuheap-run", "cudaMalloc"),
            "gpuheap-run-2 vs cudaMalloc": same("gpuheap-run-2", "cudaMalloc"),
            "pluggable vs cudaMalloc": same("pluggable", "cudaMalloc"),
            "cudaMalloc-2 vs cudaMalloc (baseline repeatable)": same("cudaMalloc-2", "cudaMalloc"),
            "cached vs cudaMalloc": same("cached", "cudaMalloc"),
            "cached-2 vs cached": same("cached-2", "cached"),
        },
        "max_abs_loss_difference": {
            "gpuheap-run vs cudaMalloc": maxdiff("gpuheap-run", "cudaMalloc"),
            "pluggable vs cudaMalloc": maxdiff("pluggable", "cudaMalloc"),
            "cached vs cudaMalloc": maxdiff("cached", "cudaMalloc"),
        },
        "losses_cudaMalloc": runs.get("cudaMalloc", {}).get("losses"),
        "memory": {
            "caching: max_memory_allocated / max_memory_reserved": [runs.get("cached", {}).get("max_memory_allocated"),
                                                                   runs.get("cached", {}).get("max_memory_reserved")],
            "gpuheap-run: heap at exit": grab(os.path.join(W, "train-gpuheap-run.log"), r"gpuheap: heap .* at exit: .*"),
            "gpuheap-run: interposer": grab(os.path.join(W, "train-gpuheap-run.log"), r"gpuheap-preload: .*"),
            "pluggable: heap at exit": grab(os.path.join(W, "train-pluggable.log"), r"gpuheap: heap .* at exit: .*"),
            "pluggable: interposer": grab(os.path.join(W, "train-pluggable.log"), r"gpuheap-preload: .*"),
        },
    },
    "alloc_loop": {
        "static_cudart": static == "true",
        "plain": {"rc": int(rc_plain), "line": grab(os.path.join(W, "loop_plain.txt"), r"alloc_loop: \d+ iterations.*")},
        "gpuheap-run": {"rc": int(rc_heap), "line": grab(os.path.join(W, "loop_heap.txt"), r"alloc_loop: \d+ iterations.*"),
                        "interposer": grab(os.path.join(W, "loop_heap.txt"), r"gpuheap-preload: .*")},
        "same_checksum": grab(os.path.join(W, "loop_plain.txt"), r"checksum (\d+)") == grab(os.path.join(W, "loop_heap.txt"), r"checksum (\d+)"),
        "sanitizer": {"rc": int(rc_san), "summary": grab(os.path.join(W, "sanitizer.txt"), r"ERROR SUMMARY: .*"),
                      "interposer": grab(os.path.join(W, "sanitizer.txt"), r"gpuheap-preload: .*")},
    },
    "cupy": {"rc": int(rc_cupy), "results": json.load(open(os.path.join(W, "cupy.json"))) if os.path.exists(os.path.join(W, "cupy.json")) else None},
}
p = res["pytorch"]
ok = all([p["losses_equal"]["gpuheap-run vs cudaMalloc"], p["losses_equal"]["pluggable vs cudaMalloc"],
          int(rc_plain) == 0, int(rc_heap) == 0, int(rc_san) == 0, res["alloc_loop"]["same_checksum"], int(rc_cupy) == 0,
          static == "true"])
res["all_proofs_hold"] = ok
json.dump(res, open(os.path.join(OUT, "results.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "pytorch"}, indent=1))
print(json.dumps({k: v for k, v in p.items() if k != "losses_cudaMalloc"}, indent=1))
sys.exit(0 if ok else 1)
PY
