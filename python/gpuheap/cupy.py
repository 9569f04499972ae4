"""gpuheap.cupy — CuPy's arrays from gpuheap, in the heap the package sees.

use() replaces CuPy's allocator (and with it CuPy's memory pool, which would
keep freed blocks from gpuheap) by one that allocates from the bound library:

  - libgpuheap-preload.so (the usual binding, gpuheap-run's too): its
    gpu_cupy_malloc / gpu_cupy_free through cupy.cuda.memory.CFunctionAllocator,
    so no Python runs per allocation;
  - libgpuheap.so: gpu_malloc / gpu_free from Python, each block wrapped in
    cupy.cuda.memory.UnownedMemory whose owner frees it when CuPy lets go.

cupy is imported inside use(), never when this module is imported.
"""
from . import ERRORS, Error, free, library, malloc

_allocator = None  # what cupy.cuda.set_allocator was given, kept alive


class _Block:
    """Owns one gpu_malloc block; frees it when CuPy drops the last reference."""

    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def __del__(self):
        try:
            free(self.ptr)
        except Exception:  # at interpreter exit, or a library already unloaded
            pass


def use():
    """Makes CuPy allocate from gpuheap. Returns True. Raises ImportError without CuPy."""
    global _allocator
    try:
        import cupy
    except ImportError as e:
        raise ImportError(f"gpuheap.cupy.use() needs CuPy, and cupy cannot be imported here ({e})") from e
    lib = library()
    memory = cupy.cuda.memory
    if lib.exports("gpu_cupy_malloc"):
        allocator = memory.CFunctionAllocator(0, lib.address("gpu_cupy_malloc"), lib.address("gpu_cupy_free"),
                                              lib.handle)
        _allocator = allocator
        cupy.cuda.set_allocator(allocator.malloc)
        return True

    def allocate(size):
        device = cupy.cuda.Device().id
        try:
            ptr = malloc(size)
        except Error as e:
            if e.code == ERRORS["GPU_ERR_OUT_OF_MEMORY"]:
                raise memory.OutOfMemoryError(size, 0) from e
            raise
        return memory.MemoryPointer(memory.UnownedMemory(ptr, size, _Block(ptr), device), 0)

    _allocator = allocate
    cupy.cuda.set_allocator(allocate)
    return True
