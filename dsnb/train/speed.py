"""What a training step costs: memory and time of one step, and the memory switches of notebook 08.

``StepTimer`` times a Trainer's optimizer steps alone (forward, backward, clipping, optimizer), without the
evaluation, logging and checkpoint writing between them, so two runs that save differently compare fairly.
``measure_training_step`` runs one forward/backward/optimizer step under a precision, gradient
checkpointing and accumulation setting and reports the activations kept for backward
(``dsnb.plan.measure.saved_tensor_bytes``) and the step time; ``training_state_bytes`` counts
weights, gradients and AdamW states; ``share_query_key`` ties W_k to W_q (claim C16).

Taught in notebook 08.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from transformers import TrainerCallback

from dsnb.model.device import model_device
from dsnb.plan.measure import saved_tensor_bytes
from dsnb.train.config import resolve_precision


class StepTimer(TrainerCallback):
    """Seconds spent inside optimizer steps: from ``on_step_begin`` to ``on_step_end`` of each, summed.

    The Trainer evaluates, logs and saves checkpoints after ``on_step_end``, so none of that is counted.
    """

    def __init__(self) -> None:
        self.seconds, self.steps = 0.0, 0
        self._started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.steps += 1
            self._started = None


def training_state_bytes(model: nn.Module, bytes_per_param: int = 4) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW's states (two fp32 moments and a ``step`` per tensor).

    Counted from the parameters, activations not included; equal to the real tensors after an
    AdamW step (tested against ``dsnb.plan.measure.measure_model_state_bytes``).
    """
    trainable = model.num_parameters(only_trainable=True)
    weights = model.num_parameters() * bytes_per_param
    grads = trainable * bytes_per_param
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    adam = trainable * 2 * 4 + 4 * tensors
    return {"weights": weights, "gradients": grads, "optimizer": adam, "total": weights + grads + adam}


def measure_training_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    accumulation: int = 1,
    repeats: int = 3,
) -> dict[str, float]:
    """Measure one optimizer step's worth of forward+backward on ``batch`` (split into ``accumulation`` parts).

    Returns the bytes autograd keeps for the backward pass (the activation memory gradient checkpointing
    and mixed precision cut; counted exactly with ``saved_tensors_hooks``, the same on any device), the
    peak CUDA memory on a GPU, and the seconds per step (the fastest repeat after a warm-up one: on a
    shared machine the fastest is the one least disturbed by other work). Taught in notebook 08.
    """
    precision = resolve_precision(precision)
    device = model_device(model)
    model.train()
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    parts = [{k: v[i::accumulation].to(device) for k, v in batch.items()} for i in range(accumulation)]
    times, peaks, most = [], [], 0
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for part in parts:
            with saved_tensor_bytes(model) as saved, \
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(**part).loss / accumulation
            loss.backward()
            most = max(most, saved["bytes"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device))
        times.append(time.perf_counter() - t0)
    model.activation_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    tokens = int(batch["attention_mask"].sum())
    sec = min(times[1:])  # the first repeat warms up kernels
    return {"activation MB": most / 2**20, "peak CUDA MB": (max(peaks) / 2**20) if peaks else float("nan"),
            "seconds/step": sec, "tokens/s": tokens / sec}


def share_query_key(model: nn.Module) -> int:
    """Tie each attention layer's key projection to its query projection (claim C16); return parameters saved.

    Possible only where both are plain ``q_proj``/``k_proj`` Linears of the same shape (Llama/Qwen2 with as
    many key/value heads as query heads). DeepSeek's MLA has no ``k_proj`` to share: it already derives
    keys and values from one shared low-rank latent (``kv_a_proj_with_mqa`` -> ``kv_b_proj``), a stronger
    saving of the same kind. Raises ``ValueError`` where the architecture does not allow it.
    """
    saved = 0
    for name, module in model.named_modules():
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        if q is None and hasattr(module, "kv_a_proj_with_mqa"):
            raise ValueError("MLA attention (DeepSeek-V2/V3) has no separate k_proj: keys come from the shared "
                             "low-rank KV latent, so there is nothing to tie")
        if not (isinstance(q, nn.Linear) and isinstance(k, nn.Linear)):
            continue
        if q.weight.shape != k.weight.shape:
            raise ValueError(f"{name}: q_proj {tuple(q.weight.shape)} and k_proj {tuple(k.weight.shape)} differ "
                             "(grouped-query attention); Q/K sharing needs as many KV heads as query heads")
        saved += k.weight.numel() + (k.bias.numel() if k.bias is not None else 0)
        k.weight = q.weight
        if k.bias is not None and q.bias is not None:
            k.bias = q.bias
    if saved == 0:
        raise ValueError(f"{type(model).__name__} has no q_proj/k_proj pairs to share")
    return saved
