"""Loading any causal LM with its tokenizer, the way real DeepSeek checkpoints load.

- ``load_model`` loads through ``AutoModelForCausalLM`` / ``AutoTokenizer`` from a local directory
  or a hub id; ``"dsnb-tiny"`` names the course's own base model (``dsnb.model.pretrain``) and
  ``"dsnb-tiny-sft"`` its SFT model (names resolved by ``dsnb.model.resolve``). Changing that one
  parameter to ``"deepseek-ai/deepseek-coder-1.3b-base"`` is how a notebook scales up.
- ``base_model`` is ``load_model("dsnb-tiny")``, building the model first if needed.
- ``save_tiny_random`` writes tiny random checkpoints of other architectures (DeepSeek-V2, Llama,
  Qwen2) so that code paths for real models are tested without a download.

Taught in notebook 01.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dsnb.cache import follow_umask
from dsnb.model.pretrain import TINY_MODEL_NAME, base_model_path
from dsnb.model.resolve import ModelLoadError, resolve_model

logger = logging.getLogger(__name__)


#: Shape fields of a config.json that must be positive whole numbers (when present).
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "moe_intermediate_size", "n_routed_experts",
                "num_experts_per_tok", "kv_lora_rank", "q_lora_rank", "head_dim")


def _check_dtype_and_device(dtype: Any, device: Any) -> None:
    """Refuse a dtype name torch does not have and a device this machine does not have, before loading."""
    if not (dtype == "auto" or isinstance(dtype, torch.dtype)
            or (isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype))):
        raise ModelLoadError(f"dtype={dtype!r} is not a torch dtype; use 'auto', 'float32', 'bfloat16' or "
                             "'float16' (or a torch.dtype such as torch.bfloat16)")
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"device={device!r} is not a device name ({exc}); use 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise ModelLoadError(f"device={device!r} but this machine has no usable CUDA GPU (torch is {build}); "
                                 "use device='cpu', or install a CUDA build of torch on a GPU machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device={device!r} but this machine has {torch.cuda.device_count()} GPU(s), "
                                 f"numbered from 0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device={device!r} but Apple's MPS backend is not available here; use device='cpu'")


def check_config_values(values: Any, where: str) -> None:
    """A ``config.json``'s content must be a mapping whose shape fields are positive whole numbers.

    ``where`` names the file in the message (``hidden_size: "big"`` or ``num_hidden_layers: -2``, which
    would build a model with no layers, are refused here).
    """
    if not isinstance(values, dict):
        raise ModelLoadError(f"{where} must hold a JSON object of config values, not a {type(values).__name__}; "
                             "copy config.json again from the source checkpoint")
    bad = [f"{k}={values[k]!r}" for k in SHAPE_FIELDS if values.get(k) is not None
           and (isinstance(values[k], bool) or not isinstance(values[k], int) or values[k] < 1)]
    if bad:
        raise ModelLoadError(f"{where}: {', '.join(bad)}: shape values must be positive whole numbers; "
                             "fix config.json or copy it again from the source checkpoint")


def _check_local_files(path: Path) -> None:
    """config.json parses to sane values and every safetensors file has a complete header, before loading."""
    import json

    from safetensors import safe_open

    config_file = path / "config.json"
    try:
        values = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON ({exc}); copy it again from the source "
                             "checkpoint") from None
    check_config_values(values, str(config_file))
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(
                f"{weights} is truncated or corrupt ({exc}; {weights.stat().st_size:,} bytes on disk). Copy it "
                "again and compare its size (and checksum) with the source."
            ) from None


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer via ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    ``name_or_path`` is a local directory, a hub id (``"deepseek-ai/deepseek-coder-1.3b-base"``) or a
    course model, ``"dsnb-tiny"`` or ``"dsnb-tiny-sft"`` (``dsnb.model.resolve.resolve_model``). A missing
    directory or an unreachable hub raises ``ModelLoadError`` naming what was asked for and how to work
    offline. The tokenizer always gets a pad token (if it had none, EOS is used and a warning says why
    that matters for fine-tuning).
    """
    _check_dtype_and_device(dtype, device)
    resolved = resolve_model(name_or_path)
    name = str(resolved)
    is_local = isinstance(resolved, Path)
    if is_local:
        path = resolved
        if not path.is_dir():
            raise ModelLoadError(
                f"Model directory {path} does not exist. Pass a directory that holds config.json and the "
                f"weights (e.g. one written by save_pretrained), a hub id such as "
                f"'deepseek-ai/deepseek-coder-1.3b-base', or '{TINY_MODEL_NAME}' for the course model."
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json, so it is not a saved model directory. Pass the directory that "
                "save_pretrained wrote (config.json next to the *.safetensors files), or the snapshot "
                "directory of a downloaded checkpoint."
            )
        _check_local_files(path)
        name = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes one error that says what to do
        if not is_local and not isinstance(exc, OSError | ValueError):
            raise ModelLoadError(f"Could not load {name!r} ({type(exc).__name__}: {exc}); check that this "
                                 "transformers version supports it (python -m dsnb.doctor)") from exc
        if is_local:
            raise ModelLoadError(
                f"Could not load the model saved in {name} ({type(exc).__name__}: {exc}). Check that the "
                "weights and tokenizer files were copied completely (compare sizes with the source), and "
                "that this transformers version supports its model_type (python -m dsnb.doctor); a model "
                "with custom code also needs trust_remote_code=True."
            ) from exc
        raise ModelLoadError(
            f"Could not load {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If this machine is offline: on a connected machine run "
            f"`hf download {name} --local-dir <DIR>`, copy <DIR> here and pass its path; or set "
            "HF_HUB_OFFLINE=1 to use a copy already in the local Hugging Face cache. "
            f"Without any download, use '{TINY_MODEL_NAME}' (the course's own tiny DeepSeek-V3)."
        ) from exc
    if tokenizer.pad_token is None:
        logger.warning(
            "%s has no pad token; using EOS for padding. Mask padding by attention_mask, not by token id, "
            "or the model never learns to emit EOS.", name,
        )
        tokenizer.pad_token = tokenizer.eos_token
    if not is_local:
        check_config_values(model.config.to_dict(), f"the config of {name!r}")
    if device is not None:
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise ModelLoadError(f"could not move {name} to device={device!r} ({exc}); use device='cpu' or a "
                                 "smaller dtype") from exc
    return model, tokenizer


#: model_type -> (what it stands for, tiny config values). All share hidden 64 and 2 layers.
TINY_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "deepseek_v3": ("DeepSeek-V3 / R1 (MLA + MoE)", dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32,
        kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_shared_experts=1,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, num_nextn_predict_layers=0)),
    "deepseek_v2": ("DeepSeek-V2-Lite (MLA without query compression + MoE)", dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
        kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_shared_experts=1,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, topk_method="greedy")),
    "llama": ("deepseek-coder / deepseek-llm (Llama architecture)", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4)),
    "qwen2": ("DeepSeek-R1-Distill-Qwen (Qwen2 architecture)", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)),
}


def save_tiny_random(
    model_type: str, directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0
) -> Path:
    """Save a tiny randomly initialised checkpoint of ``model_type`` (with a tokenizer) to ``directory``.

    Stands in for a real checkpoint of the same architecture where none can be downloaded; the
    loading, LoRA and training code paths are the ones a real checkpoint takes.
    """
    from transformers import AutoConfig

    if model_type not in TINY_ARCHITECTURES:
        raise ValueError(f"unknown model_type {model_type!r}; choose from {sorted(TINY_ARCHITECTURES)}")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(base_model_path())
    values = dict(TINY_ARCHITECTURES[model_type][1])
    values.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(model_type, **values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    # AutoTokenizer may pick the architecture's own tokenizer class (e.g. Qwen2Tokenizer adds
    # "<|endoftext|>"): size the embeddings for the tokenizer that loading will really return.
    reloaded = AutoTokenizer.from_pretrained(directory)
    if len(reloaded) != config.vocab_size:
        model.resize_token_embeddings(len(reloaded))
        model.save_pretrained(directory, safe_serialization=True)
    follow_umask(directory)
    return directory


def base_model(rebuild: bool = False, **load_kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The pretrained tiny DeepSeek-V3 and its tokenizer (built on first use, then from cache)."""
    return load_model(base_model_path(rebuild=rebuild), **load_kwargs)
