"""How much GPU memory does fine-tuning need? An estimator you can check against real tensors.

``estimate_training_memory(model, ...)`` returns a ``MemoryBreakdown`` in bytes *per GPU*: weights,
gradients, optimizer states, activations, temporary buffers and their total. ``model`` is a
transformers config, a hub-style config dict (``load_model_config("deepseek-coder-6.7b-base")`` reads
one from ``configs/models/``), a ``ModelShape``, or a parameter count via ``ModelShape.from_parameters``
(``dsnb.plan.shape``).

The accounting, with its sources:

- **Model states** (Rajbhandari et al. 2020, "ZeRO", section 3.1): mixed-precision AdamW holds
  2 bytes of 16-bit weights + 2 bytes of 16-bit gradients + 4 (fp32 master copy) + 4 (Adam m) + 4
  (Adam v) = **16 bytes per trainable parameter**. PyTorch autocast keeps fp32 weights and grads
  instead (4 + 4 + 8): the same 16 bytes, split differently. ``fp32`` is 4 + 4 + 8 = 16 as well;
  ``bf16-pure`` (model *and* optimizer states in bf16, which is what ``torch.optim.AdamW`` does
  with a bf16 model) is 2 + 2 + 4 = 8. ``torch.optim.AdamW`` also keeps one fp32 ``step`` scalar per
  parameter tensor (counted, so the tiny-model check is exact). ``adamw-8bit`` (bitsandbytes) keeps
  m and v in 8 bits with one fp32 scale per 256 values; ``sgd`` keeps nothing, ``sgd-momentum`` one
  buffer.
- **Three accountings** (``TrainingPlan.accounting``). ``"minimum"`` is the ZeRO paper's 16 bytes
  above. ``"realistic"`` is what the stacks that run it hold: DeepSpeed's ZeRO-3 and Megatron-LM keep
  the gradients in fp32 for the optimizer (2 weights + 4 fp32 gradients + 4 master + 4 + 4 = **18
  bytes per trained parameter**, DeepSpeed's ``estimate_zero3_model_states_mem_needs`` and Megatron's
  distributed-optimizer table), and without ZeRO PyTorch autocast keeps fp32 weights and gradients
  plus a 16-bit copy of every weight made during forward (4 + 2 + 4 + 8 = 18 as well).
  ``"deepspeed"`` is DeepSpeed's own estimators, stage by stage (ZeRO stages 1-3 only): ZeRO-3 as
  realistic; ZeRO-2 as ``estimate_zero2_model_states_mem_needs``, which counts the 16-bit gradient
  partition beside the fp32 one (``2 + 18/N`` bytes per parameter on each of N GPUs) and, on the
  CPU, the fp32 copy of the whole model each process holds while loading (``4·N`` bytes per
  parameter, or the offloaded ``16`` if larger, times 1.5); ZeRO-1 the same with the 16-bit
  gradients whole (``4 + 16/N``; DeepSpeed publishes no stage-1 estimator). Only full fine-tuning
  in mixed precision differs; ``fp32``, ``bf16-pure`` and the LoRA adapters (fp32, the frozen base
  is not copied by autocast) count the same in all three. Every figure says which accounting it uses.
- **ZeRO** (same paper): stage 1 splits optimizer states (with the fp32 master copy) across the
  GPUs, stage 2 also gradients, stage 3 also the 16-bit weights. ``offload="optimizer"`` moves
  optimizer states and the gradient partitions to CPU RAM where the CPU runs the optimizer step
  (ZeRO-Offload, Ren et al. 2021); ``"optimizer+params"`` also the weights (ZeRO-3 only). The
  minimum counts what the paper draws there (optimizer states + 16-bit gradients, 14 bytes per
  parameter); the realistic accounting counts fp32 gradients (16 bytes per parameter) times the
  1.5 that DeepSpeed's own estimator adds for pinned buffers (24 bytes per parameter). One node:
  ``num_gpus`` GPUs share its CPU RAM.
- **LoRA** (Hu et al. 2021) freezes the base weights (16-bit, 2 bytes; 4 in fp32) and trains
  ``r·(in + out)`` parameters per adapted matrix; peft keeps adapters in fp32, so each costs
  4 + 4 + 8 = 16 bytes with AdamW. Routed experts stored as one 3-D tensor ``(E, out, in)`` get
  ``r·E·(in + out)`` (peft's ``ParamWrapper``); targeting ``gate_proj``+``up_proj`` by module name
  on a fused-expert model makes peft also adapt ``experts.gate_up_proj`` at rank ``2r``. peft
  applies such an adapter as a parametrization, materialising ``W + B·A`` for all experts of a
  layer and keeping it for backward: one more copy of the routed-expert weights per MoE layer is
  counted with the activations (measured on the tiny model).
- **QLoRA** (Dettmers et al. 2023): the decoder's matrices in 4-bit NF4, 0.5 byte per parameter,
  plus one 8-bit absmax per 64 values and, with double quantization, one fp32 constant per 256 of
  those: ``0.5 + 1/64 + 4/(64·256)`` ≈ 0.516 byte. Embeddings, output head, norms and routers stay
  16-bit.
- **Activations**: ``dsnb.plan.activations`` (Korthikanti et al. 2022, redone for the layers
  transformers runs); 16-bit precisions count them at 2 bytes.
- **Temporary buffers**: the fp32 gradient of the logits during backward, for ZeRO-3 two gathered
  layers of weights (current + prefetch), and with several GPUs two ``h²`` communication buckets
  (the sizes transformers' DeepSpeed integration chooses with ``"auto"``).

On a GPU, add the CUDA context (≈0.3–0.5 GiB, not seen by ``torch.cuda.max_memory_allocated``) and
allocator fragmentation: that is what the 20% reserve of ``dsnb.plan.fit.fits`` is for.
``breakdown_table`` and ``plot_memory_breakdown`` show breakdowns side by side.

Torch-free. Taught in notebook 00; notebook 08 checks the activations on the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dsnb.plan.activations import activation_bytes
from dsnb.plan.shape import ModelShape, as_shape

GiB = 2**30


METHODS = ("full", "lora", "qlora")


PRECISIONS = ("fp32", "fp16-mixed", "bf16-mixed", "bf16-pure")


#: The one place the training recipes' names meet this vocabulary: ``FinetuneConfig.precision`` (after
#: ``resolve_precision``) names ``TrainingArguments``' ``bf16`` / ``fp16`` switches, which autocast over
#: fp32 master weights, i.e. the ``-mixed`` precisions. ``TrainingPlan`` accepts either spelling.
TRAINING_PRECISIONS = {"fp32": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed"}


OPTIMIZERS = ("adamw", "adamw-8bit", "sgd", "sgd-momentum")


OFFLOADS = ("none", "optimizer", "optimizer+params")


ATTENTIONS = ("flash", "eager")



#: "minimum": the ZeRO paper's 16 bytes per parameter; "realistic": DeepSpeed ZeRO-3 / Megatron / autocast's 18;
#: "deepspeed": DeepSpeed's own estimators stage by stage (ZeRO-2: 2 + 18/N on the GPU, fp32 load copies on the CPU).
ACCOUNTINGS = ("minimum", "realistic", "deepspeed")


#: DeepSpeed's ``additional_buffer_factor`` for CPU offload memory (its own estimators use 1.5).
OFFLOAD_BUFFER_FACTOR = 1.5


#: bytes per parameter of a 4-bit NF4 matrix with double quantization (block 64, second block 256).
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)


#: bitsandbytes 8-bit optimizers: one fp32 absmax per block of this many values.
BNB_BLOCKSIZE = 256


@dataclass
class TrainingPlan:
    """How a model is trained: the inputs of ``estimate_training_memory`` besides the model."""

    method: str = "full"
    precision: str = "bf16-mixed"
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    zero_stage: int = 0
    num_gpus: int = 1
    offload: str = "none"
    micro_batch_size: int = 1
    seq_len: int = 2048
    lora_rank: int = 16
    lora_targets: str | tuple[str, ...] = "all-linear"
    attention: str = "flash"
    accounting: str = "minimum"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", TRAINING_PRECISIONS.get(self.precision, self.precision))
        for key, allowed in (("method", METHODS), ("precision", PRECISIONS), ("optimizer", OPTIMIZERS),
                             ("offload", OFFLOADS), ("attention", ATTENTIONS), ("accounting", ACCOUNTINGS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}")
        if self.num_gpus < 1 or self.micro_batch_size < 1 or self.seq_len < 1 or self.lora_rank < 1:
            raise ValueError("num_gpus, micro_batch_size, seq_len and lora_rank must be at least 1")
        if self.offload != "none" and self.zero_stage == 0:
            raise ValueError("CPU offload needs ZeRO (zero_stage 1-3); set zero_stage or offload='none'")
        if self.offload == "optimizer+params" and self.zero_stage != 3:
            raise ValueError("offloading parameters needs zero_stage=3")
        if self.accounting == "deepspeed" and self.zero_stage == 0:
            raise ValueError("accounting='deepspeed' follows DeepSpeed's ZeRO estimators: set zero_stage 1-3, "
                             "or use accounting='realistic' without ZeRO")

    def describe(self) -> str:
        """A one-line summary such as ``lora r=16, bf16-mixed, adamw, ckpt, ZeRO-3 × 4 GPUs, b=1 s=2048``."""
        parts = [self.method + (f" r={self.lora_rank}" if self.method != "full" else ""), self.precision,
                 self.optimizer]
        if self.gradient_checkpointing:
            parts.append("checkpointing")
        zero = f"ZeRO-{self.zero_stage}" if self.zero_stage else "no ZeRO"
        parts.append(f"{zero} × {self.num_gpus} GPU" + ("s" if self.num_gpus > 1 else ""))
        if self.offload != "none":
            parts.append(f"offload {self.offload}")
        parts.append(f"batch {self.micro_batch_size} × {self.seq_len} tokens")
        if self.accounting != "minimum":
            parts.append(f"{self.accounting} accounting")
        return ", ".join(parts)


@dataclass
class MemoryBreakdown:
    """Bytes per GPU by category, plus what was counted (``details``) and the plan."""

    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    temporary: float
    cpu_offloaded: float = 0.0
    details: dict = field(default_factory=dict)

    CATEGORIES = ("weights", "gradients", "optimizer_states", "activations", "temporary")

    @property
    def total(self) -> float:
        return sum(getattr(self, k) for k in self.CATEGORIES)

    @property
    def model_states(self) -> float:
        """Weights + gradients + optimizer states (what the tiny-model check compares exactly)."""
        return self.weights + self.gradients + self.optimizer_states

    def as_dict(self, unit: float = 1.0) -> dict[str, float]:
        """The categories and the total, divided by ``unit`` (``GiB`` for gibibytes)."""
        out = {k: getattr(self, k) / unit for k in self.CATEGORIES}
        out["total"] = self.total / unit
        return out

    def gib(self) -> dict[str, float]:
        """The categories and the total in GiB."""
        return self.as_dict(GiB)



def _optimizer_bytes_per_param(optimizer: str, precision: str) -> float:
    low = precision == "bf16-pure"
    return {"adamw": 4 if low else 8, "adamw-8bit": 2 + 2 * 4 / BNB_BLOCKSIZE, "sgd": 0,
            "sgd-momentum": 2 if low else 4}[optimizer]


def lora_parameter_count(shape: ModelShape, rank: int, targets: str | tuple[str, ...] = "all-linear") -> tuple[int, int]:
    """(trainable parameters, parameter tensors) of LoRA adapters of rank ``rank``.

    ``targets``: ``"all-linear"`` (every decoder matrix except routers, routed experts included),
    ``"attention"``, or a tuple of names from ``ModelShape.matrices()`` (e.g. ``("q_proj", "v_proj")``
    or ``("experts.gate_up_proj", "experts.down_proj")``). A fused 3-D expert tensor ``(E, out, in)``
    gets ``r·E·(in + out)`` parameters (peft's ``ParamWrapper``).

    Beware (peft 0.21, transformers 5): naming ``gate_proj``/``up_proj``/``down_proj`` in
    ``target_modules`` on a fused-expert model is *converted* to the routed experts only
    (``gate_up_proj`` at rank 2r) and the dense MLP and shared experts are then left without
    adapters; target experts with ``target_parameters`` and leave the MLP names out to get what this
    function counts.
    """
    layer_mats = [m for m in shape.matrices() if m.part == "layers" and m.name != "gate"]
    attention = {"q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"}
    if targets == "all-linear":
        chosen = {m.name: rank for m in layer_mats}
    elif targets == "attention":
        chosen = {m.name: rank for m in layer_mats if m.name in attention}
    else:
        names = {m.name for m in layer_mats}
        unknown = set(targets) - names
        if unknown:
            raise ValueError(f"LoRA targets {sorted(unknown)} are not matrices of {shape.name}: {sorted(names)}")
        chosen = {n: rank for n in targets}
    params = tensors = 0
    for m in layer_mats:
        if m.name in chosen:
            r = chosen[m.name]
            params += m.count * r * m.experts * (m.in_features + m.out_features)
            tensors += 2 * m.count
    return params, tensors


def _layer_weight_params(shape: ModelShape) -> int:
    """Parameters of the largest decoder layer (what ZeRO-3 gathers at once)."""
    per_layer_attn = sum(m.parameters // m.count for m in shape.matrices()
                         if m.part == "layers" and m.name.split(".")[-1].endswith(("proj", "mqa"))
                         and not m.name.startswith(("gate_proj", "up_proj", "down_proj", "experts", "shared")))
    dense = 3 * shape.hidden_size * shape.intermediate_size if shape.dense_layers else 0
    moe = 0
    if shape.moe_layers:
        moe = 3 * shape.hidden_size * shape.moe_intermediate_size * (shape.n_routed_experts + shape.n_shared_experts)
    return per_layer_attn + max(dense, moe)


def _experts_targeted(targets: str | tuple[str, ...]) -> bool:
    return targets == "all-linear" or (not isinstance(targets, str) and any(t.startswith("experts.") for t in targets))



def estimate_training_memory(model: Any, plan: TrainingPlan | None = None, **changes: Any) -> MemoryBreakdown:
    """Bytes per GPU to train ``model`` under ``plan`` (any ``TrainingPlan`` field can be passed as keyword).

    ``model``: a transformers config, a hub-style config dict (or a ``configs/models`` document, or
    its name), or a ``ModelShape``. The accounting and its sources are in the module docstring.
    """
    shape = as_shape(model)
    plan = replace(plan or TrainingPlan(), **changes)
    n, z = plan.num_gpus, plan.zero_stage
    total_params, total_tensors = shape.parameter_count(), shape.tensor_count()
    prec, method = plan.precision, plan.method
    w16 = 4 if prec == "fp32" else 2  # working weights / gradients / activations
    master = 4 if prec in ("fp16-mixed", "bf16-mixed") else 0

    realistic = plan.accounting != "minimum" and master > 0
    deepspeed = plan.accounting == "deepspeed" and master > 0 and method == "full" and z < 3
    fp32_grads = 0.0  # DeepSpeed ZeRO-1/2's fp32 gradient partition: split with the optimizer states from stage 1
    if method == "full":
        trainable, t_tensors = total_params, total_tensors
        weights = total_params * w16
        grads = trainable * w16
        opt = trainable * (master + _optimizer_bytes_per_param(plan.optimizer, prec))
        frozen_weights = 0.0
        if realistic and z == 0:  # autocast: fp32 weights (the master) + a 16-bit copy, fp32 gradients
            weights, grads, opt = total_params * (4 + w16), trainable * 4, opt - trainable * master
        elif deepspeed:  # DeepSpeed ZeRO-1/2: 16-bit gradients beside the fp32 gradient partition
            fp32_grads = trainable * 4.0
        elif realistic:  # DeepSpeed ZeRO-3 / Megatron: 16-bit weights, fp32 gradients, fp32 master + moments
            grads = trainable * 4
    else:
        trainable, t_tensors = lora_parameter_count(shape, plan.lora_rank, plan.lora_targets)
        a_bytes = 4  # peft keeps adapters in fp32 even on a 16-bit base (autocast_adapter_dtype=True)
        if method == "lora":
            frozen_weights = total_params * w16
        else:
            quantized = sum(m.parameters for m in shape.matrices() if m.part == "layers" and m.name != "gate")
            frozen_weights = quantized * NF4_BYTES_PER_PARAM + (total_params - quantized) * (2 if prec != "fp32" else 4)
        weights = trainable * a_bytes  # adapters; frozen base added below
        grads = trainable * a_bytes
        opt = trainable * _optimizer_bytes_per_param(plan.optimizer, "fp32")
    if plan.optimizer == "adamw":
        opt += 4 * t_tensors  # torch.optim.AdamW's fp32 `step` per tensor

    cpu = 0.0
    if z >= 1:
        opt /= n
        fp32_grads /= n
    if z >= 2:
        grads /= n
    if z >= 3:
        weights /= n
        frozen_weights /= n
    if plan.offload != "none":  # ZeRO-Offload: optimizer step on the CPU, gradient partitions sent there
        cpu += (opt + (fp32_grads if deepspeed else grads)) * n  # DeepSpeed reduces 16-bit gradients into fp32 there
        opt = grads = fp32_grads = 0.0
    if plan.offload == "optimizer+params":
        cpu += (weights + frozen_weights) * n
        weights = frozen_weights = 0.0
    if deepspeed:  # DeepSpeed's ZeRO-2 estimator: each of the n processes holds the whole model in fp32 while loading
        cpu = max(cpu, 4.0 * total_params * n)
    if plan.accounting != "minimum":
        cpu *= OFFLOAD_BUFFER_FACTOR
    weights += frozen_weights
    grads += fp32_grads

    acts = activation_bytes(shape, plan.micro_batch_size, plan.seq_len, act_bytes=w16,
                            gradient_checkpointing=plan.gradient_checkpointing, attention=plan.attention)
    if method != "full" and shape.moe_layers and _experts_targeted(plan.lora_targets):
        # peft adapts a fused expert tensor by parametrization: W + B·A is materialised for every expert
        # of the layer and kept for backward, a second copy of the routed-expert weights per MoE layer.
        per_layer = shape.n_routed_experts * 3 * shape.hidden_size * shape.moe_intermediate_size * w16
        acts += per_layer * (1 if plan.gradient_checkpointing else shape.moe_layers)
    T = plan.micro_batch_size * plan.seq_len
    temp = T * shape.vocab_size * 4.0  # fp32 gradient of the logits
    if n > 1:
        temp += 2 * shape.hidden_size**2 * w16  # reduce / prefetch buckets ("auto" sizes)
    if z == 3 and n > 1:
        temp += 2 * _layer_weight_params(shape) * (0.5 if method == "qlora" else w16)
    details = {
        "model": shape.name, "plan": plan.describe(), "total_parameters": total_params,
        "trainable_parameters": trainable, "tokens_per_micro_batch": T, "accounting": plan.accounting,
    }
    return MemoryBreakdown(weights, grads, opt, acts, temp, cpu, details)


def breakdown_table(rows: dict[str, MemoryBreakdown], unit: float = GiB) -> list[dict[str, Any]]:
    """Rows ``{"plan", weights, gradients, ..., total}`` in ``unit`` for a table or a stacked-bar plot."""
    return [{"plan": label, **{k: round(v, 2) for k, v in b.as_dict(unit).items()}} for label, b in rows.items()]


def plot_memory_breakdown(breakdowns: dict[str, MemoryBreakdown], ax: Any = None, gpu_gib: float | None = None,
                          reserve: float = 0.2, title: str = "") -> Any:
    """Stacked bars (GiB per GPU) of each breakdown's categories; a line at the usable GPU memory.

    ``gpu_gib``: the card's memory; the dashed line is drawn at ``(1 - reserve) × gpu_gib``.
    Returns the matplotlib axes (notebook 00).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.9 * len(breakdowns) + 2), 4))
    labels = list(breakdowns)
    bottom = [0.0] * len(labels)
    for cat in MemoryBreakdown.CATEGORIES:
        values = [getattr(breakdowns[k], cat) / GiB for k in labels]
        ax.bar(labels, values, bottom=bottom, label=cat.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if gpu_gib:
        ax.axhline(gpu_gib * (1 - reserve), color="k", linestyle="--", linewidth=1,
                   label=f"{gpu_gib:.0f} GiB card minus {reserve:.0%} reserve")
    ax.set_ylabel("GiB per GPU")
    ax.tick_params(axis="x", labelrotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax
