"""Notebook 12's verifiable rewards (dsnb.train.rewards): what each one scores, the loophole, and that none of
them raises or stalls on what a model can write (empty, huge, lone surrogates, NUL bytes, code that never ends)."""

from __future__ import annotations

import ast
import time

import pytest

from dsnb.train import rewards as R
from dsnb.train.sandbox import SandboxLimits

HEAD = 'def area(width, height):\n    """Return the area of a rectangle."""'


def _score(completion, name):
    return R.REWARDS[name]([HEAD], [completion])[0]


def test_prompts_are_heads_of_real_functions_that_continue(corpus, tokenizer):
    held_out = R.function_prompts(corpus, "test")
    train = R.function_prompts(corpus, "train", tokenizer, max_prompt_tokens=64)
    assert len(held_out) > 100 and len(train) > 1000
    assert {p.split for p in held_out} == {"test"} and not {p.module for p in held_out} & {p.module for p in train}
    for p in held_out[:50] + train[:50]:
        assert p.prompt.lstrip().startswith(("def ", "async def ")) and p.prompt.rstrip().endswith(("'''", '"""', "'", '"'))
        assert p.reference_body.strip()
        # the real body completes the prompt into a function that parses
        ast.parse(p.prompt + "\n" + p.reference_body)
    assert all(len(tokenizer(p.prompt)["input_ids"]) <= 64 for p in train)
    drawn = R.function_prompts(corpus, "test", n=10, seed=3)
    assert drawn == R.function_prompts(corpus, "test", n=10, seed=3) and len(drawn) == 10


def test_the_reference_bodies_score_high():
    """The real body of a real function: every line a statement where statements fit on one line."""
    good = "\n    if width < 0:\n        raise ValueError(width)\n    return width * height\n\ndef next_one():"
    assert _score(good, "statements") == 1.0 and _score(good, "lines") == 1.0 and _score(good, "parses") == 1.0


def test_the_loophole_scores_comments_the_fix_does_not():
    comments = "\n    # the area\n    # is width times height\n    # of course"
    assert _score(comments, "lines") == 1.0
    assert _score(comments, "statements") == 0.0 and _score(comments, "parses") == 0.0
    mixed = "\n    # compute\n    return width * height\n"
    assert _score(mixed, "statements") == 0.5 and _score(mixed, "lines") == 1.0


@pytest.mark.parametrize("body, statements", [
    ("\n    pass", 0.0), ("\n    ...", 0.0), ("\n    width", 0.0), ("\n    self.width", 0.0), ("\n    'text'", 0.0),
    ("\n    return width", 1.0), ("\n    for x in width:\n        y = x", 1.0), ("\n    try:\n        f()\n    except E:", 1.0),
    ("\n    x = (1,\n         2)", 0.0), ("\n    return width +", 0.0),
], ids=["pass", "ellipsis", "name", "attribute", "string", "return", "for block", "try except", "multi-line call",
        "unfinished"])
def test_statements_doing_something(body, statements):
    assert _score(body, "statements") == statements


def test_the_strict_check_needs_a_closed_function_that_parses():
    assert _score("\n    return width * height\n\nclass Next:", "parses") == 1.0
    assert _score("\n    return width * height", "parses") == 0.0  # never closed (the budget ran out)
    assert _score("\n    return (width *\n\nx = 1", "parses") == 0.0  # closed, but does not parse
    assert _score("\n\nx = 1", "parses") == 0.0  # closed at once: a docstring alone parses but does nothing
    assert _score('  and more"""\n    return 1\n\nx', "parses") == 0.0  # wrote past the docstring's quotes


HOSTILE = {**R.HOSTILE_COMPLETIONS, "bytes object": b"\n    return 1", "None": None,
           "conversational": [{"role": "assistant", "content": "\n    return 1\n\nx"}]}


@pytest.mark.parametrize("name", sorted(R.REWARDS))
def test_no_reward_raises_or_stalls_on_hostile_completions(name):
    t0 = time.perf_counter()
    scores = R.REWARDS[name]([HEAD] * len(HOSTILE), list(HOSTILE.values()))
    assert len(scores) == len(HOSTILE) and all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert time.perf_counter() - t0 < 30
    by_case = dict(zip(HOSTILE, scores, strict=True))
    assert by_case["empty"] == by_case["None"] == by_case["bytes object"] == by_case["huge"] == 0.0
    if name in ("parses", "runs"):
        assert by_case["conversational"] == 1.0 and by_case["lone surrogates"] == 0.0 and by_case["NUL bytes"] == 0.0


def test_function_runs_executes_in_the_sandbox_and_contains_code_that_never_ends(tmp_path):
    outside = tmp_path / "written.txt"
    completions = {
        "returns": "\n    return width * height\n\nx",
        "bad arguments are fine": "\n    return width.area()\n\nx",  # AttributeError on None: the caller's fault
        "undefined name": "\n    return undefined_helper(width)\n\nx",
        "never ends": "\n    while True:\n        width = 1\n\nx",
        "writes outside": f"\n    open({str(outside)!r}, 'w').write('x')\n\nx",
        "allocates": "\n    return bytearray(10**10)\n\nx",
        "imports nothing real": "\n    import no_such_module_here\n\nx",
        "generator": "\n    yield undefined_name\n\nx",
    }
    limits = SandboxLimits(seconds=2.0, cpu_seconds=1, memory_mb=128)
    t0 = time.perf_counter()
    scores = dict(zip(completions, R.function_runs([HEAD] * len(completions), list(completions.values()), limits=limits),
                      strict=True))
    assert scores == {"returns": 1.0, "bad arguments are fine": 1.0, "undefined name": 0.0, "never ends": 0.0,
                      "writes outside": 0.0, "allocates": 0.0, "imports nothing real": 0.0, "generator": 0.0}
    assert not outside.exists() and time.perf_counter() - t0 < 20


def test_call_script_calls_with_none_for_every_parameter():
    body = R.split_body("\n    return (a, b, c)\n\nx")
    script = R.call_script("def f(a, /, b=1, *args, c, **kw):\n    'doc'", body)
    assert "f(None, None, c=None)" in script
    ast.parse(script)


def test_split_body_and_registry():
    body = R.split_body("  \n    x = 1\n\n    y = 2\nz = 3\n    w")
    assert body.lines == ("    x = 1", "", "    y = 2") and body.closed and body.code_lines == ["    x = 1", "    y = 2"]
    assert not R.split_body("\n    x = 1").closed
    assert R.reward_functions(["statements", "parses"]) == [R.statement_share, R.function_parses]
    with pytest.raises(ValueError, match="choose one or more of"):
        R.reward_functions(["length"])
    checks = R.body_checks(HEAD, "\n    # c\n    return 1\n\nx")
    assert checks["comments"] == 1 and checks["statements doing something"] == 1 and checks["function_parses"] == 1.0
