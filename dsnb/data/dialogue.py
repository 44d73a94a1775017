"""Dialogue data: simulated user queries, an intent classifier, response scoring and diversity.

- ``generate_dialogues`` writes user queries from templates over the corpus's public functions, one
  intent per template family (how-to, explain, debug, compare, example), each with an assistant
  response built from the function's signature and docstring. A seeded share of responses is
  deliberately bad (a generic non-answer, or the summary of a *different* function), the way real
  logged chats contain bad answers; the scorer has to find them.
- ``train_intent_classifier`` trains nltk's ``NaiveBayesClassifier`` on bag-of-words features. The
  held-out set uses *templates the classifier never saw*, so the accuracy measures generalisation
  to new phrasings, not memorised templates.
- ``score_response`` is a documented score in [0, 1]:
  ``0.5 * overlap + 0.25 * length_ok + 0.25 * on_topic`` where ``overlap`` is the token F1 between
  the response and the reference (the function's docstring summary), ``length_ok`` is 1 for
  ``min_tokens`` .. ``max_tokens`` tokens and falls off linearly outside, and ``on_topic`` is 1 when
  the response names the function asked about. ``lm_loss_per_token`` adds the base model's mean
  per-token loss as an optional fluency signal.
- ``distinct_n`` is the number of distinct n-grams divided by the number of n-grams over a whole
  set of texts (Li et al., 2016). Template queries repeat their wording, so the set starts with a
  low distinct-n; ``diversity_filter`` keeps a query only if enough of its n-grams are new,
  which lifts distinct-1 and distinct-2 above a target (the article's: > 0.7).

Taught in notebook 02.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

from dsnb.data import missing_extra
from dsnb.data.corpus import InstructionPair
from dsnb.data.words import token_f1, words

try:
    from nltk.classify import NaiveBayesClassifier
    from nltk.classify import accuracy as nltk_accuracy
except ModuleNotFoundError as exc:  # dsnb's 'data' extra
    raise missing_extra(exc) from exc

logger = logging.getLogger(__name__)

INTENTS = ("how-to", "explain", "debug", "compare", "example")

#: Query templates per intent. {name} is a function name, {other} a second one, {task} the
#: lower-cased docstring summary, {module} the module, {error} an exception name.
TEMPLATES: dict[str, list[str]] = {
    "how-to": [
        "How do I {task_verb} in Python?",
        "How can I {task_verb} with the {module} module?",
        "What is the way to {task_verb}?",
        "I need to {task_verb}. Which function should I call?",
        "Is there a standard-library function to {task_verb}?",
        "Show me how to {task_verb} using {module}.",
        "Which call lets me {task_verb}?",
    ],
    "explain": [
        "What does {name} do?",
        "Explain {name} from {module}.",
        "Can you describe what {module}.{name} is for?",
        "What is the purpose of {name}?",
        "Tell me what {name} returns and why.",
        "I came across {name} in some code; what is it?",
        "Give me a short explanation of {name}.",
    ],
    "debug": [
        "Why does {name} raise {error}?",
        "My call to {name} fails with {error}; what am I doing wrong?",
        "I get {error} when I call {module}.{name}. How do I fix it?",
        "{name} is not working for me, it throws {error}.",
        "How do I debug a {error} coming from {name}?",
        "Calling {name} crashes with {error}, any idea?",
        "What causes {error} in {module}.{name}?",
    ],
    "compare": [
        "What is the difference between {name} and {other}?",
        "Should I use {name} or {other}?",
        "Compare {module}.{name} with {module}.{other}.",
        "When would I pick {other} over {name}?",
        "How is {name} different from {other}?",
        "{name} versus {other}: which one fits better?",
        "Are {name} and {other} interchangeable?",
    ],
    "example": [
        "Give me an example of calling {name}.",
        "Can you show a code sample that uses {module}.{name}?",
        "Write a snippet demonstrating {name}.",
        "I would like to see {name} in action.",
        "Example usage of {name}, please.",
        "Could you illustrate {name} with a small program?",
        "Show a minimal working call to {module}.{name}.",
    ],
}
ERRORS = ("TypeError", "ValueError", "KeyError", "AttributeError", "OSError", "IndexError", "RuntimeError")
GENERIC_ANSWERS = (
    "I am not sure, please check the documentation.",
    "That depends on your use case.",
    "It should work, try again.",
)


@dataclass(frozen=True)
class Dialogue:
    """A simulated user query with its intent, the template used, a response and its reference."""

    query: str
    intent: str
    template: int
    name: str
    module: str
    response: str
    reference: str
    corrupted: str  # "" for a good response, else "generic" or "wrong-function"
    split: str

    def messages(self) -> list[dict[str, str]]:
        """The dialogue as chat messages (the ``chat`` record type)."""
        return [{"role": "user", "content": self.query}, {"role": "assistant", "content": self.response}]


def _task_verb(summary: str) -> str:
    s = summary.rstrip(".").strip()
    return s[0].lower() + s[1:] if s else s


def _response(intent: str, pair: InstructionPair, name: str, other: InstructionPair | None, error: str) -> str:
    sig = pair.signature.removeprefix("async ").removeprefix("def ").rstrip(":")
    if intent == "how-to":
        return f"Call {name} from {pair.module}: {sig}. {pair.summary}"
    if intent == "explain":
        return f"{name} ({pair.module}): {pair.summary} Its signature is {sig}."
    if intent == "debug":
        return f"{name} expects {sig}; a {error} usually means an argument of the wrong type or value. {pair.summary}"
    if intent == "compare" and other is not None:
        oname = other.qualname.rsplit(".", 1)[-1]
        return f"{name}: {pair.summary} {oname}, by contrast: {other.summary}"
    return f"Example: import {pair.module.split('.')[0]}; then call {sig}. {pair.summary}"


def generate_dialogues(
    pairs: list[InstructionPair], n: int = 2000, *, seed: int = 0, corrupt_rate: float = 0.15
) -> list[Dialogue]:
    """``n`` simulated dialogues over ``pairs`` (intents in turn, seeded); see the module docstring."""
    if not pairs:
        raise ValueError("generate_dialogues needs instruction pairs (e.g. course_corpus().pairs)")
    rng = random.Random(seed)
    by_module: dict[str, list[InstructionPair]] = {}
    for p in pairs:
        by_module.setdefault(p.module, []).append(p)
    out = []
    for i in range(n):
        intent = INTENTS[i % len(INTENTS)]
        pair = rng.choice(pairs)
        name = pair.qualname.rsplit(".", 1)[-1]
        siblings = [q for q in by_module[pair.module] if q.qualname != pair.qualname] or [q for q in pairs if q is not pair]
        other = rng.choice(siblings)
        t = rng.randrange(len(TEMPLATES[intent]))
        error = rng.choice(ERRORS)
        query = TEMPLATES[intent][t].format(name=name, other=other.qualname.rsplit(".", 1)[-1], module=pair.module,
                                            task_verb=_task_verb(pair.summary), error=error)
        response, corrupted = _response(intent, pair, name, other, error), ""
        r = rng.random()
        if r < corrupt_rate / 2:
            response, corrupted = rng.choice(GENERIC_ANSWERS), "generic"
        elif r < corrupt_rate:
            wrong = rng.choice([q for q in pairs if q.module != pair.module] or pairs)
            response, corrupted = _response(intent, wrong, wrong.qualname.rsplit(".", 1)[-1], None, error), "wrong-function"
        out.append(Dialogue(query, intent, t, name, pair.module, response, pair.summary, corrupted, pair.split))
    return out


# ---------------------------------------------------------------- intent classifier


def features(query: str) -> dict[str, bool]:
    """Bag-of-words features (plus word bigrams) of a query for the intent classifier."""
    w = words(query)
    feats = {f"w={x}": True for x in w}
    feats |= {f"b={a}_{b}": True for a, b in zip(w, w[1:], strict=False)}
    return feats


@dataclass
class IntentResult:
    """The trained classifier, held-out accuracy, confusion counts and sizes."""

    classifier: NaiveBayesClassifier
    accuracy: float
    confusion: dict[tuple[str, str], int]
    n_train: int
    n_test: int
    held_out_templates: dict[str, list[int]]

    def predict(self, query: str) -> str:
        return self.classifier.classify(features(query))


def train_intent_classifier(
    dialogues: list[Dialogue], *, test_fraction: float = 0.25, unseen_templates: int = 0, seed: int = 0
) -> IntentResult:
    """Train nltk's NaiveBayes on queries and report held-out accuracy (notebook 02).

    By default a seeded ``test_fraction`` of the queries is held out. With ``unseen_templates=k``,
    the held-out set is instead every query written from ``k`` templates per intent that training
    never sees: a harder test of whether the classifier learned the intent or the template.
    """
    rng = random.Random(seed)
    if unseen_templates:
        held = {i: sorted(rng.sample(range(len(TEMPLATES[i])), unseen_templates)) for i in INTENTS}
        is_test = [d.template in held[d.intent] for d in dialogues]
    else:
        held = {}
        is_test = [rng.random() < test_fraction for _ in dialogues]
    train = [(features(d.query), d.intent) for d, t in zip(dialogues, is_test, strict=True) if not t]
    test = [(features(d.query), d.intent) for d, t in zip(dialogues, is_test, strict=True) if t]
    if not train or not test:
        raise ValueError("not enough dialogues to train and test the intent classifier; generate more")
    clf = NaiveBayesClassifier.train(train)
    preds = clf.classify_many([f for f, _ in test])
    confusion = Counter((gold, pred) for (_, gold), pred in zip(test, preds, strict=True))
    return IntentResult(clf, nltk_accuracy(clf, test), dict(confusion), len(train), len(test), held)


def confusion_matrix(result: IntentResult) -> list[list[int]]:
    """Rows: true intent, columns: predicted intent, in ``INTENTS`` order."""
    return [[result.confusion.get((t, p), 0) for p in INTENTS] for t in INTENTS]


# ---------------------------------------------------------------- response scoring


def score_response(response: str, reference: str, name: str, *, min_tokens: int = 8,
                   max_tokens: int = 200) -> float:
    """``0.5*overlap + 0.25*length_ok + 0.25*on_topic`` in [0, 1] (see the module docstring)."""
    n = len(diversity_words(response))
    if n < min_tokens:
        length_ok = n / min_tokens
    elif n > max_tokens:
        length_ok = max(0.0, 1 - (n - max_tokens) / max_tokens)
    else:
        length_ok = 1.0
    on_topic = 1.0 if name.lower() in set(diversity_words(response)) else 0.0
    return 0.5 * token_f1(response, reference) + 0.25 * length_ok + 0.25 * on_topic


def lm_loss_per_token(texts: list[str], model, tokenizer, *, max_length: int = 128) -> list[float]:
    """Mean next-token cross-entropy of each text under a causal LM (lower reads as more fluent).

    One forward pass per text; keep ``texts`` short. Works with ``dsnb.model.load.base_model()``.
    """
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tokenizer(t, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            if ids.shape[1] < 2:
                out.append(float("nan"))
                continue
            out.append(float(model(input_ids=ids, labels=ids).loss))
    return out


# ---------------------------------------------------------------- diversity


def diversity_words(text: str) -> list[str]:
    """Lower-cased words without punctuation (``dsnb.data.words``): the tokens distinct-n counts."""
    return words(text, punctuation=False)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whole set of ``texts`` (0 if there are none).

    Tokens are ``diversity_words``: lower-cased words, punctuation left out.
    """
    grams = [tuple(w[i : i + n]) for t in texts for w in [diversity_words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def batch_distinct_n(texts: list[str], n: int, *, batch: int = 16) -> float:
    """Mean ``distinct_n`` over consecutive batches of ``batch`` texts (a last, shorter batch is dropped
    unless it is the only one).

    Distinct-n over a whole set falls as the set grows (like the type/token ratio), so a target such
    as "> 0.7" only means something at a fixed size: here, the size of a batch of queries.
    """
    blocks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    full = [b for b in blocks if len(b) == batch] or blocks
    return sum(distinct_n(b, n) for b in full) / len(full) if full else 0.0


def diversity_filter(texts: list[str], *, min_novel: float = 0.75, ns: tuple[int, ...] = (1, 2),
                     window: int = 16, seed: int = 0) -> list[int]:
    """Indices (in kept order) of a diverse subset: a text is kept when, for every n in ``ns``, at
    least ``min_novel`` of its n-grams are new relative to the ``window`` texts kept just before it.

    Texts are visited in a seeded random order. A rejected text is not lost silently: the caller
    reports ``len(texts) - len(kept)`` as "too similar to recent queries". With ``window`` equal to
    the batch size of ``batch_distinct_n``, each batch of kept texts has distinct-n close to or above
    ``min_novel`` (taught in notebook 02).
    """
    from collections import deque

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    recent: deque = deque()
    counts: dict[int, Counter] = {n: Counter() for n in ns}
    kept: list[int] = []
    for i in order:
        w = diversity_words(texts[i])
        grams = {n: [tuple(w[j : j + n]) for j in range(len(w) - n + 1)] for n in ns}
        if any(not g for g in grams.values()):
            continue
        ok = True
        for n, g in grams.items():
            local: set = set()
            novel = 0
            for x in g:
                if counts[n][x] == 0 and x not in local:
                    novel += 1
                local.add(x)
            if novel / len(g) < min_novel:
                ok = False
                break
        if not ok:
            continue
        kept.append(i)
        recent.append(grams)
        for n, g in grams.items():
            counts[n].update(g)
        if len(recent) >= window:  # start a fresh batch: forget the previous one
            recent.clear()
            for c in counts.values():
                c.clear()
    return kept
