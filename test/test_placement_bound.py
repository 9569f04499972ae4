#!/usr/bin/env python3
"""test_placement_bound.py — bench/placement_bound.py's answers (suite 'unit').

    python3 test_placement_bound.py bench/placement_bound.py

A four-call trace whose answer is worked out by hand: blocks of 4 and 2 MiB, the
first freed, then one of 6 MiB. Best fit puts the 6 MiB block after the 2 MiB one
(the 4 MiB hole is too small), so a segment maps six 2 MiB pages (1.5x the 8 MiB
live peak), while the moved design takes the two idle pages of the freed block
for two of the three it needs: four new pages, two moves, 1.0x. With 4 MiB pages
the segment maps three (12 MiB) and the moved design moves the one idle page.
RMM's random workload gives the live peak gpuheap-bench reports for the same
case, and what cannot be read is refused with one line, no traceback.
"""
import os
import re
import subprocess
import sys
import tempfile

tool = sys.argv[1]
fails = 0
MiB = 1 << 20


def check(name, cond):
    global fails
    print(("ok - " if cond else "not ok - ") + name)
    fails += 0 if cond else 1


def run(*args):
    r = subprocess.run([sys.executable, tool, *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def rows(out):
    """page MiB -> (segment peak/live, segment new, moved peak/live, moved new, moves)."""
    got = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+) MiB \|\s+([\d.]+)\s+(\d+) \|\s+([\d.]+)\s+(\d+)\s+(\d+)$", line)
        if m:
            got[int(m.group(1))] = (float(m.group(2)), int(m.group(3)), float(m.group(4)), int(m.group(5)), int(m.group(6)))
    return got


def record(t, op, addr, size, arg, result):
    return f"{t} 1 {op} 0x1000 0x0 {addr:#x} {size} {arg} 0 {result:#x} 0 10\n"


with tempfile.TemporaryDirectory() as tmp:
    trace = os.path.join(tmp, "hand.trace")
    with open(trace, "w") as f:
        f.write("# gpuheap trace 1\n")
        f.write(record(100, "malloc", 0, 4 * MiB, 2 * MiB, 0xA000))
        f.write(record(200, "malloc", 0, 2 * MiB, 2 * MiB, 0xB000))
        f.write(record(300, "free", 0xA000, 0, 0, 0))
        f.write(record(400, "malloc", 0, 6 * MiB, 2 * MiB, 0xC000))
    rc, out, err = run("--pages", "2,4", trace)
    got = rows(out)
    check("hand trace: runs", rc == 0 and "peak live 8 MiB" in out)
    check("hand trace, 2 MiB pages: segment 1.5x, six new pages", got.get(2, (0, 0))[:2] == (1.5, 6))
    check("hand trace, 2 MiB pages: moved 1.0x, four new, two moves", got.get(2, (0,) * 5)[2:] == (1.0, 4, 2))
    check("hand trace, 4 MiB pages: segment three pages (1.5x)", got.get(4, (0, 0))[:2] == (1.5, 3))
    check("hand trace, 4 MiB pages: moved one move, 1.0x", got.get(4, (0,) * 5)[2:] == (1.0, 2, 1))

    rc, out, _ = run("--random", "256", "1000", "--pages", "32")
    got = rows(out)
    check("random 256 MiB 1k: gpuheap-bench's live peak", rc == 0 and "peak live 16384 MiB" in out)
    check("random: moved never holds more than the segment",
          32 in got and got[32][2] <= got[32][0] and got[32][2] >= 1.0)

    for name, content in (("empty", b""), ("passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("broken.gz", b"\x1f\x8b junk")):
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(content)
        rc, out, err = run(path)
        check(f"{name}: refused", rc != 0)
        check(f"{name}: one line, no traceback", "Traceback" not in err and len(err.strip().splitlines()) == 1)
    rc, _, err = run(os.path.join(tmp, "missing.trace"))
    check("missing file: refused without traceback", rc != 0 and "Traceback" not in err)
    rc, _, err = run("--pages", "0", trace)
    check("page size 0: refused", rc != 0 and "Traceback" not in err)

sys.exit(1 if fails else 0)
