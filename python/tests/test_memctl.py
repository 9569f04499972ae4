"""Memory control from Python on the host backend: regions and tags, pause and
resume (with and without backup), tag statistics, the physical cap.

Written against the C API of memory control (gpu_region_begin/end,
gpu_malloc_tagged, gpu_pause/gpu_resume, gpu_tag_stats, gpu_tag_trim,
gpu_set_limit/gpu_limit, GPU_ERR_PAUSED, stats version 7 with paused_bytes and
backup_bytes, 8 with backup_pinned_bytes). The module
skips, saying why, while the bound library lacks gpu_pause; once memory control
is merged it runs. On the host backend a block is ordinary memory, so contents
are written and read with ctypes (never while paused: the range is unmapped).
"""
import ctypes
import threading
import uuid

import pytest
from conftest import run_python

import gpuheap

if not gpuheap.library().has("gpu_pause"):
    pytest.skip(f"the bound library {gpuheap.library().path} has no gpu_pause: memory control (branch memctl) "
                "is not in it yet", allow_module_level=True)

MiB = 1 << 20


@pytest.fixture
def tag():
    return "t" + uuid.uuid4().hex[:12]


def live(tag):
    return gpuheap.stats(tag)["live_bytes"]


def fill(ptr, size, seed):
    pattern = bytes((seed + i * 7) & 0xFF for i in range(4096))
    for off in range(0, size, len(pattern)):
        ctypes.memmove(ptr + off, pattern, min(len(pattern), size - off))
    return pattern


def holds(ptr, size, pattern):
    data = ctypes.string_at(ptr, size)
    return all(data[off:off + len(pattern)] == pattern[:min(len(pattern), size - off)]
               for off in range(0, size, len(pattern)))


# ---- regions and tags ---------------------------------------------------------------------

def test_a_region_tags_this_threads_allocations(tag):
    with gpuheap.region(tag):
        p = gpuheap.malloc(3 * MiB)
    q = gpuheap.malloc(2 * MiB)  # outside: not tagged
    try:
        s = gpuheap.stats(tag)
        assert s["live_bytes"] >= 3 * MiB and s["live_bytes"] < 5 * MiB
        assert s["live_blocks"] == 1
    finally:
        gpuheap.free(p)
        gpuheap.free(q)
    assert live(tag) == 0


def test_regions_nest_and_the_innermost_tag_applies(tag):
    outer, inner = tag + "o", tag + "i"
    with gpuheap.region(outer):
        a = gpuheap.malloc(MiB)
        with gpuheap.region(inner):
            b = gpuheap.malloc(2 * MiB)
        c = gpuheap.malloc(4 * MiB)  # the outer region again
    try:
        assert gpuheap.stats(inner)["live_blocks"] == 1
        assert gpuheap.stats(outer)["live_blocks"] == 2
        assert gpuheap.stats(outer)["live_bytes"] >= 5 * MiB
    finally:
        for p in (a, b, c):
            gpuheap.free(p)


def test_a_region_ends_when_its_block_raises(tag):
    with pytest.raises(ValueError):
        with gpuheap.region(tag):
            raise ValueError("out")
    p = gpuheap.malloc(MiB)
    try:
        assert live(tag) == 0
    finally:
        gpuheap.free(p)


def test_regions_are_per_thread(tag):
    got = {}

    def other():
        got["p"] = gpuheap.malloc(2 * MiB)

    with gpuheap.region(tag):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        mine = gpuheap.malloc(MiB)
    try:
        s = gpuheap.stats(tag)
        assert s["live_blocks"] == 1 and s["live_bytes"] < 2 * MiB
    finally:
        gpuheap.free(got["p"])
        gpuheap.free(mine)


def test_malloc_with_a_tag(tag):
    p = gpuheap.malloc(3 * MiB, tag=tag)
    try:
        assert live(tag) >= 3 * MiB
    finally:
        gpuheap.free(p)


def test_tag_stats_have_the_headers_fields(header, tag):
    p = gpuheap.malloc(MiB, tag=tag)
    try:
        s = gpuheap.stats(tag)
    finally:
        gpuheap.free(p)
    assert s["version"] == header["version"] >= 6
    assert list(s) == ["version", "tag"] + header["fields"]
    assert s["tag"] == tag
    assert "paused_bytes" in s and "backup_bytes" in s
    heap = gpuheap.stats()
    assert "paused_bytes" in heap and "backup_bytes" in heap


def test_bad_tags_and_an_unmatched_end():
    with pytest.raises(gpuheap.Error) as e:
        with gpuheap.region("x" * (gpuheap.TAG_MAX + 1)):
            pass
    assert e.value.code == gpuheap.ERR_INVALID
    with gpuheap.region("x" * gpuheap.TAG_MAX):
        pass
    with pytest.raises(gpuheap.Error):
        gpuheap._call("gpu_region_end")  # no region open on this thread


# ---- pause and resume ---------------------------------------------------------------------

def test_pause_with_backup_keeps_the_contents(tag):
    size = 8 * MiB
    p = gpuheap.malloc(size, tag=tag)
    pattern = fill(p, size, 11)
    mapped = gpuheap.stats(tag)["mapped_bytes"]
    gpuheap.pause(tag, backup=True)
    try:
        s = gpuheap.stats(tag)
        assert s["paused_bytes"] >= size
        assert s["backup_bytes"] >= size
        assert s["mapped_bytes"] <= mapped - size  # the tag's physical memory went back
    finally:
        gpuheap.resume(tag)
    assert gpuheap.stats(tag)["paused_bytes"] == 0
    assert holds(p, size, pattern)
    gpuheap.free(p)


def test_the_backup_buffer_is_kept_for_the_next_pause_until_trimmed(tag):
    size = 4 * MiB
    p = gpuheap.malloc(size, tag=tag)
    pattern = fill(p, size, 21)
    pinned = None
    for _ in range(2):
        gpuheap.pause(tag, backup=True)
        gpuheap.resume(tag)
        s = gpuheap.stats(tag)
        assert s["backup_bytes"] == 0  # nothing paused
        assert s["backup_pinned_bytes"] >= size  # the buffer stays
        assert pinned in (None, s["backup_pinned_bytes"])
        pinned = s["backup_pinned_bytes"]
        assert holds(p, size, pattern)
    gpuheap.trim(tag=tag)
    assert gpuheap.stats(tag)["backup_pinned_bytes"] == 0
    gpuheap.free(p)


def test_pause_without_backup_keeps_the_addresses(tag):
    size = 6 * MiB
    with gpuheap.region(tag):
        p = gpuheap.malloc(size)
    gpuheap.pause(tag)
    try:
        s = gpuheap.stats(tag)
        assert s["paused_bytes"] >= size and s["backup_bytes"] == 0
    finally:
        gpuheap.resume(tag)
    pattern = fill(p, size, 3)  # mapped again, at the same address
    assert holds(p, size, pattern)
    gpuheap.free(p)
    assert live(tag) == 0


def test_pause_and_resume_every_tag(tag):
    a, b = tag + "a", tag + "b"
    pa = gpuheap.malloc(2 * MiB, tag=a)
    pb = gpuheap.malloc(2 * MiB, tag=b)
    pattern = fill(pa, 2 * MiB, 5)
    gpuheap.pause(None, backup=True)
    try:
        assert gpuheap.stats(a)["paused_bytes"] >= 2 * MiB
        assert gpuheap.stats(b)["paused_bytes"] >= 2 * MiB
        assert gpuheap.stats()["paused_bytes"] == 0  # the default heap is not a tag: nothing of it paused
    finally:
        gpuheap.resume(None)
    assert gpuheap.stats(a)["paused_bytes"] == 0 and gpuheap.stats(b)["paused_bytes"] == 0
    assert holds(pa, 2 * MiB, pattern)
    gpuheap.free(pa)
    gpuheap.free(pb)


def test_allocating_into_a_paused_tag_is_refused(tag):
    """GPU_ERR_PAUSED: a paused tag takes no new block until it is resumed."""
    p = gpuheap.malloc(MiB, tag=tag)
    gpuheap.pause(tag)
    try:
        with pytest.raises(gpuheap.Error) as e:
            gpuheap.malloc(MiB, tag=tag)
        assert e.value.code == gpuheap.ERR_PAUSED
    finally:
        gpuheap.resume(tag)
    gpuheap.free(p)


# ---- the physical cap ---------------------------------------------------------------------

def test_limit_get_and_set():
    old = gpuheap.limit()
    assert isinstance(old, int)
    try:
        assert gpuheap.limit(1 << 40) == old
        assert gpuheap.limit() == 1 << 40
    finally:
        gpuheap.limit(old)
    assert gpuheap.limit() == old
    with pytest.raises(ValueError):
        gpuheap.limit(-1)


def test_limit_from_the_environment():
    r = run_python("import gpuheap; print(gpuheap.limit())", GPUHEAP_LIMIT="256M")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 256 * MiB


def test_paused_memory_serves_other_allocations_under_the_cap(tag):
    """The point of pause: under a cap that holds one 32 MiB block and not two,
    pausing the tagged block lets another one in, and resume gets it back."""
    gpuheap.trim(0)
    old = gpuheap.limit(gpuheap.stats()["mapped_bytes"] + 48 * MiB)
    try:
        a = gpuheap.malloc(32 * MiB, tag=tag)
        with pytest.raises(gpuheap.Error) as e:
            gpuheap.malloc(32 * MiB)
        assert e.value.code == gpuheap.ERR_OUT_OF_MEMORY
        gpuheap.pause(tag)
        b = gpuheap.malloc(32 * MiB)  # in the memory the pause gave back
        fill(b, 32 * MiB, 9)
        gpuheap.free(b)  # b's memory stays with the default heap, idle: the resume has it given back
        gpuheap.resume(tag)
        pattern = fill(a, 32 * MiB, 1)
        assert holds(a, 32 * MiB, pattern)
        gpuheap.free(a)
    finally:
        gpuheap.limit(old)
