"""CombinedLoss (notebook 04): the formula in float64, masking, temperature, chunking, TRL's KL, errors."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from dsnb.train.losses import CombinedLoss


def _batch(b=3, s=7, v=13, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, s, v, generator=g, dtype=dtype) * 2
    teacher = torch.randn(b, s, v, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, v, (b, s), generator=g)
    labels[0, :3] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    return student, labels, teacher


def _reference(student, labels, teacher, ce_w, kl_w, t, direction="forward"):
    """The formula token by token, in float64 with plain Python loops."""
    ce_sum, kl_sum, n = 0.0, 0.0, 0
    for b in range(student.shape[0]):
        for i in range(student.shape[1] - 1):
            y = int(labels[b, i + 1])
            if y == -100:
                continue
            n += 1
            z, u = student[b, i].double(), teacher[b, i].double()
            ce_sum += -(z[y] - torch.logsumexp(z, 0)).item()
            log_q, log_p = (z / t).log_softmax(0), (u / t).log_softmax(0)
            if direction == "forward":
                kl_sum += (log_p.exp() * (log_p - log_q)).sum().item()
            else:
                kl_sum += (log_q.exp() * (log_q - log_p)).sum().item()
    return ce_w * ce_sum / n + kl_w * t * t * kl_sum / n, ce_sum / n, kl_sum / n


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("chunk", [None, 4])
def test_equals_float64_formula(direction, temperature, chunk):
    student, labels, teacher = _batch()
    fn = CombinedLoss(0.7, 0.3, temperature, kl_direction=direction, chunk_size=chunk)
    total = fn(student, labels, teacher)
    want, ce, kl = _reference(student, labels, teacher, 0.7, 0.3, temperature, direction)
    assert total.item() == pytest.approx(want, rel=1e-10)
    assert fn.last_ce.item() == pytest.approx(ce, rel=1e-10)
    assert fn.last_kl.item() == pytest.approx(kl, rel=1e-10)


def test_plain_cross_entropy_when_kl_weight_is_zero():
    student, labels, teacher = _batch(dtype=torch.float32)
    got = CombinedLoss(1.0, 0.0)(student, labels, teacher)
    want = ForCausalLMLoss(student, labels, vocab_size=student.shape[-1])  # transformers' own causal-LM loss
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_t_squared_kl_when_ce_weight_is_zero(temperature):
    student, labels, teacher = _batch()
    fn = CombinedLoss(0.0, 1.0, temperature)
    assert fn(student, labels, teacher).item() == pytest.approx(temperature ** 2 * fn.last_kl.item(), rel=1e-12)


def test_zero_kl_when_student_equals_teacher():
    student, labels, _ = _batch()
    fn = CombinedLoss(0.7, 0.3, 2.0)
    fn(student, labels, student.clone())
    assert abs(fn.last_kl.item()) < 1e-12
    assert fn.last_ce.item() > 0


def test_no_gradient_reaches_the_teacher():
    student, labels, teacher = _batch(dtype=torch.float32)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    for chunk in (None, 5):
        CombinedLoss(0.5, 0.5, 2.0, chunk_size=chunk)(student, labels, teacher).backward()
        assert teacher.grad is None
        assert student.grad is not None and student.grad.abs().sum() > 0
        student.grad = None


def test_masked_positions_get_no_gradient_and_change_nothing():
    student, labels, teacher = _batch(dtype=torch.float32)
    student.requires_grad_(True)
    CombinedLoss(0.7, 0.3, 2.0)(student, labels, teacher).backward()
    # position t predicts labels[t + 1]: row 0 positions 0-1 (labels 1-2 masked) and the last position
    assert student.grad[0, :2].abs().max() == 0
    assert student.grad[:, -1].abs().max() == 0
    assert student.grad[1, -3:].abs().max() == 0
    base = CombinedLoss()(student, labels, teacher)
    changed_s, changed_t = student.detach().clone(), teacher.clone()
    changed_s[0, :2] += 100.0
    changed_t[1, -1] -= 100.0
    assert CombinedLoss()(changed_s, labels, changed_t).item() == pytest.approx(base.item(), rel=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradcheck(direction):
    student, labels, teacher = _batch(b=2, s=4, v=5)
    student.requires_grad_(True)
    for chunk in (None, 3):
        fn = CombinedLoss(0.6, 0.4, 1.5, kl_direction=direction, chunk_size=chunk)
        assert torch.autograd.gradcheck(lambda x, fn=fn: fn(x, labels, teacher), (student,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_chunked_equals_unchunked(dtype, direction):
    student, labels, teacher = _batch(b=4, s=33, v=257, dtype=dtype, seed=3)
    results = []
    for chunk in (None, 1, 16, 1000):
        x = student.clone().requires_grad_(True)
        loss = CombinedLoss(0.7, 0.3, 2.0, kl_direction=direction, chunk_size=chunk)(x, labels, teacher)
        (loss * 3).backward()  # a non-unit upstream gradient
        results.append((loss.detach(), x.grad.float()))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)


def test_kl_part_equals_trl_generalized_jsd():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    student, labels, teacher = _batch(b=3, s=9, v=31, seed=5)
    for beta, direction in ((0.0, "forward"), (1.0, "reverse")):
        for temperature in (1.0, 2.0):
            fn = CombinedLoss(0.7, 0.3, temperature, kl_direction=direction)
            fn(student, labels, teacher)
            # TRL takes logits and labels already aligned: shift them the causal-LM way first
            want = GKDTrainer.generalized_jsd_loss(student[:, :-1], teacher[:, :-1], labels[:, 1:], beta=beta,
                                                   temperature=temperature)
            assert fn.last_kl.item() == pytest.approx(want.item(), rel=1e-10)


def test_batchmean_on_3d_tensors_divides_by_batch_only():
    student, labels, teacher = _batch(dtype=torch.float32)
    labels = torch.zeros_like(labels)  # no padding, so only the averaging differs
    fn = CombinedLoss(0.0, 1.0)
    fn(student, labels, teacher)
    log_q, p = F.log_softmax(student[:, :-1], -1), F.softmax(teacher[:, :-1], -1)
    wrong = torch.nn.KLDivLoss(reduction="batchmean")(log_q, p)  # sum over all tokens / batch size
    right = torch.nn.KLDivLoss(reduction="batchmean")(log_q.flatten(0, 1), p.flatten(0, 1))
    torch.testing.assert_close(fn.last_kl, right)
    assert wrong.item() == pytest.approx(right.item() * (student.shape[1] - 1), rel=1e-5)


def test_t_squared_keeps_the_soft_gradient_scale():
    """Hinton et al. 2015: the KL gradient shrinks like 1/T²; multiplying by T² keeps it constant."""
    student, labels, teacher = _batch(dtype=torch.float64)
    norms = {}
    for t in (8.0, 16.0, 32.0):
        x = student.clone().requires_grad_(True)
        CombinedLoss(0.0, 1.0, t)(x, labels, teacher).backward()
        norms[t] = x.grad.norm().item()
    assert norms[32.0] / norms[8.0] == pytest.approx(1.0, abs=0.05)
    # without the T² factor the gradient would fall 16-fold between T=8 and T=32
    assert math.isclose(norms[32.0] / 32 ** 2, norms[8.0] / 8 ** 2 / 16, rel_tol=0.05)


def test_num_items_normalises_over_the_accumulated_batch():
    student, labels, teacher = _batch()
    fn = CombinedLoss()
    per_batch = fn(student, labels, teacher)
    count = int((labels[:, 1:] != -100).sum())
    assert fn(student, labels, teacher, num_items=2 * count).item() == pytest.approx(per_batch.item() / 2)


def test_all_padding_batch_gives_zero_loss_and_zero_gradients():
    student, labels, teacher = _batch(dtype=torch.float32)
    labels = torch.full_like(labels, -100)
    for chunk in (None, 4):
        x = student.clone().requires_grad_(True)
        loss = CombinedLoss(chunk_size=chunk)(x, labels, teacher)
        loss.backward()
        assert loss.item() == 0.0 and x.grad.abs().max() == 0


def test_clear_errors():
    student, labels, teacher = _batch()
    fn = CombinedLoss()
    with pytest.raises(ValueError, match="vocabulary"):
        fn(student, labels, teacher[..., :-1])
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        fn(student.flatten(0, 1), labels.flatten(), teacher.flatten(0, 1))
    with pytest.raises(ValueError, match="labels"):
        fn(student, labels[:, :-1], teacher)
    with pytest.raises(ValueError, match="same shape"):
        fn(student, labels, teacher[:, :-1])
    for bad in (dict(kl_direction="sideways"), dict(temperature=0), dict(ce_weight=-1), dict(chunk_size=0)):
        with pytest.raises(ValueError):
            CombinedLoss(**bad)
