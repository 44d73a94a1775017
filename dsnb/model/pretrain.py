"""The course's base model: a tiny DeepSeek-V3, pretrained deterministically on the standard library.

- ``tiny_deepseek_config`` keeps DeepSeek-V3's defining parts (multi-head latent attention, a dense
  first layer then MoE layers with shared + routed experts and top-k routing) at a size a laptop
  CPU trains in minutes.
- ``pretrain`` trains it with ``transformers.Trainer`` on packed blocks of the course corpus, with
  DeepSeek-V3's bias balancing switched on (``dsnb.model.routing.ExpertBiasBalancer``), and writes a
  report (held-out loss against the unigram entropy, curves, samples).
- ``base_model_path`` builds it once and caches it (safetensors + config + tokenizer) under
  ``dsnb.cache_dir("base_model")``; a different corpus or recipe rebuilds it, never reuses it.
- ``DSNB_BASE_SEED`` (default 0) picks the seed of the initial weights and the data order: another
  value builds "another machine's" base model from the same recipe, which is how the course checks
  that no notebook or test depends on the exact bits of one build (``make test-second-build``).

Taught in notebook 01.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from dsnb.cache import atomic_directory, build_lock, cache_dir, follow_umask, write_json_atomic
from dsnb.data.corpus import Corpus, course_corpus, unigram_entropy
from dsnb.model.architecture import expert_load
from dsnb.model.device import model_device
from dsnb.model.routing import ExpertBiasBalancer, load_imbalance
from dsnb.model.scoring import greedy_generate, token_stats
from dsnb.model.tokenizer import save_tokenizer, train_tokenizer
from dsnb.model.trainer_defaults import course_training_arguments
from dsnb.progress import LineProgress

logger = logging.getLogger(__name__)


#: The name notebooks use for the course's own pretrained tiny DeepSeek-V3.
TINY_MODEL_NAME = "dsnb-tiny"


BUILD_INFO = "dsnb_build.json"


REPORT = "pretraining_report.json"

#: Environment variable with the base model's build seed (initial weights and data order).
SEED_ENV = "DSNB_BASE_SEED"
#: Seed of the validation and test blocks: fixed, so every build is evaluated on the same held-out text.
EVAL_SEED = 0


def build_seed() -> int:
    """The base-model build seed: ``DSNB_BASE_SEED`` if set (an integer), else 0."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={raw!r} is not an integer: unset it for the default build, "
                         f"or set e.g. {SEED_ENV}=1 to build a second base model from the same recipe") from None


def tiny_deepseek_config(**overrides: Any) -> DeepseekV3Config:
    """A ``DeepseekV3Config`` with DeepSeek-V3's defining parts at tiny scale (about 2.4 M parameters).

    Multi-head latent attention: queries through a rank-64 bottleneck (``q_lora_rank``), keys and
    values from one shared rank-32 latent (``kv_lora_rank``), each head split into a rotary part
    (``qk_rope_head_dim``) and a position-free part (``qk_nope_head_dim``). Layer 0 is a dense MLP
    (``first_k_dense_replace=1``); layers 1-3 are MoE layers with 1 shared expert and 8 routed
    experts of which each token uses 2. Any field can be overridden.
    """
    values: dict[str, Any] = dict(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=384,
        moe_intermediate_size=96,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=32,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        max_position_embeddings=1024,
        num_nextn_predict_layers=0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    values.update(overrides)
    return DeepseekV3Config(**values)


@dataclass
class PretrainConfig:
    """How the base model is pretrained. The defaults take about 4.5 CPU-minutes (3-4 minutes on 2 idle cores)."""

    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 400
    learning_rate: float = 4e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    eval_every: int = 50
    eval_blocks: int = 96
    #: DeepSeek-V3's balancing-bias step (``dsnb.model.routing.ExpertBiasBalancer``); DeepSeek used 0.001 over
    #: trillions of tokens, a 400-step run needs a larger step to balance at all. 0 turns balancing off.
    bias_update_rate: float = 0.005
    #: initial weights and training-data order; the held-out blocks do not depend on it (``EVAL_SEED``)
    seed: int = field(default_factory=build_seed)


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length blocks of token ids for causal LM training (labels = inputs)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def pack_texts(texts: list[str], tokenizer: PreTrainedTokenizerBase, seq_len: int) -> torch.Tensor:
    """Tokenize ``texts``, join them as ``BOS text EOS`` and cut into blocks of ``seq_len`` tokens.

    The tail shorter than one block is dropped (at most ``seq_len - 1`` tokens; logged).
    """
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *enc, tokenizer.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{len(ids)} tokens are fewer than one block of seq_len={seq_len}")
    logger.info("packed %d tokens into %d blocks of %d (tail of %d tokens dropped)",
                len(ids), n, seq_len, len(ids) - n * seq_len)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _shuffled(blocks: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return blocks[torch.randperm(blocks.shape[0], generator=g)]


def _training_args(output_dir: str, cfg: PretrainConfig) -> TrainingArguments:
    return course_training_arguments(
        output_dir=output_dir,
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        save_strategy="no",
        seed=cfg.seed,
        data_seed=cfg.seed,
    )


def heldout_loss(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over ``blocks`` (``dsnb.model.scoring.token_stats``)."""
    model.eval()
    total, count = 0.0, 0
    device = model_device(model)
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i : i + batch_size].to(device)
        stats = token_stats(model, x, x)
        total += stats["nll"].sum().item()
        count += int(stats["tokens"].sum())
    return total / count


def greedy_samples(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 40
) -> list[str]:
    """Greedy continuations of ``prompts`` (prompt included), for a look at what the model learned."""
    ids = [[tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in prompts]
    new = greedy_generate(model, tokenizer, ids, max_new_tokens, batch_size=1)  # one at a time: no padding
    return [tokenizer.decode(p[1:] + n, skip_special_tokens=True) for p, n in zip(ids, new, strict=True)]


SAMPLE_PROMPTS = ["import os\n", "def __init__(self", "class ", "    for i in range("]


def pretrain(directory: str | Path, corpus: Corpus | None = None, cfg: PretrainConfig | None = None) -> dict:
    """Train the tokenizer and pretrain the tiny DeepSeek-V3 on ``corpus``; save both to ``directory``.

    Returns the report (also saved as ``pretraining_report.json``): held-out (test-split) loss vs the
    unigram entropy of the same tokens, the loss/eval curves, greedy samples and timings.
    """
    corpus = corpus or course_corpus()
    cfg = cfg or PretrainConfig()
    directory = Path(directory)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(corpus.texts("train"), vocab_size=cfg.vocab_size)
    t_tok = time.perf_counter() - t0
    train = _shuffled(pack_texts(corpus.texts("train"), tokenizer, cfg.seq_len), cfg.seed)
    val = _shuffled(pack_texts(corpus.texts("validation"), tokenizer, cfg.seq_len), EVAL_SEED)[: cfg.eval_blocks]
    test = _shuffled(pack_texts(corpus.texts("test"), tokenizer, cfg.seq_len), EVAL_SEED)[: cfg.eval_blocks * 2]

    torch.manual_seed(cfg.seed)
    config = tiny_deepseek_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=max(1024, cfg.seq_len),
    )
    model = DeepseekV3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    loss_before = heldout_loss(model, test)
    balancer = ExpertBiasBalancer(model, cfg.bias_update_rate) if cfg.bias_update_rate > 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model=model,
            args=_training_args(tmp, cfg),
            train_dataset=BlockDataset(train),
            eval_dataset=BlockDataset(val),
            callbacks=[LineProgress("pretraining")] + ([balancer] if balancer else []),
        )
        trainer.remove_callback(PrinterCallback)  # LineProgress prints instead of a dict per log
        t1 = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - t1
    if balancer:
        balancer.remove()
    loss_after = heldout_loss(model, test)
    entropy = unigram_entropy(test.flatten().tolist())
    imbalance = load_imbalance(expert_load(model, test[: cfg.eval_blocks])).tolist()
    report = {
        "corpus_fingerprint": corpus.fingerprint,
        "pretrain_config": asdict(cfg),
        "parameters": n_params,
        "train_tokens_available": int(train.numel()),
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "test_tokens": int(test.numel()),
        "test_loss_before": loss_before,
        "test_loss_after": loss_after,
        "test_unigram_entropy": entropy,
        "test_perplexity": math.exp(loss_after),
        "expert_load_imbalance": imbalance,
        "seconds_tokenizer": t_tok,
        "seconds_training": t_train,
        "log_history": trainer.state.log_history,
        "samples": dict(zip(SAMPLE_PROMPTS, greedy_samples(model, tokenizer, SAMPLE_PROMPTS), strict=True)),
    }
    model.save_pretrained(directory, safe_serialization=True)
    follow_umask(directory)
    save_tokenizer(tokenizer, directory)
    write_json_atomic(directory / REPORT, report)
    write_json_atomic(directory / BUILD_INFO, _build_key(corpus, cfg))
    logger.info("pretrained %d params in %.0fs: test loss %.3f vs unigram entropy %.3f",
                n_params, t_train, loss_after, entropy)
    return report


def _build_key(corpus: Corpus, cfg: PretrainConfig) -> dict:
    import transformers

    return {
        "corpus_fingerprint": corpus.fingerprint,
        "pretrain_config": asdict(cfg),
        "transformers_major": transformers.__version__.split(".")[0],
    }


def base_model_path(rebuild: bool = False, cfg: PretrainConfig | None = None, corpus: Corpus | None = None) -> Path:
    """The directory of the pretrained tiny DeepSeek-V3, building it first if needed.

    The cache is reused only when it was built from the same corpus fingerprint and pretraining
    config; otherwise it is rebuilt (and the reason logged). Safe to call from parallel processes.
    """
    cfg = cfg or PretrainConfig()
    corpus = corpus or course_corpus()
    path = cache_dir() / "base_model"
    want = _build_key(corpus, cfg)
    with build_lock(path):
        info = path / BUILD_INFO
        if not rebuild and info.is_file():
            have = json.loads(info.read_text())
            if have == want:
                return path
            logger.warning("cached base model at %s was built from %s; rebuilding for %s", path, have, want)
        print(f"Building the course base model in {path} (about 3-4 minutes on 2 idle cores, once)...", flush=True)
        with atomic_directory(path) as tmp:
            pretrain(tmp, corpus, cfg)
    return path


def cached_base_model_path() -> Path | None:
    """The base model this machine has already built for today's recipe and corpus, or ``None`` (never builds)."""
    path = cache_dir() / "base_model"
    info = path / BUILD_INFO
    if not info.is_file():
        return None
    return path if json.loads(info.read_text()) == _build_key(course_corpus(), PretrainConfig()) else None


def pretraining_report(path: str | Path | None = None) -> dict:
    """The report saved when the base model was pretrained (see ``pretrain``)."""
    path = Path(path) if path is not None else base_model_path()
    return json.loads((path / REPORT).read_text())


def pretraining_curves(report: dict) -> tuple[list[dict], list[dict]]:
    """The training-loss and eval-loss points (step, loss) logged while pretraining."""
    history = report["log_history"]
    train = [{"step": h["step"], "train loss": h["loss"]} for h in history if "loss" in h]
    evals = [{"step": h["step"], "validation loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    return train, evals
