"""Peak memory and time of CombinedLoss (chunked and not) against plain cross-entropy, vocab 32k and 128k.

Run:  python benchmarks/loss_memory.py [--batch 4] [--seq 1024] [--chunk 256] [--dtype float32]

Each case runs forward + backward of one loss in a fresh subprocess on ``batch × seq`` tokens of random
student and teacher logits. On a GPU the peak is ``torch.cuda.max_memory_allocated``; on CPU it is
the growth of the process's peak resident memory (``ru_maxrss``) over the inputs, after a warm-up call;
with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) every large tensor is an mmap returned to
the system when freed, so resident memory tracks the live tensors. Printed as ratios to the size of one logits
tensor, measured in this run. Target (notebook 04): chunked CombinedLoss peak ≤ 2× the logits tensor,
which must itself hold the gradient (1×). Cases that would need more than ``--max-gib`` of memory are
measured on fewer tokens (the ratio does not depend on the token count) and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import psutil, torch
import torch.nn.functional as F
from dsnb.train.losses import CombinedLoss
kind, b, s, v, chunk, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = getattr(torch, dtype)
torch.manual_seed(0)
student = torch.randn(b, s, v, device=dev, dtype=dt, requires_grad=True)
teacher = torch.randn(b, s, v, device=dev, dtype=dt)
labels = torch.randint(0, v, (b, s), device=dev); labels[:, : s // 8] = -100
fn = {"cross_entropy": None, "CombinedLoss": CombinedLoss(0.7, 0.3, 2.0),
      "CombinedLoss chunked": CombinedLoss(0.7, 0.3, 2.0, chunk_size=chunk)}[kind]
def run(student, labels, teacher):
    if fn is None:
        loss = F.cross_entropy(student[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    else:
        loss = fn(student, labels, teacher)
    loss.backward()
    return loss
small = torch.randn(1, 16, v, device=dev, dtype=dt, requires_grad=True)
run(small, labels[:1, :16], teacher[:1, :16].clone())  # warm-up: kernels and thread pools load here, not below
del small
if dev == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = psutil.Process().memory_info().rss
t0 = time.perf_counter()
run(student, labels, teacher)
if dev == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
seconds = time.perf_counter() - t0
student.grad = None
t0 = time.perf_counter(); run(student, labels, teacher)
if dev == "cuda": torch.cuda.synchronize()
seconds = min(seconds, time.perf_counter() - t0)
print(json.dumps({"peak": peak, "seconds": seconds, "logits": student.numel() * student.element_size(), "device": dev}))
"""


def measure(kind: str, b: int, s: int, v: int, chunk: int, dtype: str) -> dict:
    # glibc otherwise serves freed large blocks again from its heap without returning them, so RSS would
    # stay at its high-water mark; a fixed mmap threshold makes every large tensor an mmap freed on release
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(b), str(s), str(v), str(chunk), dtype],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000])
    p.add_argument("--max-gib", type=float, default=8.0, help="largest memory a case may need (estimated)")
    args = p.parse_args(argv)
    elem = 4 if args.dtype == "float32" else 2
    # rough upper need (bytes per logit) of each path, inputs included, to stay inside --max-gib
    need = {"cross_entropy": 3 * elem + 8, "CombinedLoss": 3 * elem + 32, "CombinedLoss chunked": 3 * elem}
    print(f"{args.batch} x {args.seq} tokens, {args.dtype} logits, chunk {args.chunk} tokens; "
          "peak = extra memory of forward + backward over the inputs")
    print(f"{'vocab':>7s} {'loss':>21s} {'tokens':>7s} {'logits MiB':>11s} {'peak MiB':>9s} {'peak/logits':>12s} "
          f"{'seconds':>8s} {'time/CE':>8s}")
    ok = True
    for v in args.vocab:
        ce_seconds = None
        for kind in ("cross_entropy", "CombinedLoss", "CombinedLoss chunked"):
            b = args.batch
            while b > 1 and b * args.seq * v * need[kind] > args.max_gib * 2**30:
                b //= 2
            r = measure(kind, b, args.seq, v, args.chunk, args.dtype)
            per_token = r["seconds"] / (b * args.seq)
            ce_seconds = per_token if kind == "cross_entropy" else ce_seconds
            ratio = r["peak"] / r["logits"]
            mark = "" if b == args.batch else " (fewer tokens)"
            print(f"{v:>7d} {kind:>21s} {b * args.seq:>7d} {r['logits'] / 2**20:>11.0f} {r['peak'] / 2**20:>9.0f} "
                  f"{ratio:>12.2f} {r['seconds']:>8.2f} {per_token / ce_seconds:>8.2f}{mark}")
            if kind == "CombinedLoss chunked" and ratio > 2.0:
                ok = False
    print(f"device: {r['device']}; target chunked peak <= 2x logits: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
