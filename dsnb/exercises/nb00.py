"""Exercise checks for notebook 00 (setup, hardware and memory planning).

Every expected value is computed by ``dsnb.plan.estimate`` / ``dsnb.plan.hardware``, never typed in.
"""

from __future__ import annotations

from dsnb.exercises import check_choice, check_number
from dsnb.plan.estimate import GiB, ModelShape, TrainingPlan, estimate_training_memory, load_model_config
from dsnb.plan.hardware import fits


def expected_bytes_per_param(precision: str = "bf16-mixed", optimizer: str = "adamw") -> float:
    """Weights + gradients + optimizer states per parameter for full fine-tuning (step counters left out)."""
    shape = ModelShape.from_config(load_model_config("deepseek-coder-6.7b-base"))
    b = estimate_training_memory(shape, precision=precision, optimizer=optimizer)
    steps = 4 * shape.tensor_count() if optimizer == "adamw" else 0
    return (b.model_states - steps) / shape.parameter_count()


def check_bytes_per_param(answer: float | None) -> bool:
    """Exercise 1: bytes per parameter of full fine-tuning with mixed-precision (bf16) AdamW."""
    return check_number(
        "1 (bytes per parameter)", answer, expected_bytes_per_param(), rel_tol=0.01,
        hint="add the 16-bit weights, the 16-bit gradients, the fp32 master copy and Adam's two fp32 moments.",
    )


def expected_zero3_gib(model: str = "deepseek-coder-6.7b-base", num_gpus: int = 4) -> float:
    """GiB of weights + gradients + optimizer states per GPU, full bf16-mixed AdamW under ZeRO-3."""
    b = estimate_training_memory(model, TrainingPlan(zero_stage=3, num_gpus=num_gpus))
    return b.model_states / GiB


def check_zero3_gib(answer: float | None, model: str = "deepseek-coder-6.7b-base", num_gpus: int = 4) -> bool:
    """Exercise 2: model states per GPU when ZeRO-3 splits everything over ``num_gpus`` GPUs."""
    return check_number(
        "2 (ZeRO-3 per GPU)", answer, expected_zero3_gib(model, num_gpus), rel_tol=0.03,
        hint="ZeRO-3 divides weights, gradients and optimizer states by the number of GPUs: "
             "estimate_training_memory(model, zero_stage=3, num_gpus=...).model_states / GiB",
    )


def expected_fix(model: str = "deepseek-coder-6.7b-base", gpu: str = "RTX 4090", seq_len: int = 2048) -> str | None:
    """The cheapest change that makes full fine-tuning of ``model`` fit on one ``gpu`` (20% reserve kept)."""
    return fits(model, TrainingPlan(seq_len=seq_len), gpu=gpu).fix


def check_fix(answer: str | None, model: str = "deepseek-coder-6.7b-base", gpu: str = "RTX 4090",
              seq_len: int = 2048) -> bool:
    """Exercise 3: name the cheapest change (as ``fits(...).fix`` spells it) for one ``gpu``."""
    expected = expected_fix(model, gpu, seq_len)
    return check_choice(
        "3 (cheapest fix)", None if answer is None else str(answer).strip(), expected,
        hint="estimate the plan with each single change (checkpointing, offload, LoRA, QLoRA) and keep the "
             "first that fits under 80% of the card; dsnb.plan.hardware.fits shows the ranking it uses.",
    )
