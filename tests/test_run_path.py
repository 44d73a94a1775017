"""One run path for every stage (dsnb.train.run): a full fine-tuning of the fused-expert tiny MoE stopped after
a checkpoint and resumed ends with exactly the uninterrupted run's weights, routed experts included, for SFT, DPO
(method: full) and distillation; and ``python -m dsnb.train`` dispatches through the stage registry."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from dsnb.train.config import FinetuneConfig

STOP_AT, STEPS = 2, 4  # the run is interrupted right after its checkpoint-2, then resumed to step 4


class StopAfter(TrainerCallback):
    """Ends training once ``step`` optimizer steps are done (after that step's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


class SlowSave(TrainerCallback):
    """Adds ``SAVE_PAUSE`` seconds to every checkpoint save: time the step timer must leave out."""

    def on_save(self, args, state, control, **kwargs):
        time.sleep(SAVE_PAUSE)


SAVE_PAUSE = 0.5


def _cfg(out: Path, base_dir: Path, **changes) -> FinetuneConfig:
    values = dict(model=str(base_dir), method="full", max_steps=STEPS, save_steps=STOP_AT,
                  save_total_limit=None, eval_steps=None, logging_steps=1, per_device_batch_size=4,
                  train_examples=16, eval_examples=4, max_seq_len=80, learning_rate=3e-3, min_learning_rate=1e-4,
                  warmup_steps=0, compress_checkpoints=True, output_dir=str(out))
    return FinetuneConfig(**{**values, **changes})


def _check_resume_is_exact(run: Callable[..., object], tmp_path: Path, initial: dict[str, torch.Tensor]) -> None:
    """``run(out, **kw)`` trains one stage; interrupted + resumed must equal uninterrupted, tensor for tensor."""
    whole = run(tmp_path / "whole", callbacks=[SlowSave()])
    # run_stage's step timer counts the optimizer steps only, not the checkpoint writing between them
    assert whole.seconds - whole.info["step_seconds"] >= SAVE_PAUSE * (STEPS // STOP_AT)
    cut = run(tmp_path / "cut", callbacks=[StopAfter(STOP_AT)])
    assert cut.info["steps"] == STOP_AT
    # The test can fail: between the start and the checkpoint the routed experts moved, so a resume that kept
    # the experts' pre-resume values (the Trainer's strict=False load of per-expert checkpoint keys) would differ.
    at_cut = cut.model.state_dict()
    experts = [n for n in at_cut if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert experts and all(not torch.equal(at_cut[n], initial[n]) for n in experts)
    resumed = run(tmp_path / "cut", resume_from="auto")
    assert resumed.info["resumed_from"].endswith(f"checkpoint-{STOP_AT}") and resumed.info["steps"] == STEPS
    assert not (tmp_path / "cut" / ".restored").exists()  # the decompressed copy is gone
    want, got = whole.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys() and set(experts) <= set(got)
    for name in experts + sorted(want.keys() - set(experts)):  # bitwise: the Trainer restores the RNG states,
        # data position, optimizer and schedule; the routed experts first, the tensors a careless resume gets wrong
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    assert resumed.train_losses[1][-1] == whole.train_losses[1][-1]


def test_sft_full_resumes_to_the_same_weights(base_dir, base, corpus, tmp_path):
    from dsnb.train.sft import run_sft

    def run(out: Path, **kw):
        return run_sft(_cfg(out, base_dir, tasks=("summary",)), model=copy.deepcopy(base[0]), tokenizer=base[1],
                       corpus=corpus, progress=False, **kw)

    _check_resume_is_exact(run, tmp_path, base[0].state_dict())


def test_dpo_full_resumes_to_the_same_weights(base_dir, base, corpus, tmp_path):
    from dsnb.train.dpo import run_dpo

    def run(out: Path, **kw):
        cfg = _cfg(out, base_dir, stage="dpo", beta=0.1, max_seq_len=96, learning_rate=1e-3)
        result = run_dpo(cfg, corpus=corpus, progress=False, kinds=("other_summary", "truncated"), **kw)
        assert result.info["reference"] == "frozen copy"
        return result

    _check_resume_is_exact(run, tmp_path, base[0].state_dict())


def test_distillation_resumes_to_the_same_weights(base_dir, base, corpus, tmp_path):
    from dsnb.train.distill import run_distillation, shrink_model
    from dsnb.train.losses import CombinedLoss

    student = shrink_model(base[0], num_hidden_layers=2, n_routed_experts=4)[0]
    teacher = copy.deepcopy(base[0])  # DistillationTrainer freezes its teacher: not the shared fixture

    def run(out: Path, **kw):
        return run_distillation(_cfg(out, base_dir, tasks=("summary",)), copy.deepcopy(student), teacher, base[1],
                                loss_fn=CombinedLoss(0.5, 0.5, 2.0), corpus=corpus, progress=False, **kw)

    _check_resume_is_exact(run, tmp_path, student.state_dict())


def test_every_recipe_stage_has_a_runner():
    from dsnb.train.config import STAGES
    from dsnb.train.dpo import run_dpo
    from dsnb.train.run import STAGE_RUNNERS, stage_runner
    from dsnb.train.sft import run_sft

    assert set(STAGE_RUNNERS) == set(STAGES)
    assert stage_runner("sft") is run_sft and stage_runner("dpo") is run_dpo
