"""GPTQ's cost and its error against round-to-nearest: the tiny DeepSeek and one 4096 × 4096 layer on CPU.

Prints (1) the time to GPTQ- and RTN-quantize the course's tiny DeepSeek-V3 (every decoder weight,
every routed expert) and its held-out perplexity; (2) for one 4096 × 4096 layer calibrated on
128 × 2048 tokens: the Hessian's time (XᵀX in float32, chunked), GPTQ's time and the GPTQ / RTN
output-error ratio ‖WX − ŴX‖² on those inputs. The inputs are synthetic but correlated like LLM
activations (a rank-64 signal with per-feature scales plus noise): real activations differ, so the
error ratio is an illustration, the time is the point.
Run: python benchmarks/quantize.py [--tokens 262144] [--dim 4096] [--bits 4] [--group-size 128]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from dsnb.compress.gptq import gptq_quantize_weight, rtn_quantize_weight
from dsnb.compress.measures import calibration_blocks, heldout_blocks, perplexity
from dsnb.compress.quantize import quantize_model
from dsnb.model.load import base_model


def tiny_model(bits: int, group_size: int) -> None:
    model, tokenizer = base_model()
    cal, test = calibration_blocks(tokenizer, 32), heldout_blocks(tokenizer, 128)
    print(f"tiny DeepSeek-V3 ({model.num_parameters():,} parameters), calibration {tuple(cal.shape)} tokens, "
          f"held-out {tuple(test.shape)}: fp32 perplexity {perplexity(model, test):.3f}")
    for method in ("gptq", "rtn"):
        m = copy.deepcopy(model)
        result = quantize_model(m, cal if method == "gptq" else None, method, bits, group_size)
        print(f"  {result.summary()}; held-out perplexity {perplexity(m, test):.3f}")


def one_layer(tokens: int, dim: int, bits: int, group_size: int, chunk: int = 8192) -> None:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, dim, generator=g) / 8
    scales = torch.rand(dim, generator=g) * 2 + 0.1
    w = torch.randn(dim, dim, generator=g) / dim**0.5
    t0 = time.perf_counter()
    xtx = torch.zeros(dim, dim)
    for i in range(0, tokens, chunk):
        x = (torch.randn(min(chunk, tokens - i), 64, generator=g) @ mix + 0.1 * torch.randn(min(chunk, tokens - i), dim,
                                                                                            generator=g)) * scales
        xtx += x.T @ x
    t_h = time.perf_counter() - t0
    h = 2 * xtx.double() / tokens
    t0 = time.perf_counter()
    q = gptq_quantize_weight(w, h, bits, group_size, is_hessian=True)
    t_g = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = rtn_quantize_weight(w, bits, group_size)
    t_r = time.perf_counter() - t0

    def err(qq):
        d = (w.double() - qq.dequantize().double())
        return torch.einsum("oi,ij,oj->", d, h, d).item()
    print(f"one {dim} x {dim} layer, {tokens:,} calibration tokens ({tokens // 2048} x 2048), {bits}-bit g{group_size}:")
    print(f"  Hessian (X^T X, float32) {t_h:.1f} s; GPTQ {t_g:.1f} s; RTN {t_r:.2f} s; "
          f"GPTQ / RTN output error {err(q) / err(r):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128 * 2048)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tiny_model(a.bits, a.group_size)
    one_layer(a.tokens, a.dim, a.bits, a.group_size)


if __name__ == "__main__":
    main()
