"""train.py — a short, deterministic PyTorch training loop for the interposer's proofs.

A real model (a pre-norm transformer encoder language model: embedding, N layers,
output head; cross-entropy on synthetic tokens, AdamW) trained for a few steps
with fixed seeds. Everything that could make two runs differ is pinned, so that
two runs differ only in where their memory comes from:

  - torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG, so no
    kernel sums in a run-dependent order;
  - scaled-dot-product attention on the math backend (the fused backends'
    backward passes are not deterministic);
  - the same data, the same initial weights, the same dropout stream.

The losses are written as exact hexadecimal floats, so runs can be compared bit
for bit; the time of every step (host clock around a synchronized step) is
written too. The allocator is chosen from outside:

  python3 train.py --out A.json                                      # PyTorch's caching allocator
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 python3 train.py --out B.json     # plain cudaMalloc/cudaFree
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 gpuheap-run python3 train.py ...  # cudaMalloc served by gpuheap
  python3 train.py --pluggable libgpuheap-preload.so --out D.json    # CUDAPluggableAllocator
"""
import argparse
import os
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train_common  # noqa: E402  (this folder: the set-up and record the training scripts share)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--pluggable", metavar="SO", help="use gpu_torch_alloc/gpu_torch_free from SO")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    train_common.set_up(a)

    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(a.d, a.heads, dim_feedforward=4 * a.d, dropout=0.1,
                                       batch_first=True, norm_first=True)
    model = nn.ModuleDict({
        "embed": nn.Embedding(a.vocab, a.d),
        "body": nn.TransformerEncoder(layer, a.layers, enable_nested_tensor=False),
        "norm": nn.LayerNorm(a.d),
        "head": nn.Linear(a.d, a.vocab),
    }).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=True)
    g = torch.Generator(device=dev)
    g.manual_seed(1)
    data = torch.randint(a.vocab, (a.steps, a.batch, a.seq + 1), generator=g, device=dev)
    mask = nn.Transformer.generate_square_subsequent_mask(a.seq, device=dev)

    losses, times = [], []
    for step in range(a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        x, y = data[step, :, :-1], data[step, :, 1:]
        h = model["body"](model["embed"](x), mask=mask, is_causal=True)
        logits = model["head"](model["norm"](h))
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = loss.item()  # synchronizes
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(lv)

    train_common.write(a, losses, times, {
        "model": {k: getattr(a, k) for k in ("layers", "d", "heads", "batch", "seq", "vocab", "steps", "warmup")}})

if __name__ == "__main__":
    sys.exit(main())
