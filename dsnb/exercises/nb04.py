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


def masked_batchmean_factor(lengths: tuple[int, ...], seq: int, vocab: int = 16) -> float:
    """How many times a padding-masked KL summed and divided by the batch size exceeds the KL per real token.

    The half-fix of the article's ``batchmean``: per-position KLs (``kl_div(..., reduction="none").sum(-1)``)
    multiplied by the padding mask, then ``.sum() / batch``. ``lengths``: real tokens of each sequence,
    right-padded to ``seq``.
    """
    g = torch.Generator().manual_seed(0)
    log_q = torch.randn(len(lengths), seq, vocab, generator=g).log_softmax(-1)
    p = torch.randn(len(lengths), seq, vocab, generator=g).softmax(-1)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).to(log_q.dtype)
    kl = torch.nn.functional.kl_div(log_q, p, reduction="none").sum(-1) * mask
    per_real_token = kl.sum() / mask.sum()
    return (kl.sum() / len(lengths) / per_real_token).item()


#: Exercise 2: real lengths of the batch's sequences, right-padded to EX2_SEQ (the page's batch is 4 × 64, no padding).
EX2_LENGTHS, EX2_SEQ = (512, 300, 128, 60), 512


def check_masked_batchmean_factor(answer: float | None, lengths: tuple[int, ...] = EX2_LENGTHS,
                                  seq: int = EX2_SEQ) -> bool:
    """Exercise 2: the factor by which a padding-masked KL divided by the batch size overstates the per-token KL."""
    return check_number("2 (masked batchmean factor)", answer, masked_batchmean_factor(lengths, seq), rel_tol=0.01,
                        hint="the mask removes the padding from the sum, but the divisor is still the number of "
                             "sequences: what does a sum over real tokens divided by the sequences give?")


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
    real = sum(EX2_LENGTHS)
    return f"""
The mask zeroes the padding positions, so the sum is over the {' + '.join(map(str, EX2_LENGTHS))} = {real} real tokens;
dividing it by the {len(EX2_LENGTHS)} sequences gives {real} / {len(EX2_LENGTHS)} = {real / len(EX2_LENGTHS):g} times the KL per real token: the mean real length,
not the padded length {EX2_SEQ} (measured: {masked_batchmean_factor(EX2_LENGTHS, EX2_SEQ):.1f}×). The factor changes from batch to batch
with the lengths, so the KL's weight against the cross-entropy drifts too. Divide by mask.sum(), the real tokens,
as CombinedLoss does.
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    b = topk_bytes_per_token(EX3_K, value_bytes=EX3_VALUE_BYTES)
    return f"""
Per token: {EX3_K} values × {EX3_VALUE_BYTES} byte (fp8) + {EX3_K} ids × 4 bytes (int32: a 100k+ vocabulary needs more
than 16 bits, so fp8 values do not shrink the ids) = {b} bytes. × {EX3_TOKENS:.0e} tokens = {topk_storage_gb():,.0f} GB.
Halving the value bytes saves only a sixth: the ids are two thirds of the bytes in bf16, four fifths in fp8.
"""
