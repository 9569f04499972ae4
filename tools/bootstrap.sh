#!/usr/bin/env bash
# tools/bootstrap.sh — everything a fresh machine needs, then one job.
#
#   bash tools/bootstrap.sh demo   # build, then run the demo benchmark (GPU if present, else host backend)
#   bash tools/bootstrap.sh test   # build, then run every test suite (GPU tests skip without a GPU)
#
# It installs what is missing (Debian/Ubuntu: meson, ninja-build, pkg-config,
# libcmocka-dev; and python3-pytest, without which the Python package's tests
# skip) when it can, configures build/ once, builds, and runs the job.
# BUILD_DIR picks another build folder; MESON_ARGS adds options to its first setup.
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-}
case "$job" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac
build=${BUILD_DIR:-build}

missing=()
command -v meson >/dev/null || missing+=(meson)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/cmocka.h ] || missing+=(libcmocka-dev)
# Optional: the python tests run with the first python3 that has pytest
# (python/tests/run.sh), and skip without one.
optional=()
python3 -c 'import pytest' 2>/dev/null || /usr/bin/python3 -c 'import pytest' 2>/dev/null || optional+=(python3-pytest)
if ((${#missing[@]})); then
  # A GPU machine without apt may carry Debian's cmocka packages in .deps/ (shared/GPU.md).
  if [[ " ${missing[*]} " == *" libcmocka-dev "* ]] && compgen -G ".deps/*.deb" >/dev/null; then
    for f in .deps/*.deb; do dpkg -x "$f" /; done
    missing=("${missing[@]/libcmocka-dev}")
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep . || true)
  fi
fi
if ((${#missing[@]} + ${#optional[@]})); then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${missing[*]} ${optional[*]}"
    apt-get update -qq
    if ((${#missing[@]})); then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ((${#optional[@]})); then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${optional[@]}" >/dev/null ||
        echo "bootstrap: could not install ${optional[*]}: the python tests will be skipped"
    fi
  elif ((${#missing[@]})); then
    echo "bootstrap: please install: ${missing[*]}" >&2
    exit 1
  else
    echo "bootstrap: ${optional[*]} is not installed: the python tests will be skipped"
  fi
fi

[ -f "$build/build.ninja" ] || meson setup "$build" ${MESON_ARGS:-}
ninja -C "$build"
case "$job" in
  demo) exec "$build/bench/gpuheap-demo" ;;
  test) exec meson test -C "$build" --print-errorlogs --suite unit --suite stress --suite gpu ;;
esac
