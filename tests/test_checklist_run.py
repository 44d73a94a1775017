"""run_checklist end to end on a tiny random DeepSeek-V3: every row present, bad inputs become failed rows with
the reason (never an exception), the Trainer form, the measurements, and ``python -m dsnb.checklist``."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DeepseekV3ForCausalLM, Trainer

from dsnb.checklist import run_checklist
from dsnb.checklist.trials import checkpoint_round_trip, short_run
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.train.config import FinetuneConfig
from dsnb.train.sft import build_trainer

NAMES = ["data: rows", "labels not all -100", "batch vs processes", "sequence length ≤ context", "learning rate", "warmup", "learning-rate floor",
         "pad token ≠ EOS", "precision", "data shift (JS divergence)", "tokens unseen in the reference",
         "gradient-norm stability", "GPU utilisation", "GPU memory reserve", "torch.set_num_threads(4)",
         "Zstandard checkpoints"]


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(tiny_deepseek_config(vocab_size=len(tokenizer), num_hidden_layers=2, hidden_size=64,
                                                      intermediate_size=128, moe_intermediate_size=32))


@pytest.fixture(scope="module")
def rows(tokenizer):
    texts = ["def add(a, b):\n    return a + b", "Return the sum of two numbers.", "for i in range(3):\n    print(i)",
             "Open a file and read it."] * 4
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * 2 + ids[2:]})
    return out


def cfg(tmp_path, **kw):
    values = dict(model="tiny-random", max_steps=40, per_device_batch_size=4, learning_rate=1e-3,
                  min_learning_rate=1e-5, output_dir=str(tmp_path / "run"), eval_steps=None)
    return FinetuneConfig(**{**values, **kw})


def test_a_good_recipe_passes_and_measures_everything(tmp_path, model, tokenizer, rows, capsys):
    reference = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "Return the sum."]
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    result = run_checklist(cfg(tmp_path), model, rows, reference, tokenizer=tokenizer, processes=1, steps=6,
                           window=4)
    assert [r.name for r in result.rows] == NAMES
    assert result.ok, result.to_text()
    assert result.row("data shift").status in ("pass", "warn") and 0 <= result.row("data shift").value <= 1
    assert result.row("gradient-norm stability").status in ("pass", "warn")  # measured, not skipped
    run = result.measurements["short_run"]
    assert run.steps == 6 and len(run.grad_norms) == 6 and run.error is None
    if not torch.cuda.is_available():
        assert result.row("GPU utilisation").status == "n.a." and "no CUDA GPU" in result.row("GPU utilisation").reason
        assert result.row("GPU memory reserve").status == "n.a."
    threads = result.row("torch.set_num_threads")
    assert threads.status in ("pass", "warn") and threads.value > 0
    ck = result.measurements["checkpoint"]
    assert ck["verified"] and 0 < ck["ratio"] <= 1.05 and ck["stored_bytes"] > 0
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items()), "the checklist trained the model"
    out = capsys.readouterr().out
    assert "gradient-norm stability" in out and "PASS" in out


def test_bad_inputs_fail_with_reasons_not_exceptions(tmp_path, model, tokenizer, rows):
    bad_rows = [*rows[:3], {"input_ids": [], "attention_mask": [], "labels": []}]
    result = run_checklist(cfg(tmp_path), model, bad_rows, tokenizer=tokenizer, processes=1, verbose=False)
    assert result.row("data: rows").status == "fail" and "1 of 4 rows empty" in result.row("data: rows").measured
    skipped = result.row("gradient-norm stability")
    assert skipped.status == "n.a." and "fix the failed rows first (data: rows)" in skipped.reason
    batch = run_checklist(cfg(tmp_path, global_batch_size=30), model, rows, tokenizer=tokenizer, processes=4,
                          verbose=False)
    assert batch.row("batch vs processes").status == "fail"
    assert "not a multiple of the 4 processes" in batch.row("batch vs processes").reason
    masked = [{**r, "labels": [-100] * len(r["labels"])} for r in rows]
    labels = run_checklist(cfg(tmp_path), model, masked, tokenizer=tokenizer, processes=1, verbose=False)
    assert labels.row("labels not all -100").status == "fail" and not labels.ok
    assert run_checklist(cfg(tmp_path), model, [], tokenizer=tokenizer, verbose=False).row("data: rows").status == "fail"


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU")
def test_fp16_on_cpu_and_pad_equal_eos(tmp_path, model, tokenizer, rows):
    result = run_checklist(cfg(tmp_path, precision="fp16"), model, rows, tokenizer=tokenizer, processes=1,
                           verbose=False)
    assert result.row("precision").status == "fail" and "needs a CUDA GPU" in result.row("precision").reason
    from transformers import AutoTokenizer

    same = AutoTokenizer.from_pretrained(tokenizer.name_or_path)  # a copy of its own: the fixture stays as it is
    same.pad_token = same.eos_token
    result = run_checklist(cfg(tmp_path), model, rows, tokenizer=same, processes=1, verbose=False)
    assert result.row("pad token").status == "fail" and "pad = EOS" in result.row("pad token").measured


def test_wrong_model_type_is_a_failed_run_not_a_crash(tmp_path, model, tokenizer, rows):
    result = run_checklist(cfg(tmp_path, model_type="llama"), model, rows, tokenizer=tokenizer, processes=1,
                           verbose=False, measure_threads=False)
    row = result.row("gradient-norm stability")
    assert row.status == "fail" and "expects a 'llama' model" in row.reason
    assert result.row("Zstandard").status == "n.a." and "could not be set up" in result.row("Zstandard").reason


def test_from_a_trainer(tmp_path, model, tokenizer, rows):
    from dsnb.train.chat import to_dataset

    c = cfg(tmp_path)
    trainer = build_trainer(c, copy.deepcopy(model), tokenizer, to_dataset(rows), progress=False)
    result = run_checklist(trainer, steps=4, window=3, verbose=False, measure_threads=False)
    assert result.ok, result.to_text()
    assert result.row("learning rate").value == pytest.approx(1e-3)
    assert result.row("learning-rate floor").value == pytest.approx(1e-2)  # 1e-5 of a 1e-3 peak, from lr_end
    assert result.measurements["short_run"].steps == 4
    with pytest.raises(TypeError, match="FinetuneConfig or a transformers.Trainer"):
        run_checklist({"learning_rate": 1e-3}, model, rows)


def test_short_run_stops_and_saves(tmp_path, model, tokenizer, rows):
    from dsnb.train.chat import data_collator, to_dataset

    c = cfg(tmp_path, logging_steps=1)
    trainer = Trainer(model=copy.deepcopy(model), args=c.training_arguments(), train_dataset=to_dataset(rows),
                      data_collator=data_collator(tokenizer))
    run = short_run(trainer, 3)
    assert run.steps == 3 and len(run.losses) == 3 and run.checkpoint is not None
    stats = checkpoint_round_trip(run.checkpoint)
    assert stats["verified"] and stats["bytes"] > stats["stored_bytes"]


def test_checkpoint_round_trip_on_compressible_and_random_bytes(tmp_path):
    zeros, noise = tmp_path / "z" / "checkpoint-1", tmp_path / "n" / "checkpoint-1"
    for d in (zeros, noise):
        d.mkdir(parents=True)
    (zeros / "w.bin").write_bytes(bytes(1 << 20))
    (noise / "w.bin").write_bytes(torch.randint(0, 256, (1 << 20,), dtype=torch.uint8).numpy().tobytes())
    assert checkpoint_round_trip(zeros)["ratio"] < 0.01
    random_bytes = checkpoint_round_trip(noise)
    assert random_bytes["ratio"] > 0.99 and random_bytes["verified"]


def test_cli_on_the_course_recipe(capsys):
    from dsnb.checklist.__main__ import main

    code = main(["configs/sft/tiny.yaml", "--steps", "4", "--examples", "32", "--processes", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "configs/sft/tiny.yaml: dsnb-tiny, 32 training examples" in out
    assert "data shift (JS divergence)" in out and "N.A.    data shift" not in out  # the course corpus is the reference


def test_cli_reports_bad_recipes(tmp_path, capsys):
    from dsnb.checklist.__main__ import main

    code = main(["configs/sft/tiny.yaml", "--set", "global_batch_size=30", "--processes", "4", "--examples", "16"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL    batch vs processes" in out and "not a multiple of the 4 processes" in out
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("learning_rate: fast\n")
    assert main([str(tmp_path / "bad.yaml")]) == 2
