#!/usr/bin/env python3
"""placement_bound.py — how little physical memory two idealised page allocators
would hold on a workload, and how many mappings it would cost them.

gpuheap places blocks in extents (one physical handle each) and gives an extent
back only whole. This tool asks what a different design would reach on the same
calls: every block placed by best fit over one address space (the smallest free
range that holds it at its alignment, the lowest address among equals), every
free reusable at once (no GPU lag), and physical memory in pages of one size,
mapped under an address when a block first needs it. Two ways to treat a page
that no block uses any more:
  - segment: it stays mapped (a single growing segment, as PyTorch's expandable
    segments keep theirs between empty_cache calls);
  - moved:   it stays mapped until an address elsewhere needs a page; then it is
    unmapped and its memory mapped there (one unmap, one map and one access
    grant on a GPU — bench/RESULTS.md has their cost).
Each row gives the peak physical memory as a multiple of the peak live bytes and
the mappings made: new pages, and pages moved. It is a model of two designs, not a
lower bound for every allocator: a different placement could do better or worse.

    python3 bench/placement_bound.py bench/traces/gpt-shapes-h200.trace.gz
    python3 bench/placement_bound.py --random 256 10000 --pages 2,8
    python3 bench/placement_bound.py --no-align TRACE   # 512-byte alignment, as PyTorch's own allocator

A trace's blocks keep the alignment they asked for (gpuheap-run asks what
cudaMalloc gives: 2 MiB from 2 MiB up). --random replays RMM's random workload
exactly as gpuheap-bench generates it (same generator and seeds).
"""
import argparse
import bisect
import gzip
import sys

MiB = 1 << 20
VA = 1 << 46
M64 = (1 << 64) - 1


def trace_events(path, keep_align):
    """(key, op, ptr, size, align) of a gpuheap trace's malloc and free calls,
    in the replay's order (an allocation at its end, a free at its start)."""
    rows = []
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("#") or not line.strip():
                continue
            x = line.split()
            try:
                if x[2] == "malloc" and int(x[10]) == 0:
                    align = int(x[7]) if keep_align else 512
                    rows.append((int(x[0]) + int(x[11]), "a", int(x[9], 16), int(x[6]), max(align, 512)))
                elif x[2] == "free":
                    rows.append((int(x[0]), "f", int(x[5], 16), 0, 0))
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{n}: not a gpuheap trace record") from None
    if not rows:
        raise ValueError(f"{path}: no allocations or frees in it (not a gpuheap trace?)")
    rows.sort(key=lambda r: r[0])
    return [r[1:] for r in rows]


def random_events(max_mib, ops, index_i, index_j):
    """RMM's random workload as gpuheap-bench makes it (random_trace, seed 1234 + 10 i + j)."""
    s = 1234 + index_i * 10 + index_j

    def rng():
        nonlocal s
        s = (s + 0x9E3779B97F4A7C15) & M64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    live, events, live_bytes, next_id, cap = [], [], 0, 1, 16 << 30
    for _ in range(ops):
        alloc = not live or rng() % 100 < 73
        size = 1 + rng() % (max_mib * MiB)
        if alloc and live_bytes + size > cap:
            alloc = False
        if alloc:
            live.append((next_id, size))
            events.append(("a", next_id, size, 256))
            next_id += 1
            live_bytes += size
        else:
            k = rng() % len(live)
            ptr, sz = live[k]
            live[k] = live[-1]
            live.pop()
            live_bytes -= sz
            events.append(("f", ptr, 0, 0))
    events += [("f", ptr, 0, 0) for ptr, _ in live]
    return events


class FreeSpace:
    """Free address ranges, best fit by size, coalesced on release."""

    def __init__(self):
        self.starts = [0]  # sorted
        self.size_of = {0: VA}
        self.by_size = [(VA, 0)]  # sorted (size, start)

    def _remove(self, start):
        size = self.size_of.pop(start)
        del self.starts[bisect.bisect_left(self.starts, start)]
        del self.by_size[bisect.bisect_left(self.by_size, (size, start))]
        return size

    def _add(self, start, size):
        bisect.insort(self.starts, start)
        self.size_of[start] = size
        bisect.insort(self.by_size, (size, start))

    def take(self, size, align):
        i = bisect.bisect_left(self.by_size, (size, -1))
        while i < len(self.by_size):
            n, s = self.by_size[i]
            a = -(-s // align) * align
            if a + size <= s + n:
                self._remove(s)
                if a > s:
                    self._add(s, a - s)
                if a + size < s + n:
                    self._add(a + size, s + n - a - size)
                return a
            i += 1
        raise MemoryError("address space exhausted")

    def give(self, start, size):
        i = bisect.bisect_left(self.starts, start)
        if i < len(self.starts) and self.starts[i] == start + size:
            size += self._remove(start + size)
        if i > 0:
            p = self.starts[i - 1]
            if p + self.size_of[p] == start:
                start, size = p, size + self._remove(p)
        self._add(start, size)


def place(events, page, moved, rounding=512):
    """Peak physical bytes, new pages and moved pages for one design."""
    space, blocks, users = FreeSpace(), {}, {}
    mapped_pages, idle_pages = set(), set()
    held = peak = new = moves = 0
    for op, ptr, size, align in events:
        if op == "a":
            size = -(-max(size, 1) // rounding) * rounding
            start = space.take(size, align)
            blocks[ptr] = (start, size)
            for p in range(start // page, (start + size - 1) // page + 1):
                if p not in mapped_pages:
                    mapped_pages.add(p)
                    if moved and idle_pages:
                        mapped_pages.discard(idle_pages.pop())
                        moves += 1
                    else:
                        held += page
                        new += 1
                users[p] = users.get(p, 0) + 1
                idle_pages.discard(p)
            peak = max(peak, held)
        elif ptr in blocks:
            start, size = blocks.pop(ptr)
            space.give(start, size)
            for p in range(start // page, (start + size - 1) // page + 1):
                users[p] -= 1
                if not users[p]:
                    idle_pages.add(p)
    return peak, new, moves


def live_peak(events):
    live, now, peak = {}, 0, 0
    for op, ptr, size, _ in events:
        if op == "a":
            live[ptr] = size
            now += size
            peak = max(peak, now)
        elif ptr in live:
            now -= live.pop(ptr)
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", nargs="?", help="a gpuheap trace (GPUHEAP_TRACE), .gz or plain")
    ap.add_argument("--random", nargs=2, type=int, metavar=("MAX_MIB", "OPS"), help="RMM's random workload instead")
    ap.add_argument("--pages", default="2,8,32", help="page sizes in MiB, comma-separated (default 2,8,32)")
    ap.add_argument("--no-align", action="store_true", help="512-byte alignment for every block, not the trace's")
    a = ap.parse_args()
    if a.random:
        sizes = [1, 4, 64, 256, 1024, 4096]
        ops = [1000, 10000, 100000]
        if a.random[0] not in sizes or a.random[1] not in ops:
            ap.error(f"--random takes gpuheap-bench's cases: MAX_MIB in {sizes}, OPS in {ops}")
        events = random_events(a.random[0], a.random[1], sizes.index(a.random[0]), ops.index(a.random[1]))
        name = f"RMM random {a.random[0]} MiB, {a.random[1] // 1000}k"
    elif a.trace:
        try:
            events = trace_events(a.trace, not a.no_align)
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
            sys.exit(f"placement_bound.py: {e}")
        name = a.trace
    else:
        ap.error("a trace or --random")
    try:
        pages = [int(p) * MiB for p in a.pages.split(",")]
    except ValueError:
        ap.error(f"--pages {a.pages}: expected MiB as integers, e.g. 2,8,32")
    if any(p <= 0 for p in pages):
        ap.error("--pages: sizes must be positive")
    live = live_peak(events)
    print(f"{name}: peak live {live / MiB:.0f} MiB; best fit over one address space, every free reusable at once")
    print(f"{'page':>8} | {'segment: peak/live':>18} {'new pages':>9} | {'moved: peak/live':>16} {'new pages':>9} {'moves':>7}")
    for page in pages:
        sp, sn, _ = place(events, page, moved=False)
        mp, mn, mm = place(events, page, moved=True)
        print(f"{page // MiB:4d} MiB | {sp / live:18.3f} {sn:9d} | {mp / live:16.3f} {mn:9d} {mm:7d}")


if __name__ == "__main__":
    main()
