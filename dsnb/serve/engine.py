"""One causal LM loaded for serving: chat template, dynamic batching, hot swap and rollback (notebook 10).

``ModelEngine`` holds the model, its tokenizer and a version string. ``generate`` puts a request on a
queue and waits for its answer; one background worker thread per engine takes requests off the queue
in batches and answers each batch with one ``model.generate`` call (left padding, an attention mask,
each request stopping at its own ``max_tokens`` or end-of-sequence). A batch starts once
``max_batch`` requests are waiting, once the next request would take the padded batch over
``max_batch_tokens``, or ``max_wait_ms`` after its first request was queued, whichever comes first:
an idle engine holds a lone request back at most ``max_wait_ms``; under load the requests that
arrived while a batch ran form the next one at once. ``max_batch=1`` is the old one-at-a-time engine.

Every request can share a batch: greedy rows take the arg-max, and each sampled row draws from its own
``torch.Generator`` (seeded with the request's ``seed``, else at random) with its own temperature and
top-p, so a seeded answer is the same whatever else is in its batch. Greedy output batched equals
greedy output alone, token for token (tests/test_serve_batching.py; the logits differ only in float
rounding, about 1e-5, from matrix products of a different shape). Identical requests in flight
(same ids and parameters; greedy, or sampled with a seed) are generated once and answered to all.

``swap`` replaces the model between two batches under the engine's lock, so a batch in flight
finishes on the old weights and the next one gets the new ones: no request fails during a swap;
``rollback`` puts the previous model back. A prompt with more characters than the context window
could hold (``max_prompt_chars``) is refused before it is tokenised.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from dsnb.model.device import model_device
from dsnb.model.load import load_model


class PromptTooLong(ValueError):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, limit: int) -> None:
        self.prompt_tokens, self.max_tokens, self.limit = prompt_tokens, max_tokens, limit
        super().__init__(f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}, but the model's "
                         f"context limit is {limit} tokens: shorten the prompt or lower max_tokens")


class PromptTooLarge(ValueError):
    """The prompt has more characters than the context window could hold, whatever they tokenise to."""

    def __init__(self, chars: int, max_chars: int, limit: int) -> None:
        self.chars, self.max_chars, self.limit = chars, max_chars, limit
        super().__init__(f"the prompt has {chars} characters, but a context of {limit} tokens holds at most "
                         f"{max_chars} characters of this model's text: shorten the prompt")


@dataclass
class Generation:
    """One generated answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-sequence token) or "length" (max_tokens reached)
    seconds: float  # its batch's model.generate call (shared by the batch); the caller waited queue_seconds more
    version: str
    queue_seconds: float = 0.0  # from queued to its batch starting (latency in the engine: queue_seconds + seconds)
    batch_size: int = 1  # requests generated in the same model.generate call
    shared: bool = False  # answered from an identical request's generation in flight (coalesced)


def load_for_serving(name_or_path: str, adapter: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``dsnb-tiny`` / ``dsnb-tiny-sft`` (the course models), a local checkpoint or a hub id; ``adapter``:
    a LoRA adapter directory, merged into the weights (serving engines handle merged weights best).

    Names resolve through ``dsnb.model.resolve``: serving imports no training code, so the SFT model must
    have been built already (the error says how)."""
    model, tok = load_model(name_or_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tok


#: Default most requests in one batch (the server's MAX_CONCURRENT is 32).
MAX_BATCH = 16
#: Default longest an idle engine holds a request back, waiting for others to batch with (milliseconds).
MAX_WAIT_MS = 5.0
#: Default most padded tokens (rows x (longest prompt + largest max_tokens)) in one batch.
MAX_BATCH_TOKENS = 16_384
#: Seconds an idle worker thread waits for work before it exits (the next request starts a new one).
WORKER_IDLE_SECONDS = 30.0


@dataclass(eq=False)
class _Job:
    """One queued request (or several identical ones) and the future its callers wait on."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    key: tuple | None
    queued: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class RowSampler(LogitsProcessor):
    """Sampling per row of a batch, each row with its own temperature, top-p and ``torch.Generator``.

    Greedy rows (temperature 0) are left as they are; a sampled row draws one token by inverse CDF from
    its own generator and keeps only that token's score, so the arg-max that ``model.generate`` then
    takes is the draw. A row's tokens depend on its own seed and logits only, not on its batch.
    """

    def __init__(self, rows: list[tuple[float, float, int | None]]) -> None:
        self.rows = [(t, p, torch.Generator().manual_seed(random.getrandbits(63) if s is None else s) if t > 0 else None)
                     for t, p, s in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [i for i, (_, _, gen) in enumerate(self.rows) if gen is not None]
        if not rows:
            return scores
        idx = torch.tensor(rows, device=scores.device)
        temperature = torch.tensor([self.rows[i][0] for i in rows], device=scores.device)[:, None]
        top_p = torch.tensor([self.rows[i][1] for i in rows], device=scores.device)[:, None]
        probs = torch.softmax(scores[idx].float() / temperature, dim=-1)
        order = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs).clone()
        cdf = probs.cumsum(-1)  # top_p = 1: every token, in id order (no sort needed)
        part = top_p[:, 0] < 1
        if bool(part.any()):  # top_p < 1: the smallest set of tokens holding top_p of the mass
            sorted_p, order[part] = probs[part].sort(dim=-1, descending=True, stable=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p[part]
            keep[:, 0] = True
            cdf[part] = (sorted_p * keep).cumsum(-1)
        u = torch.stack([torch.rand((), generator=self.rows[i][2]) for i in rows]).to(scores.device)[:, None]
        pick = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=cdf.shape[-1] - 1)
        chosen = torch.full_like(scores[idx], float("-inf")).scatter_(-1, order.gather(-1, pick), 0.0)
        scores[idx] = chosen
        return scores


class RowLimit(StoppingCriteria):
    """Stop each row of a batch at its own ``max_tokens`` (``model.generate`` then pads it)."""

    def __init__(self, prompt_width: int, max_tokens: list[int]) -> None:
        self.width, self.limits = prompt_width, torch.tensor(max_tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.width) >= self.limits.to(input_ids.device)


def generate_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                   max_tokens: list[int], sampling: list[tuple[float, float, int | None]]) -> list[tuple[list[int], bool]]:
    """(new ids, stopped at end-of-sequence) per prompt, generated together in one ``model.generate`` call.

    Prompts are left-padded and masked (``model.generate`` derives the position ids from the mask, so a
    padded prompt sees the positions it would see alone); ``sampling`` holds (temperature, top_p, seed)
    per prompt. Taught in notebook 10.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = model_device(model)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    processors = LogitsProcessorList([RowSampler(sampling)] if any(t > 0 for t, _, _ in sampling) else [])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(max_tokens), do_sample=False,
                             pad_token_id=pad, eos_token_id=eos, logits_processor=processors,
                             stopping_criteria=StoppingCriteriaList([RowLimit(width, max_tokens)]))
    answers = []
    for row, limit in zip(out[:, width:].tolist(), max_tokens, strict=True):
        new = row[:limit]
        stopped = eos in new
        answers.append((new[:new.index(eos)] if stopped else new, stopped))
    return answers


class ModelEngine:
    """A model, its tokenizer and version, served in dynamic batches by one worker thread; swappable without downtime.

    ``max_batch`` requests at most per batch (1: one at a time), ``max_wait_ms`` the longest an idle
    engine holds a request back for company, ``max_batch_tokens`` the most padded tokens in a batch;
    ``coalesce=False`` generates identical requests in flight separately (``max_batch=1, coalesce=False``
    is the engine before batching, the benchmark's baseline). Taught in notebook 10.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, version: str = "v1",
                 context_limit: int | None = None, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, coalesce: bool = True) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token before serving")
        if max_batch < 1 or max_wait_ms < 0 or max_batch_tokens < 1:
            raise ValueError(f"max_batch={max_batch!r}, max_wait_ms={max_wait_ms!r}, max_batch_tokens="
                             f"{max_batch_tokens!r}: need max_batch >= 1, max_wait_ms >= 0, max_batch_tokens >= 1")
        self.name = name
        self.model, self.tokenizer, self.version = model, tokenizer, version
        self.context_limit = int(context_limit or getattr(model.config, "max_position_embeddings", 2048))
        self.max_batch, self.max_wait_ms, self.max_batch_tokens = max_batch, max_wait_ms, max_batch_tokens
        self.coalesce = coalesce
        self._previous: tuple[PreTrainedModel, PreTrainedTokenizerBase, str] | None = None
        self._lock = threading.Lock()  # held while a batch generates and while the model is swapped
        self._token_chars: dict[int, int] = {}  # id(tokenizer) -> its longest token's text
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._pending = threading.Lock()  # guards _inflight and _worker
        self._inflight: dict[tuple, _Job] = {}
        self._carry: _Job | None = None  # a job that did not fit the last batch's token budget: first in the next
        self._worker: threading.Thread | None = None
        self._ready = True
        self.batches = 0  # batches generated so far
        self.coalesced = 0  # requests answered from an identical request in flight

    @classmethod
    def load(cls, name_or_path: str, version: str | None = None, adapter: str | None = None,
             name: str | None = None, **batching: Any) -> ModelEngine:
        """Load ``name_or_path`` (and ``adapter``) for serving under the model id ``name``; ``batching``:
        ``max_batch``, ``max_wait_ms``, ``max_batch_tokens``, ``coalesce``."""
        model, tok = load_for_serving(name_or_path, adapter)
        return cls(model, tok, name or name_or_path, version or "v1", **batching)

    @property
    def ready(self) -> bool:
        """A model is loaded and the worker is alive or can be started (False once set so, or if it crashed)."""
        return self._ready and (self._worker is None or self._worker.is_alive())

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the batch generating now)."""
        return self._queue.qsize() + (self._carry is not None)

    @property
    def max_prompt_chars(self) -> int:
        """The most characters a prompt can have and still fit the context window.

        Each token stands for at most the text of the vocabulary's longest token (twice that, for
        normalisers that merge characters), so a longer prompt cannot fit whatever it tokenises to:
        ``chat_ids`` and ``text_ids`` refuse it before tokenising, which would cost seconds of CPU and
        gigabytes of memory for a 10 MB prompt.
        """
        tok = self.tokenizer
        longest = self._token_chars.get(id(tok))
        if longest is None:
            longest = max(map(len, tok.batch_decode([[i] for i in range(len(tok))])), default=1)
            self._token_chars[id(tok)] = longest
        return self.context_limit * 2 * max(longest, 1)

    def check_prompt_size(self, chars: int) -> None:
        """Raise ``PromptTooLarge`` if a prompt of ``chars`` characters cannot fit (checked before tokenising)."""
        if chars > (limit := self.max_prompt_chars):
            raise PromptTooLarge(chars, limit, self.context_limit)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation through the model's chat template, ending with the generation prompt."""
        if self.tokenizer.chat_template is None:
            raise ValueError(f"model {self.name!r} has no chat template: use /v1/completions with a plain prompt")
        self.check_prompt_size(sum(len(str(m.get("content") or "")) for m in messages))
        enc = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        return list(enc["input_ids"])

    def text_ids(self, prompt: str) -> list[int]:
        """Token ids of a plain-text prompt (with the tokenizer's special tokens, e.g. BOS)."""
        self.check_prompt_size(len(prompt))
        return list(self.tokenizer(prompt)["input_ids"])

    def generate(self, ids: list[int], max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> Generation:
        """Generate up to ``max_tokens`` tokens after ``ids``: greedy at temperature 0, sampled otherwise.

        Blocks until the request's batch is done. ``Generation.seconds`` is the time of its batch's
        ``model.generate`` call (as before batching: the generation, not the wait for it),
        ``queue_seconds`` the wait before its batch started, so the latency in the engine is their sum;
        ``batch_size`` counts the requests generated with it. A request answered from an identical one
        in flight gets that one's figures and ``shared=True``. Safe to call from many threads at once.
        """
        if len(ids) + max_tokens > self.context_limit:
            raise PromptTooLong(len(ids), max_tokens, self.context_limit)
        # greedy ignores top_p and seed; an unseeded sample must stay a fresh draw, so it is never shared
        key = ((tuple(ids), max_tokens, 0.0, 1.0, None) if temperature <= 0
               else (tuple(ids), max_tokens, temperature, top_p, seed) if seed is not None else None)
        key = key if self.coalesce else None
        with self._pending:
            job = self._inflight.get(key) if key is not None else None
            shared = job is not None
            if job is None:
                job = _Job(list(ids), max_tokens, temperature, top_p, seed, key)
                if key is not None:
                    self._inflight[key] = job
                self._queue.put(job)
                if self._worker is None or not self._worker.is_alive():
                    self._worker = threading.Thread(target=self._work, name=f"dsnb-engine-{self.name}", daemon=True)
                    self._worker.start()
            else:
                self.coalesced += 1
        gen: Generation = job.future.result()
        return replace(gen, shared=True) if shared else gen

    def _next_batch(self) -> list[_Job] | None:
        """The next batch: the first job, then whatever arrives until ``max_wait_ms`` after it was queued,
        ``max_batch`` jobs or the token budget. None when the worker has been idle ``WORKER_IDLE_SECONDS``."""
        first, self._carry = self._carry, None
        if first is None:
            try:
                first = self._queue.get(timeout=WORKER_IDLE_SECONDS)
            except queue.Empty:
                return None
        batch = [first]
        deadline = first.queued + self.max_wait_ms / 1000  # a job queued during the last batch waits no longer
        width, longest = len(first.ids), first.max_tokens
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                break
            w, m = max(width, len(job.ids)), max(longest, job.max_tokens)
            if (len(batch) + 1) * (w + m) > self.max_batch_tokens:
                self._carry = job
                break
            batch.append(job)
            width, longest = w, m
        return batch

    def _work(self) -> None:
        """The worker thread: batch after batch until idle (then it exits; ``generate`` starts another)."""
        while True:
            batch = self._next_batch()
            if batch is None:
                with self._pending:  # generate queues and checks for a worker under the same lock
                    if self._queue.empty() and self._carry is None:
                        self._worker = None
                        return
                continue
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        """Generate ``batch`` in one call on the served model and answer every job (a failed batch of
        several is retried one job at a time, so one bad request cannot fail the others)."""
        started = time.perf_counter()
        try:
            with self._lock:
                model, tok, version = self.model, self.tokenizer, self.version
                answers = generate_batch(model, tok, [j.ids for j in batch], [j.max_tokens for j in batch],
                                         [(j.temperature, j.top_p, j.seed) for j in batch])
                self.batches += 1
        except Exception as exc:  # noqa: BLE001 - the callers get the exception
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
                return
            self._finish(batch[0], exc)
            return
        done = time.perf_counter()
        for job, (new, stopped) in zip(batch, answers, strict=True):
            self._finish(job, Generation(tok.decode(new, skip_special_tokens=True), len(job.ids), len(new),
                                         "stop" if stopped else "length", done - started, version,
                                         started - job.queued, len(batch)))

    def _finish(self, job: _Job, result: Generation | BaseException) -> None:
        with self._pending:
            if job.key is not None and self._inflight.get(job.key) is job:
                del self._inflight[job.key]
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    def swap(self, model: PreTrainedModel, version: str, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        """Serve ``model`` as ``version`` from the next request on; the current model is kept for ``rollback``."""
        model.eval()
        with self._lock:
            self._previous = (self.model, self.tokenizer, self.version)
            self.model, self.tokenizer, self.version = model, tokenizer or self.tokenizer, version

    def rollback(self) -> str:
        """Serve the model that the last ``swap`` replaced again; returns the version now served."""
        with self._lock:
            if self._previous is None:
                raise RuntimeError("nothing to roll back to: no swap has happened")
            self.model, self.tokenizer, self.version = self._previous
            self._previous = None
            return self.version
