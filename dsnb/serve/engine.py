"""One causal LM loaded for serving: chat template, bounded generation, hot swap and rollback (notebook 10).

``ModelEngine`` holds the model, its tokenizer and a version string. ``generate`` runs one request at
a time under a lock (a CPU or a single GPU gains nothing from interleaving ``model.generate`` calls;
a serving engine such as vLLM batches them instead). ``swap`` replaces the model between two requests
under the same lock, so a request in flight finishes on the old weights and the next one gets the new
ones: no request fails during a swap; ``rollback`` puts the previous model back. A prompt with more
characters than the context window could hold (``max_prompt_chars``) is refused before it is tokenised.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dsnb.model.load import TINY_MODEL_NAME, base_model, load_model
from dsnb.train.dpo import TINY_SFT_NAME, sft_model


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
    seconds: float
    version: str


def load_for_serving(name_or_path: str, adapter: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``dsnb-tiny`` / ``dsnb-tiny-sft`` (the course models), a local checkpoint or a hub id; ``adapter``:
    a LoRA adapter directory, merged into the weights (serving engines handle merged weights best)."""
    if name_or_path == TINY_MODEL_NAME:
        model, tok = base_model(dtype=torch.float32)
    elif name_or_path == TINY_SFT_NAME:
        model, tok = sft_model()
    else:
        model, tok = load_model(name_or_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tok


class ModelEngine:
    """A model, its tokenizer and version, served one request at a time; swappable without downtime."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, version: str = "v1",
                 context_limit: int | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token before serving")
        self.name = name
        self.model, self.tokenizer, self.version = model, tokenizer, version
        self.context_limit = int(context_limit or getattr(model.config, "max_position_embeddings", 2048))
        self._previous: tuple[PreTrainedModel, PreTrainedTokenizerBase, str] | None = None
        self._lock = threading.Lock()
        self._token_chars: dict[int, int] = {}  # id(tokenizer) -> its longest token's text
        self.ready = True

    @classmethod
    def load(cls, name_or_path: str, version: str | None = None, adapter: str | None = None,
             name: str | None = None) -> ModelEngine:
        """Load ``name_or_path`` (and ``adapter``) for serving under the model id ``name``."""
        model, tok = load_for_serving(name_or_path, adapter)
        return cls(model, tok, name or name_or_path, version or "v1")

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
        """Generate up to ``max_tokens`` tokens after ``ids``: greedy at temperature 0, sampled otherwise."""
        if len(ids) + max_tokens > self.context_limit:
            raise PromptTooLong(len(ids), max_tokens, self.context_limit)
        with self._lock:
            model, tok, version = self.model, self.tokenizer, self.version
            t0 = time.perf_counter()
            sampling: dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
                if seed is not None:
                    torch.manual_seed(seed)
            device = next(model.parameters()).device
            with torch.no_grad():
                out = model.generate(input_ids=torch.tensor([ids], device=device),
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                     max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id, **sampling)
            seconds = time.perf_counter() - t0
        new = out[0, len(ids):].tolist()
        stopped = tok.eos_token_id in new
        if stopped:
            new = new[:new.index(tok.eos_token_id)]
        return Generation(tok.decode(new, skip_special_tokens=True), len(ids), len(new),
                          "stop" if stopped else "length", seconds, version)

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
