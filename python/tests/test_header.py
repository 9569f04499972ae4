"""The package's copy of gpuheap.h's facts (gpuheap/_header.py) against the header itself."""
from conftest import HEADER

import gpuheap
from gpuheap import _header


def test_stats_fields_are_the_headers(header):
    assert header["version"] in _header.STATS_FIELDS_BY_VERSION, \
        f"GPU_STATS_VERSION {header['version']}: add its fields to gpuheap/_header.py"
    assert list(_header.STATS_FIELDS_BY_VERSION[header["version"]]) == header["fields"]


def test_each_version_appends_to_the_one_before():
    versions = sorted(_header.STATS_FIELDS_BY_VERSION)
    for old, new in zip(versions, versions[1:]):
        fields = _header.STATS_FIELDS_BY_VERSION[old]
        assert _header.STATS_FIELDS_BY_VERSION[new][:len(fields)] == fields


def test_error_codes_are_the_headers(header):
    for name, code in header["errors"].items():
        assert _header.ERRORS.get(name) == code, name
    # Names the header does not have yet come with memory control (GPU_TAG_MAX).
    extra = set(_header.ERRORS) - set(header["errors"])
    assert extra <= ({"GPU_ERR_PAUSED"} if header["tag_max"] is None else set()), extra


def test_memctl_constants(header):
    if header["tag_max"] is not None:
        assert _header.TAG_MAX == header["tag_max"]
        with open(HEADER) as f:
            assert "GPU_PAUSE_BACKUP = 1u << 0" in f.read()
    assert gpuheap.PAUSE_BACKUP == 1


def test_error_constants_on_the_package():
    assert gpuheap.ERR_INVALID == -1
    assert gpuheap.ERR_NOT_OWNED == -2
    assert gpuheap.ERR_PAUSED == -15
