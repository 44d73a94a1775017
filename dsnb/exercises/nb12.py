"""Exercise checks and worked solutions for notebook 12 (GRPO with verifiable rewards).

The questions move the notebook's setting elsewhere: a group of 8 instead of 4, a reward the notebook does not
train on, the rollouts' KV cache of DeepSeek-V2-Lite instead of deepseek-coder. Expected values are computed by
dsnb (``dsnb.train.grpo.group_advantages``, ``dsnb.train.rewards``, ``dsnb.plan.rl``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import torch

from dsnb.exercises import Solutions, check_choice, check_number
from dsnb.plan.rl import estimate_grpo_memory, kv_cache_bytes_per_token
from dsnb.train.grpo import group_advantages
from dsnb.train.rewards import HOSTILE_COMPLETIONS, parse_line, split_body

SOLUTIONS = Solutions("12")
solution = SOLUTIONS.show

#: Exercise 1: a group of EX1_GROUP completions of which EX1_SUCCESSES score 1 and the rest 0.
EX1_GROUP, EX1_SUCCESSES = 8, 1
#: Exercise 2: the head the reward's cases complete.
EX2_HEAD = 'def mean(values):\n    """Return the arithmetic mean of values."""'
#: Exercise 2: completions the learner's reward is run on (with ``HOSTILE_COMPLETIONS``).
EX2_CASES = (
    "\n    return sum(values) / len(values)\n\ndef next_one():",
    "\n    total = sum(values)\n    return total / len(values)",
    "\n    # return the mean\n    pass",
    "\n    return\n",
    "\n    return (sum(values) /\n            len(values))",
    "\n    if not values:\n        return None\n    x = 1",
    "\n    print(values)\n\nreturn 3",
    "\n    returns = sum(values)",
    "",
)
#: Exercise 3: the model, prompts x generations sampled at once, and the token lengths.
EX3_MODEL, EX3_PROMPTS, EX3_GENERATIONS, EX3_PROMPT_LEN, EX3_COMPLETION_LEN = "deepseek-v2-lite", 16, 8, 256, 1024


def expected_advantage(group: int = EX1_GROUP, successes: int = EX1_SUCCESSES) -> float:
    """The group-relative advantage of a success in a group of 0/1 rewards (``scale="group"``)."""
    rewards = torch.tensor([1.0] * successes + [0.0] * (group - successes))
    return float(group_advantages(rewards, group)[0])


def check_group_advantage(answer: float | None) -> bool:
    """Exercise 1: the advantage the one success gets in a group of 8 with rewards 1, 0, 0, 0, 0, 0, 0, 0."""
    return check_number("1 (advantage in a group of 8)", answer, expected_advantage(), rel_tol=0.01,
                        hint="subtract the group's mean reward, then divide by the group's standard deviation "
                             "with Bessel's correction (n − 1), plus 1e-4.")


def returns_a_value(prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
    """Exercise 2's reward, done: 1.0 when a line of the body is a ``return`` statement with a value, else 0.0."""
    out = []
    for c in completions:
        if not isinstance(c, str):
            out.append(0.0)
            continue
        body = split_body(c)
        found = any(isinstance(n := parse_line(ln), ast.Return) and n.value is not None for ln in body.code_lines)
        out.append(float(found))
    return out


def _scores(reward: Callable[..., Any], completions: list[Any]) -> tuple[float, ...] | str:
    """The reward's scores of ``completions`` (one head for all), or why they could not be had."""
    try:
        scores = reward([EX2_HEAD] * len(completions), completions)
        scores = [float(s) for s in scores]
    except Exception as exc:  # the learner's code: any failure is the answer to report
        return f"it raised {type(exc).__name__}: {exc}"
    if len(scores) != len(completions):
        return f"it returned {len(scores)} scores for {len(completions)} completions"
    return tuple(scores)


#: What ``check_reward`` compares (a sentence, not the scores: a page prints rewards of 0.0 and 1.0 everywhere).
EX2_AGREES = "scores every case as returns_a_value does"


def check_reward(answer: Callable[..., Any] | None) -> bool:
    """Exercise 2: a reward function scoring EX2_CASES (and hostile completions) as ``returns_a_value`` does."""
    cases = list(EX2_CASES) + list(HOSTILE_COMPLETIONS.values())
    expected = _scores(returns_a_value, cases)
    verdict: str | None = None
    if answer is not None:
        got = _scores(answer, cases) if callable(answer) else f"{answer!r} is not a function"
        if isinstance(got, str):
            print(f"Exercise 2: {got}")
            verdict = got
        else:
            wrong = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
            names = [f"case {i}" if i < len(EX2_CASES) else f"hostile: {list(HOSTILE_COMPLETIONS)[i - len(EX2_CASES)]}"
                     for i in wrong]
            if wrong:
                print(f"Exercise 2: {len(wrong)} of {len(cases)} completions scored differently: {', '.join(names)}")
            verdict = f"{len(wrong)} cases differ" if wrong else EX2_AGREES
    return check_choice("2 (a reward: returns a value)", verdict, EX2_AGREES,
                        hint="read the body with dsnb.train.rewards.split_body, check each line with parse_line "
                             "(an ast node, False or None) and look for an ast.Return whose value is not None; return "
                             "one float per completion and never raise.")


def expected_kv_gib(model: str = EX3_MODEL) -> float:
    """GiB of KV cache for EX3_PROMPTS x EX3_GENERATIONS sequences of prompt + completion tokens (``dsnb.plan.rl``)."""
    return estimate_grpo_memory(model, prompts_per_generation=EX3_PROMPTS, num_generations=EX3_GENERATIONS,
                                prompt_len=EX3_PROMPT_LEN, completion_len=EX3_COMPLETION_LEN).kv_cache


def check_kv_cache(answer: float | None) -> bool:
    """Exercise 3: the rollouts' KV cache of DeepSeek-V2-Lite, 16 prompts x 8 completions of 256 + 1024 tokens."""
    return check_number("3 (KV cache of the rollouts, GiB)", answer, expected_kv_gib(), rel_tol=0.02,
                        hint="sequences × tokens per sequence × cache bytes per token; DeepSeek-V2-Lite's MLA caches "
                             "kv_lora_rank + qk_rope_head_dim values per layer (configs/models/deepseek-v2-lite.yaml), "
                             "2 bytes each in bf16.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    g, k = EX1_GROUP, EX1_SUCCESSES
    mean = k / g
    std = (g / (g - 1) * mean * (1 - mean)) ** 0.5
    return f"""
The group's mean reward is {k}/{g} = {mean:.4f}; its standard deviation with Bessel's correction is
sqrt({g}/{g - 1} × {mean:.4f} × {1 - mean:.4f}) = {std:.4f}.
The success's advantage: ({1:.0f} − {mean:.4f}) / ({std:.4f} + 1e-4) = {expected_advantage():.4f}
(dsnb.train.grpo.group_advantages(torch.tensor([1.] + [0.] * {g - 1}), {g})[0]). The rarer a success in its group, the
larger its advantage: one success in 8 is pushed up harder than one in 4, and each failure pushed down less.
"""


@SOLUTIONS.register(2)
def _solution_2() -> str:
    return '''
import ast
from dsnb.train.rewards import parse_line, split_body

def returns_something(prompts, completions, **kwargs):
    out = []
    for c in completions:
        if not isinstance(c, str):
            out.append(0.0)
            continue
        lines = split_body(c).code_lines
        out.append(float(any(isinstance(n := parse_line(ln), ast.Return) and n.value is not None for ln in lines)))
    return out

The body ends where a line starts at column 0 ("return 3" after the function does not count), a bare "return"
returns nothing, a return split over two lines does not parse line by line, and "returns = ..." is an
assignment. dsnb.exercises.nb12.returns_a_value is this function.
'''


@SOLUTIONS.register(3)
def _solution_3() -> str:
    from dsnb.model.architecture import kv_cache_per_token
    from dsnb.plan.shape import load_model_config

    per = kv_cache_bytes_per_token(EX3_MODEL)
    mha = kv_cache_per_token(load_model_config(EX3_MODEL)["config"])["MHA bytes per token (all layers)"]
    seqs, tokens = EX3_PROMPTS * EX3_GENERATIONS, EX3_PROMPT_LEN + EX3_COMPLETION_LEN
    return f"""
DeepSeek-V2-Lite's MLA caches its latent per token and layer: {per:,.0f} bytes per token over all layers in bf16
(dsnb.plan.rl.kv_cache_bytes_per_token). {EX3_PROMPTS} prompts × {EX3_GENERATIONS} completions = {seqs} sequences of
{EX3_PROMPT_LEN} + {EX3_COMPLETION_LEN} = {tokens} tokens:
  {seqs} × {tokens} × {per:,.0f} / 2**30 = {expected_kv_gib():.2f} GiB
(estimate_grpo_memory("{EX3_MODEL}", prompts_per_generation={EX3_PROMPTS}, num_generations={EX3_GENERATIONS},
prompt_len={EX3_PROMPT_LEN}, completion_len={EX3_COMPLETION_LEN}).kv_cache). A Llama-shaped model caching keys and
values of every head would need {seqs * tokens * mha / 2**30:.0f} GiB for the same heads and layers.
"""
