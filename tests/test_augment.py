"""Text augmentation (notebook 05): protected words stay, methods are deterministic, WordNet is read locally,
back-translation runs through two seq2seq translation models."""

from __future__ import annotations

import pytest

from dsnb.data.augment import (
    LEXNAMES,
    WordNetUnavailable,
    augment_texts,
    back_translate,
    is_protected,
    lexnames_text,
    load_translator,
    random_deletion,
    random_swap,
    split_words,
    synonym_replacement,
    wordnet_available,
    wordnet_data_dir,
    wordnet_reader,
)

TEXT = ("Return the `sorted list` of items whose value is larger than 42 in self.data, using fooBar and "
        "parse_qs() quickly when the cache is empty.")
PROTECTED = ["`sorted list`", "42", "self.data,", "fooBar", "parse_qs()"]


def test_protected_words():
    for w in PROTECTED + ["x1", "MAX_SIZE", "a/b", "3.14", "getValue"]:
        assert is_protected(w), w
    for w in ["Return", "items", "value,", "(quickly)", "well-known"]:
        assert not is_protected(w), w
    assert "`sorted list`" in split_words(TEXT)


def test_deletion_rate_and_protection():
    words = " ".join(["alpha", "beta", "gamma"] * 400)
    kept = random_deletion(words, p=0.15, seed=3).split()
    assert 0.12 < 1 - len(kept) / 1200 < 0.18
    for seed in range(20):
        out = random_deletion(TEXT, 0.5, seed)
        assert all(p in out for p in PROTECTED)
    assert random_deletion(TEXT, seed=1) == random_deletion(TEXT, seed=1) != random_deletion(TEXT, seed=2)
    with pytest.raises(ValueError, match="probability"):
        random_deletion(TEXT, p=1.0)


def test_swap_keeps_words_and_protected_positions():
    out = split_words(random_swap(TEXT, n=3, seed=0))
    assert sorted(out) == sorted(split_words(TEXT)) and out != split_words(TEXT)
    for i, w in enumerate(split_words(TEXT)):
        if is_protected(w):
            assert out[i] == w
    assert random_swap(TEXT, 3, seed=5) == random_swap(TEXT, 3, seed=5)


def test_lexnames_file_has_the_45_rows_of_the_manual_page():
    rows = [line.split("\t") for line in lexnames_text().splitlines()]
    assert len(rows) == len(LEXNAMES) == 45
    assert rows[0] == ["00", "adj.all", "3"] and rows[3] == ["03", "noun.Tops", "1"]
    assert rows[29] == ["29", "verb.body", "2"] and rows[44] == ["44", "adj.ppl", "3"]


def test_missing_wordnet_says_how_to_install(tmp_path):
    with pytest.raises(WordNetUnavailable, match="apt-get install wordnet-base wordnet-sense-index"):
        wordnet_data_dir(tmp_path)
    assert not wordnet_available(tmp_path)
    with pytest.raises(ValueError, match="wordnet_reader"):
        augment_texts([TEXT], "synonym")


@pytest.mark.skipif(not wordnet_available(), reason="WordNet not installed (apt-get install wordnet-base "
                    "wordnet-sense-index)")
def test_synonyms_from_local_wordnet(tmp_path, monkeypatch):
    monkeypatch.setenv("DSNB_CACHE", str(tmp_path))
    wn = wordnet_reader()
    assert (tmp_path / "nltk_data" / "corpora" / "wordnet" / "lexnames").is_file()
    assert wn.synset("dog.n.01").lexname() == "noun.animal"  # read through lexnames
    outs = {synonym_replacement(TEXT, wn, n=4, seed=s) for s in range(6)}
    assert len(outs) > 1 and TEXT not in outs
    for out in outs:
        assert len(split_words(out)) == len(split_words(TEXT))  # one word for one word
        assert all(p in out for p in PROTECTED)
    assert synonym_replacement(TEXT, wn, 4, seed=2) == synonym_replacement(TEXT, wn, 4, seed=2)


def _tiny_translator_dir(path, seed: int):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *"the a cache is empty when return items".split()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1)
    MarianMTModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_back_translation_through_two_local_models(tmp_path):
    fwd = load_translator(_tiny_translator_dir(tmp_path / "fwd", 0), max_new_tokens=6)
    bwd = load_translator(_tiny_translator_dir(tmp_path / "bwd", 1), max_new_tokens=6)
    texts = ["the cache is empty", "return the items", "`x = 1`"]
    out = back_translate(texts, fwd, bwd)
    assert len(out) == 3 and out[2] == "`x = 1`"  # code only: untouched
    assert out == back_translate(texts, fwd, bwd)  # greedy: deterministic
    assert all(isinstance(t, str) for t in out)
    with pytest.raises(ValueError, match="cannot load translation model"):
        load_translator(tmp_path / "missing")
    with pytest.raises(ValueError, match="different number"):
        back_translate(texts, fwd, lambda xs: xs[:1])


def _pairs_data(tokenizer, cfg):
    from dsnb.data.corpus import course_corpus
    from dsnb.train.chat import load_sft_data

    return load_sft_data(cfg, tokenizer, course_corpus())


def test_augment_from_the_config_adds_tagged_copies_of_summary_answers(tokenizer):
    from dsnb.train.config import FinetuneConfig

    base_cfg = FinetuneConfig(tasks=("summary",), train_examples=40, eval_examples=8)
    plain, _ = _pairs_data(tokenizer, base_cfg)
    aug, val = _pairs_data(tokenizer, base_cfg.replace(augment="deletion", augment_rate=0.3))
    added = [i for i, t in enumerate(aug.tasks) if t == "summary+deletion"]
    assert aug.examples[:len(plain)] == plain.examples and len(aug) == len(plain) + len(added)
    assert 0 < len(added) <= len(plain) and len(val) == 8  # evaluation data is never augmented
    for i in added:
        answer, prompt = aug.messages[i][-1]["content"], aug.messages[i][:-1]
        original = next(m for m in plain.messages if m[:-1] == prompt)[-1]["content"]
        assert answer != original and set(answer.split()) <= set(original.split())  # deletion only removes words
    again, _ = _pairs_data(tokenizer, base_cfg.replace(augment="deletion", augment_rate=0.3))
    assert again.examples == aug.examples  # deterministic under the config's seed


def test_augment_config_is_checked_and_synonyms_skip_without_wordnet(tokenizer, monkeypatch, caplog):
    from dsnb.data import augment
    from dsnb.train.config import ConfigError, FinetuneConfig

    with pytest.raises(ConfigError, match="augment='backtranslate'"):
        FinetuneConfig(augment="backtranslate")

    def missing():
        raise WordNetUnavailable("no WordNet here")

    monkeypatch.setattr(augment, "wordnet_reader", missing)
    cfg = FinetuneConfig(tasks=("summary",), train_examples=12, eval_examples=4)
    plain, _ = _pairs_data(tokenizer, cfg)
    with caplog.at_level("WARNING", logger="dsnb.train.chat"):
        skipped, _ = _pairs_data(tokenizer, cfg.replace(augment="synonym"))
    assert skipped.examples == plain.examples and "augment='synonym' skipped" in caplog.text


def test_rest_double_backtick_spans_stay_whole():
    text = "Read data from the stream until ``separator`` is found (``b'\\n'`` by default)."
    assert "``separator``" in split_words(text) and "(``b'\\n'``" in split_words(text)
    for seed in range(20):
        out = random_deletion(text, 0.5, seed)
        assert "``separator``" in out and "``b'\\n'``" in out  # a code span is never split or respaced
