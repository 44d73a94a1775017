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
    return check_number("1 (T²·KL)", answer, t2_kl(teacher, student, temperature), rel_tol=0.01,
                        hint="divide both logit vectors by T, softmax them, sum p·(log p − log q), multiply by T².")


def batchmean_factor(batch: int, seq: int, vocab: int = 16) -> float:
    """How many times ``KLDivLoss(reduction="batchmean")`` on ``(batch, seq, vocab)`` exceeds the per-token mean."""
    g = torch.Generator().manual_seed(0)
    log_q = torch.randn(batch, seq, vocab, generator=g).log_softmax(-1)
    p = torch.randn(batch, seq, vocab, generator=g).softmax(-1)
    per_token = torch.nn.functional.kl_div(log_q, p, reduction="sum") / (batch * seq)
    return (torch.nn.KLDivLoss(reduction="batchmean")(log_q, p) / per_token).item()


#: Exercise 2: batch and sequence length of the 3-D logits (the page's batch is 4 × 64).
EX2_BATCH, EX2_SEQ = 2, 384


def check_batchmean_factor(answer: float | None, batch: int = EX2_BATCH, seq: int = EX2_SEQ) -> bool:
    """Exercise 2: the factor by which the article's ``batchmean`` KL on 3-D logits overstates the per-token KL."""
    return check_number("2 (batchmean factor)", answer, batchmean_factor(batch, seq), rel_tol=0.01,
                        hint="batchmean sums over every position and divides by the first dimension only.")


#: Exercise 3: top-k, bytes per stored value (fp8), and corpus tokens; the notebook's table is top-32/128 in bf16 for 1e10.
EX3_K, EX3_VALUE_BYTES, EX3_TOKENS = 50, 1, 3e9


def topk_storage_gb(k: int = EX3_K, value_bytes: int = EX3_VALUE_BYTES, tokens: float = EX3_TOKENS) -> float:
    """Gigabytes (10⁹ bytes) of top-``k`` teacher logits (``value_bytes`` per value, int32 ids) for ``tokens``."""
    return topk_bytes_per_token(k, value_bytes=value_bytes) * tokens / 1e9


def check_topk_storage_gb(answer: float | None) -> bool:
    """Exercise 3: gigabytes of top-50 teacher logits stored as fp8 values and int32 ids for 3·10⁹ tokens."""
    return check_number("3 (top-k storage, GB)", answer, topk_storage_gb(), rel_tol=0.02,
                        hint="each token stores k values and k token ids; only the bytes per value changed "
                             "(fp8 is 1 byte); the ids still need 4 bytes each.")


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
batchmean divides the sum over every element by input.size(0). On ({EX2_BATCH}, {EX2_SEQ}, vocab) tensors that is
the sum over {EX2_BATCH} × {EX2_SEQ} positions divided by {EX2_BATCH}: each sequence's {EX2_SEQ} per-token KLs are added up, so the
value is {EX2_SEQ} times the per-token mean, whatever the batch size (measured: {batchmean_factor(EX2_BATCH, EX2_SEQ):.1f}×). Flatten to
(tokens, vocab) first, or divide the sum by the number of real tokens, as CombinedLoss does.
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    b = topk_bytes_per_token(EX3_K, value_bytes=EX3_VALUE_BYTES)
    return f"""
Per token: {EX3_K} values × {EX3_VALUE_BYTES} byte (fp8) + {EX3_K} ids × 4 bytes (int32: a 100k+ vocabulary needs more
than 16 bits, so fp8 values do not shrink the ids) = {b} bytes. × {EX3_TOKENS:.0e} tokens = {topk_storage_gb():,.0f} GB.
Halving the value bytes saves only a sixth: the ids are two thirds of the bytes in bf16, four fifths in fp8.
"""
