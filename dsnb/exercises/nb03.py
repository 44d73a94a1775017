"""Exercise checks and worked solutions for notebook 03 (supervised fine-tuning).

Expected values are computed by dsnb and the libraries. The questions move the notebook's settings
elsewhere (another run's logged learning rates, a multi-GPU recipe, LoRA on a real model), so the page
does not print their answers.
"""

from __future__ import annotations

import torch

from dsnb.exercises import Solutions, check_number
from dsnb.plan.memory import lora_parameter_count
from dsnb.plan.shape import as_shape
from dsnb.train.config import effective_batch
from dsnb.train.schedules import warmup_linear_floor_lr

SOLUTIONS = Solutions("03")
solution = SOLUTIONS.show

#: Exercise 1: another team's LoRA run, warmup then a straight line down to EX1_FLOOR at its last step.
#: Its dashboard shows the learning rate at two steps (EX1_LOGGED); the run's length is the question.
EX1_FLOOR = 2e-6
EX1_LOGGED = ((1_750, 1.01e-4), (2_550, 5.15e-5))
#: The run those figures were logged from (peak, warmup, total steps): the test checks the logged values.
EX1_RUN = (2e-4, 150, 3_350)
#: Exercise 2: a recipe's GPUs, sequences per GPU, accumulation steps and sequence length (packed, no padding).
EX2_GPUS, EX2_PER_DEVICE, EX2_ACCUMULATION, EX2_SEQ_LEN = 8, 4, 6, 4096
#: Exercise 3: a LoRA recipe for a real model, rank 16 on every decoder linear layer (the notebook: rank 8, tiny model).
EX3_MODEL, EX3_RANK = "deepseek-coder-6.7b-base", 16


def expected_total_steps(logged: tuple[tuple[int, float], ...] = EX1_LOGGED, floor: float = EX1_FLOOR) -> float:
    """The step at which the straight line through two logged (step, LR) points reaches the floor.

    Fitted by least squares (``torch.linalg.lstsq``) on the logged points, so more points work too.
    """
    steps = torch.tensor([[float(s), 1.0] for s, _ in logged], dtype=torch.float64)
    lrs = torch.tensor([[lr] for _, lr in logged], dtype=torch.float64)
    slope, intercept = torch.linalg.lstsq(steps, lrs).solution[:, 0].tolist()
    if slope >= 0:
        raise ValueError(f"the logged learning rates {logged} do not decay: no step reaches the floor {floor:g}")
    return (floor - intercept) / slope


def check_total_steps(answer: float | None) -> bool:
    """Exercise 1: the length (max_steps) of the run whose LR dashboard shows EX1_LOGGED."""
    return check_number("1 (run length from the logged LR)", answer, expected_total_steps(), rel_tol=0.01,
                        hint="after warmup the LR falls on a straight line that ends at the floor on the last step: "
                             "get its slope from the two logged points and follow it down to the floor.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    (s1, lr1), (s2, lr2) = EX1_LOGGED
    slope = (lr2 - lr1) / (s2 - s1)
    return f"""
Both logged steps are past warmup, so they lie on the decay line, which reaches the floor at the last step:
  slope = ({lr2:g} − {lr1:g}) / ({s2:,} − {s1:,}) = {slope:.4g} per step
  last step = {s2:,} + ({EX1_FLOOR:g} − {lr2:g}) / slope = {expected_total_steps():,.0f}
Check against the schedule itself: warmup_linear_floor_lr(step, peak, warmup, {expected_total_steps():,.0f}, \
{EX1_FLOOR:g}) with the run's peak {EX1_RUN[0]:g} and {EX1_RUN[1]} warmup steps gives \
{warmup_linear_floor_lr(s1, EX1_RUN[0], EX1_RUN[1], EX1_RUN[2], EX1_FLOOR):.4g} at step {s1:,}. Reading a schedule off a \
dashboard this way tells you how long a run was planned for, and whether a restarted run kept its schedule.
"""


def expected_tokens_per_step(gpus: int = EX2_GPUS, per_device: int = EX2_PER_DEVICE,
                             accumulation: int = EX2_ACCUMULATION, seq_len: int = EX2_SEQ_LEN) -> int:
    """Tokens one optimizer step trains on: the effective batch (``effective_batch``) times the packed length."""
    return effective_batch(per_device, accumulation, gpus) * seq_len


def check_tokens_per_step(answer: float | None) -> bool:
    """Exercise 2: tokens per optimizer step of the EX2_* recipe (packed sequences)."""
    return check_number("2 (tokens per optimizer step)", answer, expected_tokens_per_step(), rel_tol=0.01,
                        hint="first the effective batch in sequences (per device × accumulation × processes), "
                             "then every packed sequence is full.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    batch = effective_batch(EX2_PER_DEVICE, EX2_ACCUMULATION, EX2_GPUS)
    return f"""
effective batch = per device × accumulation × processes = {EX2_PER_DEVICE} × {EX2_ACCUMULATION} × {EX2_GPUS} = {batch} sequences
(dsnb.train.config.effective_batch), and packed sequences are full, so
  tokens per step = {batch} × {EX2_SEQ_LEN:,} = {expected_tokens_per_step():,}
Papers quote batch sizes in tokens; this is how a recipe's three numbers turn into one. Without packing,
padding makes the trained tokens fewer: count the answer tokens (label != -100) instead.
"""


def expected_lora_parameters(model: str = EX3_MODEL, r: int = EX3_RANK) -> int:
    """Parameters LoRA of rank ``r`` trains on every decoder linear layer of ``model`` (``dsnb.plan``'s count,
    which tests/test_memory.py checks against peft)."""
    return lora_parameter_count(as_shape(model), r, "all-linear")[0]


def check_lora_parameters(answer: float | None) -> bool:
    """Exercise 3: how many parameters LoRA trains on deepseek-coder-6.7b at rank 16, every decoder linear layer."""
    return check_number("3 (LoRA parameters, 6.7B at rank 16)", answer, expected_lora_parameters(), rel_tol=0.01,
                        hint="each adapted nn.Linear(in, out) gets r·(in + out) parameters: add up the seven "
                             "matrices of one layer, then multiply by the layers.")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    shape = as_shape(EX3_MODEL)
    h, m, n = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers
    attention, mlp = 4 * EX3_RANK * (h + h), 3 * EX3_RANK * (h + m)
    return f"""
LoRA adds A (r × in) and B (out × r) beside each targeted nn.Linear(in, out): r·(in + out) parameters.
{EX3_MODEL}: hidden {h}, MLP {m}, {n} layers, as many key/value heads as heads, so per layer
  q, k, v, o: 4 × {EX3_RANK} × ({h} + {h}) = {attention:,}
  gate, up, down: 3 × {EX3_RANK} × ({h} + {m}) = {mlp:,}
  × {n} layers = {(attention + mlp) * n:,} trainable parameters (dsnb.plan.memory.lora_parameter_count:
  {expected_lora_parameters():,}), about {expected_lora_parameters() / shape.parameter_count():.2%} of the model.
The count grows linearly with r; the MLP takes most of it because its matrices are wider.
"""
