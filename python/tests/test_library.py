"""Which library the package binds, and what it says when there is none.

Each case runs a fresh python3, since a process binds once."""
import ctypes
import ctypes.util
import json
import os
import shutil

import pytest
from conftest import GPUHEAP_RUN, LIBRARY, PACKAGE_ROOT, PRELOAD, BUILD, need, run_python

import gpuheap

SHOW = """
import json, gpuheap
lib = gpuheap.library()
p = gpuheap.malloc(1 << 20)
live = gpuheap.stats()["live_bytes"]
gpuheap.free(p)
print(json.dumps({"path": lib.path, "kind": lib.kind, "under_run": lib.under_run, "live": live}))
"""

FAIL = """
import gpuheap
try:
    gpuheap.stats()
except gpuheap.LibraryNotFound as e:
    assert isinstance(e, OSError)
    print(e)
else:
    print("FOUND", gpuheap.library().path)
"""


def shown(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path,kind", [(PRELOAD, "preload"), (LIBRARY, "library")])
def test_gpuheap_lib_names_the_library(path, kind):
    need(path, kind)
    got = shown(run_python(SHOW, GPUHEAP_LIB=path))
    assert got == {"path": path, "kind": kind, "under_run": False, "live": got["live"]}
    assert got["live"] >= 1 << 20


def test_the_build_tree_from_the_source_tree():
    """No GPUHEAP_LIB: the package beside build/ binds build/'s interposer."""
    path = need(os.path.join(BUILD, "lib", "preload", "libgpuheap-preload.so"), "build/ (the default build folder)")
    got = shown(run_python(SHOW, GPUHEAP_LIB=None))
    assert got["path"] == path and got["kind"] == "preload"


def test_gpuheap_lib_pointing_at_nothing():
    r = run_python(FAIL, GPUHEAP_LIB="/nonexistent/libgpuheap.so")
    assert r.returncode == 0, r.stderr
    assert "GPUHEAP_LIB=/nonexistent/libgpuheap.so: no such file" in r.stdout
    assert "GPUHEAP_LIB must name" in r.stdout


def test_gpuheap_lib_pointing_at_another_library():
    libc = ctypes.util.find_library("c")
    r = run_python(FAIL, GPUHEAP_LIB=libc)
    assert r.returncode == 0, r.stderr
    assert f"GPUHEAP_LIB={libc}: not gpuheap (no gpu_malloc)" in r.stdout


def test_no_library_anywhere_lists_the_places(tmp_path):
    """A copy of the package with no build tree beside it and no _paths.py."""
    shutil.copytree(os.path.join(PACKAGE_ROOT, "gpuheap"), tmp_path / "src" / "pkg" / "gpuheap",
                    ignore=shutil.ignore_patterns("__pycache__", "_paths.py*"))
    # (meson test puts build/'s folders in LD_LIBRARY_PATH, where find_library looks)
    r = run_python(FAIL, GPUHEAP_LIB=None, LD_LIBRARY_PATH=None, PYTHONPATH=str(tmp_path / "src" / "pkg"))
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("FOUND"):
        pytest.skip(f"gpuheap is installed on this machine ({r.stdout.strip()})")
    text = r.stdout
    assert "no usable gpuheap library; looked at:" in text
    assert str(tmp_path / "src" / "build" / "lib" / "preload" / "libgpuheap-preload.so") + ": no such file" in text
    assert str(tmp_path / "src" / "build" / "lib" / "libgpuheap.so") + ": no such file" in text
    assert "/usr/lib/libgpuheap.so: no such file" in text
    assert "GPUHEAP_LIB" in text


def test_importing_binds_nothing():
    r = run_python("import gpuheap, gpuheap.torch, gpuheap.cupy; print(gpuheap._lib)",
                   GPUHEAP_LIB="/nonexistent/libgpuheap.so")
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr


def test_under_gpuheap_run_the_interposer_is_the_heap():
    """Under gpuheap-run the package binds the preloaded interposer whatever
    GPUHEAP_LIB says, and sees the blocks its framework entry points hand out:
    one heap."""
    need(GPUHEAP_RUN, "gpuheap-run")
    code = """
import ctypes, json, sys
sys.modules["torch"] = None   # gpuheap.torch.use() must not need torch here
import gpuheap, gpuheap.torch
lib = gpuheap.library()
alloc = ctypes.CDLL(None).gpu_torch_alloc   # the interposer's, through LD_PRELOAD
alloc.restype, alloc.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
before = gpuheap.stats()["live_bytes"]
p = alloc(3 << 20, 0, None)
after = gpuheap.stats()["live_bytes"]
gpuheap.free(p)
print(json.dumps({"path": lib.path, "kind": lib.kind, "under_run": lib.under_run,
                  "seen": after - before, "use": gpuheap.torch.use()}))
"""
    got = shown(run_python(code, prefix=[GPUHEAP_RUN], GPUHEAP_LIB=LIBRARY))
    assert os.path.basename(got["path"]) == "libgpuheap-preload.so"
    assert got["kind"] == "preload" and got["under_run"] is True
    assert got["seen"] >= 3 << 20
    assert got["use"] is False


def test_the_framework_entry_points_share_the_packages_heap():
    """What gpuheap.torch.use() relies on: the file the package bound, opened
    again (as PyTorch does), is the same copy with the same heap."""
    lib = gpuheap.library()
    if lib.kind != "preload":
        pytest.skip("bound to libgpuheap.so, which has no framework entry points")
    again = ctypes.CDLL(lib.path)
    alloc = again.gpu_torch_alloc
    alloc.restype, alloc.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    before = gpuheap.stats()["live_bytes"]
    p = alloc(5 << 20, 0, None)
    assert gpuheap.stats()["live_bytes"] >= before + (5 << 20)
    gpuheap.free(p)  # the package's gpu_free knows the block: one heap
    assert gpuheap.stats()["live_bytes"] == before


def test_free_order_get_and_set():
    """gpu_free_order / gpu_set_free_order: events by default outside gpuheap-run;
    set and read back; a name that is no order is refused and changes nothing."""
    assert gpuheap.free_order() == "event"
    try:
        assert gpuheap.free_order("legacy") == "event"
        assert gpuheap.free_order() == "legacy"
        with pytest.raises(ValueError):
            gpuheap.free_order("later")
        assert gpuheap.free_order() == "legacy"
    finally:
        gpuheap.free_order("event")
    assert gpuheap.free_order() == "event"


def test_free_order_under_gpuheap_run():
    """Under gpuheap-run the interposer starts the process in legacy order;
    GPUHEAP_FREE_ORDER=event keeps events."""
    need(GPUHEAP_RUN, "gpuheap-run")
    code = "import gpuheap; print(gpuheap.free_order())"
    r = run_python(code, prefix=[GPUHEAP_RUN], GPUHEAP_LIB=LIBRARY)
    assert r.returncode == 0 and r.stdout.strip() == "legacy", r.stderr
    r = run_python(code, prefix=[GPUHEAP_RUN], GPUHEAP_LIB=LIBRARY, GPUHEAP_FREE_ORDER="event")
    assert r.returncode == 0 and r.stdout.strip() == "event", r.stderr
