"""GRPO with verifiable rewards: TRL's ``GRPOTrainer`` on the one run path, and the algorithm written out.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath; the RL of DeepSeek-R1): for each prompt
sample a group of G completions from the policy, score each with a reward a program computes, and push up
the log-probability of the completions that beat their group. No value network: the baseline is the group.

The algorithm, in the functions notebook 12 writes by hand and ``tests/test_grpo_loss.py`` asserts equal to what
TRL's ``GRPOTrainer`` computes on a fixed batch (to 1e-5):

- ``group_advantages``: A_i = (r_i − mean of the group) / (std of the group + 1e-4), the same for every token of
  completion i (``scale="none"``: Dr. GRPO's unscaled version; ``"batch"``: one std for the whole batch).
- ``token_logps``: log π(token | prefix) of every completion token, the logits divided by the sampling temperature.
- ``clipped_surrogate``: PPO's −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) per token, ρ = π_θ / π_old the importance ratio
  (1 at the first pass over a batch; ≠ 1 when ``num_iterations`` > 1 reuses it after an optimizer step).
- ``k3_kl``: DeepSeekMath's estimator of KL(π_θ ‖ π_ref) per token, π_ref/π_θ − log(π_ref/π_θ) − 1 (always ≥ 0,
  unbiased under samples of π_θ), weighted by ρ as TRL does by default (``use_bias_correction_kl``).
- ``grpo_loss``: surrogate + β·KL per token, averaged the way ``loss_type`` says: ``grpo`` per sequence then over
  sequences (DeepSeekMath; long completions weigh less per token), ``bnpo`` / ``dapo`` over all tokens of the
  batch (DAPO), ``dr_grpo`` summed and divided by batch × ``max_completion_length`` (Dr. GRPO: no length bias).

The stage: ``grpo_arguments`` maps a ``FinetuneConfig`` (``stage: grpo``, section ``rl``) onto TRL's
``GRPOConfig``; ``build_grpo_trainer`` sets the trainer up as DPO's is (LoRA by peft with the reference = the
adapters off, or a frozen copy for full fine-tuning; the same checkpoints and progress lines); ``GRPOStage``
is what GRPO brings to ``dsnb.train.run.run_stage``, so ``python -m dsnb.train configs/grpo/tiny.yaml`` runs
and resumes like every stage. ``sample_completions`` / ``heldout_reward`` measure a policy's reward on
held-out prompts; ``training_curves`` reads reward, KL, completion length and clip ratio from the log.
Taught in notebook 12.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

from dsnb.model.device import model_device
from dsnb.model.lora import lora_config, native_target_names
from dsnb.model.routing import ExpertBiasBalancer, routers
from dsnb.progress import LineProgress
from dsnb.train.checkpoint import ManifestCallback
from dsnb.train.config import GRPO_ARGUMENTS, ConfigError, FinetuneConfig, launch_state
from dsnb.train.rewards import FunctionPrompt, function_prompts, prompt_dataset, reward_functions
from dsnb.train.run import RunResult, Stage, StageData, run_stage
from dsnb.train.trainable import prepare_model

logger = logging.getLogger(__name__)
# transformers 5 renamed is_gradient_checkpointing; TRL still reads the old name around every generation
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

#: TRL adds this to the group's standard deviation before dividing (``GRPOTrainer._generate_and_score_completions``).
STD_EPS = 1e-4


# --- the algorithm in plain sight ----------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Group-relative advantages of ``rewards`` (one per completion, each prompt's G completions consecutive).

    ``scale="group"``: (r − group mean) / (group std + 1e-4), the std with Bessel's correction; ``"batch"``:
    divided by the std of the whole batch instead; ``"none"``: r − group mean (Dr. GRPO).
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"need one reward per completion, a multiple of group_size={group_size} >= 2 of them; "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        raise ValueError(f"scale={scale!r}: use 'group', 'batch' or 'none'")
    return centred / (std + STD_EPS)


def token_logps(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(c_t | prompt, c_<t) for every completion token, shape (batch, completion length), 0 where padded.

    One forward pass over prompt + completion (as ``GRPOTrainer`` runs it: no position ids, so they count
    the left padding); the logits at position t score token t + 1, divided by the sampling temperature.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    n = completion_ids.size(1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -n - 1:-1].float() / temperature
    logps = logits.log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return logps * completion_mask


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """DeepSeekMath's per-token KL estimator: exp(ref − logp) − (ref − logp) − 1 (≥ 0, zero where they agree)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, epsilon: float = 0.2,
                      epsilon_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss: −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A); and ρ itself.

    ``advantages`` has one value per completion (broadcast over its tokens) or one per token.
    """
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1) if advantages.ndim == 1 else advantages
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    return -torch.min(ratio * adv, clipped * adv), ratio


@dataclass
class GRPOLoss:
    """``grpo_loss``'s result: the loss and what TRL logs beside it (KL, clip ratios), all over completion tokens."""

    loss: torch.Tensor
    per_token: torch.Tensor
    ratio: torch.Tensor
    kl: float | None
    clip_ratio: float
    clip_low: float
    clip_high: float


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, epsilon: float = 0.2, epsilon_high: float | None = None,
              beta: float = 0.04, loss_type: str = "dapo", max_completion_length: int | None = None,
              kl_weighted_by_ratio: bool = True, tokens_in_batch: float | None = None) -> GRPOLoss:
    """The GRPO loss of one batch, from per-token log-probs (``token_logps``) and per-completion advantages.

    ``old_logps`` None means the batch was just sampled by this policy (ρ = 1, its gradient kept); ``ref_logps``
    is needed when ``beta`` > 0. ``loss_type`` picks how token losses are averaged (see the module doc);
    ``tokens_in_batch``: DAPO's normalizer, the completion tokens of the whole generation batch (default: this
    batch's). ``kl_weighted_by_ratio``: multiply the KL term by ρ, as TRL does by default.
    """
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    per_token, ratio = clipped_surrogate(logps, old, advantages, epsilon, epsilon_high)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probs (ref_logps)")
        kl_tok = k3_kl(logps, ref_logps)
        if kl_weighted_by_ratio:
            kl_tok = kl_tok * ratio
        per_token = per_token + beta * kl_tok
        kl = float((kl_tok.detach() * mask).sum() / mask.sum().clamp(min=1))
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / max(float(tokens_in_batch if tokens_in_batch is not None else mask.sum()), 1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' divides by max_completion_length: pass it")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    else:
        raise ValueError(f"loss_type={loss_type!r}: use one of grpo, bnpo, dapo, dr_grpo")
    adv = advantages.unsqueeze(1) if advantages.ndim == 1 else advantages
    ratio = ratio.detach()
    high = epsilon if epsilon_high is None else epsilon_high
    low_clipped = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype)
    high_clipped = ((ratio > 1 + high) & (adv > 0)).to(mask.dtype)
    total = mask.sum().clamp(min=1)
    return GRPOLoss(loss, per_token, ratio, kl, float(((low_clipped + high_clipped) * mask).sum() / total),
                    float((low_clipped * mask).sum() / total), float((high_clipped * mask).sum() / total))


# --- the stage on the one run path ---------------------------------------------------------------------------


def grpo_arguments(cfg: FinetuneConfig, processes: int | None = None, **extra: Any):
    """TRL's ``GRPOConfig`` for ``cfg``: the SFT fields (schedule, precision, batch...) plus the rl section.

    ``per_device_batch_size`` counts completions, so it (times processes and accumulation) must hold whole
    groups of ``num_generations``. The MoE auxiliary loss is off (DeepSeek-V3 balances experts without one).
    """
    from trl import GRPOConfig

    processes = processes or launch_state().num_processes
    batch = cfg.per_device_batch_size * processes * cfg.accumulation_for(processes)
    if batch % cfg.num_generations:
        raise ConfigError(f"per_device_batch_size × processes × accumulation = {batch} completions per step is not a "
                          f"multiple of num_generations={cfg.num_generations}: every prompt's group must be whole; "
                          f"use e.g. per_device_batch_size {cfg.num_generations * max(1, batch // cfg.num_generations)}")
    values = {trl: getattr(cfg, field) for trl, field in GRPO_ARGUMENTS.items()}
    values.update(router_aux_loss_coef=0.0, log_completions=False, shuffle_dataset=True)
    values.update(extra)
    return cfg.training_arguments(processes=processes, args_class=GRPOConfig, **values)


def build_grpo_trainer(
    cfg: FinetuneConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Any,
    eval_dataset: Any | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
    args: TrainingArguments | None = None,
    reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
):
    """A ``trl.GRPOTrainer`` for ``cfg`` (``stage: grpo``); ``reward_funcs`` default to ``cfg.rewards``.

    Prepares ``model`` first (dropout, frozen layers, ZeRO-3 leaves); TRL adds the LoRA adapters itself and
    then the reference is the adapter-disabled model; with ``method: full`` and ``kl_coef`` > 0 TRL loads a
    frozen copy from the model's path. ``bias_update_rate`` > 0 balances the router bias during full RL.
    """
    import datasets
    from trl import GRPOTrainer

    datasets.disable_progress_bars()
    args = args or grpo_arguments(cfg)
    cbs: list[TrainerCallback] = [ManifestCallback(compress=cfg.compress_checkpoints)]
    if progress and args.process_index == 0:
        cbs.append(LineProgress("grpo", lines=10))
    model, _ = prepare_model(model, cfg.replace(method="full"))
    if cfg.bias_update_rate > 0 and routers(model):
        if cfg.method == "full":
            cbs.append(ExpertBiasBalancer(model, cfg.bias_update_rate))
        else:
            logger.warning("bias_update_rate=%s ignored with method=%r: the router bias belongs to the frozen base "
                           "model and a saved adapter would not carry it", cfg.bias_update_rate, cfg.method)
    cbs += list(callbacks or [])
    peft_config = None
    if cfg.method == "lora":
        peft_config = lora_config(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                  experts=cfg.lora_experts)
    funcs = list(reward_funcs) if reward_funcs is not None else reward_functions(cfg.rewards)
    with native_target_names(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=train_dataset,
                              eval_dataset=eval_dataset if cfg.eval_steps is not None else None,
                              processing_class=tokenizer, callbacks=cbs, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)
    return trainer


@dataclass
class GRPOResult(RunResult):
    """What ``run_grpo`` returns: the trained policy, the train and eval prompts, everything measured."""

    train: list[FunctionPrompt]
    eval: list[FunctionPrompt]
    attached: list[Any] = field(default_factory=list)  # what run_grpo's ``attach`` functions returned

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Reward, KL, completion length and clip ratio per logged step (``training_curves``)."""
        return training_curves(self.log_history)


@dataclass
class GRPOStage(Stage):
    """GRPO on the corpus's function heads (``dsnb.train.rewards``) with TRL's ``GRPOTrainer``.

    ``reward_funcs`` replaces the recipe's ``rewards`` (e.g. a reward written in a notebook); ``train_prompts``
    / ``eval_prompts`` replace the prompts drawn from the corpus's train and validation splits; each of
    ``attach`` is called with the trainer once it is built (a probe such as
    ``dsnb.train.routing_drift.RoutingProbe``, or a function adding a callback) and what it returns is kept.
    """

    name: str = "grpo"
    reward_funcs: Sequence[Callable[..., list[float]]] | None = None
    train_prompts: Sequence[FunctionPrompt] | None = None
    eval_prompts: Sequence[FunctionPrompt] | None = None
    attach: Sequence[Callable[[Trainer], Any]] = ()
    attached: list[Any] = field(default_factory=list)
    result_class: ClassVar[type[RunResult]] = GRPOResult

    def arguments(self, cfg: FinetuneConfig) -> TrainingArguments:
        return grpo_arguments(cfg)

    def load(self, cfg: FinetuneConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model in float32, or in bf16 for LoRA on bf16 hardware (the frozen base needs no fp32 master copy)."""
        from dsnb.model.load import load_model
        from dsnb.train.config import resolve_precision

        lora_bf16 = cfg.method == "lora" and resolve_precision(cfg.precision) == "bf16"
        return load_model(cfg.model, dtype=torch.bfloat16 if lora_bf16 else torch.float32)

    def prepare(self, model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[nn.Module, dict[str, Any]]:
        return model, {}  # build_grpo_trainer prepares it

    def data(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: Any
             ) -> StageData:
        room = cfg.max_seq_len - cfg.max_completion_length
        if self.train_prompts is None or self.eval_prompts is None:
            from dsnb.data.corpus import course_corpus

            corpus = corpus or course_corpus()
        train = list(self.train_prompts) if self.train_prompts is not None else function_prompts(
            corpus, "train", tokenizer, room, n=cfg.train_examples, seed=cfg.seed)
        evald = list(self.eval_prompts) if self.eval_prompts is not None else function_prompts(
            corpus, "validation", tokenizer, room, n=cfg.eval_examples, seed=cfg.seed)
        if not train:
            raise ConfigError(f"no training prompts fit max_seq_len={cfg.max_seq_len} - max_completion_length="
                              f"{cfg.max_completion_length} tokens; raise max_seq_len")
        names = [getattr(f, "__name__", repr(f)) for f in self.reward_funcs] if self.reward_funcs else list(cfg.rewards)
        return StageData(prompt_dataset(train), prompt_dataset(evald) if evald else None, train, evald,
                         {"train prompts": len(train), "eval prompts": len(evald), "rewards": ", ".join(names)})

    def trainer(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: StageData,
                args: TrainingArguments, callbacks: list[TrainerCallback] | None, progress: bool) -> Trainer:
        trainer = build_grpo_trainer(cfg, model, tokenizer, data.train_dataset, data.eval_dataset, callbacks, progress,
                                     args=args, reward_funcs=self.reward_funcs)
        self.attached = [fn(trainer) for fn in self.attach]
        return trainer

    def extra_info(self, cfg: FinetuneConfig, trainer: Trainer) -> dict[str, Any]:
        reference = ("none (kl_coef 0)" if cfg.kl_coef == 0 else
                     "adapters disabled" if cfg.method == "lora" else "frozen copy")
        return {"num_generations": cfg.num_generations, "kl_coef": cfg.kl_coef, "loss_type": cfg.grpo_loss_type,
                "num_iterations": cfg.num_iterations, "reference": reference}

    def describe(self, cfg: FinetuneConfig, args: TrainingArguments, info: dict[str, Any]) -> str:
        prompts = info["effective_batch"] // cfg.num_generations
        return (f"grpo: {info['train prompts']} prompts, {prompts} per step x {cfg.num_generations} completions of "
                f"<= {cfg.max_completion_length} tokens; rewards {info['rewards']}; {info['trainable']:,} of "
                f"{info['total']:,} parameters trainable ({cfg.method}); beta {cfg.kl_coef}, reference = "
                f"{info['reference']}; loss {cfg.grpo_loss_type}, {cfg.num_iterations} pass(es) per batch")


def run_grpo(
    cfg: FinetuneConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    corpus=None,
    resume_from: str | Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
    reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
    train_prompts: Sequence[FunctionPrompt] | None = None,
    eval_prompts: Sequence[FunctionPrompt] | None = None,
    attach: Sequence[Callable[[Trainer], Any]] = (),
) -> GRPOResult:
    """GRPO from ``cfg.model`` (or the given model) on the corpus's function heads, through ``run_stage``.

    ``resume_from``: a checkpoint or ``"auto"`` (verified, full weights included, as for every stage). The
    other arguments go to ``GRPOStage``; ``result.attached`` holds what the ``attach`` functions returned.
    """
    if cfg.stage != "grpo":
        raise ConfigError(f"run_grpo needs a config with stage: grpo (got stage: {cfg.stage!r})")
    stage = GRPOStage(reward_funcs=reward_funcs, train_prompts=train_prompts, eval_prompts=eval_prompts, attach=attach)
    result = run_stage(stage, cfg, model, tokenizer, corpus, resume_from, callbacks, progress)
    result.attached = stage.attached
    return result


# --- measuring a policy ---------------------------------------------------------------------------------------

#: TRL's log keys ``training_curves`` reads, by the name it gives them.
CURVES = {"reward": "reward", "reward std": "reward_std", "KL": "kl", "completion length": "completions/mean_length",
          "clip ratio": "clip_ratio/region_mean", "groups with one reward": "frac_reward_zero_std",
          "entropy": "entropy", "loss": "loss"}


def training_curves(log_history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per logged training step for each of ``CURVES`` that was logged."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in log_history:
        for name, key in CURVES.items():
            if key in row and row[key] is not None and "train_runtime" not in row:
                out.setdefault(name, []).append((int(row["step"]), float(row[key])))
    return out


@torch.no_grad()
def sample_completions(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                       per_prompt: int = 4, max_new_tokens: int = 32, temperature: float = 1.0, seed: int = 0,
                       batch_size: int = 64) -> list[list[str]]:
    """``per_prompt`` sampled completions of each prompt (as GRPO samples them: temperature, no top-k or top-p)."""
    model.eval()
    device = model_device(model)
    torch.manual_seed(seed)
    flat = [p for p in prompts for _ in range(per_prompt)]
    texts: list[str] = []
    for i in range(0, len(flat), batch_size):
        enc = tokenizer(flat[i:i + batch_size], return_tensors="pt", padding=True, padding_side="left").to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                             top_p=1.0, pad_token_id=tokenizer.pad_token_id, use_cache=True)
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [texts[i * per_prompt:(i + 1) * per_prompt] for i in range(len(prompts))]


def heldout_reward(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[FunctionPrompt],
                   rewards: dict[str, Callable[..., list[float]]], per_prompt: int = 4, max_new_tokens: int = 32,
                   temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Each reward's mean over ``per_prompt`` samples of every prompt, overall and per prompt, with the samples."""
    heads = [p.prompt for p in prompts]
    samples = sample_completions(model, tokenizer, heads, per_prompt, max_new_tokens, temperature, seed)
    flat_prompts = [h for h in heads for _ in range(per_prompt)]
    flat = [c for group in samples for c in group]
    out: dict[str, Any] = {"samples": samples}
    for name, fn in rewards.items():
        scores = torch.tensor(fn(flat_prompts, flat), dtype=torch.float64).view(len(prompts), per_prompt)
        out[name] = float(scores.mean())
        out[f"{name} per prompt"] = scores.mean(dim=1).tolist()
    return out
