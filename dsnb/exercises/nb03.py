"""Exercise checks and worked solutions for notebook 03 (supervised fine-tuning).

Expected values are computed by dsnb and the libraries. The questions move the notebook's settings
elsewhere (the article's real-scale schedule, a multi-GPU recipe, another LoRA rank), so the page
does not print their answers.
"""

from __future__ import annotations

import copy

from torch import nn

from dsnb.exercises import Solutions, check_number
from dsnb.model.lora import apply_lora
from dsnb.train.config import effective_batch
from dsnb.train.schedules import REAL_FLOOR_LR, REAL_PEAK_LR, REAL_WARMUP_STEPS, warmup_linear_floor_lr

SOLUTIONS = Solutions("03")
solution = SOLUTIONS.show

#: The real-scale run exercise 1 talks about, and the step it asks for.
REAL_TOTAL, EX1_STEP = 10_000, 5_250
#: Exercise 2: global batch, GPUs and per-device batch of the recipe.
EX2_GLOBAL, EX2_GPUS, EX2_PER_DEVICE = 128, 8, 4
#: Exercise 3: the LoRA rank asked about (the notebook trains rank 8, attention and MLPs, no experts).
EX3_RANK = 32


def expected_lr(step: int = EX1_STEP) -> float:
    """The article's schedule (3e-5 peak, 500 warmup, linear to 1e-6 at 10 000 steps) at ``step``."""
    return warmup_linear_floor_lr(step, REAL_PEAK_LR, REAL_WARMUP_STEPS, REAL_TOTAL, REAL_FLOOR_LR)


def check_lr_at_step(answer: float | None) -> bool:
    """Exercise 1: the article's schedule at step 5 250."""
    return check_number("1 (learning rate)", answer, expected_lr(), rel_tol=0.01,
                        hint="past warmup the LR falls on a straight line from 3e-5 at step 500 to 1e-6 at step 10 000.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    frac = (EX1_STEP - REAL_WARMUP_STEPS) / (REAL_TOTAL - REAL_WARMUP_STEPS)
    return f"""
Step {EX1_STEP:,} is past the {REAL_WARMUP_STEPS} warmup steps, so the LR is on the straight line from
{REAL_PEAK_LR:g} (step {REAL_WARMUP_STEPS}) to {REAL_FLOOR_LR:g} (step {REAL_TOTAL:,}):
  progress = ({EX1_STEP} − {REAL_WARMUP_STEPS}) / ({REAL_TOTAL} − {REAL_WARMUP_STEPS}) = {frac:.3f}
  lr = {REAL_PEAK_LR:g} − progress × ({REAL_PEAK_LR:g} − {REAL_FLOOR_LR:g}) = {expected_lr():.4g}
(warmup_linear_floor_lr({EX1_STEP}, 3e-5, 500, 10_000, 1e-6), which the notebook checks equals
transformers' polynomial schedule with power 1.)
"""


def expected_accumulation(global_batch: int = EX2_GLOBAL, gpus: int = EX2_GPUS, per_device: int = EX2_PER_DEVICE) -> int:
    """Accumulation steps that make ``per_device`` × steps × ``gpus`` equal ``global_batch``."""
    steps = global_batch // (per_device * gpus)
    if effective_batch(per_device, steps, gpus) != global_batch:
        raise ValueError(f"{global_batch} is not a multiple of {per_device} × {gpus}")
    return steps


def check_accumulation(answer: float | None) -> bool:
    """Exercise 2: accumulation steps for a global batch of 128 on 8 GPUs holding 4 sequences each."""
    return check_number("2 (accumulation steps)", answer, expected_accumulation(), rel_tol=0,
                        hint="effective batch = per-device batch × accumulation steps × processes; solve for the steps.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    return f"""
effective batch = per device × accumulation × processes, so
  accumulation = {EX2_GLOBAL} / ({EX2_PER_DEVICE} × {EX2_GPUS}) = {expected_accumulation()}
Check: dsnb.train.config.effective_batch({EX2_PER_DEVICE}, {expected_accumulation()}, {EX2_GPUS}) = \
{effective_batch(EX2_PER_DEVICE, expected_accumulation(), EX2_GPUS)}.
A recipe's global_batch_size does this division and refuses a global batch that the GPUs do not divide.
"""


def expected_lora_share(model: nn.Module, r: int = EX3_RANK) -> float:
    """Share (0-1) of parameters trainable after adding LoRA of rank ``r`` to a copy of ``model``."""
    adapted = apply_lora(copy.deepcopy(model), r=r, alpha=2 * r)
    return adapted.num_parameters(only_trainable=True) / adapted.num_parameters()


def check_lora_share(answer: float | None, model: nn.Module) -> bool:
    """Exercise 3: the share of parameters LoRA trains on ``model`` at rank 32 (same targets as the notebook)."""
    return check_number("3 (LoRA share at rank 32)", answer, expected_lora_share(model), rel_tol=0.05,
                        hint="each adapted nn.Linear(in, out) gets r·(in + out) parameters; the share is adapter "
                             "parameters / (base parameters + adapter parameters).")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    return f"""
LoRA adds A (r × in) and B (out × r) beside each targeted nn.Linear(in, out): r·(in + out) parameters.
Summed over the targets (lora_target_modules(model): attention and MLP projections, routers and routed
experts left out) and divided by all parameters, adapters included:
  from dsnb.model.lora import lora_target_modules
  base_n = sum(p.numel() for p in base.parameters())
  lora_n = sum({EX3_RANK} * (m.in_features + m.out_features) for name, m in base.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in lora_target_modules(base))
  share = lora_n / (base_n + lora_n)
Rank {EX3_RANK} is 4× the notebook's rank 8, so the adapters are 4× as large; the share is a little under 4×
the printed one because the total grows too. Computed: nb03.expected_lora_share(base) (peft on a copy).
"""
