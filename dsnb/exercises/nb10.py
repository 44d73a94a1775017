"""Exercise checks and worked solutions for notebook 10 (serving, A/B testing, online learning).

Expected values are computed by dsnb.
"""

from __future__ import annotations

import itertools

from dsnb.exercises import Solutions, check_number
from dsnb.serve.abtest import sample_size
from dsnb.serve.latency import estimate_response_seconds

SOLUTIONS = Solutions("10")
solution = SOLUTIONS.show


def check_sample_size(answer: float | None, base_rate: float = 0.04, relative_lift: float = 0.10) -> bool:
    """Exercise 1: users per variant to detect ``base_rate`` -> ``base_rate·(1 + lift)`` (α 0.05, power 0.8)."""
    return check_number("1 (users per variant)", answer, sample_size(base_rate, relative_lift), rel_tol=0.03,
                        hint="n = (z_{α/2}·√(2·p̄(1-p̄)) + z_β·√(p1(1-p1) + p2(1-p2)))² / (p2 - p1)², "
                             "z_{α/2} = 1.96, z_β = 0.84.")


def recovered_share(requests: int) -> float:
    """Share of a per-user effect that a per-request split recovers when each user is credited to the
    variant of their last request: E[share on B | last on B] - E[share on B | last on A], over all 2^R sequences."""
    seqs = list(itertools.product((0, 1), repeat=requests))
    on_b = [s for s in seqs if s[-1] == 1]
    on_a = [s for s in seqs if s[-1] == 0]
    return sum(sum(s) / requests for s in on_b) / len(on_b) - sum(sum(s) / requests for s in on_a) / len(on_a)


def check_recovered_share(answer: float | None, requests: int = 8) -> bool:
    """Exercise 2: the share of the true effect a per-request 50/50 split measures with ``requests`` per user."""
    return check_number("2 (share of the effect measured)", answer, recovered_share(requests), rel_tol=0.02,
                        hint="the last request is fixed by the label; the other R - 1 are fair coins.")


def tokens_in_budget(model: str = "deepseek-coder-33b-base", gpu: str = "H200", budget: float = 0.8) -> float:
    """Answer tokens that fit in ``budget`` seconds at batch 1, bf16, one GPU (``dsnb.serve.latency``)."""
    est = estimate_response_seconds(model, gpu)
    return (budget - est["prefill seconds"]) / est["seconds per token"]


def check_tokens_in_budget(answer: float | None, model: str = "deepseek-coder-33b-base", gpu: str = "H200") -> bool:
    """Exercise 3: how many answer tokens ``model`` in bf16 on one ``gpu`` can produce in 0.8 s."""
    return check_number("3 (tokens in 0.8 s)", answer, tokens_in_budget(model, gpu), rel_tol=0.05,
                        hint="seconds per token = active parameters × 2 bytes / (bandwidth × 0.75); "
                             "take the 200-token prefill off the 0.8 s first.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    p1, p2 = 0.04, 0.04 * 1.10
    return f"""
p1 = 0.04, p2 = 0.04 × 1.10 = {p2:.4f}, p̄ = {(p1 + p2) / 2:.4f}; z_{{α/2}} = 1.960, z_β = 0.842.
n = (1.960·√(2·p̄(1-p̄)) + 0.842·√(p1(1-p1) + p2(1-p2)))² / (p2 - p1)² = {sample_size(p1, 0.10):,} users per variant
(dsnb.serve.abtest.sample_size). A small relative lift on a small base rate needs tens of thousands of
users per arm: a shop's "+15% conversion" is only a result if the test had that many.
"""


@SOLUTIONS.register(2)
def _solution_2() -> str:
    r = 8
    return f"""
A user credited to B has their last request on B (share 1/R) and the other R - 1 on B half the time:
E[share on B] = (1 + (R - 1)/2) / R. Credited to A: ((R - 1)/2) / R. The difference is 1/R:
with R = {r}, {recovered_share(r):.4f} of the true effect (dsnb.exercises.nb10.recovered_share enumerates all
2^{r} sequences). The more a user comes back, the less of the effect a per-request split can see.
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    est = estimate_response_seconds("deepseek-coder-33b-base", "H200")
    return f"""
deepseek-coder-33b has {est['active parameters'] / 1e9:.1f} B parameters: {est['active parameters'] * 2 / 1e9:.1f} GB in bf16,
read once per token. H200: 4.8 TB/s × 0.75 -> {est['seconds per token'] * 1000:.1f} ms per token; prefill of 200 tokens
≈ {est['prefill seconds'] * 1000:.0f} ms. (0.8 - {est['prefill seconds']:.3f}) / {est['seconds per token']:.4f} = {tokens_in_budget():.0f} tokens
(dsnb.serve.latency.estimate_response_seconds).
"""
