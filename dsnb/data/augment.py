"""Text augmentation for fine-tuning data: synonym replacement, random deletion and swap, back-translation.

Claim C21 (synonym replacement with WordNet, random deletion at 15%, back-translation zh -> en -> zh).
Every method is deterministic under a seed and never touches *protected* words: code spans in
backticks, identifiers (``snake_case``, ``camelCase``, dotted names, calls, anything with a digit or
an underscore) and numbers. Augmenting a code-heavy answer must not rename a function.

WordNet comes from Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages (no download):
``wordnet_reader`` copies ``/usr/share/wordnet`` (36 MB) into the course cache as an nltk data folder
(``nltk_data/corpora/wordnet``) and writes the ``lexnames`` file nltk needs (Debian ships it only in
the ``lexnames(5WN)`` manual page). Without the packages, ``WordNetUnavailable`` says how to install
them and ``synonym_replacement`` can be skipped.

Back-translation takes two translators named by the user (``load_translator``: any seq2seq
translation model, e.g. MarianMT ``Helsinki-NLP/opus-mt-zh-en`` and ``-en-zh``); transformers 5
removed the ``translation`` pipeline, so a translator is a callable over a list of texts that runs
``AutoModelForSeq2SeqLM.generate`` greedily (deterministic).

Taught in notebook 05. A data transform: imports nothing from ``dsnb.train`` or ``dsnb.model``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from dsnb.cache import atomic_file, cache_dir

logger = logging.getLogger(__name__)

#: Where Debian's wordnet-base package puts the WordNet 3.0 database.
WORDNET_SYSTEM_DIR = Path("/usr/share/wordnet")

#: The files nltk's WordNetCorpusReader opens (besides ``lexnames``).
WORDNET_FILES = ("adj.exc", "adv.exc", "noun.exc", "verb.exc", "data.adj", "data.adv", "data.noun", "data.verb",
                 "index.adj", "index.adv", "index.noun", "index.verb", "index.sense")

#: The 45 lexicographer files of WordNet 3.0 (number, name, syntactic category: 1 noun, 2 verb, 3 adjective,
#: 4 adverb), as listed in the lexnames(5WN) manual page.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)

_POS_CODE = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

INSTALL_HINT = ("install Debian's WordNet packages: `sudo apt-get install wordnet-base wordnet-sense-index` "
                "(the course's setup does it from apt-packages.txt)")

_TOKEN = re.compile(r"\S*?(`+)[^`]*?\1\S*|\S+")  # a code span (`x` or reST's ``x``) with its punctuation
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)?")
_EDGE_PUNCT = "\"'([{<.,;:!?)]}>"


class WordNetUnavailable(RuntimeError):
    """The WordNet database is not installed; the message says how to install it."""


def lexnames_text() -> str:
    """The ``lexnames`` file: one ``NN<TAB>name<TAB>category`` line per lexicographer file (45 lines)."""
    return "".join(f"{i:02d}\t{name}\t{_POS_CODE[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def wordnet_data_dir(source: str | Path = WORDNET_SYSTEM_DIR) -> Path:
    """An nltk data folder (in the course cache) whose ``corpora/wordnet`` holds WordNet 3.0 from ``source``.

    Copies the database files (nltk refuses links that lead out of its data folder) and writes ``lexnames``. Raises
    ``WordNetUnavailable`` with the install command if ``source`` lacks a file nltk needs.
    """
    source = Path(source)
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise WordNetUnavailable(f"WordNet 3.0 is not installed in {source} (missing {', '.join(missing)}): "
                                 f"{INSTALL_HINT}")
    root = cache_dir("nltk_data")
    target = cache_dir("nltk_data", "corpora", "wordnet")
    for name in WORDNET_FILES:  # copies (36 MB): nltk refuses symbolic and hard links out of its data folders
        dest, src = target / name, source / name
        if dest.is_file() and not dest.is_symlink() and dest.stat().st_nlink == 1 \
                and dest.stat().st_size == src.stat().st_size:
            continue
        dest.unlink(missing_ok=True)
        with atomic_file(dest) as fh, open(src, "rb") as fin:
            shutil.copyfileobj(fin, fh)
    lexnames = target / "lexnames"
    if not lexnames.is_file() or lexnames.read_text() != lexnames_text():
        with atomic_file(lexnames, "w") as fh:
            fh.write(lexnames_text())
    return root


def wordnet_reader(source: str | Path = WORDNET_SYSTEM_DIR):
    """nltk's ``WordNetCorpusReader`` over the local WordNet 3.0 database (set up on first use).

    Raises ``WordNetUnavailable`` (saying how to install it) when the Debian packages are missing.
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_data_dir(source)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():  # "multilingual functions are not available": no Open Multilingual Wordnet
        warnings.filterwarnings("ignore", message="The multilingual functions")
        return WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)


def wordnet_available(source: str | Path = WORDNET_SYSTEM_DIR) -> bool:
    """True when the WordNet database files are installed in ``source``."""
    return all((Path(source) / f).is_file() for f in WORDNET_FILES)


def _rng(text: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def split_words(text: str) -> list[str]:
    """Whitespace-separated words, with a backtick code span kept as one item (spaces inside it too)."""
    return [m.group(0) for m in _TOKEN.finditer(text)]


def _core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, the word, trailing punctuation)."""
    core = word.strip(_EDGE_PUNCT)
    if not core:
        return word, "", ""
    start = word.index(core)
    return word[:start], core, word[start + len(core):]


def is_protected(word: str) -> bool:
    """True for words augmentation must keep as they are: code spans, identifiers and numbers.

    Only plain English words (letters, at most one inner hyphen, not camelCase) may be replaced,
    deleted or moved.
    """
    if word.startswith("`"):
        return True
    _, core, _ = _core(word)
    if not _PLAIN_WORD.fullmatch(core):
        return True  # numbers, snake_case, dotted.names, calls(), paths, symbols
    return any(c.isupper() for c in core[1:])  # camelCase / CONSTANTS


def random_deletion(text: str, p: float = 0.15, seed: int = 0) -> str:
    """Delete each unprotected word with probability ``p`` (the article's 15%); at least one word is kept."""
    if not 0 <= p < 1:
        raise ValueError(f"p={p}: the deletion probability must be in [0, 1)")
    words = split_words(text)
    rng = _rng(text, seed)
    kept = [w for w in words if is_protected(w) or rng.random() >= p]
    if not kept and words:
        kept = [words[rng.randrange(len(words))]]
    return " ".join(kept)


def random_swap(text: str, n: int = 1, seed: int = 0) -> str:
    """Swap ``n`` random pairs of unprotected words (protected words keep their positions)."""
    words = split_words(text)
    movable = [i for i, w in enumerate(words) if not is_protected(w)]
    rng = _rng(text, seed)
    for _ in range(n if len(movable) >= 2 else 0):
        i, j = rng.sample(movable, 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def synonyms(word: str, wordnet) -> list[str]:
    """WordNet synonyms of ``word`` (single words only, sorted, the word itself left out)."""
    lemma = word.lower()
    found = {name.replace("_", " ") for s in wordnet.synsets(lemma) for name in s.lemma_names()}
    return sorted(w for w in found if w.lower() != lemma and " " not in w and _PLAIN_WORD.fullmatch(w))


def synonym_replacement(text: str, wordnet, n: int = 1, seed: int = 0, min_length: int = 3) -> str:
    """Replace up to ``n`` unprotected words (of at least ``min_length`` letters) by a WordNet synonym.

    ``wordnet`` is ``wordnet_reader()``. Code spans, identifiers and numbers are never touched; the
    choice of words and synonyms is deterministic under ``seed``. Capitalisation of a first letter is kept.
    """
    words = split_words(text)
    rng = _rng(text, seed)
    candidates = [i for i, w in enumerate(words) if not is_protected(w) and len(_core(w)[1]) >= min_length]
    rng.shuffle(candidates)
    done = 0
    for i in candidates:
        if done >= n:
            break
        lead, core, trail = _core(words[i])
        options = synonyms(core, wordnet)
        if not options:
            continue
        new = rng.choice(options)
        if core[0].isupper():
            new = new[0].upper() + new[1:]
        words[i] = lead + new + trail
        done += 1
    return " ".join(words)


Translator = Callable[[list[str]], list[str]]


def load_translator(model: str | Path, device: str = "cpu", max_new_tokens: int = 128, batch_size: int = 16,
                    prefix: str = "") -> Translator:
    """A translator from a seq2seq translation model (a hub id or a local directory).

    Greedy decoding (deterministic). ``prefix`` is put before each text (T5 wants e.g.
    ``"translate English to German: "``). Raises ``ValueError`` naming the model if it cannot be loaded.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        net = AutoModelForSeq2SeqLM.from_pretrained(model).to(device).eval()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load translation model {model!r} ({err}); pass a local directory or a hub id of "
                         "a seq2seq translation model, e.g. Helsinki-NLP/opus-mt-zh-en") from err

    @torch.no_grad()
    def translate(texts: list[str]) -> list[str]:
        out = [""] * len(texts)  # an empty text stays empty
        todo = [i for i, t in enumerate(texts) if t.strip()]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            enc = tokenizer([prefix + texts[i] for i in chunk], return_tensors="pt", padding=True,
                            truncation=True).to(device)
            ids = net.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            for i, t in zip(chunk, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[i] = t.strip()
        return out

    return translate


def back_translate(texts: Sequence[str], forward: Translator, backward: Translator) -> list[str]:
    """Translate ``texts`` with ``forward`` (e.g. zh -> en), then back with ``backward`` (en -> zh).

    Texts that are all protected words (code, identifiers) are returned unchanged.
    """
    texts = list(texts)
    todo = [i for i, t in enumerate(texts) if any(not is_protected(w) for w in split_words(t))]
    if not todo:
        return texts
    there = forward([texts[i] for i in todo])
    back = backward(there)
    if len(there) != len(todo) or len(back) != len(todo):
        raise ValueError("a translator returned a different number of texts than it was given")
    out = list(texts)
    for i, t in zip(todo, back, strict=True):
        out[i] = t
    return out


METHODS = ("synonym", "deletion", "swap")


def augment_texts(texts: Sequence[str], method: str, seed: int = 0, wordnet=None, p: float = 0.15,
                  n: int = 1) -> list[str]:
    """Apply one method (``synonym``, ``deletion`` or ``swap``) to every text; deterministic under ``seed``.

    ``synonym`` needs ``wordnet`` (``wordnet_reader()``).
    """
    if method == "deletion":
        return [random_deletion(t, p, seed) for t in texts]
    if method == "swap":
        return [random_swap(t, n, seed) for t in texts]
    if method == "synonym":
        if wordnet is None:
            raise ValueError("method 'synonym' needs wordnet=wordnet_reader()")
        return [synonym_replacement(t, wordnet, n, seed) for t in texts]
    raise ValueError(f"unknown augmentation {method!r}; use one of {METHODS}")
