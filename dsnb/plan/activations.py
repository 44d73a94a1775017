"""Activation memory: what one forward pass keeps for backward, per token and per micro batch.

``korthikanti_layer_bytes`` is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", eq. 1 and section 5): a standard GPT layer saves ``sbh(34 + 5as/h)`` bytes in 16-bit.
``activation_elements_per_token`` redoes that itemisation for the layers transformers actually runs:
RMSNorm (saves its input and the normalised value), SwiGLU MLPs (4 intermediate-sized tensors), a fused
attention kernel (queries, keys, values, output and a log-sum-exp per head; no ``s × s`` score matrix;
``attention="eager"`` adds it), DeepSeek's MLA (the compressed query/key-value latents and their norms,
then full-size keys and values expanded from the latent), and MoE layers whose routed experts see each
token ``num_experts_per_tok`` times (activations follow routed tokens, not the number of experts), plus
shared experts and the router. The loss saves the log-softmax of the logits in fp32 (``4·V`` bytes per
token). ``activation_bytes`` sums them for a micro batch; with gradient checkpointing only each layer's
input (``h`` values per token) is kept, plus one layer recomputed during backward. Activations are not
split by data parallelism or ZeRO.

With a 16-bit precision every activation is counted at 2 bytes. That holds for a model whose weights are
bf16; under autocast with fp32 weights (``fp16-mixed``/``bf16-mixed`` as the Trainer runs it) only
matrix-product outputs are 16-bit while norms, the residual stream and the router stay fp32, so the real
activations are larger (notebook 08 measures it on the tiny model). The checkpointed estimate also counts
the one layer recomputed during backward, which a forward-time measurement of saved tensors does not see.

Torch-free; ``dsnb.plan.memory`` adds these to the model states. Taught in notebooks 00 and 08.
"""

from __future__ import annotations

from dsnb.plan.shape import ModelShape


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
