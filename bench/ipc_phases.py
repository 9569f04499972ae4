#!/usr/bin/env python3
"""ipc_phases.py — where the time of gpuheap's IPC open goes, from the traces of
the processes that shared blocks (GPUHEAP_TRACE=/tmp/t.%p.trace: one file per
process).

For each process: the median (and mean, p90, count) duration of every op in its
trace, the IPC path first in the order it runs — the importer's ipc_open, its
request round trip (ipc_request), then reserve, import, map and access; the
exporter's lookup (ipc_lookup) with the export of each extent inside it (a
driver call; "export(kept)": a dup of the fd kept from an earlier one) — then
the rest (the exporter's malloc and free, the importer's close). Then the split
of one open, from the medians (a difference of medians, not a median of
differences):

  transport  = ipc_request - ipc_lookup   (connect or send, the server thread's
               wake-up, the reply and the fds on their way back)
  mapping    = reserve + import + map + access   (the importer's driver calls)
  other      = ipc_open - ipc_request - mapping  (locks, tables, allocation)

and the transport's two legs, each request paired with the exporter's lookup of
it (in order; the clocks of the two files are put together by the wall-clock
start each header gives, to a microsecond or so):

  to exporter = lookup start - request start   (the send, the server thread's
                wake-up, its receive and checks)
  back        = request end - lookup end       (the reply's send with its fds,
                the importer's wake-up and receive)

    python3 bench/ipc_phases.py /tmp/t.*.trace

The trace format is lib/obs/trace.c's (README.md, "Trace format"): twelve
columns, op third, dur_ns last; '#' lines are comments, one says "pid N".
Python 3's standard library only.
"""
import gzip
import re
import statistics
import sys

# The IPC path, in the order one open runs through it; other ops follow by name.
PATH = ["ipc_open", "ipc_request", "ipc_lookup", "export", "export(kept)", "reserve", "import", "map", "access",
        "ipc_close", "fence", "unmap", "release", "unreserve"]


def read(path):
    """(pid, {op: [dur_ns, ...]}, {op: [(start_ns, dur_ns), ...]} for the IPC
    transport's ops, start_ns on the wall clock when the header gives it) of one
    trace file."""
    opener = gzip.open if path.endswith(".gz") else open
    pid, start, ops, spans = None, 0, {}, {}
    with opener(path, "rt", errors="replace") as f:
        for line in f:
            if line.startswith("#"):
                m = re.search(r"\bpid (\d+)", line)
                if m:
                    pid = int(m.group(1))
                m = re.search(r"\bstart (\d+)\.(\d{9})", line)
                if m:
                    start = int(m.group(1)) * 10**9 + int(m.group(2))
                continue
            c = line.split()
            if len(c) != 12:
                continue
            try:
                t, dur = int(c[0]), int(c[11])
            except ValueError:
                continue
            # An export answered from the fd the door kept (arg 1) made no driver call.
            op = "export(kept)" if c[2] == "export" and c[7] == "1" else c[2]
            ops.setdefault(op, []).append(dur)
            if c[2] in ("ipc_request", "ipc_lookup"):
                spans.setdefault(c[2], []).append((start + t, dur))
    return pid, ops, spans


def us(ns):
    return ns / 1e3


def p90(v):
    s = sorted(v)
    return s[min(len(s) - 1, int(0.9 * len(s)))]


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 2 if len(argv) < 2 else 0
    median = {}  # role -> op -> median ns
    spans = {}  # op -> [(start_ns, dur_ns)], over every file
    for path in argv[1:]:
        try:
            pid, ops, sp = read(path)
        except OSError as e:
            print(f"ipc_phases: {path}: {e}", file=sys.stderr)
            return 1
        for op, v in sp.items():
            spans.setdefault(op, []).extend(v)
        roles = [r for r, op in (("importer", "ipc_open"), ("exporter", "ipc_lookup")) if op in ops]
        role = " and ".join(roles) if roles else "no IPC"
        print(f"\n== {path}: pid {pid if pid is not None else '?'} ({role}); us per call")
        print(f"  {'op':12s} {'n':>6s} {'median':>10s} {'mean':>10s} {'p90':>10s}")
        for op in [o for o in PATH if o in ops] + sorted(o for o in ops if o not in PATH):
            d = ops[op]
            print(f"  {op:12s} {len(d):6d} {us(statistics.median(d)):10.1f} {us(statistics.mean(d)):10.1f} "
                  f"{us(p90(d)):10.1f}")
            for r in roles:
                median.setdefault(r, {})[op] = statistics.median(d)
    imp, exp = median.get("importer", {}), median.get("exporter", {})
    if "ipc_open" in imp:
        print("\n== one open, from the medians above (us)")
        mapping = sum(imp.get(op, 0) for op in ("reserve", "import", "map", "access"))
        request = imp.get("ipc_request", 0)
        print(f"  {'ipc_open':28s} {us(imp['ipc_open']):10.1f}")
        print(f"  {'  ipc_request':28s} {us(request):10.1f}")
        if "ipc_lookup" in exp:
            print(f"  {'    ipc_lookup (exporter)':28s} {us(exp['ipc_lookup']):10.1f}"
                  f"   of which export {us(exp.get('export', 0)):.1f} per extent")
            print(f"  {'    transport':28s} {us(request - exp['ipc_lookup']):10.1f}"
                  "   (connect/send, wake-ups, reply and fds)")
        for op in ("reserve", "import", "map", "access"):
            if op in imp:
                print(f"  {'  ' + op:28s} {us(imp[op]):10.1f}")
        print(f"  {'  other':28s} {us(imp['ipc_open'] - request - mapping):10.1f}")
    # The legs: successful requests and lookups, in time order, paired one to one.
    req = sorted(spans.get("ipc_request", []))
    look = sorted(spans.get("ipc_lookup", []))
    if req and look:
        n = min(len(req), len(look))
        out = [look[i][0] - req[i][0] for i in range(n)]
        back = [(req[i][0] + req[i][1]) - (look[i][0] + look[i][1]) for i in range(n)]
        note = "" if len(req) == len(look) else f" (counts differ: {len(req)} requests, {len(look)} lookups)"
        print(f"\n== the transport's legs, median of {n} request/lookup pairs (us){note}")
        print(f"  {'to exporter':28s} {us(statistics.median(out)):10.1f}   (send, server wake-up, receive)")
        print(f"  {'back to importer':28s} {us(statistics.median(back)):10.1f}   (reply and fds, importer wake-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
