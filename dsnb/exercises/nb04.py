"""Exercise checks and worked solutions for notebook 04 (the combined CE + KL loss and distillation).

Expected values are computed by dsnb.
"""

from __future__ import annotations

import torch

from dsnb.exercises import Solutions, check_number
from dsnb.train.distill import topk_bytes_per_token
from dsnb.train.losses import CombinedLoss

SOLUTIONS = Solutions("04")
solution = SOLUTIONS.show


def t2_kl(teacher: tuple[float, ...], student: tuple[float, ...], temperature: float) -> float:
    """``T² · KL(teacher ‖ student)`` for one token's logits, computed by ``CombinedLoss``."""
    s = torch.tensor([[student, student]], dtype=torch.float64)
    t = torch.tensor([[teacher, teacher]], dtype=torch.float64)
    labels = torch.tensor([[-100, 0]])  # one real token: position 0 predicts label 1
    return CombinedLoss(0.0, 1.0, temperature)(s, labels, t).item()


def check_t2_kl(answer: float | None, teacher: tuple[float, ...] = (2.0, 0.0, -2.0),
                student: tuple[float, ...] = (0.0, 0.0, 0.0), temperature: float = 2.0) -> bool:
    """Exercise 1: ``T² · KL(teacher ‖ student)`` in nats for one token with the given logits."""
    return check_number("1 (T²·KL)", answer, t2_kl(teacher, student, temperature), rel_tol=0.02,
                        hint="divide both logit vectors by T, softmax them, sum p·(log p − log q), multiply by T².")


def batchmean_factor(batch: int, seq: int, vocab: int = 16) -> float:
    """How many times ``KLDivLoss(reduction="batchmean")`` on ``(batch, seq, vocab)`` exceeds the per-token mean."""
    g = torch.Generator().manual_seed(0)
    log_q = torch.randn(batch, seq, vocab, generator=g).log_softmax(-1)
    p = torch.randn(batch, seq, vocab, generator=g).softmax(-1)
    per_token = torch.nn.functional.kl_div(log_q, p, reduction="sum") / (batch * seq)
    return (torch.nn.KLDivLoss(reduction="batchmean")(log_q, p) / per_token).item()


def check_batchmean_factor(answer: float | None, batch: int = 8, seq: int = 256) -> bool:
    """Exercise 2: the factor by which the article's ``batchmean`` KL on 3-D logits overstates the per-token KL."""
    return check_number("2 (batchmean factor)", answer, batchmean_factor(batch, seq), rel_tol=0.01,
                        hint="batchmean sums over every position and divides by the first dimension only.")


def check_topk_storage_tb(answer: float | None, k: int = 32, tokens: float = 10e9) -> bool:
    """Exercise 3: terabytes (10¹² bytes) of top-``k`` teacher logits (bf16 values + int32 ids) for ``tokens``."""
    return check_number("3 (top-k storage, TB)", answer, topk_bytes_per_token(k) * tokens / 1e12, rel_tol=0.02,
                        hint="each token stores k values of 2 bytes and k token ids of 4 bytes.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    t = torch.tensor([2.0, 0.0, -2.0]) / 2
    p = t.softmax(-1)
    kl = (p * (p.log() - torch.log(torch.tensor(1 / 3)))).sum().item()
    return f"""
Soften both by T = 2: teacher logits (1, 0, -1) -> p = softmax = ({p[0]:.4f}, {p[1]:.4f}, {p[2]:.4f});
the student's logits are equal, so q = (1/3, 1/3, 1/3) at any temperature.
  KL(p || q) = sum p·(log p - log q) = {kl:.4f} nats;  T²·KL = 4 × {kl:.4f} = {t2_kl((2.0, 0.0, -2.0), (0.0, 0.0, 0.0), 2.0):.4f}
Computed: CombinedLoss(0, 1, temperature=2) on one real token (dsnb.exercises.nb04.t2_kl).
"""


@SOLUTIONS.register(2)
def _solution_2() -> str:
    return f"""
batchmean divides the sum over every element by input.size(0). On (8, 256, vocab) tensors that is
the sum over 8 × 256 positions divided by 8: each sequence's 256 per-token KLs are added up, so the
value is 256 times the per-token mean (measured: {batchmean_factor(8, 256):.1f}×). Flatten to
(tokens, vocab) first, or divide the sum by the number of real tokens, as CombinedLoss does.
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    b = topk_bytes_per_token(32)
    return f"""
Per token: 32 values × 2 bytes (bf16) + 32 ids × 4 bytes (int32; a 100k vocabulary needs more than
16 bits) = {b} bytes. × 10¹⁰ tokens = {b * 10e9:.3g} bytes = {b * 10e9 / 1e12:.2f} TB.
"""
