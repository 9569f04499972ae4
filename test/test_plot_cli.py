#!/usr/bin/env python3
"""test_plot_cli.py — tools/gpuheap-plot's answers to files it cannot draw (suite 'unit').

    python3 test_plot_cli.py tools/gpuheap-plot docs/example.trace test/data/lingering-page.trace

A missing file, or one that is not a trace (empty, /etc/passwd-like, prose with one
line that happens to parse as a record, binary, a broken .gz), is refused with one
line on stderr — no Python traceback, no page written — and a non-zero exit; a real
trace, with its header or without its comment lines, still becomes a page; pause and
resume lines (memory control) become marks on its time axis.
"""
import gzip
import os
import random
import subprocess
import sys
import tempfile

plot, example, lingering = sys.argv[1], sys.argv[2], sys.argv[3]
fails = 0


def check(name, cond):
    global fails
    print(("ok - " if cond else "not ok - ") + name)
    fails += 0 if cond else 1


def run(*args):
    r = subprocess.run([sys.executable, plot, *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "out.html")

    rc, _, err = run(os.path.join(tmp, "missing.trace"), "-o", out)
    check("missing file: non-zero exit", rc != 0)
    check("missing file: no traceback", "Traceback" not in err)
    check("missing file: one line that says so",
          len(err.strip().splitlines()) == 1 and "cannot read" in err and "No such file" in err)

    with open(example) as f:
        trace = f.read()
    rng = random.Random(7)
    cases = {
        "empty": b"",
        "passwd": b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
        "prose.md": ("Text, one event per line:\n\n"
                     "    5123400 48211 malloc 0x7f2a00000000 0x0 0x0 1000 256 0 0x7f2a00200000 0 85\n\n"
                     "| column | meaning |\nthe rest of a document\n").encode(),
        "random.txt": "\n".join(" ".join(rng.choice(["a", "1", "0x2", "malloc", "free", "#"])
                                         for _ in range(12)) for _ in range(50)).encode(),
        "binary": bytes(rng.randrange(256) for _ in range(4096)),
        "broken.gz": b"\x1f\x8b\x08\x00garbage",
    }
    for name, data in cases.items():
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        rc, _, err = run(path, "-o", out)
        check(f"{name}: non-zero exit", rc != 0)
        check(f"{name}: no traceback", "Traceback" not in err)
        check(f"{name}: one line on stderr", len(err.strip().splitlines()) == 1)
        check(f"{name}: says why", "not a gpuheap trace" in err or "cannot read" in err)
        check(f"{name}: no page written", not os.path.exists(out))

    rc, so, err = run(example, "-o", out)
    check("a trace: exit 0 and a page", rc == 0 and os.path.getsize(out) > 1000)
    os.unlink(out)
    headless = os.path.join(tmp, "headless.trace")
    with open(headless, "w") as f:
        f.write("".join(l + "\n" for l in trace.splitlines() if not l.startswith("#")))
    rc, so, err = run(headless, "-o", out)
    check("a trace without its comment lines: exit 0", rc == 0)
    gz = os.path.join(tmp, "t.trace.gz")
    with gzip.open(gz, "wt") as f:
        f.write(trace)
    rc, so, err = run(gz, "-o", out)
    check("a gzip-compressed trace: exit 0", rc == 0)

    # Memory control: a pause and a resume of the drawn heap show as marks on the
    # time axis; the example itself (made before them) has none.
    with open(out) as f:
        check("an old trace: no pause marks", ">pause<" not in f.read())
    records = [l.split() for l in trace.splitlines() if l and not l.startswith("#")]
    heaps = {}
    for c in records:
        heaps[c[3]] = heaps.get(c[3], 0) + 1
    heap = max(heaps, key=heaps.get)
    times = sorted(int(c[0]) for c in records if c[3] == heap)
    mid = times[len(times) // 2]
    controlled = os.path.join(tmp, "memctl.trace")
    with open(controlled, "w") as f:
        f.write(trace + f"{mid} 1 pause {heap} 0x0 {heap} 4194304 0 1 0x0 0 1000\n"
                        f"{mid + 5} 1 resume {heap} 0x0 {heap} 4194304 0 0 0x0 0 1000\n")
    rc, so, err = run(controlled, "-o", out)
    with open(out) as f:
        page = f.read()
    check("a trace with pause and resume: exit 0", rc == 0)
    check("pause and resume drawn as marks", ">pause<" in page and ">resume<" in page and "with backup" in page)
    check("and counted", "1 pauses, 1 resumes" in page)

    # Physical memory held counts handles, not mappings: a page mapped at two
    # addresses (a paged heap's lingering page) counts once; a trace that records
    # no create counts its mapped extents (test/data/lingering-page.trace).
    with open(lingering) as f:
        lines = f.read().splitlines()
    for name, keep, peak in (("handles", lambda l: True, "peak physical held 6.0 MiB"),
                             ("no creates", lambda l: " create " not in l, "peak physical held 8.0 MiB")):
        path = os.path.join(tmp, name.replace(" ", "_") + ".trace")
        with open(path, "w") as f:
            f.write("".join(l + "\n" for l in lines if keep(l)))
        rc, so, err = run(path, "-o", out)
        with open(out) as f:
            page = f.read()
        check(f"physical held, {name}: {peak}", rc == 0 and peak in page)

print(f"{fails} failed")
sys.exit(1 if fails else 0)
