"""Shared helpers of the Python package's tests (host backend; meson runs them
through run.sh, once bound to each library: python/meson.build).

The environment meson sets: GPUHEAP_LIB (the library under test), GPUHEAP_BACKEND=host,
GPUHEAP_TEST_PRELOAD / GPUHEAP_TEST_LIBRARY (both built libraries), GPUHEAP_TEST_RUN
(tools/gpuheap-run). Run by hand from the source tree, the build/ folder stands in.
"""
import os
import re
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(TESTS, "..", ".."))
PACKAGE_ROOT = os.path.join(REPO, "python")
HEADER = os.path.join(REPO, "include", "gpuheap.h")
BUILD = os.path.join(REPO, "build")

os.environ.setdefault("GPUHEAP_BACKEND", "host")
sys.path.insert(0, PACKAGE_ROOT)

PRELOAD = os.environ.get("GPUHEAP_TEST_PRELOAD", os.path.join(BUILD, "lib", "preload", "libgpuheap-preload.so"))
LIBRARY = os.environ.get("GPUHEAP_TEST_LIBRARY", os.path.join(BUILD, "lib", "libgpuheap.so"))
GPUHEAP_RUN = os.environ.get("GPUHEAP_TEST_RUN", os.path.join(BUILD, "tools", "gpuheap-run"))


def parse_header(path=HEADER):
    """The facts of gpuheap.h the package repeats: stats fields and version, error codes, GPU_TAG_MAX."""
    with open(path) as f:
        text = f.read()
    start = text.index("#define GPU_STATS_FIELDS(X)")
    lines = []
    for line in text[start:].splitlines():
        lines.append(line)
        if not line.rstrip().endswith("\\"):
            break
    fields = re.findall(r"X\((\w+),", "\n".join(lines))
    version = int(re.search(r"#define GPU_STATS_VERSION (\d+)", text).group(1))
    enum = text[text.index("typedef enum gpu_error_t"):]
    enum = enum[:enum.index("} gpu_error_t;")]
    errors = {name: int(code) for name, code in re.findall(r"\b(GPU_\w+)\s*=\s*(-?\d+)", enum)}
    tag_max = re.search(r"#define GPU_TAG_MAX (\d+)", text)
    return {"fields": fields, "version": version, "errors": errors,
            "tag_max": int(tag_max.group(1)) if tag_max else None}


@pytest.fixture(scope="session")
def header():
    return parse_header()


def env_with(**changes):
    """os.environ with changes applied; a value of None removes the variable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_python(code, prefix=(), cwd=None, **env):
    """Runs code in a fresh python3 (under prefix, e.g. gpuheap-run); returns the CompletedProcess."""
    return subprocess.run([*prefix, sys.executable, "-c", code], env=env_with(**env), cwd=cwd or "/",
                          capture_output=True, text=True, timeout=120)


def need(path, what):
    if not os.path.exists(path):
        pytest.skip(f"{what} not built at {path}")
    return path
