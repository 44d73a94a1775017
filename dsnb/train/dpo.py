"""Preference tuning after SFT: DPO with TRL's ``DPOTrainer``, LoRA by default.

``sft_model`` is notebook 03's SFT run of the course model (full fine-tuning on the summary and
next-line tasks), built once and cached; importing ``dsnb.train`` registers ``sft_model_path`` as the
builder of ``model: dsnb-tiny-sft`` (``dsnb.model.resolve``), so recipes and ``load_model`` find it. ``sft_samples`` asks a model for its greedy answers so the
wrong ones can serve as rejected answers (``dsnb.data.preference.build_pairs``). ``build_dpo_trainer``
sets up ``trl.DPOTrainer`` from a ``FinetuneConfig`` (``stage: dpo``): with ``method: lora`` the
adapters come from ``dsnb.model.lora.lora_config`` and the reference model is the same network with
its adapters switched off (no second copy in memory); with ``method: full`` TRL loads a frozen copy.
The run prints the same progress lines and writes the same verified checkpoints as SFT.

``pair_logps`` / ``preference_metrics`` measure held-out reward accuracy and margin with
``dsnb.train.losses``; ``completion_kl`` the drift from the reference; ``head_to_head`` compares two
models' greedy answers under a fixed judge (token-F1 against the reference). ``run_dpo`` does it all
for ``python -m dsnb.train configs/dpo/*.yaml``, through the run path every stage shares
(``dsnb.train.run.run_stage``; ``DPOStage`` is what DPO brings to it). Taught in notebook 06.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from dsnb.cache import atomic_directory, build_lock, follow_umask
from dsnb.data.corpus import InstructionPair
from dsnb.data.preference import KINDS, build_pairs, mix, preference_dataset, token_f1
from dsnb.model.device import model_device
from dsnb.model.load import TINY_MODEL_NAME, load_model
from dsnb.model.lora import lora_config, native_target_names
from dsnb.model.resolve import TINY_SFT_NAME, course_model_dir
from dsnb.progress import LineProgress
from dsnb.train.chat import chat_messages
from dsnb.train.checkpoint import ManifestCallback
from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.evaluation import generate_answers
from dsnb.train.losses import dpo_loss, sequence_logps
from dsnb.train.run import RunResult, Stage, StageData, run_stage
from dsnb.train.trainable import prepare_model

logger = logging.getLogger(__name__)

#: The SFT run ``sft_model`` reproduces: notebook 03's full fine-tuning defaults.
SFT_RECIPE = dict(model=TINY_MODEL_NAME, tasks=("summary", "next_line"), max_steps=120, per_device_batch_size=16,
                  learning_rate=3e-3, min_learning_rate=1e-4, max_seq_len=128, eval_steps=None, logging_steps=10)


def sft_model_path(rebuild: bool = False) -> Path:
    """Directory of the course's SFT model (notebook 03's full run), trained on first use (about 30 s)."""
    from dsnb.train.sft import run_sft

    path = course_model_dir(TINY_SFT_NAME)
    want = {"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in SFT_RECIPE.items()}}
    with build_lock(path):
        info = path / "build.json"
        if not rebuild and info.is_file() and json.loads(info.read_text()) == want:
            return path
        print(f"Training the course SFT model into {path} (notebook 03's recipe, once)...", flush=True)
        with atomic_directory(path) as tmp:
            cfg = FinetuneConfig(**SFT_RECIPE, output_dir=str(tmp / "run"))
            result = run_sft(cfg, progress=False)
            result.model.save_pretrained(tmp)
            result.tokenizer.save_pretrained(tmp)
            follow_umask(tmp)
            import shutil

            shutil.rmtree(tmp / "run", ignore_errors=True)
            (tmp / "build.json").write_text(json.dumps(want))
    return path


def sft_model(rebuild: bool = False, **load_kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The course's SFT model and tokenizer (see ``sft_model_path``)."""
    load_kwargs.setdefault("dtype", torch.float32)
    return load_model(sft_model_path(rebuild), **load_kwargs)


def sft_samples(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: list[InstructionPair], max_new_tokens: int = 24,
    batch_size: int = 64,
) -> dict[str, str]:
    """The model's greedy one-line summary for each pair's signature, by ``qualname``."""
    conversations = [chat_messages(p, "summary") for p in pairs]
    answers = generate_answers(model, tokenizer, conversations, max_new_tokens, batch_size)
    return {p.qualname: a.strip() for p, a in zip(pairs, answers, strict=True)}


def sample_functions(pairs: list[InstructionPair], n: int | None, seed: int = 0) -> list[InstructionPair]:
    """``n`` functions drawn without replacement with ``seed`` (all of them, shuffled, if ``n`` is None)."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pairs[i] for i in order[:n]]


def preference_records(
    model: nn.Module | None, tokenizer: PreTrainedTokenizerBase | None, pairs: list[InstructionPair],
    kinds: tuple[str, ...] = KINDS,
) -> list[dict[str, str]]:
    """Preference pairs for ``pairs``; with kind ``sft_sample``, ``model``'s wrong greedy answers are used."""
    samples = sft_samples(model, tokenizer, pairs) if "sft_sample" in kinds else None
    return build_pairs(pairs, kinds, samples)


@dataclass
class PreferenceSplits:
    """Train and held-out (test split) preference pairs, with the SFT model's greedy test answers."""

    train: list[dict[str, str]]
    test: list[dict[str, str]]
    test_functions: list[InstructionPair]
    sft_test_answers: dict[str, str]


def preference_splits(model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus, train_functions: int,
                      test_functions: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> PreferenceSplits:
    """Pairs from ``train_functions`` train-split and ``test_functions`` test-split functions (drawn with ``seed``).

    The SFT model answers every prompt once (greedy); its wrong answers become ``sft_sample`` rejected
    answers, and its test answers are kept for the head-to-head comparison after DPO.
    """
    train_fns = sample_functions(corpus.pairs_in("train"), train_functions, seed)
    test_fns = sample_functions(corpus.pairs_in("test"), test_functions, seed)
    use_samples = "sft_sample" in kinds
    train_samples = sft_samples(model, tokenizer, train_fns) if use_samples else None
    test_samples = sft_samples(model, tokenizer, test_fns)
    return PreferenceSplits(build_pairs(train_fns, kinds, train_samples),
                            build_pairs(test_fns, kinds, test_samples if use_samples else None),
                            test_fns, test_samples)


def dpo_arguments(cfg: FinetuneConfig, **extra: Any):
    """TRL's ``DPOConfig`` for ``cfg``: the SFT fields (schedule, precision, batch...) plus β and the loss.

    The MoE auxiliary loss is off (DeepSeek-V3 balances experts without one). Activation checkpointing
    follows the config (``activation_checkpointing`` overrides TRL's ``gradient_checkpointing=True``).
    """
    from trl import DPOConfig

    values = dict(beta=cfg.beta, loss_type=[cfg.dpo_loss_type], max_length=cfg.max_seq_len,
                  router_aux_loss_coef=0.0, pad_to_multiple_of=16)
    values.update(extra)
    return cfg.training_arguments(args_class=DPOConfig, **values)


def build_dpo_trainer(
    cfg: FinetuneConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Any,
    eval_dataset: Any | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
    ref_model: PreTrainedModel | None = None,
    args: TrainingArguments | None = None,
):
    """A ``trl.DPOTrainer`` for ``cfg`` (``stage: dpo``). LoRA: reference = the adapter-disabled model.

    Prepares ``model`` first (dropout, frozen layers, ZeRO-3 leaves); TRL adds the LoRA adapters itself.
    ``args`` defaults to ``dpo_arguments(cfg)``.
    """
    import datasets
    from trl import DPOTrainer

    datasets.disable_progress_bars()  # tokenizing a few hundred pairs: no bars in notebooks and logs
    args = args or dpo_arguments(cfg)
    cbs: list[TrainerCallback] = [ManifestCallback(compress=cfg.compress_checkpoints)]
    if progress and args.process_index == 0:
        cbs.append(LineProgress("dpo", lines=10))
    cbs += list(callbacks or [])
    model, _ = prepare_model(model, cfg.replace(method="full"))  # dropout, frozen layers, ZeRO-3 leaves
    peft_config = None
    if cfg.method == "lora":
        peft_config = lora_config(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                  experts=cfg.lora_experts)
    with native_target_names(), warnings.catch_warnings():  # native names: see dsnb.model.lora
        # peft reads model.is_gradient_checkpointing, renamed in transformers 5: a harmless FutureWarning
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset if cfg.eval_steps is not None else None,
                             processing_class=tokenizer, callbacks=cbs, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)
    return trainer


@contextlib.contextmanager
def reference(model: nn.Module) -> Iterator[None]:
    """Within this block a LoRA model is its reference (adapters off); a plain model is left as it is."""
    disable = getattr(model, "disable_adapter", None)
    with disable() if disable is not None else contextlib.nullcontext():
        yield


def batches(trainer, dataset: Any | None = None, batch_size: int = 32) -> Iterator[dict[str, torch.Tensor]]:
    """The trainer's tokenized pairs in order, collated as TRL does (chosen rows first, then rejected)."""
    if dataset is None:
        dataset = trainer.train_dataset
    elif "prompt_ids" not in dataset.column_names:
        dataset = trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, "eval")
    for i in range(0, len(dataset), batch_size):
        rows = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        yield trainer.data_collator([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows])


def _labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)


@torch.no_grad()
def pair_logps(
    model: nn.Module, policy_and_reference: bool, batch_iter: Iterator[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Summed completion log-probs of every pair (``chosen``, ``rejected``), and of the reference too.

    The reference is ``model`` with its adapters off (``reference``); for a full model pass
    ``policy_and_reference=False`` and score the reference model separately.
    """
    model.eval()
    device = model_device(model)
    out: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "ref_chosen": [], "ref_rejected": []}
    for batch in batch_iter:
        batch = {k: v.to(device) for k, v in batch.items()}
        kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logps = sequence_logps(model(**kwargs).logits, _labels(batch)).cpu()
        out["chosen"].append(logps.chunk(2)[0])
        out["rejected"].append(logps.chunk(2)[1])
        if policy_and_reference:
            with reference(model):
                ref = sequence_logps(model(**kwargs).logits, _labels(batch)).cpu()
            out["ref_chosen"].append(ref.chunk(2)[0])
            out["ref_rejected"].append(ref.chunk(2)[1])
    return {k: torch.cat(v) for k, v in out.items() if v}


def preference_metrics(logps: dict[str, torch.Tensor], beta: float = 0.1) -> dict[str, float]:
    """Held-out DPO loss, reward accuracy (chosen reward > rejected reward) and mean reward margin.

    Also the plain preference accuracy ``log π(chosen) > log π(rejected)``, which needs no reference
    (the only one that is informative before DPO, where policy = reference and every reward is 0).
    """
    losses, chosen_r, rejected_r = dpo_loss(logps["chosen"], logps["rejected"], logps["ref_chosen"],
                                            logps["ref_rejected"], beta=beta)
    return {"pairs": len(losses), "dpo loss": losses.mean().item(),
            "reward accuracy": (chosen_r > rejected_r).float().mean().item(),
            "reward margin": (chosen_r - rejected_r).mean().item(),
            "chosen reward": chosen_r.mean().item(), "rejected reward": rejected_r.mean().item(),
            "log-prob preference accuracy": (logps["chosen"] > logps["rejected"]).float().mean().item(),
            "chosen log-prob": logps["chosen"].mean().item(), "rejected log-prob": logps["rejected"].mean().item()}


@torch.no_grad()
def completion_kl(model: nn.Module, batch_iter: Iterator[dict[str, torch.Tensor]], chosen_only: bool = True) -> float:
    """Mean per-token KL(π ‖ π_ref) over completion tokens (teacher-forced): how far DPO moved the model.

    ``model`` is a LoRA model; the reference is the same model with adapters off.
    """
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    for batch in batch_iter:
        batch = {k: v.to(device) for k, v in batch.items()}
        kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logp = model(**kwargs).logits[:, :-1].float().log_softmax(-1)
        with reference(model):
            ref = model(**kwargs).logits[:, :-1].float().log_softmax(-1)
        mask = batch["completion_mask"][:, 1:].bool()
        if chosen_only:
            mask[mask.shape[0] // 2:] = False
        kl = (logp.exp() * (logp - ref)).sum(-1)
        total += kl[mask].sum().item()
        count += int(mask.sum())
    return total / max(count, 1)


def heldout_metrics(trainer, records: list[dict[str, str]], beta: float, batch_size: int = 32) -> dict[str, Any]:
    """Reward accuracy, margin, log-probs (``preference_metrics``), KL from the reference and reward
    accuracy per rejected kind, on held-out preference ``records``, for the trainer's (LoRA) model."""
    data = trainer._prepare_dataset(preference_dataset(records), trainer.processing_class, trainer.args, "held-out")
    if len(data) != len(records):
        raise ValueError(f"{len(records) - len(data)} held-out pairs have prompts longer than max_length="
                         f"{trainer.args.max_length}; raise max_seq_len or leave those pairs out")
    logps = pair_logps(trainer.model, True, batches(trainer, data, batch_size))
    out: dict[str, Any] = preference_metrics(logps, beta)
    out["KL from reference"] = completion_kl(trainer.model, batches(trainer, data, batch_size))
    right = (logps["chosen"] - logps["ref_chosen"]) > (logps["rejected"] - logps["ref_rejected"])
    for kind in sorted({r["kind"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["kind"] == kind]
        out[f"reward accuracy ({kind})"] = right[idx].float().mean().item()
    return out


def answer_accuracy(model: nn.Module, tokenizer: PreTrainedTokenizerBase, functions: list[InstructionPair],
                    max_seq_len: int = 128) -> float:
    """Token accuracy on the reference summaries of ``functions`` (teacher forced, answer tokens only).

    Notebook 03's held-out task metric (``dsnb.train.evaluation.completion_loss``): does DPO keep it?
    """
    from dsnb.train.chat import build_sft_data
    from dsnb.train.evaluation import completion_loss

    data = build_sft_data(functions, tokenizer, ("summary",), max_seq_len, split="test")
    return completion_loss(model, tokenizer, data)["token accuracy"]


def head_to_head(first: list[str], second: list[str], references: list[str]) -> dict[str, float]:
    """Wins, ties and losses of ``second`` against ``first`` under token-F1 against the reference.

    Deterministic: greedy answers and a fixed judge. ``win rate`` counts a tie as half a win.
    """
    if not len(first) == len(second) == len(references) or not references:
        raise ValueError("head_to_head needs the same, non-zero number of answers from both models and references")
    a = [token_f1(x, r) for x, r in zip(first, references, strict=True)]
    b = [token_f1(x, r) for x, r in zip(second, references, strict=True)]
    wins = sum(y > x for x, y in zip(a, b, strict=True))
    ties = sum(y == x for x, y in zip(a, b, strict=True))
    n = len(references)
    return {"prompts": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "win rate": (wins + ties / 2) / n,
            "mean F1 first": sum(a) / n, "mean F1 second": sum(b) / n}


@dataclass
class DPOResult(RunResult):
    """What ``run_dpo`` returns: the trained (LoRA) model, the preference pairs and everything measured."""

    train: list[dict[str, str]]
    eval: list[dict[str, str]]

    @property
    def train_pairs(self) -> list[dict[str, str]]:
        """The training pairs (``train``)."""
        return self.train

    @property
    def eval_pairs(self) -> list[dict[str, str]]:
        """The evaluation pairs (``eval``)."""
        return self.eval


@dataclass
class DPOStage(Stage):
    """DPO on the corpus's summary pairs with TRL's ``DPOTrainer`` (``build_dpo_trainer``).

    The pairs are made before the model is prepared (``kinds`` with ``sft_sample`` asks the SFT model
    for its greedy answers); ``build_dpo_trainer`` prepares it and TRL adds the LoRA adapters.
    """

    name: str = "dpo"
    kinds: tuple[str, ...] = KINDS
    result_class: ClassVar[type[RunResult]] = DPOResult

    def arguments(self, cfg: FinetuneConfig) -> TrainingArguments:
        return dpo_arguments(cfg)

    def prepare(self, model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[nn.Module, dict[str, Any]]:
        return model, {}  # build_dpo_trainer prepares it

    def data(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: Any
             ) -> StageData:
        from dsnb.data.corpus import course_corpus

        corpus = corpus or course_corpus()
        train_fns = sample_functions(corpus.pairs_in("train"), cfg.train_examples, cfg.seed)
        eval_fns = sample_functions(corpus.pairs_in("validation"), cfg.eval_examples, cfg.seed)
        train = preference_records(model, tokenizer, train_fns, self.kinds)
        evald = preference_records(model, tokenizer, eval_fns, self.kinds)
        info = {"train pairs": len(train), "eval pairs": len(evald), **{f"mix {k}": v for k, v in mix(train).items()}}
        return StageData(preference_dataset(train), preference_dataset(evald), train, evald, info)

    def trainer(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: StageData,
                args: TrainingArguments, callbacks: list[TrainerCallback] | None, progress: bool) -> Trainer:
        return build_dpo_trainer(cfg, model, tokenizer, data.train_dataset, data.eval_dataset, callbacks, progress,
                                 args=args)

    def extra_info(self, cfg: FinetuneConfig, trainer: Trainer) -> dict[str, Any]:
        return {"beta": cfg.beta, "loss_type": cfg.dpo_loss_type,
                "reference": "adapters disabled" if cfg.method == "lora" else "frozen copy"}

    def describe(self, cfg: FinetuneConfig, args: TrainingArguments, info: dict[str, Any]) -> str:
        kinds = {k.removeprefix("mix "): v for k, v in info.items() if k.startswith("mix ")}
        return (f"dpo: {info['train pairs']} pairs {kinds}; effective batch {info['effective_batch']}; "
                f"{info['trainable']:,} of {info['total']:,} parameters trainable ({cfg.method}); "
                f"beta {cfg.beta}; reference = {info['reference']}")


def run_dpo(
    cfg: FinetuneConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    corpus=None,
    resume_from: str | Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
    kinds: tuple[str, ...] = KINDS,
) -> DPOResult:
    """DPO on the corpus's summary pairs, starting from ``cfg.model`` (an SFT model) or the given one.

    Pairs come from the train split (``cfg.train_examples`` functions) and, for evaluation during
    training, the validation split (``cfg.eval_examples``). ``resume_from``: a checkpoint or ``"auto"``
    (``dsnb.train.run.run_stage``: verified, full weights included).
    """
    if cfg.stage != "dpo":
        raise ConfigError(f"run_dpo needs a config with stage: dpo (got stage: {cfg.stage!r})")
    return run_stage(DPOStage(kinds=kinds), cfg, model, tokenizer, corpus, resume_from, callbacks, progress)


def dpo_memory(model: Any, pairs_per_step: int = 1, seq_len: int = 1024, **plan: Any) -> dict[str, float]:
    """GiB per GPU for DPO of ``model`` (a ``configs/models`` name or config), from ``dsnb.plan.memory``.

    DPO runs each pair as two sequences (chosen and rejected) in one batch, so the policy is trained at
    micro-batch ``2 × pairs_per_step``; the reference adds its frozen weights for full fine-tuning (a
    second copy) and nothing for LoRA (the same weights with the adapters off). The reference's own
    forward is under ``no_grad``, so it keeps no activations.
    """
    from dsnb.plan.memory import GiB, estimate_training_memory
    from dsnb.plan.shape import as_shape

    training = estimate_training_memory(model, micro_batch_size=2 * pairs_per_step, seq_len=seq_len, **plan)
    method, precision = plan.get("method", "full"), plan.get("precision", "bf16-mixed")
    ref = 0.0
    if method == "full":
        ref = as_shape(model).parameter_count() * (4 if precision == "fp32" else 2) / max(
            1, plan.get("num_gpus", 1) if plan.get("zero_stage", 0) == 3 else 1)
    return {"policy training": training.total / GiB, "reference weights": ref / GiB,
            "total": (training.total + ref) / GiB}
