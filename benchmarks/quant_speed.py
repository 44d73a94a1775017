"""CPU inference speed of 4-bit packed weights against fp32 and bf16, and the bytes each reads.

``QuantLinear`` (dsnb.compress.qlinear) unpacks and dequantizes its weight on every call, then runs a
dense fp32 matmul: on a CPU that is extra work, not a saving. What 4-bit storage does change is the
bytes of weights a forward pass must read (about 7.6x fewer than fp32, 3.8x fewer than bf16 at group
size 128), which is what bounds batch-1 decoding on a GPU when a fused kernel (Marlin, ExLlama)
unpacks in registers. Printed: time per call of one 4096 x 4096 layer at batch 1 (decode) and 512
(prefill) for fp32, bf16 and packed 4-bit, their ratios, the weight bytes, and the tiny DeepSeek's
forward time fp32 vs packed 4-bit (median of repeats).
Run: python benchmarks/quant_speed.py [--dim 4096] [--repeats 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from dsnb.compress.gptq import rtn_quantize_weight
from dsnb.compress.measures import heldout_blocks
from dsnb.compress.qlinear import QuantLinear, pack_model
from dsnb.compress.quantize import quantize_model
from dsnb.model.load import base_model


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    lin = torch.nn.Linear(a.dim, a.dim, bias=False)
    q = QuantLinear.from_quantized(rtn_quantize_weight(lin.weight, 4, 128))
    lin16 = copy.deepcopy(lin).to(torch.bfloat16)
    qbytes = sum(b.numel() * b.element_size() for b in q.buffers())
    print(f"weight bytes: fp32 {a.dim * a.dim * 4 / 1e6:.1f} MB, bf16 {a.dim * a.dim * 2 / 1e6:.1f} MB, "
          f"4-bit g128 {qbytes / 1e6:.1f} MB (fp32 / 4-bit = {a.dim * a.dim * 4 / qbytes:.2f}x)")
    with torch.no_grad():
        for batch in (1, 512):
            x = torch.randn(batch, a.dim)
            t32 = timed(lambda x=x: lin(x), a.repeats)
            t16 = timed(lambda x=x: lin16(x.bfloat16()), a.repeats)
            t4 = timed(lambda x=x: q(x), a.repeats)
            print(f"batch {batch}: fp32 {t32 * 1e3:.2f} ms, bf16 {t16 * 1e3:.2f} ms, 4-bit (dequantize + fp32 matmul) "
                  f"{t4 * 1e3:.2f} ms; speed 4-bit / fp32 = {t32 / t4:.2f}x, bf16 / fp32 = {t32 / t16:.2f}x")
        model, tokenizer = base_model()
        x = heldout_blocks(tokenizer, 8)
        packed = copy.deepcopy(model)
        pack_model(packed, quantize_model(packed, None, "rtn", 4, 128).weights)
        tf = timed(lambda: model(x), max(3, a.repeats // 4))
        tq = timed(lambda: packed(x), max(3, a.repeats // 4))
        print(f"tiny DeepSeek forward, {tuple(x.shape)} tokens: fp32 {tf * 1e3:.1f} ms, packed 4-bit {tq * 1e3:.1f} ms; "
              f"speed 4-bit / fp32 = {tf / tq:.2f}x")


if __name__ == "__main__":
    main()
