"""ipc_torch.py — CUDA tensors shared between processes by torch.multiprocessing.

PyTorch shares a CUDA tensor by exporting its storage's allocation with
cudaIpcGetMemHandle (the caching allocator's segment, with the storage's offset
in it) and opening it in the receiver with cudaIpcOpenMemHandle; the receiver
closes it with cudaIpcCloseMemHandle when the last storage using it dies. Under
gpuheap-run, both processes' memory comes from gpuheap and those calls go
through gpuheap's IPC. This script checks that sharing works as without gpuheap:

  - whole tensors of 1 KiB, 1 MiB and 64 MiB;
  - views at offsets: slices of one larger tensor (the handle names the
    allocation, the offset comes along), and a small tensor that shares a
    caching-allocator segment with its neighbour (which must not change);
  - the same tensor sent a second time after the receiver changed it;
  - two receivers changing disjoint slices of one tensor at once.

Each receiver (a spawned process: a CUDA context does not survive fork) checks
the values it was sent and changes the tensor in place; the sender then sees the
change. One line per check, and exit status 0 only when every check holds.

    python3 ipc_torch.py                                   # caching allocator
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 python3 ipc_torch.py  # plain cudaMalloc per tensor
    gpuheap-run --stats python3 ipc_torch.py               # both processes under gpuheap

Exit status 3 (with a line saying so) when PyTorch itself refuses to share a
tensor before any IPC call is made — PyTorch's uncached allocator cannot name a
storage's base allocation ("invalid device pointer"), with or without gpuheap:
compare with the same run without gpuheap-run.
"""
import os
import queue
import sys
import traceback

import torch
import torch.multiprocessing as mp

TIMEOUT = float(os.environ.get("IPC_TORCH_TIMEOUT", "120"))
KiB, MiB = 1 << 10, 1 << 20


def receiver(inbox, outbox):
    """Runs in a spawned process: for each (name, tensor, expected, op) checks the
    tensor against `expected` (a recipe, rebuilt here), applies op in place and
    answers (name, ok, detail)."""
    torch.cuda.set_device(0)
    while True:
        msg = inbox.get()
        if msg is None:
            break
        name, t, recipe, op = msg
        try:
            want = build(recipe, t.device)
            same = torch.equal(t, want)
            detail = "" if same else f"received values differ ({int((t != want).sum())} of {t.numel()})"
            if op[0] == "add":
                t.add_(op[1])
            elif op[0] == "fill":
                t.fill_(op[1])
            elif op[0] == "neg":
                t.neg_()
            torch.cuda.synchronize()
            outbox.put((name, same, detail))
        except Exception as e:  # reported to the sender, which fails the check
            outbox.put((name, False, f"receiver: {type(e).__name__}: {e}"))
        del t, msg  # the last reference: PyTorch closes the handle when the storage dies
    torch.cuda.synchronize()


def build(recipe, device):
    """The tensor a recipe describes: ("arange", n, start) or ("full", n, value)."""
    kind, n, v = recipe
    if kind == "arange":
        return torch.arange(v, v + n, dtype=torch.int32, device=device)
    return torch.full((n,), v, dtype=torch.int32, device=device)


class Run:
    def __init__(self, label):
        self.label, self.failures = label, 0

    def line(self, name, ok, detail=""):
        self.failures += not ok
        print(f"ipc_torch[{self.label}]: {name}: {'OK' if ok else 'FAILED'}{' (' + detail + ')' if detail else ''}",
              flush=True)

    def send(self, inbox, outbox, name, t, recipe, op):
        """Sends t to a receiver and waits for its answer: (saw recipe, detail)."""
        inbox.put((name, t, recipe, op))  # a SimpleQueue pickles here: PyTorch's own refusal raises here
        got_name, ok, detail = answer(outbox)
        if got_name != name:
            return False, f"answer for {got_name!r} while waiting for {name!r}"
        return ok, detail


def answer(outbox):
    """A receiver's answer, or a failed one after TIMEOUT seconds."""
    try:
        return outbox.get(timeout=TIMEOUT)
    except queue.Empty:
        return "?", False, f"no answer within {TIMEOUT:.0f} s"



def main():
    caching = os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "0") in ("", "0")
    preload = "libgpuheap-preload" in os.environ.get("LD_PRELOAD", "")
    run = Run(f"caching {'on' if caching else 'off'}, {'gpuheap-run' if preload else 'plain'}")
    torch.cuda.set_device(0)
    ctx = mp.get_context("spawn")
    # Tensors go out through SimpleQueues, which pickle in the caller (so that
    # PyTorch's own refusal to share raises here); answers come back through Queues.
    boxes = [(ctx.SimpleQueue(), ctx.Queue()) for _ in range(2)]
    procs = [ctx.Process(target=receiver, args=b, daemon=True) for b in boxes]
    for p in procs:
        p.start()
    (in0, out0), (in1, out1) = boxes
    keep = []  # senders keep what they shared alive until the receivers are done
    try:
        # whole tensors
        for nbytes in (KiB, MiB, 64 * MiB):
            n = nbytes // 4
            t = build(("arange", n, 5), "cuda")
            keep.append(t)
            ok, detail = run.send(in0, out0, f"whole {nbytes // KiB} KiB", t, ("arange", n, 5), ("add", 1))
            torch.cuda.synchronize()
            seen = torch.equal(t, build(("arange", n, 6), "cuda"))
            run.line(f"whole tensor of {nbytes // KiB} KiB, receiver saw the sender's values", ok, detail)
            run.line(f"whole tensor of {nbytes // KiB} KiB, sender sees the receiver's change", seen)

        # views at offsets in one larger tensor
        big = build(("arange", 4 << 20, 0), "cuda")  # 16 MiB
        keep.append(big)
        want = big.clone()
        for lo, hi in ((1000, 5000), (3_000_000, 3_000_100), (4_194_000, 4_194_304)):
            v = big[lo:hi]
            ok, detail = run.send(in0, out0, f"view {lo}:{hi}", v, ("arange", hi - lo, lo), ("neg",))
            want[lo:hi].neg_()
            run.line(f"view [{lo}:{hi}] at byte offset {4 * lo}, receiver saw its values", ok, detail)
        torch.cuda.synchronize()
        run.line("views: sender sees each change and nothing outside the views changed", torch.equal(big, want))

        # a small tensor beside a neighbour (one caching-allocator segment when caching is on)
        a = build(("full", 100, 7), "cuda")
        b = build(("full", 100, 9), "cuda")
        keep += [a, b]
        ok, detail = run.send(in0, out0, "neighbour", b, ("full", 100, 9), ("fill", 11))
        torch.cuda.synchronize()
        run.line(f"small tensor beside another (segment offset {b.data_ptr() - a.data_ptr():+d} B), receiver saw it",
                 ok, detail)
        run.line("small tensor: sender sees the change, its neighbour is untouched",
                 torch.equal(b, build(("full", 100, 11), "cuda")) and torch.equal(a, build(("full", 100, 7), "cuda")))

        # the same tensor sent again after the receiver changed it
        t = build(("arange", MiB // 4, 100), "cuda")
        keep.append(t)
        run.send(in0, out0, "first", t, ("arange", MiB // 4, 100), ("add", 1))
        ok, detail = run.send(in0, out0, "again", t, ("arange", MiB // 4, 101), ("add", 1))
        torch.cuda.synchronize()
        run.line("the same tensor sent twice: the second receipt sees the first change", ok, detail)
        run.line("the same tensor sent twice: sender sees both changes", torch.equal(t, build(("arange", MiB // 4, 102), "cuda")))

        # two receivers change disjoint slices at once
        c = build(("full", 2 << 20, 0), "cuda")
        keep.append(c)
        in0.put(("left", c[: 1 << 20], ("full", 1 << 20, 0), ("fill", 1)))
        in1.put(("right", c[1 << 20:], ("full", 1 << 20, 0), ("fill", 2)))
        answers = sorted([answer(out0), answer(out1)])
        for name, ok, detail in answers:
            run.line(f"two receivers at once, {name} half", ok, detail)
        torch.cuda.synchronize()
        run.line("two receivers at once: sender sees both halves changed",
                 int((c[: 1 << 20] == 1).sum()) == 1 << 20 and int((c[1 << 20:] == 2).sum()) == 1 << 20)
    except Exception as e:
        text = str(e)
        if isinstance(e, RuntimeError) and not caching and "invalid device pointer" in text:
            print(f"ipc_torch[{run.label}]: PyTorch refuses to share a tensor of its uncached allocator "
                  f"(its own check, before any IPC call): {text.splitlines()[0]}", flush=True)
            stop(boxes, procs)
            return 3
        traceback.print_exc()
        run.line(f"{type(e).__name__} in the sender", False, text.splitlines()[0] if text else "")
    stop(boxes, procs)
    torch.cuda.synchronize()
    del keep
    print(f"ipc_torch[{run.label}]: {'OK' if run.failures == 0 else f'{run.failures} checks FAILED'}", flush=True)
    return 0 if run.failures == 0 else 1


def stop(boxes, procs):
    for inbox, _ in boxes:
        inbox.put(None)
    for p in procs:
        p.join(TIMEOUT)
        if p.is_alive():
            print(f"ipc_torch: receiver {p.pid} did not stop; killing it", flush=True)
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
