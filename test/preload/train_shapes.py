"""train_shapes.py — deterministic PyTorch training loops whose tensor shapes change every step.

A caching allocator does best when every step asks for the same sizes; these two
workloads do not, so each step's blocks differ from the last one's:

  cnn  a small residual convolutional classifier (strided 3x3 convolutions, batch
       norm, ReLU, a mean over the image, a linear head) on synthetic 3x64x64
       images, 10 classes, SGD with momentum; the BATCH SIZE changes every step
       (16..128, a seeded schedule);
  gpt  a small decoder-only language model (pre-norm transformer layers with a
       causal mask, d 384, 6 heads, 4 layers, vocabulary 8192), AdamW; the
       SEQUENCE LENGTH changes every step (64..512, a seeded schedule).

Everything that could make two runs differ is pinned as in train.py: deterministic
algorithms, cuDNN in deterministic mode without autotuning, attention on the math
backend, TF32 off, fixed seeds for weights, data and the shape schedule. So two
runs differ only in where their memory comes from, and their losses (written as
exact hexadecimal floats) can be compared bit for bit. The time of every step
(host clock around a synchronized step) is written too. The allocator is chosen
from outside, as for train.py:

  python3 train_shapes.py --model cnn --out A.json                                   # caching allocator
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 train_shapes.py ...       # expandable segments
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 python3 train_shapes.py ...                       # plain cudaMalloc
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 gpuheap-run python3 train_shapes.py ...           # cudaMalloc served by gpuheap
  python3 train_shapes.py --pluggable libgpuheap-preload.so ...                      # CUDAPluggableAllocator

bench/frameworks.py runs them all and compares.
"""
import argparse
import os
import random
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train_common  # noqa: E402  (this folder: the set-up and record the training scripts share)


class Block(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut; stride 2 halves the image."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class CNN(nn.Module):
    def __init__(self, classes=10, width=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
                                  Block(4 * width, 8 * width, 2))
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x):
        # A mean over the image, not adaptive pooling or max pooling, whose CUDA
        # backward passes are not deterministic.
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def cnn_workload(a, dev):
    torch.manual_seed(0)
    model = CNN().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True)
    sched = random.Random(a.seed)
    batches = [sched.randrange(16, 129, 8) for _ in range(a.steps)]
    g = torch.Generator(device=dev)
    g.manual_seed(a.seed + 1)

    def step(i):
        n = batches[i]
        x = torch.randn(n, 3, 64, 64, generator=g, device=dev)
        y = torch.randint(10, (n,), generator=g, device=dev)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, {"shape": "batch", "batches": batches, "image": [3, 64, 64], "classes": 10}


def gpt_workload(a, dev):
    d, heads, layers, vocab = 384, 6, 4, 8192
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.1, batch_first=True, norm_first=True)
    model = nn.ModuleDict({
        "embed": nn.Embedding(vocab, d),
        "pos": nn.Embedding(512, d),
        "body": nn.TransformerEncoder(layer, layers, enable_nested_tensor=False),
        "norm": nn.LayerNorm(d),
        "head": nn.Linear(d, vocab),
    }).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=True)
    sched = random.Random(a.seed)
    seqs = [sched.randrange(64, 513, 32) for _ in range(a.steps)]
    g = torch.Generator(device=dev)
    g.manual_seed(a.seed + 1)
    batch = 16

    def step(i):
        t = seqs[i]
        tokens = torch.randint(vocab, (batch, t + 1), generator=g, device=dev)
        x, y = tokens[:, :-1], tokens[:, 1:]
        pos = torch.arange(t, device=dev)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=dev)
        h = model["body"](model["embed"](x) + model["pos"](pos), mask=mask, is_causal=True)
        logits = model["head"](model["norm"](h))
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, {"shape": "sequence", "seqs": seqs, "batch": batch, "d": d, "heads": heads, "layers": layers,
                  "vocab": vocab}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("cnn", "gpt"), required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    ap.add_argument("--seed", type=int, default=1234, help="the shape schedule's and the data's seed")
    ap.add_argument("--pluggable", metavar="SO", help="use gpu_torch_alloc/gpu_torch_free from SO")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    train_common.set_up(a)
    dev = torch.device("cuda", 0)
    step, info = (cnn_workload if a.model == "cnn" else gpt_workload)(a, dev)

    losses, times = [], []
    for i in range(a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        lv = step(i).item()  # synchronizes
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(lv)

    train_common.write(a, losses, times, {"model": a.model, "workload": info, "steps": a.steps,
                                          "warmup": a.warmup, "seed": a.seed}, name=a.model)

if __name__ == "__main__":
    sys.exit(main())
