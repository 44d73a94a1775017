"""Malformed and hostile input fails loudly, naming what is wrong and what to do (not a traceback, not a
silent default). One test per case a careful user (or an attacker) would try."""

from __future__ import annotations

import pytest

from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.values import parse_value

# --- configs: what is typed is what runs -----------------------------------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("packing", "false", "packing: expected true or false"),
    ("gradient_checkpointing", "false", "gradient_checkpointing: expected true or false"),
    ("compress_checkpoints", "no", "compress_checkpoints: expected true or false"),
    ("max_steps", "100", "max_steps: expected a whole number.*without quotes"),
    ("max_steps", 10.7, "max_steps: expected a whole number"),
    ("tasks", "summary", "expected a list of task names"),
    ("eval_steps", 0, "eval_steps: 0 must be >= 1"),
    ("label_smoothing", 5, r"label_smoothing: 5.0 must be in \[0, 1\)"),
    ("save_steps", -10, "save_steps: -10 must be >= 1"),
    ("warmup_steps", -1, "warmup_steps: -1 must be >= 0"),
    ("learning_rate", -1e-4, "learning_rate: -0.0001 must be > 0"),
    ("min_learning_rate", -1e-6, "min_learning_rate: -1e-06 must be >= 0"),
    ("train_examples", 0, "train_examples: 0 must be >= 1"),
    ("dropout", 1.5, r"dropout: 1.5 must be in \[0, 1\)"),
    ("seed", None, "seed: expected a value, not null"),
])
def test_config_fields_are_checked_against_their_types_and_ranges(field, value, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig(**{field: value})


def test_config_from_yaml_checks_types_and_keeps_ints_as_typed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text('packing: "false"\n')
    with pytest.raises(ConfigError, match="packing"):
        FinetuneConfig.from_yaml(recipe)
    recipe.write_text("seed: 010\nlearning_rate: 1\nmin_learning_rate: 0\n")  # YAML 1.1 would make seed 8
    with pytest.raises(ConfigError, match="seed: expected a whole number, got '010'"):
        FinetuneConfig.from_yaml(recipe)
    recipe.write_text("seed: 10\nlearning_rate: 1\nmin_learning_rate: 0\n")
    cfg = FinetuneConfig.from_yaml(recipe)
    assert cfg.seed == 10 and cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize("text, expected", [
    ("010", "010"), ("0777", "0777"), ("1:30", "1:30"), ("2024-01-01", "2024-01-01"), ("[1, 010]", [1, "010"]),
    ("10", 10), ("0", 0), ("-3", -3), ("1e-5", 1e-5), ("0.5", 0.5), ("false", False), ("None", None),
])
def test_parse_value_has_no_yaml_11_octal_base60_or_dates(text, expected):
    got = parse_value(text)
    assert got == expected and type(got) is type(expected)


def test_extra_training_arguments_cannot_override_what_the_config_owns():
    with pytest.raises(ConfigError, match="extra_training_arguments.output_dir: set by the config field output_dir"):
        FinetuneConfig(extra_training_arguments={"output_dir": "elsewhere"})
    with pytest.raises(ConfigError, match="extra_training_arguments.max_grad_norm"):
        FinetuneConfig(extra_training_arguments={"max_grad_norm": 0.0})
    with pytest.raises(ConfigError, match="extra_training_arguments.fsdp_typo: not a TrainingArguments field"):
        FinetuneConfig(extra_training_arguments={"fsdp_typo": "full_shard"})
    args = FinetuneConfig(extra_training_arguments={"optim": "sgd"}).training_arguments(processes=1)
    assert args.optim == "sgd"


def _no_loading(monkeypatch):
    import dsnb.train.run as run
    import dsnb.train.sft as sft

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the cheap config checks ran")

    monkeypatch.setattr(run, "load_model", refuse)
    monkeypatch.setattr(sft, "load_sft_data", refuse)
    return sft


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 is valid on a GPU")
def test_fp16_on_cpu_fails_before_loading_anything(monkeypatch, tmp_path):
    sft = _no_loading(monkeypatch)
    with pytest.raises(ConfigError, match="fp16.*needs a CUDA GPU"):
        sft.run_sft(FinetuneConfig(precision="fp16", output_dir=str(tmp_path)))


def test_batch_plan_and_freezing_fail_before_loading_anything(monkeypatch, tmp_path, base_dir):
    from dsnb.train.config import BatchSizeError

    sft = _no_loading(monkeypatch)
    with pytest.raises(BatchSizeError, match="per_device_batch_size=2"):
        sft.run_sft(FinetuneConfig(global_batch_size=7, per_device_batch_size=2, output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="freeze_first_layers=99 but .* has only 4 decoder layers"):
        sft.run_sft(FinetuneConfig(model=str(base_dir), freeze_first_layers=99, output_dir=str(tmp_path)))


def test_resume_without_a_checkpoint_warns(tmp_path, caplog, corpus):
    import logging

    from dsnb.train.sft import run_sft

    cfg = FinetuneConfig(output_dir=str(tmp_path / "empty"), max_steps=1, eval_steps=None, train_examples=2,
                         per_device_batch_size=2, tasks=("summary",))
    with caplog.at_level(logging.WARNING, logger="dsnb.train.run"):
        result = run_sft(cfg, corpus=corpus, resume_from="auto", progress=False)
    assert result.info["steps"] == 1
    assert any(r.levelno == logging.WARNING and "starting from scratch" in r.getMessage() for r in caplog.records)


def test_course_rejects_a_misspelt_parameter_and_lists_the_valid_ones(tmp_path, capsys):
    import nbformat

    from dsnb.course import main, notebook_parameters, run_course

    for name, params in (("00_a.ipynb", "MODEL = 'dsnb-tiny'\nSTEPS: int = 3"),
                         ("01_b.ipynb", "SEQ_LEN = 128  # tokens (per sequence)")):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell("raise RuntimeError('must not run')")]
        nbformat.write(nb, tmp_path / name)
    assert notebook_parameters(tmp_path / "01_b.ipynb") == ["SEQ_LEN"]  # a comment with parentheses is fine
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "out"), "-p", "MODLE", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown parameter(s) ['MODLE']" in err and "Valid names: MODEL, SEQ_LEN, STEPS" in err
    with pytest.raises(ValueError, match="SEQ_LENGTH"):
        run_course(tmp_path, tmp_path / "out", parameters={"MODEL": "x", "SEQ_LENGTH": 4096})
    assert not (tmp_path / "out").exists()  # nothing ran


# --- records ----------------------------------------------------------------------------------------


def test_non_utf8_bytes_are_reported_with_file_and_line(tmp_path):
    from dsnb.data.records import DataValidationError, load_records

    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": "also fine"}\n')
    with pytest.raises(DataValidationError, match=r"d.jsonl:2: not UTF-8 text .*0xe9 at column 14"):
        load_records(path, "pretraining")
    result = load_records(path, "pretraining", skip_bad_rows=True)
    assert result.dataset["text"] == ["fine", "also fine"] and [e.line for e in result.errors] == [2]
    array = tmp_path / "d.json"
    array.write_bytes(b'[\n {"text": "fine"},\n {"text": "caf\xe9"}\n]\n')
    with pytest.raises(DataValidationError, match=r"d.json:3: not UTF-8 text"):
        load_records(array, "pretraining")


def test_a_byte_order_mark_is_accepted(tmp_path):
    from dsnb.data.records import load_records

    for name, body in (("bom.jsonl", '{"text": "a"}\n{"text": "b"}\n'), ("bom.json", '[{"text": "a"}, {"text": "b"}]')):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
        assert load_records(tmp_path / name, "pretraining").dataset["text"] == ["a", "b"]


def test_an_extra_field_whose_type_changes_is_reported_by_field_and_line(tmp_path):
    from dsnb.data.records import DataValidationError, load_records

    path = tmp_path / "d.jsonl"
    rows = ['{"text": "a", "source": "web"}', '{"text": "b", "source": "web"}', '{"text": "c", "source": 7}',
            '{"text": "d", "source": null}']
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataValidationError, match=r"d.jsonl:3: field 'source' is a number here but a string on "
                                                  r"lines 1, 2"):
        load_records(path, "pretraining")
    result = load_records(path, "pretraining", skip_bad_rows=True)
    assert result.dataset["source"] == ["web", "web", None] and result.rows_in == 4
    nested = tmp_path / "n.jsonl"
    nested.write_text('{"text": "a", "tags": [1, 2]}\n{"text": "b", "tags": ["x"]}\n')
    with pytest.raises(ValueError, match=r"field\(s\) \['tags'\] have different types"):
        load_records(nested, "pretraining")


def test_an_empty_file_warns(tmp_path, caplog):
    import logging

    from dsnb.data.records import load_records

    (tmp_path / "empty.jsonl").write_text("\n")
    with caplog.at_level(logging.WARNING, logger="dsnb.data.records"):
        result = load_records(tmp_path / "empty.jsonl", "pretraining")
    assert result.rows_kept == 0
    assert any("empty.jsonl holds no records" in r.getMessage() for r in caplog.records)


def test_json_array_lines_are_right_for_many_records(tmp_path):
    from dsnb.data.records import DataValidationError, load_records

    rows = [{"text": f"row {i}"} for i in range(3000)] + [{"text": ""}]
    body = "[\n" + ",\n".join("  " + __import__("json").dumps(r) for r in rows) + "\n]\n"
    (tmp_path / "big.json").write_text(body)
    with pytest.raises(DataValidationError, match=r"big.json:3002: field 'text' is empty"):
        load_records(tmp_path / "big.json", "pretraining")


def test_json_array_line_numbers_scan_the_file_once():
    """Line numbers of 20 000 elements cost one scan of the text, not one scan per element (the old
    reader recounted newlines from the start for every element: 27 s for 20 000 records). Counted,
    not timed: benchmarks/records_load.py prints the times."""
    import json

    from dsnb.data.records import _array_elements

    class CountingText(str):
        scanned = 0

        def count(self, sub, start=0, end=None):
            end = len(self) if end is None else end
            CountingText.scanned += end - start
            return str.count(self, sub, start, end)

    text = CountingText("[\n" + ",\n".join(json.dumps({"text": f"row {i}"}) for i in range(20_000)) + "\n]\n")
    rows = _array_elements(text)
    assert [line for line, _ in rows[:3]] == [2, 3, 4] and rows[-1] == (20_001, {"text": "row 19999"})
    assert CountingText.scanned <= len(text)


# --- models -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer):
    from dsnb.model.load import save_tiny_random

    return save_tiny_random("llama", tmp_path_factory.mktemp("tiny") / "llama", tokenizer=tokenizer)


def _broken_copy(src, dst, change):
    import json
    import shutil

    shutil.copytree(src, dst)
    config = dst / "config.json"
    if change == "truncated":
        weights = dst / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif change == "list":
        config.write_text("[]")
    else:
        values = json.loads(config.read_text())
        values.update(change)
        config.write_text(json.dumps(values))
    return dst


@pytest.mark.parametrize("change, match", [
    ("truncated", r"model.safetensors is truncated or corrupt"),
    ("list", r"config.json must hold a JSON object of config values, not a list"),
    ({"hidden_size": "big"}, r"config.json: hidden_size='big': shape values must be positive whole numbers"),
    ({"num_hidden_layers": -2}, r"config.json: num_hidden_layers=-2: shape values must be positive"),
], ids=["truncated-weights", "config-list", "hidden-size-text", "negative-layers"])
def test_load_model_names_the_broken_file(tiny_llama, tmp_path, change, match):
    from dsnb.model.load import ModelLoadError, load_model

    broken = _broken_copy(tiny_llama, tmp_path / "broken", change)
    with pytest.raises(ModelLoadError, match=match):
        load_model(broken)


def test_load_model_refuses_unknown_dtype_and_missing_device(tiny_llama):
    import torch

    from dsnb.model.load import ModelLoadError, load_model

    with pytest.raises(ModelLoadError, match="dtype='float33' is not a torch dtype"):
        load_model(tiny_llama, dtype="float33")
    with pytest.raises(ModelLoadError, match="device='tpu9' is not a device name"):
        load_model(tiny_llama, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="device='cuda' but this machine has no usable CUDA GPU"):
            load_model(tiny_llama, device="cuda")
    else:
        with pytest.raises(ModelLoadError, match="GPU\\(s\\), numbered from 0"):
            load_model(tiny_llama, device=f"cuda:{torch.cuda.device_count()}")
    model, _ = load_model(tiny_llama, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


# --- the estimator and the doctor -------------------------------------------------------------------

SHAPE = {"vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
         "intermediate_size": 11008}


@pytest.mark.parametrize("kwargs, match", [
    ({"model": {**SHAPE, "hidden_size": -4096}}, "hidden_size=-4096; sizes must be positive"),
    ({"model": {**SHAPE, "num_hidden_layers": 0}}, "num_hidden_layers=0"),
    ({"reserve": -1}, r"reserve=-1: .* must be in \[0, 1\)"),
    ({"reserve": 1.0}, r"reserve=1.0"),
    ({"gpu": -24}, "GPU memory must be a positive number of GiB"),
    ({"gpu": __import__("dsnb.plan.gpus", fromlist=["GPUSpec"]).GPUSpec("broken", 0)}, "must be positive"),
    ({"max_gpus": 0}, "max_gpus=0"),
    ({"max_gpus": float("inf")}, "max_gpus=inf"),
    ({"host_ram_gib": -8}, "host_ram_gib=-8"),
])
def test_fits_refuses_meaningless_inputs(kwargs, match):
    from dsnb.plan.fit import fits

    with pytest.raises(ValueError, match=match):
        fits(**{"model": SHAPE, "gpu": "RTX 4090", **kwargs})


def test_fits_search_is_bounded_for_huge_gpu_counts(monkeypatch):
    import dsnb.plan.fit as fit
    from dsnb.plan.memory import TrainingPlan

    calls = []
    real = fit.estimate_training_memory

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5000:
            raise AssertionError("the search for a fix tried more than 5000 plans")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "estimate_training_memory", counted)
    verdict = fit.fits(SHAPE, gpu=0.01, max_gpus=32768)  # 10 MiB cards: nothing fits
    assert not verdict.fits and verdict.fix is None
    assert len(calls) < 5000
    # same order as trying every subset (fewest changes, then cheapest rank), one change per group
    import itertools

    options = fit._changes(TrainingPlan(micro_batch_size=4), 64)
    brute = [tuple(i for i, _ in c) for size in range(1, len(options) + 1)
             for c in sorted(itertools.combinations(enumerate(options), size), key=lambda c: sum(i for i, _ in c))
             if len({g for _, (g, _, _) in c}) == size]
    assert fit._combinations(options) == brute


def test_doctor_reports_a_cache_that_is_a_file(tmp_path, monkeypatch):
    from dsnb.doctor import render, system_checks

    not_a_dir = tmp_path / "cache.txt"
    not_a_dir.write_text("oops")
    monkeypatch.setenv("DSNB_CACHE", str(not_a_dir))
    cache = next(c for c in system_checks() if c.name == "cache")
    assert not cache.ok and "is a file, not a directory" in cache.found
    assert "point DSNB_CACHE at a writable directory" in cache.fix and "DSNB_CACHE" in render([cache])
