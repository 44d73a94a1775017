"""dsnb.plan.probe, .gpus and .fit, and dsnb.hardware_claims: the probe, the GPU catalogue, the fit verdict and the claim tables."""

from __future__ import annotations

import pytest
import torch

from dsnb.hardware_claims import article_hardware_claims
from dsnb.plan.fit import _changes, fits
from dsnb.plan.gpus import GPUS, gpu_spec
from dsnb.plan.memory import GiB, TrainingPlan, estimate_training_memory
from dsnb.plan.probe import probe, version_checks


def test_probe_reports_this_machine():
    report = probe()
    assert report.cpu_cores >= 1 and report.ram_bytes > 0
    assert "transformers" in report.libraries
    md = report.to_markdown()
    assert md.startswith("| item | value |")
    if torch.cuda.is_available():
        assert report.has_gpu and report.gpus[0].memory_bytes > 0
    else:
        assert not report.has_gpu and "no GPU" in md


def test_gpu_catalogue_and_custom():
    assert gpu_spec("RTX 4090").memory_gib == pytest.approx(24, abs=0.1)
    assert gpu_spec("A100 80GB").memory_gib == 80
    assert gpu_spec(48).memory_bytes == 48 * GiB
    assert {"RTX 4090", "A100 40GB", "A100 80GB", "H100 80GB"} <= set(GPUS)
    with pytest.raises(ValueError, match="choose from"):
        gpu_spec("GTX 1080")


def test_reserve_is_twenty_percent():
    plan = TrainingPlan(method="qlora", gradient_checkpointing=True, seq_len=512)
    need = estimate_training_memory("deepseek-coder-1.3b-base", plan).total
    assert fits("deepseek-coder-1.3b-base", plan, gpu=need / 0.8 / GiB * 1.001).fits
    assert not fits("deepseek-coder-1.3b-base", plan, gpu=need / 0.8 / GiB * 0.999).fits


def _single_changes_that_fit(model, plan, gpu, host_ram_gib=None):
    usable = gpu_spec(gpu).memory_bytes * 0.8
    out = []
    for _, label, change in _changes(plan, 64):
        est = estimate_training_memory(model, change(plan))
        if est.total <= usable and (host_ram_gib is None or est.cpu_offloaded <= host_ram_gib * GiB):
            out.append(label)
    return out, [label for _, label, _ in _changes(plan, 64)]


@pytest.mark.parametrize("accounting", ["minimum", "realistic"])
@pytest.mark.parametrize("model,plan,gpu", [
    ("llama-13b", TrainingPlan(seq_len=1024), "A100 80GB"),
    ("deepseek-coder-1.3b-base", TrainingPlan(micro_batch_size=8, seq_len=4096), "RTX 4090"),
    ("llama-13b", TrainingPlan(seq_len=2048, num_gpus=2, zero_stage=3, gradient_checkpointing=True), "RTX 4090"),
])
def test_the_fix_fits_and_no_cheaper_single_change_does(model, plan, gpu, accounting):
    plan = TrainingPlan(**{**plan.__dict__, "accounting": accounting})
    v = fits(model, plan, gpu=gpu)
    assert not v.fits and v.fix is not None and v.fix_need_bytes <= v.usable_bytes
    assert estimate_training_memory(model, v.fix_plan).total == v.fix_need_bytes
    single, ranked = _single_changes_that_fit(model, plan, gpu)
    if single:  # the first single change in the ranking that fits, none before it
        assert v.fix == single[0] and ranked.index(v.fix) == min(ranked.index(x) for x in single)
    else:  # a combination only when no single change fits
        assert " + " in v.fix
    row = v.row()
    assert row["fits"] == "no" and row["cheapest change that fits"] == v.fix


def test_nothing_fits_is_said():
    nothing = fits("llama-65b", TrainingPlan(), gpu="RTX 4090", max_gpus=1)
    assert nothing.fix is None and nothing.row()["cheapest change that fits"] == "nothing tried fits"


def test_combined_fix_when_no_single_change_is_enough():
    plan = TrainingPlan(micro_batch_size=4, seq_len=2048)
    v = fits("llama-13b", plan, gpu="RTX 4090", max_gpus=1)
    assert not v.fits and v.fix_need_bytes <= v.usable_bytes
    assert _single_changes_that_fit("llama-13b", plan, "RTX 4090")[0] == [] and v.fix.count(" + ") == 1


def test_article_claim_rows():
    rows = article_hardware_claims()
    assert [r["id"] for r in rows] == ["C03", "C05", "C06", "C07", "C11", "C11"]
    c03, c05, c06, c07, c11_13b, c11_65b = rows
    assert c03["saving_full_realistic"] < c03["saving_full"] < 0.45 < c03["saving_lora"]  # model states do not shrink
    assert not c05["fits_full"] and c05["fits_lora"] and c05["fits_qlora_1gpu"]
    assert not c06["fits_full"] and c06["fits_lora"]
    assert c07["saving_activations"] > 0.85 and c07["saving_full_realistic"] < c07["saving_full"] < 0.7
    assert c11_13b["fits_full"] and c11_13b["fits_full_realistic"]
    # 65B on 4 × 80 GB: only CPU offload fits, with almost nothing to spare: reported as borderline
    assert not c11_65b["fits_full"] and c11_65b["borderline"] and "borderline" in c11_65b["verdict"]
    assert all("minimum" in r["measured"] and "realistic" in r["measured"] for r in rows if r["id"] != "C07")
    assert all("flash attention" in r["assumptions"] for r in rows)


def test_version_checks_show_the_article_pins_fail():
    rows = {r["item"]: r for r in version_checks()}
    assert rows["transformers"]["pin works"] is False
    assert rows["torch"]["pin works"] is False
    assert "DeepseekV3ForCausalLM here: True" in rows["transformers"]["why"]


def test_offload_is_only_proposed_when_the_host_has_the_ram():
    plan = TrainingPlan(seq_len=2048, num_gpus=2, zero_stage=3, gradient_checkpointing=True)
    any_ram = fits("llama-13b", plan, gpu="RTX 4090")
    assert any_ram.fix_plan.offload != "none" and any_ram.fix_cpu_bytes > 64 * GiB
    assert any_ram.row()["CPU RAM for offload (GiB)"] == round(any_ram.fix_cpu_bytes / GiB, 1)
    small_host = fits("llama-13b", plan, gpu="RTX 4090", host_ram_gib=64)
    assert small_host.fix_plan.offload == "none" and small_host.row()["CPU RAM for offload (GiB)"] == 0
    single, _ = _single_changes_that_fit("llama-13b", plan, "RTX 4090", host_ram_gib=64)
    assert small_host.fix == single[0]


@pytest.mark.parametrize("gib", [float("inf"), float("nan"), 0, -8])
def test_gpu_spec_refuses_memory_that_is_not_a_positive_finite_number(gib):
    with pytest.raises(ValueError, match="positive number of GiB, and finite"):
        gpu_spec(gib)
