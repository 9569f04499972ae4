"""train_common.py — what the training scripts of this folder share: how a run is
set up and what it writes when it ends.

train.py and train_shapes.py differ in their models and agree in the rest. Set-up:
gpuheap as PyTorch's allocator when --pluggable names the library (before anything
touches CUDA memory), and every source of run-to-run difference pinned
(deterministic algorithms, cuDNN deterministic without autotuning, TF32 off,
attention on the math backend), so that two runs differ only in where their memory
comes from. Record: the allocator the run was given (from the environment, as
bench/frameworks.py and run_real.sh set it), the losses as exact hexadecimal floats
(compared bit for bit between allocators), the time of every step and the median
and mean of the timed ones, PyTorch's own peak counters (not with a pluggable
allocator: they count only its caching allocator), and one summary line on
standard output. Each script adds the fields of its own workload.
"""
import json
import os
import statistics


def set_up(a):
    """The pluggable allocator a.pluggable names, if any, then determinism pinned."""
    import torch

    if a.pluggable:  # before anything touches CUDA memory
        alloc = torch.cuda.memory.CUDAPluggableAllocator(a.pluggable, "gpu_torch_alloc", "gpu_torch_free")
        torch.cuda.memory.change_current_allocator(alloc)
    torch.use_deterministic_algorithms(True, warn_only=True)  # a warning, not a lost run, if an op has no deterministic form
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)


def write(a, losses, times, fields, name="run"):
    """Writes a's run to a.out (JSON) and prints its line (named a.label, else
    name). a: the script's parsed arguments (label, out, warmup, pluggable);
    losses, times: per step (seconds); fields: the script's own entries, put
    after label."""
    import torch

    timed = times[a.warmup:]
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    out = {"label": a.label, **fields,
           "device": torch.cuda.get_device_name(0),
           "torch": torch.__version__,
           "caching_disabled": os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "") not in ("", "0"),
           "expandable_segments": "expandable_segments:true" in conf.replace(" ", "").lower(),
           "interposer": "libgpuheap-preload.so" in os.environ.get("LD_PRELOAD", ""),
           "pluggable": bool(a.pluggable),
           "losses_hex": [float(v).hex() for v in losses],
           "losses": losses,
           "step_ms": [1e3 * t for t in times],
           "median_step_ms": 1e3 * statistics.median(timed),
           "mean_step_ms": 1e3 * statistics.fmean(timed),
           "max_memory_allocated": torch.cuda.max_memory_allocated(0) if not a.pluggable else None,
           "max_memory_reserved": torch.cuda.max_memory_reserved(0) if not a.pluggable else None}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{a.label or name}: {out['device']}, median step {out['median_step_ms']:.2f} ms, "
          f"first loss {losses[0]:.6f}, last loss {losses[-1]:.6f}", flush=True)
    return out
