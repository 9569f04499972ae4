"""gpuheap.torch — PyTorch's tensors from gpuheap, in the heap the package sees.

Two ways, one heap each time:

  - under gpuheap-run the interposer already serves every cudaMalloc of the
    process (run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that PyTorch does not
    keep freed blocks itself, which regions and pause need); use() has nothing
    to install and returns False;
  - otherwise use() installs libgpuheap-preload.so's gpu_torch_alloc and
    gpu_torch_free as PyTorch's allocator (torch.cuda.memory.CUDAPluggableAllocator
    and change_current_allocator). It must run before PyTorch's first CUDA
    allocation. The file is the one the package bound (gpuheap.library()),
    so PyTorch's dlopen gets the same copy and the package's calls (regions,
    pause, stats) act on the heap that holds the tensors. The pluggable
    allocator caches nothing: a freed tensor goes back to gpuheap at once.

torch is imported inside use(), never when this module is imported.
"""
import logging
import os

from . import _library, library

_log = logging.getLogger("gpuheap")
_allocator = None  # the CUDAPluggableAllocator installed, kept alive


def use():
    """Makes PyTorch allocate from gpuheap; True when it installed the allocator,
    False when gpuheap-run already serves the process (nothing to install).

    Raises ImportError without PyTorch, RuntimeError when PyTorch has already
    initialized CUDA (or swapped its allocator) or when the bound library is
    libgpuheap.so, which has no PyTorch entry points."""
    global _allocator
    lib = library()
    if lib.under_run:
        if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
            _log.warning("gpuheap.torch.use(): under gpuheap-run PyTorch's caching allocator keeps freed blocks "
                         "from gpuheap; set PYTORCH_NO_CUDA_MEMORY_CACHING=1 for regions and pause to see them")
        _log.info("gpuheap.torch.use(): running under gpuheap-run, which serves PyTorch's cudaMalloc already: "
                  "nothing to install")
        return False
    if _allocator is not None:
        return True
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"gpuheap.torch.use() needs PyTorch, and torch cannot be imported here ({e})") from e
    if not lib.exports("gpu_torch_alloc"):
        raise RuntimeError(f"gpuheap.torch.use(): the bound library {lib.path} has no gpu_torch_alloc; "
                           f"point GPUHEAP_LIB at {_library.PRELOAD} (it carries PyTorch's entry points and "
                           "the heap they allocate from)")
    if torch.cuda.is_initialized():
        raise RuntimeError("gpuheap.torch.use() must run before PyTorch initializes CUDA (its first CUDA tensor, "
                           "torch.cuda.init(), ...): PyTorch's allocator cannot be swapped afterwards. "
                           "Call it right after `import torch`.")
    allocator = torch.cuda.memory.CUDAPluggableAllocator(lib.path, "gpu_torch_alloc", "gpu_torch_free")
    try:
        torch.cuda.memory.change_current_allocator(allocator)
    except RuntimeError as e:
        raise RuntimeError(f"gpuheap.torch.use(): PyTorch refused to swap its allocator ({e}); call use() "
                           "before PyTorch's first CUDA allocation") from e
    _allocator = allocator
    return True
