"""Looking inside a DeepSeek model: parameters per component, MLA's KV cache, FLOPs, expert load.

Everything here is computed from the config or measured on the real module tree, so it works the
same for the course's tiny DeepSeek-V3 and for a published checkpoint's config:

- ``parameter_breakdown``   parameters per component, total and *active* per token (MoE)
- ``kv_cache_per_token``    cache elements per token (MLA's latent, or GQA/MHA keys and values) vs
                             standard multi-head attention of the same shape
- ``measured_kv_cache_bytes`` what the model's cache really holds after a forward pass
- ``forward_flops``         matmul FLOPs of one forward pass, from the config (checked against
                             ``torch.utils.flop_counter`` in the tests), with ``attention="mha"`` for
                             the standard-attention model of the same width
- ``expert_load``           how many tokens each routed expert received (router top-k choices)

Taught in notebook 01 (claim C01: what DeepSeek's attention actually saves).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from dsnb.model.experts import config_value, num_routed_experts


def component_of(name: str) -> str:
    """The component a parameter name belongs to (embeddings, attention, router, experts, ...)."""
    if "embed_tokens" in name:
        return "embeddings"
    if name.startswith("lm_head"):
        return "output head"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.experts." in name:
        return "routed experts"
    if ".mlp.shared_experts." in name:
        return "shared experts"
    if ".mlp.gate." in name or name.endswith(".mlp.gate.weight"):
        return "router"
    if ".mlp." in name:
        return "dense MLP"
    if "norm" in name:
        return "norms"
    return "other"


def parameter_breakdown(model: nn.Module) -> list[dict]:
    """Rows of (component, parameters, share of total, active per token).

    Routed experts count as active in proportion ``num_experts_per_tok / n_routed_experts``: a
    token passes through only its top-k experts, which is why DeepSeek-V3 has 671 B parameters but
    about 37 B active per token.
    """
    config = getattr(model, "config", None)
    n_exp = num_routed_experts(config) if config is not None else 0
    k = config_value(config, "num_experts_per_tok") or 0
    totals: OrderedDict[str, int] = OrderedDict()
    for name, p in model.named_parameters():
        comp = component_of(name)
        totals[comp] = totals.get(comp, 0) + p.numel()
    total = sum(totals.values())
    rows = []
    for comp, n in totals.items():
        active = n * k / n_exp if comp == "routed experts" and n_exp else n
        rows.append({"component": comp, "parameters": n, "share": n / total, "active per token": int(active)})
    rows.append({"component": "total", "parameters": total, "share": 1.0,
                 "active per token": sum(r["active per token"] for r in rows)})
    return rows


def kv_cache_per_token(config: Any, bytes_per_element: int = 2) -> dict:
    """Cache size per token of this model's attention, and of standard multi-head attention of the same shape.

    MLA (DeepSeek-V2/V3) caches one shared latent of ``kv_lora_rank`` values plus the
    ``qk_rope_head_dim`` rotary key part per layer; multi-head attention caches a key and a value for
    every head; grouped-query attention (Llama, Qwen2) for every key/value head only.
    ``bytes_per_element`` is 2 for bf16/fp16 caches. Works on DeepSeek-V2/V3, Llama and Qwen2 configs.
    """
    layers = config_value(config, "num_hidden_layers")
    heads = config_value(config, "num_attention_heads")
    if layers is None or heads is None:
        raise ValueError("config lacks num_hidden_layers / num_attention_heads: pass a transformers config "
                         "(e.g. model.config) or its dict")
    latent = config_value(config, "kv_lora_rank")
    if latent is not None:
        rope, nope, v = config_value(config, "qk_rope_head_dim"), config_value(config, "qk_nope_head_dim"), config_value(config, "v_head_dim")
        kind, cached, mha = "MLA", latent + rope, heads * ((nope + rope) + v)
    else:
        head_dim = config_value(config, "head_dim") or config_value(config, "hidden_size") // heads
        kv_heads = config_value(config, "num_key_value_heads") or heads
        kind = "MHA" if kv_heads == heads else "GQA"
        cached, mha = 2 * kv_heads * head_dim, 2 * heads * head_dim
    return {
        "attention": kind,
        "cache elements per token per layer": cached,
        "MHA elements per token per layer": mha,
        "cache bytes per token (all layers)": cached * layers * bytes_per_element,
        "MHA bytes per token (all layers)": mha * layers * bytes_per_element,
        "cache / MHA": cached / mha,
    }


@torch.no_grad()
def measured_kv_cache_bytes(model: nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes held by the model's cache after one forward pass over ``input_ids`` (batch 1).

    Divide by the sequence length for bytes per token; compare with ``kv_cache_per_token``.
    """
    model.eval()
    out = model(input_ids=input_ids, use_cache=True)
    total = 0
    cache = getattr(out, "cache", None) or out.past_key_values
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def forward_flops(config: Any, seq_len: int, batch: int = 1, attention: str = "mla",
                  include_head: bool = True) -> dict:
    """Matmul FLOPs (2 per multiply-add) of one forward pass, by part, computed from the config.

    ``attention="mla"`` follows DeepSeek's attention as transformers runs it (low-rank projections,
    keys and values expanded from the latent, full ``seq_len × seq_len`` scores);
    ``attention="mha"`` replaces it by standard multi-head attention with the same heads and
    head sizes. MoE layers count the shared experts plus ``num_experts_per_tok`` routed experts
    per token and the router.
    """
    if attention not in ("mla", "mha"):
        raise ValueError("attention must be 'mla' or 'mha'")
    T = seq_len * batch
    h = config_value(config, "hidden_size")
    H = config_value(config, "num_attention_heads")
    L = config_value(config, "num_hidden_layers")
    rope, nope, v = config_value(config, "qk_rope_head_dim"), config_value(config, "qk_nope_head_dim"), config_value(config, "v_head_dim")
    qk = rope + nope
    qr, kvr = config_value(config, "q_lora_rank"), config_value(config, "kv_lora_rank")
    if attention == "mla":
        q = (h * qr + qr * H * qk) if qr else h * H * qk
        proj = q + h * (kvr + rope) + kvr * H * (nope + v) + H * v * h
    else:
        proj = h * H * qk * 2 + h * H * v + H * v * h
    attn_proj = 2 * T * proj
    attn_scores = 2 * batch * H * seq_len * seq_len * (qk + v)
    dense_layers = min(config_value(config, "first_k_dense_replace", 0) or 0, L)
    moe_layers = L - dense_layers
    mlp_dense = 2 * T * 3 * h * config_value(config, "intermediate_size") * dense_layers
    n_exp, k = num_routed_experts(config), config_value(config, "num_experts_per_tok") or 0
    mi, ns = config_value(config, "moe_intermediate_size") or 0, config_value(config, "n_shared_experts") or 0
    mlp_moe = 2 * T * (3 * h * mi * (k + ns) + h * n_exp) * moe_layers
    head = 2 * T * h * config_value(config, "vocab_size") if include_head else 0
    parts = {
        "attention projections": attn_proj * L,
        "attention scores": attn_scores * L,
        "MLP / experts": mlp_dense + mlp_moe,
        "output head": head,
    }
    parts["total"] = sum(parts.values())
    parts["per token"] = parts["total"] / T
    return parts


@torch.no_grad()
def expert_load(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens routed to each expert: a ``(moe_layers, n_routed_experts)`` tensor of counts.

    Hooks every MoE router (``mlp.gate``) and counts its top-k choices; padded positions are not
    counted when ``attention_mask`` is given. Empty (0 rows) for dense models.
    """
    config = model.config
    n_exp = num_routed_experts(config)
    counts: list[torch.Tensor] = []
    keep = attention_mask.reshape(-1).bool() if attention_mask is not None else None

    def hook(_module, _inputs, output):
        idx = next(t for t in output if isinstance(t, torch.Tensor) and not t.is_floating_point())
        idx = idx.reshape(-1, idx.shape[-1])
        if keep is not None:
            idx = idx[keep]
        counts.append(torch.bincount(idx.reshape(-1), minlength=n_exp).cpu())

    handles = [m.register_forward_hook(hook) for name, m in model.named_modules()
               if name.endswith(".mlp.gate") and type(m).__name__.endswith("TopkRouter")]
    try:
        model.eval()
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(counts) if counts else torch.zeros(0, n_exp or 0, dtype=torch.long)
