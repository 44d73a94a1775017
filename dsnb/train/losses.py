"""Training losses written out: the combined CE + KL distillation loss, sequence log-probabilities and
the DPO / IPO preference losses.

``CombinedLoss``: ``ce_weight · CE + kl_weight · T² · KL(teacher ‖ student)`` on causal-LM logits with
the causal shift, ``-100`` masking, temperature and an optional chunked (memory-bounded) path;
checked against transformers' ``ForCausalLMLoss`` and TRL's ``generalized_jsd_loss`` in the tests.
Taught in notebook 04.

``sequence_logps`` sums (or averages) the log-probabilities a causal LM gives to the completion
tokens of each sequence, with the same one-position shift transformers uses for its loss.
``dpo_loss`` turns the four sequence log-probs of a preference pair (policy and reference, chosen and
rejected) into the per-pair loss and the implicit rewards ``β·(log π − log π_ref)``. Checked equal to
TRL's ``DPOTrainer`` in the tests. Taught in notebook 06.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Log-probability of each sequence's completion tokens, shape ``(batch,)``.

    ``logits`` (batch, length, vocab) score the token *after* each position, so position ``t``
    scores ``labels[t + 1]`` (the causal shift of ``transformers``' loss). Positions whose label is
    ``ignore_index`` (prompt, padding) add nothing. ``average=True`` divides by the number of
    completion tokens (length-normalised log-probs, as IPO uses). Taught in notebook 06.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must share (batch, length)")
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != ignore_index
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference losses and the (detached) chosen and rejected rewards.

    With ``h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))``:

    - ``"sigmoid"`` (DPO, Rafailov et al. 2023): ``−log σ(β·h)``; with ``label_smoothing`` ε the
      conservative form ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)`` (labels flipped with probability ε);
    - ``"ipo"`` (Azar et al. 2023): ``(h − 1/(2β))²``. TRL normalises IPO by completion length: pass
      per-token averages (``sequence_logps(..., average=True)``) to get its numbers.

    Rewards are ``β·(log π − log π_ref)`` for chosen and rejected, detached (they are measurements,
    not part of the gradient). Taught in notebook 06.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: use one of {DPO_LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# --- The combined CE + KL (distillation) loss: notebook 04 ---------------------------------------

KL_DIRECTIONS = ("forward", "reverse")


def _chunk_terms(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                 direction: str, ignore_index: int, with_grad: bool, ce_w: float = 0.0, kl_w: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row CE and KL of one chunk of rows (fp32), and optionally d(ce_w·CE + kl_w·KL)/d(student)."""
    dt = torch.float64 if student.dtype == torch.float64 else torch.float32
    z = student.to(dt)
    valid = labels != ignore_index
    log_q1 = z.log_softmax(-1)  # CE at temperature 1
    ce = -log_q1.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    log_q = log_q1 if temperature == 1.0 else (z / temperature).log_softmax(-1)
    log_p = (teacher.to(dt) / temperature).log_softmax(-1)
    if direction == "forward":  # KL(teacher || student) = sum p (log p - log q)
        p = log_p.exp()
        kl = (p * (log_p - log_q)).sum(-1) * valid
    else:  # KL(student || teacher) = sum q (log q - log p)
        q = log_q.exp()
        diff = log_q - log_p
        kl = (q * diff).sum(-1) * valid
    if not with_grad:
        return ce, kl, None
    grad = log_q1.exp()
    grad.scatter_add_(-1, labels.clamp(min=0).unsqueeze(-1), -torch.ones_like(ce).unsqueeze(-1))
    grad.mul_(ce_w)
    if direction == "forward":  # d/dz = (q - p) / T
        grad.add_((log_q.exp() - p) * (kl_w / temperature))
    else:  # d/dz = q (log q - log p - KL) / T
        grad.add_(q * (diff - kl.unsqueeze(-1)) * (kl_w / temperature))
    return ce, kl, grad.mul_(valid.unsqueeze(-1))


class _ChunkedCombined(torch.autograd.Function):
    """Sums of per-token CE and KL over ``(N, V)`` rows, ``chunk`` rows at a time, forward and backward.

    Nothing of size ``(N, V)`` is saved for backward: the backward pass recomputes each chunk's
    softmaxes and writes its rows of the gradient (the only ``(N, V)`` tensor it allocates).
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, temperature, direction, ignore_index, chunk):
        dt = torch.float64 if student.dtype == torch.float64 else torch.float32
        ce_sum = torch.zeros((), dtype=dt, device=student.device)
        kl_sum = torch.zeros((), dtype=dt, device=student.device)
        for i in range(0, student.shape[0], chunk):
            ce, kl, _ = _chunk_terms(student[i:i + chunk], teacher[i:i + chunk], labels[i:i + chunk],
                                     temperature, direction, ignore_index, with_grad=False)
            ce_sum += ce.sum()
            kl_sum += kl.sum()
        ctx.save_for_backward(student, teacher, labels)
        ctx.temperature, ctx.direction = temperature, direction
        ctx.ignore_index, ctx.chunk = ignore_index, chunk
        return torch.stack([ce_sum, kl_sum])

    @staticmethod
    def backward(ctx, grad_out):
        student, teacher, labels = ctx.saved_tensors
        grad = torch.empty_like(student)
        g_ce, g_kl = grad_out.tolist()
        for i in range(0, student.shape[0], ctx.chunk):
            _, _, g = _chunk_terms(student[i:i + ctx.chunk], teacher[i:i + ctx.chunk], labels[i:i + ctx.chunk],
                                   ctx.temperature, ctx.direction, ctx.ignore_index, True, g_ce, g_kl)
            grad[i:i + ctx.chunk] = g
        return grad, None, None, None, None, None, None


class CombinedLoss(torch.nn.Module):
    """``ce_weight · CE + kl_weight · T² · KL`` for causal-LM distillation, on ``(batch, seq, vocab)`` logits.

    Called as ``loss_fn(student_logits, labels, teacher_logits)`` with ``labels`` in transformers'
    convention: *not* shifted (the loss shifts them by one position, as ``ForCausalLMLoss`` does) and
    ``ignore_index`` (-100) on prompt and padding tokens. A position whose label is ``ignore_index``
    counts in neither term; both terms are averaged over the real (label) tokens, or over
    ``num_items`` if given (the token count of a whole accumulated batch, as the Trainer passes it).

    - CE is the student's cross-entropy at temperature 1.
    - KL compares the teacher and student distributions both softened by ``temperature`` T;
      ``kl_direction="forward"`` is KL(teacher ‖ student) (Hinton et al. 2015; mean-seeking),
      ``"reverse"`` is KL(student ‖ teacher) (mode-seeking, as in MiniLLM). The KL term is multiplied
      by T² so its gradient keeps the same scale as T changes (Hinton et al. 2015, section 2).
    - The teacher gets no gradient (its logits are detached).
    - ``chunk_size``: process that many token rows at a time with a custom autograd function that
      recomputes the softmaxes in backward, so no more than a few ``(chunk, vocab)`` fp32 tensors
      live at once besides the ``(tokens, vocab)`` gradient itself. Same value and gradients as
      ``chunk_size=None`` (checked in the tests).

    ``last_ce`` and ``last_kl`` hold the last call's (detached) CE and KL means, KL *before* the T²
    factor (the number TRL's ``generalized_jsd_loss`` reports), for logging.

    Errors and edge cases: logits that are not 3-D, labels that do not match their ``(batch, seq)``,
    or student and teacher vocabularies that differ raise ``ValueError`` (a tokenizer mismatch is
    the usual cause). A batch with no real label token returns a zero loss that is still connected
    to the graph (backward gives zero gradients), as TRL does, so a fully padded micro-batch under
    gradient accumulation does not turn the run into NaN. Taught in notebook 04.
    """

    def __init__(self, ce_weight: float = 0.7, kl_weight: float = 0.3, temperature: float = 1.0,
                 ignore_index: int = -100, kl_direction: str = "forward", chunk_size: int | None = None) -> None:
        super().__init__()
        if kl_direction not in KL_DIRECTIONS:
            raise ValueError(f"kl_direction={kl_direction!r}: use one of {KL_DIRECTIONS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if ce_weight < 0 or kl_weight < 0:
            raise ValueError(f"weights must be non-negative, got ce_weight={ce_weight}, kl_weight={kl_weight}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of tokens or None, got {chunk_size}")
        self.ce_weight, self.kl_weight, self.temperature = float(ce_weight), float(kl_weight), float(temperature)
        self.ignore_index, self.kl_direction, self.chunk_size = ignore_index, kl_direction, chunk_size
        self.last_ce: torch.Tensor | None = None
        self.last_kl: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"ce_weight={self.ce_weight}, kl_weight={self.kl_weight}, temperature={self.temperature}, "
                f"kl_direction={self.kl_direction!r}, chunk_size={self.chunk_size}")

    def _check(self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        if student_logits.dim() != 3 or teacher_logits.dim() != 3:
            raise ValueError(f"logits must be (batch, seq, vocab); got student {tuple(student_logits.shape)}, "
                             f"teacher {tuple(teacher_logits.shape)}")
        if student_logits.shape[-1] != teacher_logits.shape[-1]:
            raise ValueError(f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary "
                             f"{teacher_logits.shape[-1]}: distillation needs one tokenizer for both models")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                             f"{tuple(teacher_logits.shape)} must have the same shape (same batch, same tokens)")
        if labels.shape != student_logits.shape[:2]:
            raise ValueError(f"labels {tuple(labels.shape)} must be (batch, seq) = {tuple(student_logits.shape[:2])}")

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                num_items: int | torch.Tensor | None = None) -> torch.Tensor:
        """The weighted total (scalar); the parts are in ``last_ce`` / ``last_kl``."""
        self._check(student_logits, labels, teacher_logits)
        vocab = student_logits.shape[-1]
        # shift the labels, not the logits: position t predicts labels[t + 1]; the last position has no target
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=self.ignore_index).reshape(-1)
        student = student_logits.reshape(-1, vocab)
        teacher = teacher_logits.detach().reshape(-1, vocab)
        count = (shifted != self.ignore_index).sum()
        denom = (torch.as_tensor(num_items, device=student.device) if num_items is not None else count).clamp(min=1)
        if self.chunk_size is None:
            ce, kl, _ = _chunk_terms(student, teacher, shifted, self.temperature, self.kl_direction,
                                     self.ignore_index, with_grad=False)
            sums = torch.stack([ce.sum(), kl.sum()])
        else:
            sums = _ChunkedCombined.apply(student, teacher, shifted, self.temperature, self.kl_direction,
                                          self.ignore_index, self.chunk_size)
        ce_mean, kl_mean = sums[0] / denom, sums[1] / denom
        self.last_ce, self.last_kl = ce_mean.detach(), kl_mean.detach()
        total = self.ce_weight * ce_mean + self.kl_weight * self.temperature ** 2 * kl_mean
        return total
