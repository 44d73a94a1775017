"""Measuring training memory on real tensors, to check the estimate (``dsnb.plan.memory``).

- ``measure_model_state_bytes``: weights, gradients and optimizer states after an optimizer step,
  each storage counted once.
- ``saved_tensor_bytes`` / ``measure_activation_bytes``: the activations of one forward pass are
  the tensors autograd saves for backward. A ``torch.autograd.graph.saved_tensors_hooks`` pack hook
  sees every one; summing the bytes of their storages (each once, parameters excluded) gives the
  activation memory held when backward starts, which is where the activation peak is. Process RSS
  (``benchmarks/memory_cpu.py``) is the cruder cross-check: it includes allocator caches.
- ``tiny_model_check``: the estimate against those measurements on the tiny model.

Taught in notebook 00; notebook 08 uses the counter to measure checkpointing and precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dsnb.plan.memory import estimate_training_memory


def _storage_bytes(t: Any) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


def measure_model_state_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of the weights, gradients and optimizer states that exist now (after a step).

    Every tensor is counted once by storage; weights are the model's parameters (buffers not
    included), optimizer states every tensor in ``optimizer.state`` (AdamW: ``exp_avg``,
    ``exp_avg_sq`` and the ``step`` scalar).
    """
    import torch

    seen: set[int] = set()

    def total(tensors: Any) -> int:
        out = 0
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            ptr, nbytes = _storage_bytes(t)
            if ptr in seen and nbytes:
                continue
            seen.add(ptr)
            out += nbytes
        return out

    params = list(model.parameters())
    weights = total(params)
    grads = total(p.grad for p in params if p.grad is not None)
    states = total(v for state in optimizer.state.values() for v in state.values())
    return {"weights": weights, "gradients": grads, "optimizer_states": states,
            "model_states": weights + grads + states}


@contextmanager
def saved_tensor_bytes(model: Any) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside this block (the CPU activation measurement).

    A ``saved_tensors_hooks`` pack hook sees every tensor saved for backward; each storage is
    counted once and the model's parameters are excluded. The yielded dict holds ``bytes`` and
    ``tensors`` and is filled in as the forward pass runs.
    """
    import torch

    params = {_storage_bytes(p)[0] for p in model.parameters()}
    seen: dict[int, int] = {}
    counts = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage_bytes(t)
        if ptr not in params and ptr not in seen:
            seen[ptr] = nbytes
            counts["bytes"] += nbytes
            counts["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield counts


def measure_activation_bytes(model: Any, **inputs: Any) -> dict[str, Any]:
    """Bytes autograd saves for backward during one forward pass (see ``saved_tensor_bytes``).

    Returns ``{"bytes", "tensors", "loss"}``; the forward pass is run with ``inputs`` (e.g.
    ``input_ids=..., labels=...``) and the graph is freed again.
    """
    model.train()
    with saved_tensor_bytes(model) as counts:
        out = model(**inputs)
    loss = float(out.loss.detach()) if getattr(out, "loss", None) is not None else None
    del out
    return {**counts, "loss": loss}


def tiny_model_check(model: Any = None, *, method: str = "full", precision: str = "fp32", lora_rank: int = 4,
                     micro_batch_size: int = 4, seq_len: int = 64, seed: int = 0) -> dict[str, Any]:
    """Train one AdamW step on a tiny model on CPU and compare measured bytes with the estimate.

    ``precision``: ``"fp32"`` or ``"bf16-pure"`` (the model cast to bf16). ``method``: ``"full"`` or
    ``"lora"`` (peft: attention matrices by module name, routed experts by ``target_parameters``).
    Returns measured and estimated model-state bytes (equal) and activation bytes (close).
    """
    import torch
    from transformers import DeepseekV3ForCausalLM

    from dsnb.model.lora import lora_target_modules, lora_target_parameters
    from dsnb.model.pretrain import tiny_deepseek_config

    if precision not in ("fp32", "bf16-pure") or method not in ("full", "lora"):
        raise ValueError("the CPU check supports precision 'fp32'/'bf16-pure' and method 'full'/'lora'")
    torch.manual_seed(seed)
    if model is None:
        model = DeepseekV3ForCausalLM(tiny_deepseek_config())
    config = model.config
    if precision == "bf16-pure":
        model = model.to(torch.bfloat16)
    targets: str | tuple[str, ...] = "all-linear"
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        experts = lora_target_parameters(model)
        modules = [m for m in lora_target_modules(model)
                   if not (experts and m in ("gate_proj", "up_proj", "down_proj"))]  # see lora_parameter_count
        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=modules,
                                                 target_parameters=experts))
        targets = tuple(modules) + tuple(e.replace("mlp.", "", 1) for e in experts)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (micro_batch_size, seq_len), generator=g)
    acts = measure_activation_bytes(model, input_ids=ids, labels=ids)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    measured = measure_model_state_bytes(model, opt)
    est = estimate_training_memory(config, method=method, precision=precision, optimizer="adamw",
                                   micro_batch_size=micro_batch_size, seq_len=seq_len, lora_rank=lora_rank,
                                   lora_targets=targets)
    return {
        "measured": measured,
        "estimated": {"weights": est.weights, "gradients": est.gradients,
                      "optimizer_states": est.optimizer_states, "model_states": est.model_states},
        "activations_measured": acts["bytes"],
        "activations_estimated": est.activations,
        "activation_ratio": est.activations / acts["bytes"],
        "breakdown": est,
    }
