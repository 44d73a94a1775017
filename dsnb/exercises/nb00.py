"""Exercise checks and worked solutions for notebook 00 (setup, hardware and memory planning).

Every expected value is computed by ``dsnb.plan.memory`` / ``dsnb.plan.fit``, never typed in.
The questions transfer the notebook's computation to a setting it does not print (another optimizer,
another ZeRO stage and model, another card), so the page never shows their answers.
"""

from __future__ import annotations

from dsnb.exercises import Solutions, check_number
from dsnb.plan.memory import GiB, TrainingPlan, estimate_training_memory
from dsnb.plan.shape import ModelShape, load_model_config

SOLUTIONS = Solutions("00")
solution = SOLUTIONS.show

#: Exercise 1: the optimizer swapped in for AdamW.
EX1_OPTIMIZER = "sgd-momentum"
#: Exercise 2: model, ZeRO stage and GPUs.
EX2_MODEL, EX2_STAGE, EX2_GPUS = "deepseek-coder-33b-base", 2, 8
#: Exercise 3: model and GPUs of a ZeRO-3 run whose optimizer is offloaded to the node's CPU RAM.
EX3_MODEL, EX3_GPUS = "deepseek-coder-33b-base", 8


def expected_bytes_per_param(precision: str = "bf16-mixed", optimizer: str = EX1_OPTIMIZER) -> float:
    """Weights + gradients + optimizer states per parameter for full fine-tuning (AdamW's step counters left out)."""
    shape = ModelShape.from_config(load_model_config("deepseek-coder-6.7b-base"))
    b = estimate_training_memory(shape, precision=precision, optimizer=optimizer)
    steps = 4 * shape.tensor_count() if optimizer == "adamw" else 0
    return (b.model_states - steps) / shape.parameter_count()


def check_bytes_per_param(answer: float | None) -> bool:
    """Exercise 1: bytes per parameter of full fine-tuning, bf16 mixed precision, SGD with momentum."""
    return check_number(
        "1 (bytes per parameter, SGD + momentum)", answer, expected_bytes_per_param(), rel_tol=0.01,
        hint="start from the 16-byte AdamW table: which rows belong to Adam's two moments, and how many "
             "fp32 buffers does momentum SGD keep instead? The fp32 master copy stays.",
    )


@SOLUTIONS.register(1)
def _solution_1() -> str:
    adamw = expected_bytes_per_param(optimizer="adamw")
    sgd = expected_bytes_per_param()
    return f"""
Mixed precision keeps the same weights, gradients and fp32 master copy whatever the optimizer:
  2 (bf16 weights) + 2 (bf16 gradients) + 4 (fp32 master copy) = 8 bytes.
AdamW adds two fp32 moments (m and v): 8 + 4 + 4 = {adamw:g} bytes.
SGD with momentum adds one fp32 momentum buffer:   8 + 4     = {sgd:g} bytes.
Computed: expected_bytes_per_param(optimizer="sgd-momentum") = {sgd:g}
(estimate_training_memory(..., optimizer="sgd-momentum").model_states / parameter_count()).
"""


def expected_zero_gib(model: str = EX2_MODEL, stage: int = EX2_STAGE, num_gpus: int = EX2_GPUS) -> float:
    """GiB of weights + gradients + optimizer states per GPU, full bf16-mixed AdamW under ZeRO-``stage``."""
    return estimate_training_memory(model, TrainingPlan(zero_stage=stage, num_gpus=num_gpus)).model_states / GiB


def check_zero_gib(answer: float | None) -> bool:
    """Exercise 2: model states per GPU of deepseek-coder-33b under ZeRO-2 on 8 GPUs."""
    return check_number(
        "2 (ZeRO-2 per GPU)", answer, expected_zero_gib(), rel_tol=0.01,
        hint="ZeRO-2 splits gradients and optimizer states over the GPUs but every GPU keeps all the 16-bit "
             "weights; the parameter count is ModelShape.from_config(load_model_config(name)).parameter_count().",
    )


@SOLUTIONS.register(2)
def _solution_2() -> str:
    shape = ModelShape.from_config(load_model_config(EX2_MODEL))
    n = shape.parameter_count()
    by_hand = (2 * n + (2 + 12) * n / EX2_GPUS) / GiB
    return f"""
{EX2_MODEL} has {n:,} parameters (ModelShape.from_config(load_model_config(...)).parameter_count()).
ZeRO-2 partitions gradients (2 B) and optimizer states (12 B: master copy + m + v) over {EX2_GPUS} GPUs;
the bf16 weights (2 B) stay whole on every GPU:
  (2·N + (2 + 12)·N / {EX2_GPUS}) / 2**30 = {by_hand:.1f} GiB per GPU
(ZeRO-3 would divide the weights too: 16·N / {EX2_GPUS} / 2**30 = {16 * n / EX2_GPUS / GiB:.1f} GiB).
The estimator, which also counts AdamW's per-tensor step counters:
  estimate_training_memory("{EX2_MODEL}", TrainingPlan(zero_stage=2, num_gpus=8)).model_states / GiB
  = {expected_zero_gib():.1f} GiB
"""


def offload_plan(accounting: str = "realistic") -> TrainingPlan:
    """Exercise 3's plan: full bf16-mixed AdamW, ZeRO-3 over EX3_GPUS with optimizer offload, checkpointing."""
    return TrainingPlan(zero_stage=3, num_gpus=EX3_GPUS, offload="optimizer", gradient_checkpointing=True,
                        accounting=accounting)


def expected_host_ram_gib(accounting: str = "realistic") -> float:
    """GiB of CPU RAM the node needs for exercise 3's offloaded optimizer (all GPUs together)."""
    return estimate_training_memory(EX3_MODEL, offload_plan(accounting)).cpu_offloaded / GiB


def check_host_ram(answer: float | None) -> bool:
    """Exercise 3: CPU RAM (GiB) for deepseek-coder-33b's offloaded optimizer, realistic accounting, 8 GPUs."""
    return check_number(
        "3 (CPU RAM for offload, GiB)", answer, expected_host_ram_gib(), rel_tol=0.02,
        hint="the CPU holds what the optimizer step needs: fp32 gradients, the fp32 master copy and Adam's m and v "
             "for every parameter (all GPUs' partitions together), and DeepSpeed pins 1.5× that in buffers.",
    )


@SOLUTIONS.register(3)
def _solution_3() -> str:
    n = ModelShape.from_config(load_model_config(EX3_MODEL)).parameter_count()
    return f"""
ZeRO-Offload runs the optimizer step on the CPU, so the node's RAM holds, for all {n:,} parameters
(the {EX3_GPUS} GPUs' partitions together), what that step reads and writes:
  4 (fp32 gradients) + 4 (fp32 master copy) + 4 (Adam m) + 4 (Adam v) = 16 bytes per parameter,
and DeepSpeed's own estimator multiplies by 1.5 for its pinned transfer buffers: 24 bytes per parameter.
  24 × {n:,} / 2**30 = {24 * n / GiB:.0f} GiB  (+ AdamW's step counters; the estimator says {expected_host_ram_gib():.1f} GiB)
The minimum accounting (16-bit gradients, no buffers: 14 bytes) would say {expected_host_ram_gib("minimum"):.0f} GiB: a
node sized on it would run out of CPU RAM. The GPU count does not change the total, only how it is split.
"""
