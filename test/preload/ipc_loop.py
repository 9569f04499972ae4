"""ipc_loop.py — thousands of CUDA tensors passed from a producer to a consumer
process, to show that sharing leaks nothing on either side.

The producer makes tensors of varying sizes (512 B to 16 MiB) filled with the
number of their turn, and puts each on a torch.multiprocessing queue; the
consumer (a spawned process) checks the first and last element and drops it,
which makes PyTorch close the handle once no storage uses it. A window of
tensors is in flight at a time; the producer drops its own reference once the
consumer has answered. Every IPC call of the run goes through
cudaIpcGetMemHandle / cudaIpcOpenMemHandle / cudaIpcCloseMemHandle (through
gpuheap's IPC under gpuheap-run).

After a warm-up and at the end, both sides report their open file descriptors
(/proc/self/fd: gpuheap's IPC passes extents as fds, none may stay behind), the
free device memory the runtime reports (torch.cuda.mem_get_info), PyTorch's
allocated and reserved bytes, and nvidia-smi's used memory for the device. The
run is flat when neither side's fd count grew by more than FD_SLACK and the
device's used memory by more than MEM_SLACK_MIB.

    python3 ipc_loop.py [--count 3000] [--window 8]
    gpuheap-run --stats python3 ipc_loop.py

Prints a table and a verdict; exit status 0 only when every tensor arrived
intact and the run was flat.
"""
import argparse
import os
import queue
import subprocess
import sys

import torch
import torch.multiprocessing as mp

FD_SLACK = 4
MEM_SLACK_MIB = 256
TIMEOUT = 120


def snapshot():
    """What this process holds now."""
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "free_mib": free >> 20,
        "allocated_mib": torch.cuda.memory_allocated() >> 20,
        "reserved_mib": torch.cuda.memory_reserved() >> 20,
    }


def smi_used_mib():
    """nvidia-smi's used memory of GPU 0 in MiB, or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        return int(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def consumer(inbox, outbox):
    """Checks each tensor and drops it; answers ("ok", i, good) per tensor and
    ("snapshot", ...) when asked."""
    torch.cuda.set_device(0)
    while True:
        msg = inbox.get()
        if msg is None:
            break
        if msg == "snapshot":
            outbox.put(("snapshot", snapshot()))
            continue
        i, t = msg
        ends = t[[0, -1]].tolist()
        good = ends == [i % 127, i % 127]
        del t, msg
        outbox.put(("ok", i, good))


def size_of(i):
    """Bytes of tensor i: 512 B to 16 MiB, spread over the sizes a program uses."""
    return 512 * (1 + (i * 7919) % 32768)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--window", type=int, default=8, help="tensors in flight at a time")
    ap.add_argument("--warmup", type=int, default=300, help="tensors before the start snapshot (the caching allocator and the heap reach their working size)")
    args = ap.parse_args()
    caching = os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "0") in ("", "0")
    label = f"caching {'on' if caching else 'off'}, {'gpuheap-run' if 'libgpuheap-preload' in os.environ.get('LD_PRELOAD', '') else 'plain'}"
    torch.cuda.set_device(0)
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.SimpleQueue(), ctx.Queue()
    proc = ctx.Process(target=consumer, args=(inbox, outbox), daemon=True)
    proc.start()

    in_flight, bad, sent, done = {}, 0, 0, 0
    snaps = {}

    def drain(n):
        nonlocal bad, done
        for _ in range(n):
            kind, i, good = outbox.get(timeout=TIMEOUT)
            bad += not good
            done += 1
            del in_flight[i]

    def both_sides(name):
        drain(len(in_flight))
        inbox.put("snapshot")
        kind, theirs = outbox.get(timeout=TIMEOUT)
        snaps[name] = {"producer": snapshot(), "consumer": theirs, "nvidia_smi_used_mib": smi_used_mib()}

    try:
        total = args.warmup + args.count
        for i in range(total):
            if i == args.warmup:
                both_sides("start")
            n = size_of(i) // 4
            t = torch.full((n,), i % 127, dtype=torch.int32, device="cuda")
            in_flight[i] = t
            inbox.put((i, t))
            del t
            sent += 1
            if len(in_flight) >= args.window:
                drain(1)
        both_sides("end")
    except (queue.Empty, RuntimeError) as e:
        print(f"ipc_loop[{label}]: stopped after {sent} tensors ({done} answered): {type(e).__name__}: {e}", flush=True)
        inbox.put(None)
        proc.join(TIMEOUT)
        return 1
    inbox.put(None)
    proc.join(TIMEOUT)

    print(f"ipc_loop[{label}]: {sent} tensors sent ({args.count} after a warm-up of {args.warmup}), "
          f"{sum(size_of(i) for i in range(args.warmup, args.warmup + args.count)) >> 20} MiB in all, "
          f"{bad} arrived wrong", flush=True)
    s, e = snaps["start"], snaps["end"]
    print(f"{'':10s} {'fds':>11s} {'free MiB (runtime)':>22s} {'allocated MiB':>15s} {'reserved MiB':>15s}")
    flat = True
    for side in ("producer", "consumer"):
        a, b = s[side], e[side]
        print(f"{side:10s} {a['fds']:>5d}->{b['fds']:<5d} {a['free_mib']:>10d}->{b['free_mib']:<10d} "
              f"{a['allocated_mib']:>7d}->{b['allocated_mib']:<7d} {a['reserved_mib']:>7d}->{b['reserved_mib']:<7d}")
        flat = flat and b["fds"] - a["fds"] <= FD_SLACK
    su, eu = s["nvidia_smi_used_mib"], e["nvidia_smi_used_mib"]
    print(f"{'device':10s} nvidia-smi used MiB {su}->{eu}")
    if su is not None and eu is not None:
        flat = flat and eu - su <= MEM_SLACK_MIB
    ok = flat and bad == 0 and proc.exitcode == 0
    print(f"ipc_loop[{label}]: {'FLAT' if flat else 'GROWING'}, {'OK' if ok else 'FAILED'} "
          f"(fd slack {FD_SLACK}, device memory slack {MEM_SLACK_MIB} MiB)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
