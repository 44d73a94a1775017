"""Curriculum learning: train on easy examples first, then harder ones, as a ``transformers.Trainer`` sampler.

Claim C17 (stages by length: < 512, 512-1024, > 1024 tokens). ``CurriculumSchedule.cap(step)`` is the
hardest difficulty allowed at an optimizer step, with DeepSpeed's pacing functions (sequence-length
curriculum, ``deepspeed.runtime.data_pipeline.curriculum_scheduler``):

- ``discrete``: stages with their own step budgets (``fixed_discrete``);
- ``linear`` / ``root``: the cap grows from ``start`` to the hardest example over ``ramp_steps``
  (``fixed_linear``; ``fixed_root`` with ``root_degree``, faster early), rounded down to a multiple
  of ``difficulty_step``.

``CurriculumSampler`` gives the Trainer, for every optimizer step, ``global_batch`` indices drawn
(with a per-step seed, the same on every process) from the examples allowed at that step. The
Trainer's data loader (accelerate) hands each process its own micro-batches of that global batch, so
under ``torchrun`` every rank draws its shard of the current stage. Difficulty is the token length
by default, or any number per example in a ``difficulty`` column (e.g. radon complexity from
``dsnb.data.codeprep.complexity``). ``CurriculumMixin`` plugs it into the Trainer
(``FinetuneConfig.curriculum``). ``group_by_length`` is not a curriculum: it groups similar
lengths into batches but visits them in random order, so the mean length stays flat over training.

Taught in notebook 05.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Sampler

from dsnb.train.config import ConfigError, FinetuneConfig

PACINGS = ("discrete", "linear", "root")

#: The article's stage bounds (tokens) and the context length they are meant for.
ARTICLE_THRESHOLDS = (512, 1024)
ARTICLE_CONTEXT = 2048
#: A recipe's stage bounds: the easiest third of the training examples, then two thirds, then all.
QUANTILE_STAGES = (1 / 3, 2 / 3)


def scaled_thresholds(max_seq_len: int, thresholds: Sequence[int] = ARTICLE_THRESHOLDS,
                      context: int = ARTICLE_CONTEXT) -> tuple[int, ...]:
    """The article's stage bounds scaled to a shorter context: (512, 1024) of 2048 -> (32, 64) of 128."""
    return tuple(max(1, round(t * max_seq_len / context)) for t in thresholds)


@dataclass(frozen=True)
class CurriculumSchedule:
    """Which difficulties are allowed at each optimizer step (``cap``), DeepSpeed-style pacing."""

    pacing: str = "discrete"
    thresholds: tuple[float, ...] = ARTICLE_THRESHOLDS  # discrete: upper bound of each stage but the last
    stage_steps: tuple[int, ...] = ()  # discrete: steps of each stage but the last (which runs to the end)
    start: float = 0.0  # linear/root: the cap at step 0
    end: float = math.inf  # linear/root: the cap after ramp_steps (inf: every example)
    ramp_steps: int = 1
    root_degree: int = 2
    difficulty_step: float = 1
    cumulative: bool = True  # a stage keeps the easier examples (False: only its own band)
    quantiles: bool = False  # thresholds, start and end are shares (0-1) of the training examples (see on_data)

    def __post_init__(self) -> None:
        if self.pacing not in PACINGS:
            raise ConfigError(f"curriculum pacing {self.pacing!r}: use one of {PACINGS}")
        shares = [*self.thresholds, self.start] + ([self.end] if math.isfinite(self.end) else [])
        if self.quantiles and not all(0 <= q <= 1 for q in shares):
            raise ConfigError(f"quantile curriculum bounds are shares of the training examples in [0, 1], got "
                              f"thresholds {list(self.thresholds)}, start {self.start}, end {self.end}")
        if self.pacing == "discrete":
            if len(self.stage_steps) != len(self.thresholds):
                raise ConfigError(f"discrete curriculum: {len(self.thresholds)} thresholds need as many stage step "
                                  f"budgets (the last stage runs to the end), got {list(self.stage_steps)}")
            if list(self.thresholds) != sorted(self.thresholds) or any(s < 1 for s in self.stage_steps):
                raise ConfigError("curriculum thresholds must increase and every stage needs >= 1 step")
        elif self.ramp_steps < 1 or self.root_degree < 1 or self.difficulty_step <= 0:
            raise ConfigError("curriculum ramp_steps and root_degree must be >= 1, difficulty_step > 0")

    def on_data(self, difficulties: Sequence[float]) -> CurriculumSchedule:
        """This schedule with its quantile bounds turned into difficulties of the given examples.

        A share ``q`` becomes the difficulty of the ``ceil(q * n)``-th easiest example, so a stage bounded
        by it holds at least that share (more where lengths tie). Fixed-difficulty schedules come back as they are.
        """
        if not self.quantiles:
            return self
        if not len(difficulties):
            raise ValueError("quantile stage bounds need the training examples' difficulties; got none")
        ordered = sorted(float(d) for d in difficulties)

        def at(q: float) -> float:
            return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]

        end = at(self.end) if math.isfinite(self.end) else self.end
        return replace(self, thresholds=tuple(at(q) for q in self.thresholds), start=at(self.start), end=end,
                       quantiles=False)

    def stage(self, step: int) -> int:
        """The stage (0, 1, ...) of optimizer step ``step`` (0-based); linear/root: always 0."""
        if self.pacing != "discrete":
            return 0
        return bisect.bisect_right(list(_cumsum(self.stage_steps)), step)

    def bounds(self, step: int, hardest: float) -> tuple[float, float]:
        """(exclusive lower, inclusive upper) difficulty allowed at ``step``."""
        if self.pacing == "discrete":
            k = self.stage(step)
            hi = self.thresholds[k] if k < len(self.thresholds) else math.inf
            lo = -math.inf if self.cumulative or k == 0 else self.thresholds[k - 1]
            return lo, hi
        end = min(self.end, hardest)
        degree = 1 if self.pacing == "linear" else self.root_degree
        frac = min(1.0, (step + 1) / self.ramp_steps) ** (1.0 / degree)
        cap = math.floor(frac * (end - self.start) + self.start)
        cap -= cap % self.difficulty_step
        return -math.inf, math.inf if frac >= 1 else min(cap, end)

    def cap(self, step: int, hardest: float = math.inf) -> float:
        """The hardest difficulty allowed at optimizer step ``step`` (0-based)."""
        return self.bounds(step, hardest)[1]


def _cumsum(values: Sequence[int]) -> Iterator[int]:
    total = 0
    for v in values:
        total += v
        yield total


class CurriculumSampler(Sampler[int]):
    """Indices for ``num_steps`` optimizer steps of ``global_batch`` examples each, easy to hard.

    At step ``s`` the pool is the examples whose difficulty lies in ``schedule.bounds(s)`` (quantile
    bounds resolved against ``difficulties`` first); if that is empty, the ``global_batch`` easiest examples. ``global_batch`` indices are drawn from the pool
    without repetition (repeating only when the pool is smaller), with a generator seeded by
    ``(seed, s)``: every process computes the same sequence and takes its own micro-batches of it.
    """

    def __init__(self, difficulties: Sequence[float], schedule: CurriculumSchedule, global_batch: int,
                 num_steps: int, seed: int = 0) -> None:
        if not len(difficulties):
            raise ValueError("the curriculum needs at least one training example")
        self.difficulties = torch.as_tensor(list(difficulties), dtype=torch.float64)
        self.order = torch.argsort(self.difficulties, stable=True)
        self.sorted = self.difficulties[self.order]
        self.schedule = schedule.on_data(difficulties)
        self.global_batch, self.num_steps, self.seed = global_batch, num_steps, seed

    def __len__(self) -> int:
        return self.num_steps * self.global_batch

    def pool(self, step: int) -> torch.Tensor:
        """Indices of the examples allowed at ``step``."""
        lo, hi = self.schedule.bounds(step, float(self.sorted[-1]))
        a = int(torch.searchsorted(self.sorted, torch.tensor(lo, dtype=torch.float64), right=True))
        b = int(torch.searchsorted(self.sorted, torch.tensor(hi, dtype=torch.float64), right=True))
        return self.order[a:b] if b > a else self.order[:self.global_batch]

    def step_indices(self, step: int) -> list[int]:
        """The ``global_batch`` example indices of optimizer step ``step``."""
        pool = self.pool(step)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        reps = -(-self.global_batch // len(pool))
        picks = torch.cat([torch.randperm(len(pool), generator=g) for _ in range(reps)])[:self.global_batch]
        return pool[picks].tolist()

    def __iter__(self) -> Iterator[int]:
        for step in range(self.num_steps):
            yield from self.step_indices(step)


def example_difficulties(dataset: Any) -> list[float]:
    """The ``difficulty`` column of a dataset if it has one, else each example's token length."""
    columns = getattr(dataset, "column_names", None) or []
    if "difficulty" in columns:
        return [float(d) for d in dataset["difficulty"]]
    return [float(len(ids)) for ids in dataset["input_ids"]]


def schedule_from_config(cfg: FinetuneConfig) -> CurriculumSchedule | None:
    """The schedule ``cfg.curriculum`` asks for (None when off).

    Stage bounds are quantiles of the training set's difficulties (``QUANTILE_STAGES``: thirds, resolved
    when the Trainer reads the data), so every stage has examples to train on whatever the context length;
    the article's fixed token bounds are ``CurriculumSchedule("discrete", scaled_thresholds(max_seq_len), ...)``.
    ``curriculum_steps``: steps of each stage but the last (discrete; default a third of ``max_steps``)
    or of the ramp (linear/root; default half). Other bounds or budgets: build a ``CurriculumSchedule``.
    """
    if not cfg.curriculum:
        return None
    if cfg.curriculum not in PACINGS:
        raise ConfigError(f"curriculum={cfg.curriculum!r}: use one of {PACINGS} (or null for none)")
    if cfg.curriculum_steps is not None and cfg.curriculum_steps < 1:
        raise ConfigError(f"curriculum_steps={cfg.curriculum_steps}: must be >= 1 (or null for the default)")
    thresholds = QUANTILE_STAGES
    if cfg.curriculum == "discrete":
        steps = cfg.curriculum_steps or max(1, cfg.max_steps // (len(thresholds) + 1))
        return CurriculumSchedule("discrete", thresholds, (steps,) * len(thresholds), quantiles=True)
    return CurriculumSchedule(cfg.curriculum, thresholds, ramp_steps=cfg.curriculum_steps or max(1, cfg.max_steps // 2),
                              start=thresholds[0], quantiles=True)


class CurriculumMixin:
    """A ``transformers.Trainer`` mixin: with ``curriculum=CurriculumSchedule(...)`` training batches follow it.

    Difficulties are read from the training set when the Trainer is built (``example_difficulties``),
    before the Trainer drops columns the model does not take, and quantile bounds resolved against them
    (``self.curriculum`` then holds difficulties). ``log`` adds ``curriculum_cap``.
    """

    def __init__(self, *args: Any, curriculum: CurriculumSchedule | None = None, **kwargs: Any) -> None:
        self.curriculum = curriculum
        super().__init__(*args, **kwargs)
        self.difficulties = example_difficulties(self.train_dataset) if curriculum and self.train_dataset else None
        if curriculum and self.difficulties:
            self.curriculum = curriculum.on_data(self.difficulties)

    def curriculum_sampler(self) -> CurriculumSampler:
        """The sampler for this run: the global batch and step count come from the training arguments."""
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        if args.max_steps is None or args.max_steps < 1:
            raise ConfigError("a curriculum needs max_steps (it plans one stage of examples per optimizer step)")
        return CurriculumSampler(self.difficulties, self.curriculum, global_batch, args.max_steps,
                                 seed=args.data_seed if args.data_seed is not None else args.seed)

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler | None:
        if self.curriculum is None:
            return super()._get_train_sampler(train_dataset)
        return self.curriculum_sampler()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.curriculum is not None and self.difficulties and "loss" in logs:
            cap = self.curriculum.cap(max(self.state.global_step - 1, 0), max(self.difficulties))
            logs = {**logs, "curriculum_cap": cap if math.isfinite(cap) else max(self.difficulties)}
        super().log(logs, *args, **kwargs)


def mean_length_per_step(lengths: Sequence[int], indices: Sequence[int], batch: int) -> list[float]:
    """Mean length of each consecutive batch of ``indices`` (to compare a curriculum with ``group_by_length``)."""
    out = []
    for i in range(0, len(indices) - batch + 1, batch):
        chunk = indices[i:i + batch]
        out.append(sum(lengths[j] for j in chunk) / len(chunk))
    return out
