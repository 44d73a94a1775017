"""Will a training plan fit on a given set of GPUs, and if not, what is the cheapest change that makes it fit?

``fits(model, plan, gpu)`` keeps 20% of each GPU's memory free (the article's own rule, claim C31) and
ranks single changes, then combinations, cheapest first; ``FitVerdict.row()`` is one table row.
Taught in notebook 00.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dsnb.plan.gpus import GPUSpec, gpu_spec
from dsnb.plan.memory import GiB, TrainingPlan, estimate_training_memory
from dsnb.plan.shape import as_shape

#: Fraction of each GPU's memory kept free for the CUDA context, fragmentation and spikes (claim C31).
RESERVE = 0.20


@dataclass
class FitVerdict:
    """Whether ``plan`` fits on ``num_gpus`` × ``gpu`` with the reserve kept free, and the cheapest fix."""

    model: str
    plan: TrainingPlan
    gpu: GPUSpec
    need_bytes: float
    usable_bytes: float
    cpu_bytes: float
    fix: str | None = None
    fix_plan: TrainingPlan | None = None
    fix_need_bytes: float | None = None
    fix_cpu_bytes: float = 0.0

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.usable_bytes

    def row(self) -> dict[str, Any]:
        """A table row in GiB."""
        return {
            "model": self.model, "plan": self.plan.describe(), "GPU": f"{self.plan.num_gpus} × {self.gpu.name}",
            "need per GPU (GiB)": round(self.need_bytes / GiB, 1),
            "usable per GPU (GiB)": round(self.usable_bytes / GiB, 1),
            "fits": "yes" if self.fits else "no",
            "cheapest change that fits": "-" if self.fits else (self.fix or "nothing tried fits"),
            "CPU RAM for offload (GiB)": round((self.cpu_bytes if self.fits else self.fix_cpu_bytes) / GiB, 1),
        }


def _changes(plan: TrainingPlan, max_gpus: int) -> list[tuple[str, str, Callable[[TrainingPlan], TrainingPlan]]]:
    """Single changes, cheapest first, as (group, label, transform); one change per group at most."""
    out: list[tuple[str, str, Callable[[TrainingPlan], TrainingPlan]]] = []
    if not plan.gradient_checkpointing:
        out.append(("ckpt", "gradient checkpointing", lambda p: replace(p, gradient_checkpointing=True)))
    if plan.micro_batch_size > 1:
        out.append(("batch", "micro batch 1 + gradient accumulation", lambda p: replace(p, micro_batch_size=1)))
    if plan.num_gpus > 1 and plan.zero_stage < 3:
        out.append(("zero", "ZeRO-3", lambda p: replace(p, zero_stage=3)))
    if plan.offload == "none":
        out.append(("offload", "ZeRO CPU offload of optimizer states",
                    lambda p: replace(p, zero_stage=max(p.zero_stage, 2), offload="optimizer")))
    if plan.method == "full":
        out.append(("method", f"LoRA r={plan.lora_rank}", lambda p: replace(p, method="lora")))
    if plan.method != "qlora":
        out.append(("method", f"QLoRA r={plan.lora_rank}", lambda p: replace(p, method="qlora")))
    n = plan.num_gpus * 2
    while n <= max_gpus:
        out.append(("gpus", f"{n} GPUs with ZeRO-3", lambda p, n=n: replace(p, num_gpus=n, zero_stage=3)))
        n *= 2
    return out


def _combinations(options: list[tuple[str, str, Callable[[TrainingPlan], TrainingPlan]]]) -> list[tuple[int, ...]]:
    """Index sets of ``options`` with at most one change per group: fewest changes first, then cheapest
    (lowest rank sum). Built group by group, so the count grows with the product of the group sizes
    (a few hundred), not with 2 ** len(options)."""
    by_group: dict[str, list[int]] = {}
    for i, (group, _, _) in enumerate(options):
        by_group.setdefault(group, []).append(i)
    combos = [tuple(sorted(c)) for size in range(1, len(by_group) + 1)
              for groups in itertools.combinations(by_group.values(), size) for c in itertools.product(*groups)]
    return sorted(combos, key=lambda c: (len(c), sum(c), c))


def _check_fit_inputs(shape: Any, spec: GPUSpec, reserve: float, max_gpus: int, host_ram_gib: float | None) -> None:
    """Refuse inputs that would give a meaningless verdict (negative sizes fit anywhere)."""
    from dataclasses import fields as dataclass_fields

    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size")
    bad = []
    for f in dataclass_fields(shape):
        value = getattr(shape, f.name)
        if f.name in required and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            bad.append(f"{f.name}={value!r}")
        elif f.name not in required and isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            bad.append(f"{f.name}={value!r}")
    if bad:
        raise ValueError(f"model {shape.name!r}: {', '.join(bad)}; sizes must be positive whole numbers")
    if not 0 <= reserve < 1:
        raise ValueError(f"reserve={reserve!r}: the share of each GPU's memory kept free must be in [0, 1) "
                         f"(the article keeps {RESERVE})")
    if spec.memory_bytes <= 0:
        raise ValueError(f"GPU {spec.name!r} has {spec.memory_bytes} bytes of memory; it must be positive")
    if isinstance(max_gpus, bool) or not isinstance(max_gpus, int) or max_gpus < 1:
        raise ValueError(f"max_gpus={max_gpus!r} must be a whole number >= 1")
    if host_ram_gib is not None and not host_ram_gib >= 0:
        raise ValueError(f"host_ram_gib={host_ram_gib!r} must be >= 0 (or None)")


def fits(model: Any, plan: TrainingPlan | None = None, gpu: str | GPUSpec | float = "A100 80GB",
         reserve: float = RESERVE, max_gpus: int = 64, host_ram_gib: float | None = None,
         **changes: Any) -> FitVerdict:
    """Does ``plan`` fit on ``plan.num_gpus`` GPUs of type ``gpu`` keeping ``reserve`` of each free?

    If not, find the cheapest change that makes it fit. Single changes are ranked, cheapest first:
    gradient checkpointing (~30% more compute), micro batch 1 with gradient accumulation (same
    effective batch, slower), ZeRO-3 on the GPUs you have (communication), CPU offload of optimizer
    states (needs CPU RAM, slower steps), LoRA, QLoRA (change the method: fewer trained weights),
    then more GPUs (money). The first single change that fits wins; if none does, combinations
    are tried, fewest changes first and then cheapest by rank (e.g. "gradient checkpointing +
    QLoRA r=16"), never two of one kind (LoRA and QLoRA, two GPU counts). With ``host_ram_gib``
    (CPU RAM of the machine, all GPUs together), a change whose CPU offload needs more is skipped;
    the row always shows the CPU RAM an offloading plan needs.
    """
    spec = gpu_spec(gpu)
    plan = replace(plan or TrainingPlan(), **changes)
    shape = as_shape(model)
    _check_fit_inputs(shape, spec, reserve, max_gpus, host_ram_gib)
    usable = spec.memory_bytes * (1 - reserve)
    est = estimate_training_memory(shape, plan)
    verdict = FitVerdict(shape.name, plan, spec, est.total, usable, est.cpu_offloaded)
    if verdict.fits:
        return verdict
    options = _changes(plan, max_gpus)
    for combo in _combinations(options):
        candidate = plan
        for i in combo:
            candidate = options[i][2](candidate)
        est_c = estimate_training_memory(shape, candidate)
        if host_ram_gib is not None and est_c.cpu_offloaded > host_ram_gib * GiB:
            continue
        if est_c.total <= usable:
            verdict.fix = " + ".join(options[i][1] for i in combo)
            verdict.fix_plan, verdict.fix_need_bytes = candidate, est_c.total
            verdict.fix_cpu_bytes = est_c.cpu_offloaded
            return verdict
    return verdict
