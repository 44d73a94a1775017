from __future__ import annotations

import io

from transformers import TrainerControl, TrainerState, TrainingArguments

from dsnb.progress import LineProgress


def test_about_ten_lines_and_a_summary(tmp_path):
    stream = io.StringIO()
    cb = LineProgress("demo", lines=10, stream=stream)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    state.max_steps = 1000
    cb.on_train_begin(args, state, control)
    for step in range(1, 1001):
        state.global_step = step
        if step % 50 == 0:
            cb.on_log(args, state, control, logs={"loss": 5.0 - step / 1000})
        cb.on_step_end(args, state, control)
    cb.on_train_end(args, state, control)
    lines = stream.getvalue().strip().splitlines()
    assert lines[0] == "demo: 1000 steps"
    assert 10 <= len(lines) - 2 <= 11
    assert "step 1000/1000" in lines[-2] and "ETA" in lines[-2] and "steps/s" in lines[-2]
    assert lines[-1].startswith("demo: done, 1000 steps") and "4.000" in lines[-1]


def test_lines_go_to_the_current_stdout_by_default(tmp_path, capsys):
    """Progress joins the cell's other prints (one output block), and follows a swapped sys.stdout."""
    cb = LineProgress("demo", lines=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    state.max_steps = 4
    cb.on_train_begin(args, state, control)
    cb.on_train_end(args, state, control)
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "demo: 4 steps" and captured.err == ""
