"""How much GPU memory does fine-tuning need? An estimator you can check against real tensors.

``estimate_training_memory(model, ...)`` returns a ``MemoryBreakdown`` in bytes *per GPU*: weights,
gradients, optimizer states, activations, temporary buffers and their total. ``model`` is a
transformers config, a hub-style config dict (``load_model_config("deepseek-coder-6.7b-base")`` reads
one from ``configs/models/``), a ``ModelShape``, or a parameter count via ``ModelShape.from_parameters``.

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
- **Two accountings** (``TrainingPlan.accounting``). ``"minimum"`` is the ZeRO paper's 16 bytes
  above. ``"realistic"`` is what the stacks that run it hold: DeepSpeed and Megatron-LM keep the
  gradients in fp32 for the optimizer (2 weights + 4 fp32 gradients + 4 master + 4 + 4 = **18 bytes
  per trained parameter**, DeepSpeed's ``estimate_zero3_model_states_mem_needs`` and Megatron's
  distributed-optimizer table), and without ZeRO PyTorch autocast keeps fp32 weights and gradients
  plus a 16-bit copy of every weight made during forward (4 + 2 + 4 + 8 = 18 as well). Only mixed
  precision differs; ``fp32``, ``bf16-pure`` and the LoRA adapters (fp32, the frozen base is not
  copied by autocast) count the same in both. Every figure says which accounting it uses.
- **ZeRO** (same paper): stage 1 splits optimizer states (with the fp32 master copy) across the
  GPUs, stage 2 also gradients, stage 3 also the 16-bit weights. ``offload="optimizer"`` moves
  optimizer states and the gradient partitions to CPU RAM where the CPU runs the optimizer step
  (ZeRO-Offload, Ren et al. 2021); ``"optimizer+params"`` also the weights (ZeRO-3 only). The
  minimum counts what the paper draws there (optimizer states + 16-bit gradients, 14 bytes per
  parameter); the realistic accounting counts fp32 gradients (16 bytes per parameter) times the
  1.5 that DeepSpeed's own estimator adds for pinned buffers (24 bytes per parameter).
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
- **Activations** follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models"): a standard GPT layer saves ``sbh(34 + 5as/h)`` bytes in 16-bit
  (``korthikanti_layer_bytes``). ``activation_elements_per_token`` redoes that itemisation for the
  layers transformers actually runs: RMSNorm (saves its input and the normalised value), SwiGLU MLPs
  (4 intermediate-sized tensors), a fused attention kernel (queries, keys, values, output and a
  log-sum-exp per head; no ``s × s`` score matrix; ``attention="eager"`` adds it), DeepSeek's MLA
  (the compressed query/key-value latents and their norms, then full-size keys and values expanded
  from the latent), and MoE layers whose routed experts see each token ``num_experts_per_tok`` times
  (activations follow routed tokens, not the number of experts), plus shared experts and the router.
  The loss saves the log-softmax of the logits in fp32 (``4·V`` bytes per token). With gradient
  checkpointing only each layer's input (``h`` values per token) is kept, plus one layer recomputed
  during backward. Activations are not split by data parallelism or ZeRO.
  With a 16-bit precision every activation is counted at 2 bytes. That holds for a model whose
  weights are bf16; under autocast with fp32 weights (``fp16-mixed``/``bf16-mixed`` as the Trainer
  runs it) only matrix-product outputs are 16-bit while norms, the residual stream and the router
  stay fp32, so the real activations are larger (notebook 08 measures it on the tiny model). The
  checkpointed estimate also counts the one layer recomputed during backward, which a forward-time
  measurement of saved tensors does not see.
- **Temporary buffers**: the fp32 gradient of the logits during backward, for ZeRO-3 two gathered
  layers of weights (current + prefetch), and with several GPUs two ``h²`` communication buckets
  (the sizes transformers' DeepSpeed integration chooses with ``"auto"``).

On a GPU, add the CUDA context (≈0.3–0.5 GiB, not seen by ``torch.cuda.max_memory_allocated``) and
allocator fragmentation: that is what the 20% reserve of ``dsnb.plan.hardware.fits`` is for.


Taught in notebook 00.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dsnb.model.experts import num_routed_experts

logger = logging.getLogger(__name__)


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


#: "minimum": the ZeRO paper's 16 bytes per parameter; "realistic": DeepSpeed / Megatron / autocast's 18.
ACCOUNTINGS = ("minimum", "realistic")


#: DeepSpeed's ``additional_buffer_factor`` for CPU offload memory (its own estimators use 1.5).
OFFLOAD_BUFFER_FACTOR = 1.5


#: Architectures whose q/k/v projections always have a bias (DeepSeek-R1-Distill-Qwen is one).
QKV_BIAS_MODELS = ("qwen2",)


#: bytes per parameter of a 4-bit NF4 matrix with double quantization (block 64, second block 256).
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)


#: bitsandbytes 8-bit optimizers: one fp32 absmax per block of this many values.
BNB_BLOCKSIZE = 256


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None and default is not None else value


@dataclass(frozen=True)
class Matrix:
    """One weight matrix kind: ``count`` copies of an ``(experts ×) out × in`` tensor."""

    name: str
    in_features: int
    out_features: int
    count: int
    experts: int = 1
    bias: bool = False
    part: str = "layers"  # "layers" (decoder), "embedding" or "head"

    @property
    def parameters(self) -> int:
        """Parameters of all copies (weights and biases)."""
        return self.count * self.experts * (self.in_features * self.out_features + (self.out_features if self.bias else 0))

    @property
    def tensors(self) -> int:
        """Parameter tensors of all copies (a fused expert tensor is one)."""
        return self.count * (2 if self.bias else 1)


@dataclass(frozen=True)
class ModelShape:
    """The shape numbers memory depends on, for Llama-style, DeepSeek MLA and MoE models.

    Build one with ``ModelShape.from_config`` (transformers config or hub-style dict) or
    ``ModelShape.from_parameters`` (a parameter count plus hidden size, layers and heads).
    """

    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qkv_bias: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    n_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1

    @property
    def is_mla(self) -> bool:
        return bool(self.kv_lora_rank)

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def moe_layers(self) -> int:
        if not self.is_moe:
            return 0
        return sum(1 for i in range(self.num_hidden_layers)
                   if i >= self.first_k_dense_replace and i % max(self.moe_layer_freq, 1) == 0)

    @property
    def dense_layers(self) -> int:
        return self.num_hidden_layers - self.moe_layers

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> ModelShape:
        """Read the shape from a transformers config object or a hub-style ``config.json`` dict."""
        if isinstance(config, ModelShape):
            return config
        if isinstance(config, dict) and "config" in config and "hidden_size" not in config:
            name = name or config.get("name")
            config = config["config"]
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
                   if _get(config, k) is None]
        if missing:
            raise ValueError(f"the model config lacks {missing}; pass a transformers config, a config.json "
                             "dict, or use ModelShape.from_parameters(n, hidden_size=..., num_layers=..., ...)")
        heads = _get(config, "num_attention_heads")
        n_exp = num_routed_experts(config)
        moe_inter = _get(config, "moe_intermediate_size") or 0
        return cls(
            name=name or _get(config, "name_or_path") or _get(config, "_name_or_path") or _get(config, "model_type", "model"),
            vocab_size=_get(config, "vocab_size"),
            hidden_size=_get(config, "hidden_size"),
            num_hidden_layers=_get(config, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=_get(config, "num_key_value_heads") or heads,
            intermediate_size=_get(config, "intermediate_size") or 4 * _get(config, "hidden_size"),
            head_dim=_get(config, "head_dim"),
            tie_word_embeddings=bool(_get(config, "tie_word_embeddings", False)),
            attention_bias=bool(_get(config, "attention_bias", False)),
            qkv_bias=_get(config, "model_type") in QKV_BIAS_MODELS,
            q_lora_rank=_get(config, "q_lora_rank"),
            kv_lora_rank=_get(config, "kv_lora_rank"),
            qk_rope_head_dim=_get(config, "qk_rope_head_dim", 0) or 0,
            qk_nope_head_dim=_get(config, "qk_nope_head_dim", 0) or 0,
            v_head_dim=_get(config, "v_head_dim", 0) or 0,
            n_routed_experts=int(n_exp),
            num_experts_per_tok=int(_get(config, "num_experts_per_tok", 0) or 0),
            n_shared_experts=int(_get(config, "n_shared_experts", 0) or 0),
            moe_intermediate_size=int(moe_inter),
            first_k_dense_replace=int(_get(config, "first_k_dense_replace", 0) or 0),
            moe_layer_freq=int(_get(config, "moe_layer_freq", 1) or 1),
        )

    @classmethod
    def from_parameters(cls, num_parameters: float, *, hidden_size: int, num_layers: int, num_heads: int,
                        vocab_size: int = 32000, name: str | None = None) -> ModelShape:
        """A Llama-style shape with ``num_parameters`` in total: the MLP width is solved for.

        Per layer a Llama block has ``4h²`` attention, ``3·h·I`` MLP and ``2h`` norm parameters;
        embeddings and head add ``2·V·h``. ``I`` is whatever makes the total match.
        """
        h, L, V = hidden_size, num_layers, vocab_size
        rest = num_parameters - 2 * V * h - h - L * (4 * h * h + 2 * h)
        if rest <= 0:
            raise ValueError(f"{num_parameters:.3g} parameters are too few for hidden_size={h}, "
                             f"num_layers={L}, vocab_size={V}; check the numbers")
        inter = max(1, round(rest / (3 * h * L)))
        return cls(name=name or f"{num_parameters / 1e9:.3g}B", vocab_size=V, hidden_size=h, num_hidden_layers=L,
                   num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=inter)

    def matrices(self) -> list[Matrix]:
        """Every weight matrix kind with its count (norm vectors are in ``norm_parameters``)."""
        h, L, H = self.hidden_size, self.num_hidden_layers, self.num_attention_heads
        b = self.attention_bias
        out = [Matrix("embed_tokens", self.vocab_size, h, 1, part="embedding")]
        if not self.tie_word_embeddings:
            out.append(Matrix("lm_head", h, self.vocab_size, 1, part="head"))
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                out += [Matrix("q_a_proj", h, self.q_lora_rank, L, bias=b),
                        Matrix("q_b_proj", self.q_lora_rank, H * qk, L)]
            else:
                out.append(Matrix("q_proj", h, H * qk, L))
            out += [Matrix("kv_a_proj_with_mqa", h, self.kv_lora_rank + self.qk_rope_head_dim, L, bias=b),
                    Matrix("kv_b_proj", self.kv_lora_rank, H * (self.qk_nope_head_dim + self.v_head_dim), L),
                    Matrix("o_proj", H * self.v_head_dim, h, L, bias=b)]
        else:
            d, kv = self.attn_head_dim, self.num_key_value_heads
            qkv = b or self.qkv_bias
            out += [Matrix("q_proj", h, H * d, L, bias=qkv), Matrix("k_proj", h, kv * d, L, bias=qkv),
                    Matrix("v_proj", h, kv * d, L, bias=qkv), Matrix("o_proj", H * d, h, L, bias=b)]
        if self.dense_layers:
            inter, n = self.intermediate_size, self.dense_layers
            out += [Matrix("gate_proj", h, inter, n), Matrix("up_proj", h, inter, n),
                    Matrix("down_proj", inter, h, n)]
        if self.moe_layers:
            n, mi, E = self.moe_layers, self.moe_intermediate_size, self.n_routed_experts
            if self.n_shared_experts:
                si = mi * self.n_shared_experts
                out += [Matrix("shared_experts.gate_proj", h, si, n), Matrix("shared_experts.up_proj", h, si, n),
                        Matrix("shared_experts.down_proj", si, h, n)]
            out += [Matrix("gate", h, E, n),  # the router
                    Matrix("experts.gate_up_proj", h, 2 * mi, n, experts=E),
                    Matrix("experts.down_proj", mi, h, n, experts=E)]
        return out

    def norm_parameters(self) -> tuple[int, int]:
        """(parameters, tensors) of the RMSNorm weight vectors."""
        L, h = self.num_hidden_layers, self.hidden_size
        params, tensors = 2 * L * h + h, 2 * L + 1
        if self.is_mla:
            params += L * self.kv_lora_rank + (L * self.q_lora_rank if self.q_lora_rank else 0)
            tensors += L + (L if self.q_lora_rank else 0)
        return params, tensors

    def parameter_count(self) -> int:
        """Total parameters (what ``sum(p.numel() for p in model.parameters())`` gives)."""
        return sum(m.parameters for m in self.matrices()) + self.norm_parameters()[0]

    def tensor_count(self) -> int:
        """Number of parameter tensors (AdamW keeps one ``step`` scalar per tensor)."""
        return sum(m.tensors for m in self.matrices()) + self.norm_parameters()[1]

    def active_parameter_count(self) -> int:
        """Parameters a token passes through (routed experts counted ``k/E``)."""
        total = 0
        for m in self.matrices():
            total += m.parameters * self.num_experts_per_tok // m.experts if m.experts > 1 else m.parameters
        return total + self.norm_parameters()[0]


def list_model_configs() -> list[str]:
    """Names of the published configs under ``configs/models/`` (notebook 00)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_model_config(name: str) -> dict:
    """A published model's config from ``configs/models/<name>.yaml`` (values written there with their source).

    Returns the whole YAML document: ``name``, ``hub_id``, ``source``, ``published_parameters`` and
    ``config`` (the config.json values). ``estimate_training_memory`` accepts it as is.
    """
    import yaml

    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no model config {path}; choose one of {list_model_configs()} "
                                "or pass a transformers config / config.json dict instead")
    doc = yaml.safe_load(path.read_text())
    if "config" not in doc or "source" not in doc:
        raise ValueError(f"{path} must have 'config' and 'source' keys")
    return doc


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


def activation_elements_per_token(shape: ModelShape, seq_len: int, attention: str = "flash") -> dict[str, float]:
    """Activation values saved for backward per token, by layer kind (see the module docstring).

    Returns ``{"dense layer", "moe layer", "head", "fp32 bytes per layer", "fp32 bytes head"}``:
    element counts stored in the activation dtype, and the parts that are always fp32 (router
    scores, attention log-sum-exp, the loss's log-softmax) in bytes.
    """
    h, H = shape.hidden_size, shape.num_attention_heads
    norms = 2 * (2 * h + 1)  # two RMSNorms: input + normalised value + 1/rms
    if shape.is_mla:
        qk, v = shape.qk_nope_head_dim + shape.qk_rope_head_dim, shape.v_head_dim
        attn = h + (3 * shape.q_lora_rank if shape.q_lora_rank else 0)
        attn += (shape.kv_lora_rank + shape.qk_rope_head_dim) + 2 * shape.kv_lora_rank
        attn += 2 * H * qk + 3 * H * v  # q, k | v, kernel output, o_proj input
    else:
        d, kv = shape.attn_head_dim, shape.num_key_value_heads
        attn = h + 3 * H * d + 2 * kv * d  # q, output, o_proj input | k, v
    fp32_layer = 4 * H  # log-sum-exp per head
    if attention == "eager":
        attn += H * seq_len  # softmax output in the activation dtype ...
        fp32_layer += 4 * H * seq_len  # ... and the fp32 softmax it came from
    dense = norms + attn + h + 4 * shape.intermediate_size
    moe = 0.0
    fp32_moe = 0.0
    if shape.is_moe:
        k, mi = shape.num_experts_per_tok, shape.moe_intermediate_size
        moe = norms + attn + h + k * (2 * h + 4 * mi + 1) + 4 * shape.n_shared_experts * mi
        fp32_moe = 4 * 2 * shape.n_routed_experts  # router logits and sigmoid scores
    return {"dense layer": dense, "moe layer": moe, "head": 3 * h,
            "fp32 bytes per dense layer": fp32_layer, "fp32 bytes per moe layer": fp32_layer + fp32_moe,
            "fp32 bytes head": 4 * shape.vocab_size}


def activation_bytes(shape: ModelShape, micro_batch_size: int, seq_len: int, act_bytes: int = 2,
                     gradient_checkpointing: bool = False, attention: str = "flash") -> float:
    """Activation bytes held at the start of backward for one micro batch (one GPU).

    Without checkpointing: every layer's saved tensors plus the head. With checkpointing: each
    layer's input (``h`` values per token), plus the largest layer recomputed, plus the head.
    MoE routed-expert activations grow with ``num_experts_per_tok``, not with the expert count.
    The router input is cast to fp32 when activations are 16-bit (``h`` fp32 values per MoE layer).
    """
    e = activation_elements_per_token(shape, seq_len, attention)
    T = micro_batch_size * seq_len
    router_cast = 4 * shape.hidden_size if (shape.is_moe and act_bytes != 4) else 0
    dense = e["dense layer"] * act_bytes + e["fp32 bytes per dense layer"]
    moe = e["moe layer"] * act_bytes + e["fp32 bytes per moe layer"] + router_cast
    head = e["head"] * act_bytes + e["fp32 bytes head"]
    if gradient_checkpointing:
        largest = max(dense if shape.dense_layers else 0, moe if shape.moe_layers else 0)
        per_token = shape.num_hidden_layers * shape.hidden_size * act_bytes + largest + head
    else:
        per_token = shape.dense_layers * dense + shape.moe_layers * moe + head
    return T * per_token


def korthikanti_layer_bytes(seq_len: int, micro_batch_size: int, hidden_size: int, num_heads: int,
                            recompute: str = "none") -> float:
    """Korthikanti et al. 2022, eq. 1 and section 5: activation bytes of one standard GPT layer (16-bit).

    ``recompute="none"``: ``sbh(34 + 5as/h)``; ``"selective"`` (attention core recomputed): ``34sbh``;
    ``"full"``: ``2sbh`` (only the layer input is kept).
    """
    s, b, h, a = seq_len, micro_batch_size, hidden_size, num_heads
    if recompute == "none":
        return s * b * h * (34 + 5 * a * s / h)
    if recompute == "selective":
        return 34 * s * b * h
    if recompute == "full":
        return 2 * s * b * h
    raise ValueError("recompute must be 'none', 'selective' or 'full'")


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


def _as_shape(model: Any) -> ModelShape:
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        return ModelShape.from_config(load_model_config(model))
    return ModelShape.from_config(model)


def estimate_training_memory(model: Any, plan: TrainingPlan | None = None, **changes: Any) -> MemoryBreakdown:
    """Bytes per GPU to train ``model`` under ``plan`` (any ``TrainingPlan`` field can be passed as keyword).

    ``model``: a transformers config, a hub-style config dict (or a ``configs/models`` document, or
    its name), or a ``ModelShape``. The accounting and its sources are in the module docstring.
    """
    shape = _as_shape(model)
    plan = replace(plan or TrainingPlan(), **changes)
    n, z = plan.num_gpus, plan.zero_stage
    total_params, total_tensors = shape.parameter_count(), shape.tensor_count()
    prec, method = plan.precision, plan.method
    w16 = 4 if prec == "fp32" else 2  # working weights / gradients / activations
    master = 4 if prec in ("fp16-mixed", "bf16-mixed") else 0

    realistic = plan.accounting == "realistic" and master > 0
    if method == "full":
        trainable, t_tensors = total_params, total_tensors
        weights = total_params * w16
        grads = trainable * w16
        opt = trainable * (master + _optimizer_bytes_per_param(plan.optimizer, prec))
        frozen_weights = 0.0
        if realistic and z == 0:  # autocast: fp32 weights (the master) + a 16-bit copy, fp32 gradients
            weights, grads, opt = total_params * (4 + w16), trainable * 4, opt - trainable * master
        elif realistic:  # DeepSpeed / Megatron: 16-bit weights, fp32 gradients, fp32 master + moments
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
    if z >= 2:
        grads /= n
    if z >= 3:
        weights /= n
        frozen_weights /= n
    if plan.offload != "none":  # ZeRO-Offload: optimizer step on the CPU, gradient partitions sent there
        cpu += (opt + grads) * n
        opt = grads = 0.0
    if plan.offload == "optimizer+params":
        cpu += (weights + frozen_weights) * n
        weights = frozen_weights = 0.0
    if plan.accounting == "realistic":
        cpu *= OFFLOAD_BUFFER_FACTOR
    weights += frozen_weights

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
