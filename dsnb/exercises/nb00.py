"""Exercise checks and worked solutions for notebook 00 (setup, hardware and memory planning).

Every expected value is computed by ``dsnb.plan.memory`` / ``dsnb.plan.fit``, never typed in.
The questions transfer the notebook's computation to a setting it does not print (another optimizer,
another ZeRO stage and model, another card), so the page never shows their answers.
"""

from __future__ import annotations

import re

from dsnb.exercises import Solutions, check_choice, check_number, words
from dsnb.plan.fit import fits
from dsnb.plan.memory import GiB, TrainingPlan, estimate_training_memory
from dsnb.plan.shape import ModelShape, load_model_config

SOLUTIONS = Solutions("00")
solution = SOLUTIONS.show

#: Exercise 1: the optimizer swapped in for AdamW.
EX1_OPTIMIZER = "sgd-momentum"
#: Exercise 2: model, ZeRO stage and GPUs.
EX2_MODEL, EX2_STAGE, EX2_GPUS = "deepseek-coder-33b-base", 2, 8
#: Exercise 3: model, card and sequence length.
EX3_MODEL, EX3_GPU, EX3_SEQ_LEN = "deepseek-coder-6.7b-base", "A100 40GB", 2048


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
        "2 (ZeRO-2 per GPU)", answer, expected_zero_gib(), rel_tol=0.03,
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


def expected_fix(model: str = EX3_MODEL, gpu: str = EX3_GPU, seq_len: int = EX3_SEQ_LEN) -> str | None:
    """The cheapest change that makes full fine-tuning of ``model`` fit on one ``gpu`` (20% reserve kept)."""
    return fits(model, TrainingPlan(seq_len=seq_len), gpu=gpu).fix


_ALIASES = [
    (r"\b(activation|gradient)?\s*checkpointing\b|\bckpt\b|\brecompute\w*", "checkpointing"),
    (r"\b(zero\s*)?(cpu\s*)?offload\w*(\s*of)?(\s*(the\s*)?optimi[sz]er(\s*states?)?)?|\bzero.?offload\b", "offload"),
    (r"\bmicro.?batch.*", "micro batch"),
    (r"\bzero.?3\b|\bzero stage 3\b", "zero-3"),
    (r"\bq.?lora\b", "qlora"),
    (r"\blora\b", "lora"),
]


def normalize_fix(label: str | None) -> frozenset[str] | None:
    """A fix label in canonical form: ``"QLoRA r=16"``, ``"qlora"`` and ``"Q-LoRA"`` are one answer.

    Ranks (``r=16``) and the words "ZeRO CPU ... of optimizer states" around an offload are dropped;
    a combination (``"a + b"``) becomes a set, so its order does not matter.
    """
    if label is None:
        return None
    parts = set()
    for part in str(label).split("+"):
        text = re.sub(r"\br\s*=\s*\d+", "", words(part)).strip()
        for pattern, canonical in _ALIASES:
            if re.search(pattern, text):
                text = canonical
                break
        parts.add(text)
    return frozenset(parts)


def check_fix(answer: str | None) -> bool:
    """Exercise 3: the cheapest single change for deepseek-coder-6.7b full fine-tuning on one A100 40GB."""
    return check_choice(
        "3 (cheapest fix)", answer, expected_fix(), normalize=normalize_fix,
        hint="try each change in fits()'s ranking (checkpointing, smaller micro batch, CPU offload, LoRA, QLoRA) "
             "with estimate_training_memory and keep the first under 80% of the card's memory.",
    )


@SOLUTIONS.register(3)
def _solution_3() -> str:
    from dataclasses import replace

    plan = TrainingPlan(seq_len=EX3_SEQ_LEN)
    verdict = fits(EX3_MODEL, plan, gpu=EX3_GPU)
    usable = verdict.usable_bytes / GiB
    tries = {"as planned": plan, "gradient checkpointing": replace(plan, gradient_checkpointing=True),
             "ZeRO CPU offload of optimizer states": replace(plan, zero_stage=2, offload="optimizer"),
             "LoRA r=16": replace(plan, method="lora"), "QLoRA r=16": replace(plan, method="qlora")}
    lines = [f"  {k:38s} {estimate_training_memory(EX3_MODEL, p).total / GiB:7.1f} GiB" for k, p in tries.items()]
    return f"""
One {EX3_GPU} keeps 20% in reserve ({usable:.1f} GiB usable). The plan's need, then each single change in the
order fits() ranks them (cheapest in time and quality first):
""" + "\n".join(lines) + f"""
The first change in that order whose need is under the usable memory wins:
  fits("{EX3_MODEL}", TrainingPlan(seq_len={EX3_SEQ_LEN}), gpu="{EX3_GPU}").fix = {verdict.fix!r}
"""
