#!/bin/sh
# run.sh DIR — the Python package's tests (pytest over DIR), for meson test.
#
# Runs them with the first python3 that has pytest: GPUHEAP_PYTHON, then python3
# on PATH, then Debian's /usr/bin/python3 (python3-pytest; a pyenv or virtualenv
# python3 first on PATH may lack it). Exits 77, which meson reports as SKIP,
# when none has pytest.
for py in ${GPUHEAP_PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import pytest' 2>/dev/null; then
        exec "$py" -m pytest -q -rs -p no:cacheprovider "$@"
    fi
done
echo "run.sh: pytest is not installed for any python3 (apt-get install python3-pytest): skipping"
exit 77
