"""The package's calls on the host backend: statistics, trace, errors, the small calls."""
import ctypes
import threading

import pytest

import gpuheap

MiB = 1 << 20


def test_stats_fields_are_the_headers(header):
    s = gpuheap.stats()
    assert s["version"] == header["version"]
    assert s["backend"] == "host"
    assert [k for k in s if k not in ("version", "heap", "backend", "device")] == header["fields"]
    assert all(isinstance(s[f], int) for f in header["fields"])


def test_stats_see_a_block():
    before = gpuheap.stats()["live_bytes"]
    p = gpuheap.malloc(3 * MiB)
    try:
        assert gpuheap.stats()["live_bytes"] >= before + 3 * MiB
        ctypes.memset(p, 0x5A, 3 * MiB)  # host backend: the block is ordinary memory
        assert ctypes.string_at(p + 3 * MiB - 4, 4) == b"\x5a" * 4
    finally:
        gpuheap.free(p)
    assert gpuheap.stats()["live_bytes"] == before


def test_trace_writes_the_header_and_the_calls(tmp_path):
    path = tmp_path / "calls.trace"
    with gpuheap.trace(str(path)) as name:
        assert name == str(path)
        p = gpuheap.malloc(5000)
        gpuheap.free(p)
    lines = path.read_text().splitlines()
    assert lines[0] == "# gpuheap trace 1"
    records = [line.split(" ") for line in lines if not line.startswith("#")]
    assert records and all(len(r) == 12 for r in records)
    mallocs = [r for r in records if r[2] == "malloc" and int(r[9], 16) == p]
    frees = [r for r in records if r[2] == "free" and int(r[5], 16) == p]
    assert len(mallocs) == 1 and int(mallocs[0][6]) == 5000 and mallocs[0][10] == "0"
    assert len(frees) == 1 and frees[0][10] == "0"


def test_trace_stops_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with gpuheap.trace(str(tmp_path / "a.trace")):
            raise KeyError("out")
    with gpuheap.trace(str(tmp_path / "b.trace")):  # the first one stopped
        pass


def test_a_second_trace_is_an_error(tmp_path):
    with gpuheap.trace(str(tmp_path / "one.trace")):
        with pytest.raises(gpuheap.Error) as e:
            with gpuheap.trace(str(tmp_path / "two.trace")):
                pass
    assert e.value.code == gpuheap.ERR_INVALID


def test_trace_to_a_file_that_cannot_be_written(tmp_path):
    with pytest.raises(gpuheap.Error) as e:
        with gpuheap.trace(str(tmp_path / "no" / "such" / "dir.trace")):
            pass
    assert e.value.code == gpuheap.ERR_INVALID


def test_foreign_pointer():
    with pytest.raises(gpuheap.Error) as e:
        gpuheap.free(0x1000)
    err = e.value
    assert err.code == gpuheap.ERR_NOT_OWNED == -2
    assert err.name == "GPU_ERR_NOT_OWNED"
    assert err.strerror == gpuheap.strerror(-2)
    assert "0x1000" in err.message  # the library's message names the pointer
    assert err.message in str(err) and err.strerror in str(err)
    assert err.args == (-2, err.message)


def test_double_free():
    p = gpuheap.malloc(4096)
    gpuheap.free(p)
    with pytest.raises(gpuheap.Error) as e:
        gpuheap.free(p)
    assert e.value.code == gpuheap.ERR_NOT_LIVE
    assert hex(p) in e.value.message


def test_size_too_large():
    with pytest.raises(gpuheap.Error) as e:
        gpuheap.malloc(2**64 - 1)
    assert e.value.code == gpuheap.ERR_INVALID


def test_each_thread_gets_its_own_message():
    """Messages come through a process-wide handler: each thread must see its own."""
    failures = []

    def worker(base):
        for i in range(300):
            ptr = base + i * 0x1000
            try:
                gpuheap.free(ptr)
                failures.append(f"{ptr:#x} freed")
            except gpuheap.Error as e:
                if e.code != gpuheap.ERR_NOT_OWNED or f"{ptr:#x}" not in e.message:
                    failures.append(f"{ptr:#x}: {e}")

    threads = [threading.Thread(target=worker, args=(0x10000000 * (t + 1),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]


def test_a_call_that_succeeds_after_a_failure_keeps_no_stale_message():
    with pytest.raises(gpuheap.Error):
        gpuheap.free(0x2000)
    p = gpuheap.malloc(100)
    gpuheap.free(p)
    with pytest.raises(gpuheap.Error) as e:
        gpuheap.free(p)
    assert "0x2000" not in e.value.message


def test_trim_and_capture():
    gpuheap.free(gpuheap.malloc(8 * MiB))
    with gpuheap.capture():
        p = gpuheap.malloc(MiB)
    gpuheap.free(p)

    def unused():  # a freed block of whole granules may wait in the thread's cache
        s = gpuheap.stats()
        return s["idle_bytes"] + s["quarantine_bytes"] + s["cached_bytes"]

    before = unused()
    assert before >= 8 * MiB
    gpuheap.trim(0)  # fences the quarantine, gives whole idle extents back
    assert unused() <= before - 8 * MiB


def test_tags_are_strings():
    for bad in (12, 1.5, object()):
        with pytest.raises(TypeError):
            gpuheap.pause(bad)
        with pytest.raises(TypeError):
            with gpuheap.region(bad):
                pass
    with pytest.raises(TypeError):
        with gpuheap.region(None):
            pass


def test_memory_control_missing_is_said():
    if gpuheap.library().has("gpu_pause"):
        pytest.skip("the library has memory control (test_memctl.py covers it)")
    for call, args in ((gpuheap.pause, ()), (gpuheap.resume, ()), (gpuheap.limit, ()), (gpuheap.stats, ("t",))):
        with pytest.raises(gpuheap.Unsupported) as e:
            call(*args)
        assert gpuheap.library().path in str(e.value)
    with pytest.raises(gpuheap.Unsupported, match="gpu_region_begin"):
        with gpuheap.region("t"):
            pass
    with pytest.raises(gpuheap.Unsupported, match="gpu_malloc_tagged"):
        gpuheap.malloc(10, tag="t")
