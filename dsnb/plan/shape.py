"""The shape of a model: what its parameter count and memory depend on, read from its config.

- ``ModelShape``: vocabulary, widths, layers, heads, MLA ranks and MoE experts of Llama-style, DeepSeek
  MLA and MoE models; ``matrices()`` lists every weight matrix kind, ``parameter_count()`` and
  ``tensor_count()`` equal what ``model.parameters()`` gives (tested on every tiny architecture).
- ``load_model_config`` / ``list_model_configs``: the published configs under ``configs/models/``,
  each written there with its source.
- ``as_shape``: a ``ModelShape`` from whatever names a model (a shape, a ``configs/models`` name, a
  transformers config or a hub-style dict).

Torch-free, like the estimate that uses it (``dsnb.plan.memory``). Taught in notebooks 00 and 01.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsnb.model.experts import config_value, num_routed_experts

#: Architectures whose q/k/v projections always have a bias (DeepSeek-R1-Distill-Qwen is one).
QKV_BIAS_MODELS = ("qwen2",)


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


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
                   if config_value(config, k) is None]
        if missing:
            raise ValueError(f"the model config lacks {missing}; pass a transformers config, a config.json "
                             "dict, or use ModelShape.from_parameters(n, hidden_size=..., num_layers=..., ...)")
        heads = config_value(config, "num_attention_heads")
        n_exp = num_routed_experts(config)
        moe_inter = config_value(config, "moe_intermediate_size") or 0
        return cls(
            name=name or config_value(config, "name_or_path") or config_value(config, "_name_or_path") or config_value(config, "model_type", "model"),
            vocab_size=config_value(config, "vocab_size"),
            hidden_size=config_value(config, "hidden_size"),
            num_hidden_layers=config_value(config, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=config_value(config, "num_key_value_heads") or heads,
            intermediate_size=config_value(config, "intermediate_size") or 4 * config_value(config, "hidden_size"),
            head_dim=config_value(config, "head_dim"),
            tie_word_embeddings=bool(config_value(config, "tie_word_embeddings", False)),
            attention_bias=bool(config_value(config, "attention_bias", False)),
            qkv_bias=config_value(config, "model_type") in QKV_BIAS_MODELS,
            q_lora_rank=config_value(config, "q_lora_rank"),
            kv_lora_rank=config_value(config, "kv_lora_rank"),
            qk_rope_head_dim=config_value(config, "qk_rope_head_dim", 0) or 0,
            qk_nope_head_dim=config_value(config, "qk_nope_head_dim", 0) or 0,
            v_head_dim=config_value(config, "v_head_dim", 0) or 0,
            n_routed_experts=int(n_exp),
            num_experts_per_tok=int(config_value(config, "num_experts_per_tok", 0) or 0),
            n_shared_experts=int(config_value(config, "n_shared_experts", 0) or 0),
            moe_intermediate_size=int(moe_inter),
            first_k_dense_replace=int(config_value(config, "first_k_dense_replace", 0) or 0),
            moe_layer_freq=int(config_value(config, "moe_layer_freq", 1) or 1),
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


def as_shape(model: Any) -> ModelShape:
    """``model`` as a ``ModelShape``: a shape as is, a ``configs/models`` name, a transformers config or a dict."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        return ModelShape.from_config(load_model_config(model))
    return ModelShape.from_config(model)
