"""gpuheap.torch and gpuheap.cupy without PyTorch or CuPy: nothing imported until
use(), a clear error when the framework is missing, and — against stand-in
modules that record what they are given — the allocator each use() installs."""
import ctypes
import sys
import types

import pytest
from conftest import run_python

import gpuheap
import gpuheap.cupy
import gpuheap.torch


def test_importing_the_modules_imports_no_framework():
    r = run_python("import sys, gpuheap.torch, gpuheap.cupy; print('torch' in sys.modules, 'cupy' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


@pytest.fixture
def no_framework(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_torch_missing_is_said(no_framework):
    with pytest.raises(ImportError, match=r"gpuheap.torch.use\(\) needs PyTorch, and torch cannot be imported"):
        gpuheap.torch.use()


def test_cupy_missing_is_said(no_framework):
    with pytest.raises(ImportError, match=r"gpuheap.cupy.use\(\) needs CuPy, and cupy cannot be imported"):
        gpuheap.cupy.use()


# ---- PyTorch, stood in for --------------------------------------------------------------

@pytest.fixture
def fake_torch(monkeypatch):
    calls = []
    state = types.SimpleNamespace(initialized=False, refuse=None)

    class CUDAPluggableAllocator:
        def __init__(self, path, alloc_fn, free_fn):
            calls.append(("allocator", path, alloc_fn, free_fn))

    def change_current_allocator(allocator):
        if state.refuse:
            raise RuntimeError(state.refuse)
        calls.append(("change", allocator))

    memory = types.SimpleNamespace(CUDAPluggableAllocator=CUDAPluggableAllocator,
                                   change_current_allocator=change_current_allocator)
    cuda = types.SimpleNamespace(memory=memory, is_initialized=lambda: state.initialized)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(gpuheap.torch, "_allocator", None)
    state.calls = calls
    return state


def test_torch_use_installs_the_bound_interposer(fake_torch):
    lib = gpuheap.library()
    if lib.kind != "preload":
        with pytest.raises(RuntimeError, match="has no gpu_torch_alloc; point GPUHEAP_LIB at libgpuheap-preload.so"):
            gpuheap.torch.use()
        return
    assert gpuheap.torch.use() is True
    assert fake_torch.calls[0] == ("allocator", lib.path, "gpu_torch_alloc", "gpu_torch_free")
    assert fake_torch.calls[1][0] == "change"
    assert gpuheap.torch.use() is True  # once is enough
    assert len(fake_torch.calls) == 2


def test_torch_use_after_cuda_started_is_refused(fake_torch):
    if gpuheap.library().kind != "preload":
        pytest.skip("bound to libgpuheap.so: use() refuses earlier")
    fake_torch.initialized = True
    with pytest.raises(RuntimeError, match="must run before PyTorch initializes CUDA"):
        gpuheap.torch.use()
    fake_torch.initialized = False
    fake_torch.refuse = "Can't swap an already initialized allocator"
    with pytest.raises(RuntimeError, match="PyTorch refused to swap its allocator .Can't swap"):
        gpuheap.torch.use()
    assert gpuheap.torch._allocator is None


# ---- CuPy, stood in for -----------------------------------------------------------------

@pytest.fixture
def fake_cupy(monkeypatch):
    got = types.SimpleNamespace(allocator=None, cfunction=None)

    class CFunctionAllocator:
        def __init__(self, param, malloc_fn, free_fn, owner):
            got.cfunction = (param, malloc_fn, free_fn, owner)

        def malloc(self, size):
            raise AssertionError("not called here")

    class UnownedMemory:
        def __init__(self, ptr, size, owner, device_id):
            self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id

    class MemoryPointer:
        def __init__(self, mem, offset):
            self.mem, self.ptr = mem, mem.ptr + offset

    class OutOfMemoryError(Exception):
        def __init__(self, size, total, limit=0):
            super().__init__(size, total)

    def set_allocator(fn):
        got.allocator = fn

    memory = types.SimpleNamespace(CFunctionAllocator=CFunctionAllocator, UnownedMemory=UnownedMemory,
                                   MemoryPointer=MemoryPointer, OutOfMemoryError=OutOfMemoryError)
    cuda = types.SimpleNamespace(memory=memory, set_allocator=set_allocator,
                                 Device=lambda: types.SimpleNamespace(id=0))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(gpuheap.cupy, "_allocator", None)
    return got


def test_cupy_use_installs_an_allocator_of_the_bound_heap(fake_cupy):
    lib = gpuheap.library()
    assert gpuheap.cupy.use() is True
    if lib.kind == "preload":
        param, malloc_fn, free_fn, owner = fake_cupy.cfunction
        assert malloc_fn == ctypes.cast(lib.handle.gpu_cupy_malloc, ctypes.c_void_p).value
        assert free_fn == ctypes.cast(lib.handle.gpu_cupy_free, ctypes.c_void_p).value
        assert owner is lib.handle
        return
    # libgpuheap.so: gpu_malloc from Python, freed when CuPy drops the memory.
    before = gpuheap.stats()["live_bytes"]
    ptr = fake_cupy.allocator(3 << 20)
    assert ptr.mem.size == 3 << 20 and ptr.mem.device_id == 0
    assert gpuheap.stats()["live_bytes"] >= before + (3 << 20)
    del ptr
    assert gpuheap.stats()["live_bytes"] == before
    with pytest.raises(gpuheap.Error):
        fake_cupy.allocator(2**64 - 1)
