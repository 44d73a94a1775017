"""Exercise checks and worked solutions for notebook 09 (GPTQ, 4-bit storage, pruning).

Expected values are computed by dsnb.
"""

from __future__ import annotations

import math

from dsnb.compress.prune import gaussian_share_below
from dsnb.compress.qlinear import bytes_per_weight
from dsnb.exercises import Solutions, check_number

SOLUTIONS = Solutions("09")
solution = SOLUTIONS.show


def checkpoint_gb(params: float, bits: int = 4, group_size: int = 128) -> float:
    """Gigabytes (10⁹ bytes) of ``params`` weights stored at ``bits`` bits with fp16 scales and byte zeros per group."""
    return params * bytes_per_weight(bits, group_size) / 1e9


#: Exercise 1: DeepSeek-V2's parameter count, bits and group size (the notebook works 671B at group size 128).
EX1_PARAMS, EX1_BITS, EX1_GROUP = 236e9, 4, 64


def check_checkpoint_gb(answer: float | None, params: float = EX1_PARAMS, bits: int = EX1_BITS,
                        group_size: int = EX1_GROUP) -> bool:
    """Exercise 1: size of a 236B-parameter DeepSeek-V2 with every weight stored 4-bit, group size 64."""
    return check_number("1 (4-bit checkpoint, GB)", answer, checkpoint_gb(params, bits, group_size), rel_tol=0.004,
                        hint="each weight costs bits/8 bytes, and each group adds a 2-byte scale and a 1-byte zero: "
                             "smaller groups, more of them.")


def decode_ceiling_ratio(bits: int = 4, group_size: int = 128, dense_bytes: float = 2.0) -> float:
    """How many times higher the memory-bandwidth ceiling of decode tokens/s is at ``bits`` than at ``dense_bytes``/weight."""
    return dense_bytes / bytes_per_weight(bits, group_size)


#: Exercise 2: bytes per weight of the checkpoint as shipped (DeepSeek-V3's FP8), against 4-bit g128.
EX2_DENSE_BYTES = 1.0


def check_decode_ceiling_ratio(answer: float | None, bits: int = 4, group_size: int = 128) -> bool:
    """Exercise 2: the bandwidth ceiling of batch-1 decode, 4-bit g128 over DeepSeek-V3's FP8 weights."""
    return check_number("2 (decode ceiling ratio)", answer, decode_ceiling_ratio(bits, group_size, EX2_DENSE_BYTES),
                        rel_tol=0.004, hint="tokens/s ≤ bandwidth / bytes read per token; only the bytes per weight "
                        "change, and FP8 weights are 1 byte, not bf16's 2.")


def std_for_share(share: float, threshold: float = 0.01) -> float:
    """The standard deviation of zero-mean Gaussian weights for which ``|w| < threshold`` holds ``share`` of them."""
    lo, hi = 1e-6, 10.0
    for _ in range(200):  # share falls as the std grows: bisect in log space
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if gaussian_share_below(threshold, mid) > share else (lo, mid)
    return math.sqrt(lo * hi)


def check_std_for_share(answer: float | None, share: float = 0.40, threshold: float = 0.01) -> bool:
    """Exercise 3: the weight standard deviation at which the article's |w| < 0.01 rule removes exactly 40%."""
    return check_number("3 (std for a 40% share)", answer, std_for_share(share, threshold), rel_tol=0.01,
                        hint="for Gaussian weights the share below t is erf(t / (σ·√2)); solve for σ.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    b = bytes_per_weight(EX1_BITS, EX1_GROUP)
    return f"""
A 4-bit code is half a byte; each group of {EX1_GROUP} weights adds a 2-byte fp16 scale and a 1-byte zero point:
  0.5 + 3/{EX1_GROUP} = {b:.4f} bytes per weight;  {EX1_PARAMS / 1e9:.0f}e9 × {b:.4f} = {checkpoint_gb(EX1_PARAMS, EX1_BITS, EX1_GROUP):.1f} GB
(against {EX1_PARAMS * 2 / 1e9:.0f} GB in bf16). Halving the group size doubles the scale-and-zero overhead:
at group size 128 it would be {checkpoint_gb(EX1_PARAMS, EX1_BITS, 128):.1f} GB. Real 4-bit checkpoints keep
embeddings, norms and routers in bf16 and are a few GB larger.
"""


@SOLUTIONS.register(2)
def _solution_2() -> str:
    b = bytes_per_weight(4, 128)
    return f"""
At batch 1 every generated token reads every active weight once, so tokens/s ≤ bandwidth / bytes read.
DeepSeek-V3 ships FP8 weights: 1 byte each; 4-bit g128 reads {b:.4f}: the ceiling rises
1 / {b:.4f} = {decode_ceiling_ratio(4, 128, EX2_DENSE_BYTES):.2f}×, half the gain over bf16. Kernels that unpack in
registers get close to it at small batch; at large batch decode becomes compute-bound and the gain shrinks.
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    s = std_for_share(0.40)
    return f"""
For weights ~ N(0, σ²), P(|w| < t) = erf(t / (σ√2)). Setting erf(0.01 / (σ√2)) = 0.40 gives
σ = 0.01 / (√2 · erfinv(0.40)) = {s:.4f}. The rule's share is a statement about the weights' scale:
a model initialised with std 0.02 (the tiny model) starts near {gaussian_share_below(0.01, 0.02):.0%};
one initialised with std 0.006 (DeepSeek-V3's initializer_range) near {gaussian_share_below(0.01, 0.006):.0%}.
"""
