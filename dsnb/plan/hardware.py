"""What machine is this, and will a training plan fit on a given set of GPUs?

- ``probe()``: OS, Python and library versions, CPU cores, RAM, and every GPU's name, memory,
  compute capability and bf16 support (a CPU-only machine reports "no GPU" and carries on).
- ``GPUS`` / ``gpu_spec``: the cards the article talks about (RTX 4090 24 GB, A100 40/80 GB,
  H100 80 GB) or a custom one.
- ``fits(model, plan, gpu)``: does the plan fit when 20% of each GPU's memory is kept free (the
  article's own rule, claim C31)? If not, the cheapest change that makes it fit.
- ``article_hardware_claims()`` / ``version_checks()``: the verdicts on claims C03, C05, C06, C07,
  C11 and C08 that notebook 00 shows.

Taught in notebook 00.
"""

from __future__ import annotations

import importlib.metadata as md
import itertools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dsnb.plan.estimate import GiB, TrainingPlan, _as_shape, estimate_training_memory

MiB = 2**20
#: Fraction of each GPU's memory kept free for the CUDA context, fragmentation and spikes (claim C31).
RESERVE = 0.20


@dataclass(frozen=True)
class GPUSpec:
    """A GPU model: name, memory in bytes, bf16 support."""

    name: str
    memory_bytes: int
    bf16: bool = True

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


#: Memory as ``nvidia-smi`` reports it (MiB), for the cards the article and the course discuss.
GPUS: dict[str, GPUSpec] = {
    "RTX 4090": GPUSpec("RTX 4090", 24564 * MiB),
    "A100 40GB": GPUSpec("A100 40GB", 40960 * MiB),
    "A100 80GB": GPUSpec("A100 80GB", 81920 * MiB),
    "H100 80GB": GPUSpec("H100 80GB", 81559 * MiB),
}


def gpu_spec(gpu: str | GPUSpec | float) -> GPUSpec:
    """A ``GPUSpec`` from a catalogue name (``"A100 80GB"``), a spec, or a memory size in GiB (custom)."""
    if isinstance(gpu, GPUSpec):
        return gpu
    if isinstance(gpu, int | float):
        if not 0 < gpu < float("inf"):
            raise ValueError(f"GPU memory must be a positive number of GiB, and finite, not {gpu!r} (e.g. 80)")
        return GPUSpec(f"custom {gpu:g} GiB", int(gpu * GiB))
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose from {sorted(GPUS)} or pass its memory in GiB")
    return GPUS[gpu]


@dataclass
class GPUInfo:
    """One GPU found on this machine."""

    index: int
    name: str
    memory_bytes: int
    capability: str
    bf16: bool


@dataclass
class HardwareReport:
    """What ``probe()`` found. ``to_markdown()`` renders it as a table."""

    os: str
    python: str
    libraries: dict[str, str]
    cpu_cores: int
    ram_bytes: int
    torch_build: str
    cuda_version: str | None
    gpus: list[GPUInfo] = field(default_factory=list)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def rows(self) -> list[tuple[str, str]]:
        """(item, value) pairs, one per line of the report."""
        rows = [("OS", self.os), ("Python", self.python), ("CPU cores", str(self.cpu_cores)),
                ("RAM", f"{self.ram_bytes / GiB:.1f} GiB"), ("torch build", self.torch_build)]
        rows += [(name, version) for name, version in self.libraries.items()]
        if not self.gpus:
            rows.append(("GPU", "no GPU: the course runs on CPU with its defaults"))
        for g in self.gpus:
            rows.append((f"GPU {g.index}", f"{g.name}, {g.memory_bytes / GiB:.1f} GiB, compute {g.capability}, "
                                           f"bf16 {'yes' if g.bf16 else 'no (use fp32 or a newer card)'}"))
        if self.cuda_version:
            rows.append(("CUDA", self.cuda_version))
        return rows

    def to_markdown(self) -> str:
        """The report as a two-column markdown table."""
        lines = ["| item | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.rows()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def probe(libraries: tuple[str, ...] | None = None) -> HardwareReport:
    """Probe this machine: OS, Python, library versions, CPU, RAM and GPUs (notebook 00)."""
    import psutil
    import torch

    from dsnb.plan.doctor import KEY_LIBRARIES

    libs = {}
    for name in libraries or KEY_LIBRARIES:
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            libs[name] = "not installed"
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPUInfo(i, p.name, int(p.total_memory), f"{p.major}.{p.minor}", p.major >= 8))
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    return HardwareReport(
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=platform.python_version(),
        libraries=libs,
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=int(psutil.virtual_memory().total),
        torch_build=f"torch {torch.__version__} ({build})",
        cuda_version=torch.version.cuda if gpus else None,
        gpus=gpus,
    )


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
    shape = _as_shape(model)
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


# ---------------------------------------------------------------------------------------------
# The article's hardware claims (C03, C05, C06, C07, C11) and its software pins (C08)
# ---------------------------------------------------------------------------------------------

def _saving(a: float, b: float) -> float:
    return 1 - b / a


#: What every estimate in ``article_hardware_claims`` assumes (shown next to the figures in notebook 00).
CLAIM_ASSUMPTIONS = ("flash attention (no s × s score matrix), activations in 16 bits (bf16 weights), the Llama "
                     "shapes with standard multi-head attention (the MHA baseline of C01); model states in two "
                     "accountings: minimum = ZeRO paper, 16 B per trained parameter (CPU offload 14 B); realistic = "
                     "DeepSpeed / Megatron / autocast, 18 B (fp32 gradients; CPU offload 16 B × 1.5 = 24 B)")

#: A plan that fits with less than this fraction of the usable memory to spare is called borderline.
BORDERLINE = 0.02


def _gib(x: float) -> str:
    return f"{x / GiB:.1f}" if x / GiB < 100 else f"{x / GiB:.0f}"


def _both(model: Any, plan: TrainingPlan, gpu: str) -> tuple[FitVerdict, FitVerdict]:
    """The fit verdict under the minimum and under the realistic accounting."""
    return fits(model, replace(plan, accounting="minimum"), gpu), fits(model, replace(plan, accounting="realistic"), gpu)


def _fix_text(v: FitVerdict) -> str:
    if v.fits:
        return f"fits ({_gib(v.need_bytes)} GiB)"
    if v.fix_plan is None:
        return "nothing tried fits"
    cpu = f", {_gib(v.fix_cpu_bytes)} GiB CPU RAM" if v.fix_plan.offload != "none" else ""
    return f"fix: {v.fix} ({_gib(v.fix_need_bytes or 0)} GiB{cpu})"


def _borderline(need: float | None, usable: float) -> bool:
    return need is not None and need <= usable and usable - need < BORDERLINE * usable


def article_hardware_claims(seq_len: int = 2048, lora_rank: int = 16) -> list[dict[str, Any]]:
    """One row per hardware claim: the plan we assumed, the estimate, whether it fits, what would.

    Models: the Llama-style 13B/65B shapes the article's sizes refer to and deepseek-coder-6.7b
    for the percentage claims (configs under ``configs/models``). ``seq_len`` is not given by
    the article; 2048 is assumed (the parameters cell of notebook 00 can change it). Every row is
    computed under both accountings (``TrainingPlan.accounting``: the ZeRO paper's minimum and the
    realistic one) and says so; ``CLAIM_ASSUMPTIONS`` is in each row.
    """
    rows = []
    base = TrainingPlan(precision="bf16-mixed", seq_len=seq_len, lora_rank=lora_rank)

    # C03: mixed precision vs fp32, same plan
    m = "deepseek-coder-6.7b-base"
    c03: dict[str, dict[str, float]] = {}
    for acc in ("minimum", "realistic"):
        b = replace(base, micro_batch_size=4, accounting=acc)
        fp32 = estimate_training_memory(m, b, precision="fp32")
        mixed = estimate_training_memory(m, b)
        pure = estimate_training_memory(m, b, precision="bf16-pure")
        lora32 = estimate_training_memory(m, b, method="lora", precision="fp32")
        lora16 = estimate_training_memory(m, b, method="lora")
        c03[acc] = {"fp32": fp32.total, "mixed": mixed.total, "full": _saving(fp32.total, mixed.total),
                    "states": _saving(fp32.model_states, mixed.model_states),
                    "acts": _saving(fp32.activations, mixed.activations), "pure": _saving(fp32.total, pure.total),
                    "lora": _saving(lora32.total, lora16.total)}
    mn, rl = c03["minimum"], c03["realistic"]
    rows.append({
        "id": "C03", "claim": "FP16/BF16 mixed precision lowers GPU memory by 45%",
        "how": f"estimate, {m}, batch 4 × {seq_len}, AdamW: fp32 vs bf16-mixed vs pure bf16, full and LoRA",
        "measured": (f"full, minimum: {mn['fp32'] / GiB:.0f} → {mn['mixed'] / GiB:.0f} GiB ({mn['full']:.0%}; "
                     f"weights+grads+optimizer {mn['states']:.0%}, activations {mn['acts']:.0%}); full, realistic: "
                     f"{rl['fp32'] / GiB:.0f} → {rl['mixed'] / GiB:.0f} GiB ({rl['full']:.0%}; weights+grads+optimizer "
                     f"{-rl['states']:.0%} more than fp32); pure bf16 {mn['pure']:.0%}; LoRA {mn['lora']:.0%}"),
        "saving_full": mn["full"], "saving_full_realistic": rl["full"], "saving_pure": mn["pure"],
        "saving_lora": mn["lora"],
        "verdict": "partly: mixed precision keeps 16 bytes per trained parameter (18 as DeepSpeed, Megatron and "
                   "autocast run it, more than fp32's 16); it halves activations and frozen weights, so ~45% "
                   "needs LoRA-like or activation-heavy plans",
    })

    # C05 / C06: the hardware combinations
    for cid, claim, model, gpu, n in (("C05", "2× RTX 4090 (24 GB) can train a 13B model", "llama-13b", "RTX 4090", 2),
                                      ("C06", "4× A100 80 GB can handle a 65B model", "llama-65b", "A100 80GB", 4)):
        plan = replace(base, zero_stage=3, num_gpus=n, gradient_checkpointing=True)
        v, vr = _both(model, plan, gpu)
        lora, lora_r = _both(model, replace(plan, method="lora"), gpu)
        qlora, qlora_r = _both(model, replace(plan, method="qlora", num_gpus=1, zero_stage=0), gpu)
        rows.append({
            "id": cid, "claim": claim,
            "how": f"estimate, {model} full fine-tuning, bf16-mixed AdamW, ZeRO-3 over {n} GPUs, checkpointing, "
                   f"batch 1 × {seq_len}, 20% reserve",
            "measured": (f"full: {_gib(v.need_bytes)} (minimum) / {_gib(vr.need_bytes)} (realistic) GiB per GPU of "
                         f"{_gib(v.usable_bytes)} usable; minimum {_fix_text(v)}; realistic {_fix_text(vr)}; "
                         f"LoRA ZeRO-3: {_gib(lora.need_bytes)} GiB; QLoRA on 1 GPU: {_gib(qlora.need_bytes)} GiB"),
            "fits_full": v.fits, "fits_full_realistic": vr.fits, "fits_lora": lora.fits and lora_r.fits,
            "fits_qlora_1gpu": qlora.fits and qlora_r.fits, "fix": v.fix, "fix_realistic": vr.fix,
            "verdict": ("true for full fine-tuning" if v.fits and vr.fits else
                        f"false for full fine-tuning (fits only with {v.fix})" if v.fix == vr.fix else
                        f"false for full fine-tuning (fits only with {v.fix}; realistic: {vr.fix})")
                       + "; "
                       + ("true with LoRA + ZeRO-3" if lora.fits and lora_r.fits else "false even with LoRA")
                       + ("; QLoRA fits on one card" if qlora.fits and qlora_r.fits else ""),
        })

    # C07: gradient checkpointing
    m = "deepseek-coder-6.7b-base"
    c07: dict[str, tuple[float, float, float]] = {}
    for acc in ("minimum", "realistic"):
        b = replace(base, micro_batch_size=4, accounting=acc)
        f_off, f_on = (estimate_training_memory(m, b, gradient_checkpointing=g) for g in (False, True))
        l_off, l_on = (estimate_training_memory(m, b, method="lora", gradient_checkpointing=g) for g in (False, True))
        c07[acc] = (_saving(f_off.activations, f_on.activations), _saving(f_off.total, f_on.total),
                    _saving(l_off.total, l_on.total))
    (acts, full, lora_s), (_, full_r, _) = c07["minimum"], c07["realistic"]
    rows.append({
        "id": "C07", "claim": "Gradient checkpointing saves 70% of GPU memory",
        "how": f"estimate, {m}, bf16-mixed, batch 4 × {seq_len}, checkpointing off vs on",
        "measured": f"activations −{acts:.0%}; total: full −{full:.0%} (realistic −{full_r:.0%}), LoRA −{lora_s:.0%}",
        "saving_activations": acts, "saving_full": full, "saving_full_realistic": full_r, "saving_lora": lora_s,
        "verdict": "depends on the plan: it removes most activation memory, so the total drops by ~70% only "
                   "when activations dominate (LoRA, long sequences); for full fine-tuning much less",
    })

    # C11: the batch layouts
    for model, n, b, gpu in (("llama-13b", 8, 16, "A100 80GB"), ("llama-65b", 4, 8, "A100 80GB")):
        plan = replace(base, zero_stage=3, num_gpus=n, micro_batch_size=b, gradient_checkpointing=True)
        v, vr = _both(model, plan, gpu)
        usable = v.usable_bytes
        tight = [acc for acc, x in (("minimum", v), ("realistic", vr))
                 if _borderline(x.need_bytes if x.fits else x.fix_need_bytes, usable)]
        if v.fits and vr.fits:
            verdict = "fits" + (f" (borderline under the {' and '.join(tight)} accounting)" if tight else "")
        elif v.fits:
            verdict = "fits under the ZeRO-paper minimum only; not under the realistic accounting"
        else:
            verdict = "does not fit as stated" + (
                f"; with {v.fix} borderline ({_gib(usable - (v.fix_need_bytes or 0))} GiB to spare)" if tight else "")
        rows.append({
            "id": "C11", "claim": f"{model}: {n} GPUs × {b} per GPU" + (" with ZeRO-3" if n == 4 else ""),
            "how": f"estimate, full bf16-mixed AdamW, ZeRO-3, checkpointing, {n} × {gpu}, {b} × {seq_len} tokens per GPU",
            "measured": (f"{_gib(v.need_bytes)} (minimum) / {_gib(vr.need_bytes)} (realistic) GiB per GPU of "
                         f"{_gib(usable)} usable" + ("" if v.fits else f"; minimum {_fix_text(v)}")
                         + ("" if vr.fits else f"; realistic {_fix_text(vr)}")),
            "fits_full": v.fits, "fits_full_realistic": vr.fits, "fix": v.fix, "fix_realistic": vr.fix,
            "borderline": bool(tight), "verdict": verdict,
        })
    for row in rows:
        row["assumptions"] = CLAIM_ASSUMPTIONS
    return rows


#: The article's software pins (claim C08).
ARTICLE_PINS = {"python": "3.10", "torch": "2.0.1", "transformers": "4.30.0", "datasets": "2.12.0"}
#: First transformers release with ``models/deepseek_v3``: checked by listing the PyPI wheels of
#: transformers 4.50.0 (absent) and 4.51.0 (present) when this module was written.
DEEPSEEK_V3_FIRST_TRANSFORMERS = "4.51.0"


def version_checks() -> list[dict[str, Any]]:
    """Claim C08, checked: the article's pins against what the installed stack requires and provides.

    Every "needs" value is read from installed metadata (``dsnb`` itself via
    ``dsnb.plan.doctor.required_versions``, transformers' ``Requires-Python`` and the torch bound of its
    ``torch`` extra), and
    every feature is probed on the installed packages.
    """
    from packaging.version import Version

    from dsnb.plan.doctor import dependency_minimum, required_versions, version_at_least

    need = required_versions()
    tf_torch = dependency_minimum("transformers", "torch", extra="torch")
    rows = []
    tf_python = (md.metadata("transformers").get("Requires-Python") or "").replace(">=", "")
    py_ok = version_at_least(ARTICLE_PINS["python"], tf_python) if tf_python else None
    rows.append({"item": "python", "article pin": ARTICLE_PINS["python"], "course needs": f">={tf_python}",
                 "installed": platform.python_version(), "pin works": py_ok,
                 "why": f"installed transformers declares Requires-Python >={tf_python}"})
    torch_min = max([v for v in (need.get("torch"), tf_torch) if v], key=Version)
    rows.append({"item": "torch", "article pin": ARTICLE_PINS["torch"], "course needs": f">={torch_min}",
                 "installed": md.version("torch"), "pin works": version_at_least(ARTICLE_PINS["torch"], torch_min),
                 "why": f"transformers requires torch>={tf_torch} (and disables PyTorch below it); dsnb requires >={need.get('torch')}"})
    import transformers

    has_v3 = hasattr(transformers, "DeepseekV3ForCausalLM")
    fused = False
    if has_v3:  # build one tiny MoE layer on the meta device and look at its expert weights
        import torch
        from transformers.models.deepseek_v3 import DeepseekV3Config
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mv3

        cfg = DeepseekV3Config(hidden_size=8, moe_intermediate_size=4, n_routed_experts=2)
        with torch.device("meta"):
            fused = any(p.dim() == 3 for p in mv3.DeepseekV3MoE(cfg).experts.parameters())
    rows.append({"item": "transformers", "article pin": ARTICLE_PINS["transformers"],
                 "course needs": f">={need.get('transformers')}", "installed": transformers.__version__,
                 "pin works": version_at_least(ARTICLE_PINS["transformers"], need.get("transformers", "0")),
                 "why": f"DeepseekV3ForCausalLM here: {has_v3} (first in {DEEPSEEK_V3_FIRST_TRANSFORMERS}); "
                        f"routed experts fused as 3-D tensors: {fused}"})
    ds_hub = [r for r in (md.requires("datasets") or []) if r.startswith("huggingface-hub")]
    rows.append({"item": "datasets", "article pin": ARTICLE_PINS["datasets"], "course needs": f">={need.get('datasets')}",
                 "installed": md.version("datasets"),
                 "pin works": version_at_least(ARTICLE_PINS["datasets"], need.get("datasets", "0")),
                 "why": f"must share huggingface-hub with transformers ({', '.join(ds_hub) or 'no bound'} here)"})
    try:
        from peft import LoraConfig

        target_params = "target_parameters" in LoraConfig.__dataclass_fields__
        rows.append({"item": "peft", "article pin": "(none)", "course needs": f">={need.get('peft')}",
                     "installed": md.version("peft"), "pin works": None,
                     "why": f"LoraConfig(target_parameters=...) for fused experts available: {target_params}"})
    except ImportError:
        pass
    rows.append({"item": "DeepSeek repo `pip install -e .`", "article pin": "github.com/deepseek-ai/DeepSeek",
                 "course needs": "nothing", "installed": "-", "pin works": None,
                 "why": "not checkable offline; the course loads every DeepSeek model through transformers' Auto classes"})
    return rows


__all__ = ["GPUSpec", "GPUS", "gpu_spec", "GPUInfo", "HardwareReport", "probe", "FitVerdict", "fits", "RESERVE",
           "article_hardware_claims", "version_checks", "ARTICLE_PINS", "CLAIM_ASSUMPTIONS"]
