"""A guarded hot swap: smoke-test a candidate before it takes traffic, roll back by itself when it fails (notebook 10).

``ModelEngine.swap`` serves whatever it is given from the next request on. A candidate whose
vocabulary is smaller than the tokenizer (50 rows for a 4 096-token tokenizer), whose weights hold
NaN or whose architecture does not match the served one then fails every request until someone calls
``rollback`` by hand. Two guards close that gap:

1. ``smoke_test``: before the swap, the candidate's shapes are checked against the tokenizer (input
   embedding rows, output logits, special-token ids) and a few tokens are generated for a canary
   prompt (finite logits, ids the tokenizer knows). A candidate that fails never takes traffic.
2. ``GuardedEngine``: wraps a ``ModelEngine`` with the same interface (``create_app(GuardedEngine(engine))``
   serves it unchanged). Its ``swap`` runs the smoke test first; after a swap it counts the new
   version's requests, and when their error rate crosses ``max_error_rate`` (after at least
   ``min_requests``) it calls ``ModelEngine.rollback`` itself and records why. After ``watch_requests``
   requests the swap counts as confirmed and watching stops.

A failure is an exception the server answers with a 5xx; a ``ValueError`` (``PromptTooLong``, a bad
parameter: the server's 400) is the client's fault and does not count against the model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dsnb.model.device import model_device
from dsnb.serve.engine import Generation, ModelEngine

logger = logging.getLogger(__name__)

#: The canary prompt a candidate must answer before it takes traffic (the course's summary task).
CANARY = "Summarize this Python function in one line.\ndef add(a, b):\n    return a + b"


class SmokeTestError(RuntimeError):
    """A swap candidate failed its smoke test; the served model was not changed. ``report`` says why."""

    def __init__(self, version: str, report: SmokeTest) -> None:
        self.report = report
        super().__init__(f"candidate {version!r} was not swapped in (the served model is unchanged): "
                         + "; ".join(report.problems))


@dataclass
class SmokeTest:
    """What ``smoke_test`` found: ``ok`` when ``problems`` is empty; ``text``: the canary answer."""

    problems: list[str]
    text: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(module: Any) -> int | None:
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def smoke_test(candidate: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, canary: str = CANARY,
               max_new_tokens: int = 4) -> SmokeTest:
    """Check ``candidate`` against ``tokenizer`` before it serves: shapes first, then ``max_new_tokens`` on ``canary``.

    Shapes: the input embedding needs a row for every token of the tokenizer, the output layer a logit
    for every token, and the pad / EOS / BOS ids must lie inside both. Only if they do is the canary
    run (greedy): its logits must be finite and its new ids known to the tokenizer. Never raises; the
    problems are listed, each saying what to do. Taught in notebook 10.
    """
    t0 = time.perf_counter()
    problems: list[str] = []
    vocab = len(tokenizer)
    inputs = _rows(candidate.get_input_embeddings())
    outputs = _rows(candidate.get_output_embeddings()) if candidate.get_output_embeddings() is not None else None
    if inputs is not None and inputs < vocab:
        problems.append(f"the input embedding has {inputs} rows but the tokenizer has {vocab} tokens: ids {inputs} "
                        f"and up would index past it; resize it (model.resize_token_embeddings({vocab})) or swap in "
                        "the candidate's own tokenizer (swap(model, version, tokenizer=...))")
    if outputs is not None and outputs < vocab:
        problems.append(f"the output layer gives {outputs} logits but the tokenizer has {vocab} tokens: the model "
                        f"could never produce tokens {outputs} and up; use a checkpoint trained with this tokenizer")
    limit = min(n for n in (inputs, outputs, vocab) if n is not None)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and not 0 <= value < limit:
            problems.append(f"tokenizer.{name}={value} is outside the model's {limit} token rows")
    if problems:  # the canary would only crash on the same mismatch
        return SmokeTest(problems, None, time.perf_counter() - t0)
    ids = list(tokenizer(canary)["input_ids"])
    try:
        candidate.eval()
        device = model_device(candidate)
        input_ids = torch.tensor([ids], device=device)
        mask = torch.ones_like(input_ids)
        with torch.no_grad():
            logits = candidate(input_ids=input_ids, attention_mask=mask).logits
            if not torch.isfinite(logits).all():
                bad = int((~torch.isfinite(logits)).sum())
                problems.append(f"{bad} of {logits.numel()} logits on the canary prompt are NaN or infinite: the "
                                "weights are broken (check the checkpoint, e.g. a NaN loss during training)")
            else:
                out = candidate.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id)
                new = out[0, len(ids):].tolist()
                unknown = [t for t in new if not 0 <= t < vocab]
                if unknown:
                    problems.append(f"the canary answer holds token ids {unknown[:5]} the tokenizer does not know")
                else:
                    return SmokeTest([], tokenizer.decode(new, skip_special_tokens=True), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - any failure of the candidate is reported, not raised
        problems.append(f"the canary prompt failed: {type(exc).__name__}: {exc}")
    return SmokeTest(problems, None, time.perf_counter() - t0)


@dataclass
class Rollback:
    """One automatic rollback: which version was taken out, why, and which came back."""

    version: str
    restored: str
    requests: int
    errors: int
    reason: str


@dataclass
class _Watch:
    version: str
    requests: int = 0
    errors: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)


class GuardedEngine:
    """A ``ModelEngine`` whose ``swap`` smoke-tests the candidate and whose swaps roll back on errors by themselves.

    Every other attribute (``name``, ``version``, ``tokenizer``, ``context_limit``, ``chat_ids``,
    ``text_ids``, ``ready``, ...) is the wrapped engine's, so ``create_app(GuardedEngine(engine))``
    serves it as it is. Taught in notebook 10.
    """

    def __init__(self, engine: ModelEngine, max_error_rate: float = 0.2, min_requests: int = 5,
                 watch_requests: int = 200, canary: str = CANARY) -> None:
        if not 0 <= max_error_rate < 1:
            raise ValueError(f"max_error_rate={max_error_rate!r}: the share of failed requests that triggers a "
                             "rollback must be in [0, 1)")
        if not 1 <= min_requests <= watch_requests:
            raise ValueError(f"min_requests={min_requests!r}, watch_requests={watch_requests!r}: need "
                             "1 <= min_requests <= watch_requests")
        self.engine = engine
        self.max_error_rate, self.min_requests, self.watch_requests = max_error_rate, min_requests, watch_requests
        self.canary = canary
        self.rollbacks: list[Rollback] = []
        self._watch: _Watch | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    @property
    def watching(self) -> str | None:
        """The version whose error rate is being watched (None when no swap is on probation)."""
        return self._watch.version if self._watch is not None else None

    def swap(self, model: PreTrainedModel, version: str, tokenizer: PreTrainedTokenizerBase | None = None) -> SmokeTest:
        """Smoke-test ``model`` (with ``tokenizer`` or the served one); swap it in only if it passes.

        Raises ``SmokeTestError`` (the served model unchanged) if it fails; otherwise serves it from the
        next request on and watches its error rate. Returns the smoke test.
        """
        report = smoke_test(model, tokenizer or self.engine.tokenizer, self.canary)
        if not report.ok:
            logger.warning("swap of %s refused: %s", version, "; ".join(report.problems))
            raise SmokeTestError(version, report)
        with self._lock:
            self.engine.swap(model, version, tokenizer)
            self._watch = _Watch(version)
        logger.info("swapped in %s (canary answer %r); watching its error rate", version, report.text)
        return report

    def rollback(self) -> str:
        """Roll back by hand (``ModelEngine.rollback``); stops watching."""
        with self._lock:
            self._watch = None
            return self.engine.rollback()

    def generate(self, ids: list[int], *args: Any, **kwargs: Any) -> Generation:
        """``ModelEngine.generate``, counting the outcome against the version on probation."""
        version = self.engine.version
        try:
            gen = self.engine.generate(ids, *args, **kwargs)
        except ValueError:
            raise  # the client's request (PromptTooLong, a bad parameter): not the model's failure
        except Exception as exc:
            self.record(False, version, f"{type(exc).__name__}: {exc}")
            raise
        self.record(True, gen.version)
        return gen

    def record(self, ok: bool, version: str, error: str = "") -> Rollback | None:
        """Count one request served by ``version``; roll back (and return the ``Rollback``) if the rate crossed.

        For servers that call ``ModelEngine.generate`` themselves: call this after each request.
        """
        with self._lock:
            watch = self._watch
            if watch is None or version != watch.version:
                return None
            watch.requests += 1
            if not ok:
                watch.errors += 1
                watch.last_error = error or watch.last_error
            rate = watch.errors / watch.requests
            if watch.requests >= self.min_requests and rate > self.max_error_rate:
                self._watch = None
                if self.engine.version != watch.version:  # swapped again by hand meanwhile: nothing to undo
                    return None
                restored = self.engine.rollback()
                event = Rollback(watch.version, restored, watch.requests, watch.errors,
                                 f"{watch.errors} of {watch.requests} requests failed ({rate:.0%} > "
                                 f"{self.max_error_rate:.0%}); last error: {watch.last_error}")
                self.rollbacks.append(event)
                logger.error("rolled back %s -> %s: %s", event.version, restored, event.reason)
                return event
            if watch.requests >= self.watch_requests:
                logger.info("%s confirmed: %d errors in its first %d requests", watch.version, watch.errors,
                            watch.requests)
                self._watch = None
            return None
