"""Fine-tuning data as chat conversations, with labels on the answer tokens only.

The corpus's instruction pairs (a function's signature -> its one-line summary; code -> the next
line) become conversations through the tokenizer's chat template; labels are the assistant tokens
only (prompt and padding are -100), taken from ``apply_chat_template(...,
return_assistant_tokens_mask=True)``. ``load_split`` also reads notebook 02's cleaned dialogues.
``data_collator`` makes the batches: padded to a multiple of 16, or with ``packing=True`` padding-free
(transformers' ``DataCollatorWithFlattening``: a micro-batch's examples joined into one row whose
``position_ids`` restart at each example, so transformers' attention keeps the examples apart and
the loss equals the padded batch's; tested on DeepSeek-V3 with eager and sdpa attention).

Taught in notebook 03.
"""

from __future__ import annotations

import ast
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedTokenizerBase,
)

from dsnb.data.corpus import NEXT_LINE_PROMPT, SUMMARY_PROMPT, InstructionPair
from dsnb.train.config import DEFAULT_TASKS, TASKS, ConfigError, FinetuneConfig

logger = logging.getLogger(__name__)


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _body_lines(source: str) -> list[str]:
    """The non-blank lines of a function's body after its docstring (indentation kept)."""
    try:
        node = ast.parse(source).body[0]
    except (SyntaxError, IndexError):
        return []
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return []
    lines = source.splitlines()[body[0].lineno - 1:]
    return [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def chat_messages(pair: InstructionPair, task: str, context_lines: int = 6) -> list[dict[str, str]] | None:
    """One conversation for ``task`` built from ``pair`` (None if the pair cannot make one).

    ``summary``: the signature in, its docstring's one-line summary out. ``next_line``: the signature
    and up to ``context_lines`` body lines in, the following body line out (the line chosen by a hash
    of the function's name, so the choice is deterministic).
    """
    if task == "summary":
        return [{"role": "user", "content": SUMMARY_PROMPT + pair.signature},
                {"role": "assistant", "content": pair.summary}]
    if task == "next_line":
        lines = _body_lines(pair.source)
        if len(lines) < 2:
            return None
        k = 1 + _stable_int(pair.qualname) % (len(lines) - 1)
        context = "\n".join([pair.signature, *lines[max(0, k - context_lines):k]])
        return [{"role": "user", "content": NEXT_LINE_PROMPT + context},
                {"role": "assistant", "content": lines[k]}]
    raise ConfigError(f"unknown task {task!r}; use one of {TASKS}")


def tokenize_chat(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """Token ids, attention mask and completion-only labels of one conversation.

    The chat template's ``{% generation %}`` markers give the assistant mask; every other position
    (BOS, system, user turns, role tags) gets label -100 and so adds nothing to the loss.
    """
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    if not any(mask):
        raise ValueError(
            "the chat template marked no assistant tokens: it needs {% generation %} markers (dsnb's "
            "template has them) or the conversation has no assistant turn"
        )
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def prompt_ids(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of everything before the assistant's answer, ending with the generation prompt."""
    enc = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(enc["input_ids"])


@dataclass
class SFTData:
    """Tokenized examples of one split and what building them removed (and why)."""

    split: str
    examples: list[dict[str, list[int]]]
    messages: list[list[dict[str, str]]]
    tasks: list[str]
    removed: dict[str, int]

    def __len__(self) -> int:
        return len(self.examples)

    def report(self) -> dict[str, Any]:
        """Counts per task, label tokens and removals, for a table."""
        label_tokens = sum(sum(t != -100 for t in e["labels"]) for e in self.examples)
        total = sum(len(e["input_ids"]) for e in self.examples)
        return {"split": self.split, "examples": len(self), "tokens": total, "label tokens": label_tokens,
                **{f"task {t}": self.tasks.count(t) for t in sorted(set(self.tasks))},
                **{f"removed: {k}": v for k, v in self.removed.items()}}


def build_sft_data(
    pairs: list[InstructionPair],
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...] = DEFAULT_TASKS,
    max_seq_len: int = 128,
    limit: int | None = None,
    seed: int = 0,
    split: str = "train",
    dialogues: list[list[dict[str, str]]] | None = None,
) -> SFTData:
    """Tokenized completion-only examples for ``tasks`` (one example per pair and task).

    ``summary`` and ``next_line`` are made from ``pairs``; ``dialogue`` takes the conversations in
    ``dialogues`` as they are (notebook 02's cleaned chat split, see ``load_split``).
    Conversations longer than ``max_seq_len`` tokens are removed (not cut, which would drop the answer)
    and counted in ``removed``, as are pairs a task cannot use. Examples are shuffled with ``seed``;
    ``limit`` keeps the first ``limit`` of them.
    """
    removed = {"longer than max_seq_len": 0, "no body line to predict": 0}
    rows: list[tuple[str, list[dict[str, str]], dict[str, list[int]]]] = []
    for task in tasks:
        if task == "dialogue" and dialogues is None:
            raise ConfigError("task 'dialogue' needs conversations: pass dialogues=... (e.g. from "
                              "dsnb.data.prepared.load_prepared('chat', split)) or use dsnb.train.chat.load_split")
        for item in (dialogues if task == "dialogue" else pairs):
            messages = [dict(m) for m in item] if task == "dialogue" else chat_messages(item, task)
            if messages is None:
                removed["no body line to predict"] += 1
                continue
            enc = tokenize_chat(messages, tokenizer)
            if len(enc["input_ids"]) > max_seq_len:
                removed["longer than max_seq_len"] += 1
                continue
            rows.append((task, messages, enc))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    rows = [rows[i] for i in order]
    if limit is not None and limit < len(rows):
        removed[f"beyond limit={limit}"] = len(rows) - limit
        rows = rows[:limit]
    logger.info("%s: %d SFT examples from %d pairs; removed %s", split, len(rows), len(pairs), removed)
    return SFTData(split, [r[2] for r in rows], [r[1] for r in rows], [r[0] for r in rows], removed)


def pack_examples(examples: list[dict[str, list[int]]], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Greedily join whole examples into rows of at most ``max_seq_len`` tokens (naive packing).

    Labels keep their -100 masks, so the loss still covers answers only, but attention is not reset
    at example boundaries: every token also attends to the earlier examples of its row, and
    positions run on across them. What that costs is measured by ``benchmarks/packing.py``. Notebook 08
    uses it to build full-length rows for memory measurements; training packs padding-free instead
    (``data_collator(tokenizer, packing=True)``, ``FinetuneConfig.packing``).
    """
    packed: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for ex in examples:
        if len(ex["input_ids"]) > max_seq_len:
            raise ValueError(f"an example of {len(ex['input_ids'])} tokens is longer than max_seq_len={max_seq_len}")
        if cur["input_ids"] and len(cur["input_ids"]) + len(ex["input_ids"]) > max_seq_len:
            packed.append(cur)
            cur = {"input_ids": [], "attention_mask": [], "labels": []}
        for key in cur:
            cur[key] = cur[key] + list(ex[key])
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def to_dataset(examples: list[dict[str, list[int]]]):
    """A ``datasets.Dataset`` of the examples (what the Trainer reads)."""
    from datasets import Dataset

    return Dataset.from_list(examples)


def data_collator(
    tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = 16, packing: bool = False
) -> DataCollatorForSeq2Seq | DataCollatorWithFlattening:
    """Pads ``input_ids`` with the pad token, ``attention_mask`` with 0 and ``labels`` with -100.

    Padding to a multiple of 16 keeps the number of distinct batch shapes small; each new shape costs
    a slow first step on CPU (kernel selection) and on GPU (allocator, compiled kernels).

    ``packing=True``: no padding at all. The micro-batch becomes one row with ``position_ids``
    restarting at each example and no attention mask; transformers reads the restarts as example
    boundaries and masks attention across them (any attention implementation), and each example's
    first label is -100, so nothing is learnt across a boundary. Same loss as the padded batch.
    """
    if packing:
        return DataCollatorWithFlattening(return_tensors="pt")
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt",
                                  pad_to_multiple_of=pad_to_multiple_of)


def load_split(cfg: FinetuneConfig, tokenizer: PreTrainedTokenizerBase, split: str, limit: int | None = None,
               corpus=None) -> SFTData:
    """The SFT examples of one corpus split (train, validation or test) for ``cfg.tasks``.

    ``dialogue`` reads the cleaned chat records notebook 02 prepared for this corpus, through
    ``dsnb.data.prepared.load_prepared`` (validated JSONL; the pipeline itself never runs inside training:
    without prepared data the error says how to prepare it); the other tasks come from the corpus's
    instruction pairs.
    """
    from dsnb.data.corpus import course_corpus

    corpus = corpus or course_corpus()
    dialogues = None
    if "dialogue" in cfg.tasks:
        from dsnb.data.prepared import load_prepared

        dialogues = load_prepared("chat", split, fingerprint=corpus.fingerprint)["messages"]
    return build_sft_data(corpus.pairs_in(split), tokenizer, cfg.tasks, cfg.max_seq_len, limit, cfg.seed, split,
                          dialogues)


def augment_data(data: SFTData, tokenizer: PreTrainedTokenizerBase, method: str, seed: int = 0,
                 rate: float = 0.15, wordnet: Any = None) -> SFTData:
    """``data`` plus one augmented copy of every ``summary`` example whose answer ``method`` changes (notebook 05).

    ``method`` is one of ``dsnb.data.augment.METHODS``; code spans, identifiers and numbers are never touched.
    ``synonym`` needs WordNet (Debian's ``wordnet-base``): without it a warning says so and ``data`` comes
    back unchanged. The copies are tagged ``"summary+<method>"`` in ``tasks``.
    """
    from dsnb.data.augment import WordNetUnavailable, augment_texts, wordnet_reader

    if method == "synonym" and wordnet is None:
        try:
            wordnet = wordnet_reader()
        except WordNetUnavailable as exc:
            logger.warning("augment='synonym' skipped: %s", exc)
            return data
    rows = [(m, t) for m, t in zip(data.messages, data.tasks, strict=True) if t == "summary"]
    answers = augment_texts([m[-1]["content"] for m, _ in rows], method, seed=seed, wordnet=wordnet, p=rate)
    extra = [([*m[:-1], {"role": "assistant", "content": a}]) for (m, _), a in zip(rows, answers, strict=True)
             if a != m[-1]["content"]]
    logger.info("augment=%r added %d of %d summary answers", method, len(extra), len(rows))
    return SFTData(data.split, [*data.examples, *(tokenize_chat(m, tokenizer) for m in extra)],
                   [*data.messages, *extra], [*data.tasks, *[f"summary+{method}"] * len(extra)], dict(data.removed))


def load_sft_data(cfg: FinetuneConfig, tokenizer: PreTrainedTokenizerBase, corpus=None) -> tuple[SFTData, SFTData]:
    """Training (train split, plus ``cfg.augment``'s copies) and evaluation (validation split) data for ``cfg``."""
    train = load_split(cfg, tokenizer, "train", cfg.train_examples, corpus)
    if cfg.augment:
        train = augment_data(train, tokenizer, cfg.augment, cfg.seed, cfg.augment_rate)
    return train, load_split(cfg, tokenizer, "validation", cfg.eval_examples, corpus)


def label_view(example: dict[str, list[int]], tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
    """One row per token of ``example``: the token text and whether it is trained on (label != -100)."""
    return [{"position": i, "token": tokenizer.decode([t]), "in loss": lab != -100}
            for i, (t, lab) in enumerate(zip(example["input_ids"], example["labels"], strict=True))]
