"""The checklist's decisions (dsnb.checklist.checks) and data-shift measures (dsnb.checklist.shift): each check
passes on a good value and fails (or warns) on a bad one, with the reason."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from dsnb.checklist import checks
from dsnb.checklist.shift import data_shift, js_divergence, total_variation, unigram_counts, unseen_share


def row(ids, labels):
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


# ---- shift ----
def test_js_divergence_equals_scipy():
    jensenshannon = pytest.importorskip("scipy.spatial.distance").jensenshannon  # SciPy comes with the data extra
    p, q = Counter({"a": 5, "b": 3, "c": 2}), Counter({"a": 1, "b": 6, "d": 3})
    keys = sorted(p.keys() | q.keys())
    pv, qv = [p[k] for k in keys], [q[k] for k in keys]
    assert math.isclose(js_divergence(p, q), jensenshannon(pv, qv, base=2) ** 2, rel_tol=1e-9)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(Counter("ab"), Counter("cd")) == pytest.approx(1.0)
    assert js_divergence(p, q) <= total_variation(p, q)  # JS (bits) never exceeds TV


def test_total_variation_and_unseen():
    p, q = Counter({"a": 1, "b": 1}), Counter({"a": 1, "c": 3})
    assert total_variation(p, q) == pytest.approx(0.5 * (abs(0.5 - 0.25) + 0.5 + 0.75))
    assert unseen_share(p, q) == pytest.approx(0.5)  # "b" is half of the fine-tuning tokens and never in q
    assert unigram_counts([[1, 2, 2], [0, 2]], skip={0}) == Counter({2: 3, 1: 1})
    with pytest.raises(ValueError, match="empty"):
        js_divergence(Counter(), q)


def test_shift_rows_pass_warn_and_na():
    same = data_shift([[1, 2, 3, 1]], [[1, 2, 3, 1, 2, 3]])
    far = data_shift([[7, 8, 9]], [[1, 2, 3]])
    assert [r.status for r in checks.check_shift(same)] == ["pass", "pass"]
    assert [r.status for r in checks.check_shift(far)] == ["warn", "warn"]
    assert checks.check_shift(far)[0].value == pytest.approx(1.0)
    assert [r.status for r in checks.check_shift(None)] == ["n.a.", "n.a."]


# ---- data ----
def test_rows_and_labels():
    good = [row([5, 6, 7], [-100, 6, 7]), row([5, 8], [-100, 8])]
    assert checks.check_rows(good).status == "pass"
    assert checks.check_labels(good).status == "pass"
    bad = checks.check_rows([*good, row([], []), {"labels": [1]}])
    assert bad.status == "fail" and "2 of 4 rows empty" in bad.measured and "[2, 3]" in bad.reason
    assert checks.check_rows([]).status == "fail"
    masked = checks.check_labels([*good, row([5, 6], [-100, -100])])
    assert masked.status == "fail" and "1 of 3 rows all -100" in masked.measured
    assert checks.check_labels([{"input_ids": [1, 2]}]).status == "fail"


# ---- recipe ----
def test_batch_vs_processes():
    assert checks.check_batch(8, 4, 1, 32).status == "pass"
    assert checks.check_batch(4, 1, 8, 128).status == "pass"
    bad = checks.check_batch(4, 1, 4, 30)
    assert bad.status == "fail" and "not a multiple of the 4 processes" in bad.reason
    assert checks.check_batch(16, 1, 3).status == "pass"  # derived from the per-device batch


def test_learning_rate_warmup_floor():
    assert checks.check_learning_rate(3e-5, 7_000_000_000).status == "pass"
    assert checks.check_learning_rate(3e-4, 7_000_000_000).status == "warn"
    assert checks.check_learning_rate(1e-2, 7_000_000_000).status == "fail"
    assert checks.check_learning_rate(2e-4, 1_300_000_000, "lora").status == "pass"
    assert checks.check_learning_rate(3e-3, 2_400_000).status == "pass"  # tiny models train at larger rates
    assert checks.check_learning_rate(float("nan"), 10).status == "fail"
    assert checks.check_warmup(500, 10_000).status == "pass"
    assert checks.check_warmup(0, 10_000).status == "warn"
    assert checks.check_warmup(200, 100).status == "fail"
    assert checks.check_floor(1e-6, 3e-5).status == "pass"
    assert checks.check_floor(2e-5, 3e-5).status == "warn"
    assert checks.check_floor(3e-5, 3e-5).status == "fail"


class Tok:
    def __init__(self, pad, eos):
        self.pad_token_id, self.eos_token_id = pad, eos


def test_pad_token_and_precision():
    assert checks.check_pad_token(Tok(1, 2)).status == "pass"
    assert checks.check_pad_token(Tok(2, 2)).status == "fail"
    assert checks.check_pad_token(Tok(None, 2)).status == "fail"
    assert checks.check_precision("bf16", "deepseek_v3", True, True).status == "pass"
    fp16 = checks.check_precision("fp16", "deepseek_v3", True, True)
    assert fp16.status == "fail" and "65504" in fp16.reason
    assert checks.check_precision("fp16", "llama", True, False).status == "warn"
    assert checks.check_precision("fp32", "deepseek_v3", False, False).status == "pass"
    assert checks.check_precision("fp32", "deepseek_v3", True, True).status == "warn"
    assert checks.check_precision(None, "llama", False, False, error="fp16 needs a GPU").status == "fail"


# ---- measured ----
def test_grad_norm_stability():
    steady = checks.check_grad_norms([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0])
    assert steady.status == "pass" and steady.value == pytest.approx(0.0597, abs=1e-3)
    assert checks.check_grad_norms([0.2, 3.0, 0.1, 4.0, 0.3, 2.5, 0.2, 5.0]).status in ("warn", "fail")
    assert checks.check_grad_norms([1.0, float("nan"), 1.0]).status == "fail"
    assert checks.check_grad_norms([1.0]).status == "fail"
    assert checks.check_grad_norms(None, reason="no run").status == "n.a."
    assert checks.check_grad_norms([9.0, 9.0, 1.0, 1.0], window=2).status == "pass"  # only the last window counts


def test_gpu_utilisation_memory_threads():
    assert checks.check_gpu_utilisation([0.9, 0.95, 0.85]).status == "pass"
    assert checks.check_gpu_utilisation([0.3, 0.4]).status == "warn"
    na = checks.check_gpu_utilisation(None, "no CUDA GPU")
    assert na.status == "n.a." and na.reason == "no CUDA GPU"
    assert checks.check_memory_reserve(60 * 2**30, 80 * 2**30).status == "pass"
    assert checks.check_memory_reserve(70 * 2**30, 80 * 2**30).status == "fail"
    assert checks.check_memory_reserve(None, None, oom=True).status == "fail"
    assert checks.check_memory_reserve(None, None, "no CUDA GPU").status == "n.a."
    assert checks.check_threads(2, 2, 1.0, 1.6).status == "warn"  # 4 threads on 2 cores
    assert checks.check_threads(16, 16, 1.0, 1.0).status == "pass"
    assert checks.check_threads(16, 16, 1.0, 2.0).status == "warn"
    assert checks.check_threads(2, 2, None, None).status == "n.a."


def test_checkpoint_row():
    stats = {"ratio": 0.6, "save_extra_s": 0.2, "load_extra_s": 0.1, "bytes": 2**20, "stored_bytes": 0.6 * 2**20,
             "verified": True}
    assert checks.check_checkpoint(stats).status == "pass"
    assert checks.check_checkpoint({**stats, "ratio": 0.98}).status == "warn"
    assert checks.check_checkpoint({**stats, "verified": False}).status == "fail"
    assert checks.check_checkpoint(None).status == "n.a."


def test_rows_refuse_unknown_status():
    with pytest.raises(ValueError, match="status"):
        checks.CheckRow("x", "ok", "", "", "")
