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
    return check_number("1 (users per variant)", answer, sample_size(base_rate, relative_lift), rel_tol=0.01,
                        hint="n = (z_{α/2}·√(2·p̄(1-p̄)) + z_β·√(p1(1-p1) + p2(1-p2)))² / (p2 - p1)², "
                             "z_{α/2} = 1.96, z_β = 0.84.")


def recovered_share(requests: int, credit: str = "majority") -> float:
    """Share of a per-user effect a per-request 50/50 split measures when each user is credited to one variant.

    ``credit="last"``: the variant of the user's last request (notebook 10's page); ``"majority"``: the
    variant most of their requests saw (``requests`` odd). Exact, over all 2^R request sequences:
    E[share of requests on B | credited to B] - E[share on B | credited to A].
    """
    if credit not in ("last", "majority") or (credit == "majority" and requests % 2 == 0):
        raise ValueError(f"credit={credit!r} with {requests} requests: 'last', or 'majority' with an odd count")
    seqs = list(itertools.product((0, 1), repeat=requests))
    to_b = (lambda s: s[-1] == 1) if credit == "last" else (lambda s: 2 * sum(s) > requests)
    on_b = [s for s in seqs if to_b(s)]
    on_a = [s for s in seqs if not to_b(s)]
    return sum(sum(s) / requests for s in on_b) / len(on_b) - sum(sum(s) / requests for s in on_a) / len(on_a)


#: Exercise 2: requests per user, credited to the variant most of them saw.
EX2_REQUESTS = 5


def check_recovered_share(answer: float | None, requests: int = EX2_REQUESTS) -> bool:
    """Exercise 2: the share of the true effect a per-request split measures, 5 requests, majority credit."""
    return check_number("2 (share of the effect measured)", answer, recovered_share(requests), rel_tol=0.02,
                        hint="enumerate the 2^5 coin-flip sequences; split them by which variant most requests saw; "
                             "average the share of requests on B in each half and subtract.")


#: Exercise 3: a MoE model and a card (the notebook estimates dense models on an H100).
EX3_MODEL, EX3_GPU = "deepseek-v2-lite", "A100 80GB"


def tokens_in_budget(model: str = EX3_MODEL, gpu: str = EX3_GPU, budget: float = 0.8) -> float:
    """Answer tokens that fit in ``budget`` seconds at batch 1, bf16, one GPU (``dsnb.serve.latency``)."""
    est = estimate_response_seconds(model, gpu)
    return (budget - est["prefill seconds"]) / est["seconds per token"]


def check_tokens_in_budget(answer: float | None, model: str = EX3_MODEL, gpu: str = EX3_GPU) -> bool:
    """Exercise 3: how many answer tokens DeepSeek-V2-Lite in bf16 on one A100 80GB can produce in 0.8 s."""
    return check_number("3 (tokens in 0.8 s)", answer, tokens_in_budget(model, gpu), rel_tol=0.01,
                        hint="seconds per token = ACTIVE parameters × 2 bytes / (bandwidth × 0.75): a token reads only "
                             "its 6 of 64 routed experts; take the 200-token prefill off the 0.8 s first.")


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
    r = EX2_REQUESTS
    return f"""
Credited to the variant of their last request, a user's other R - 1 requests are fair coins and the
split recovers 1/R of the effect (the page's case). Credited to the majority, the label says more: a
user on "B" saw B on at least {r // 2 + 1} of {r} requests. Enumerating the 2^{r} sequences, E[share on B | majority B]
- E[share on B | majority A] = {recovered_share(r):.4f} (last-request credit: {recovered_share(r, "last"):.4f}).
Better, but still far below 1: any per-request split of a per-user outcome dilutes the effect; split by user.
(dsnb.exercises.nb10.recovered_share({r}) enumerates the sequences.)
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    est = estimate_response_seconds(EX3_MODEL, EX3_GPU)
    return f"""
{EX3_MODEL} holds 15.7 B parameters but a token reads only the active ones: {est['active parameters'] / 1e9:.2f} B
(shared weights + 6 of 64 routed experts), {est['active parameters'] * 2 / 1e9:.1f} GB in bf16 per token.
{EX3_GPU}: 2.039 TB/s × 0.75 -> {est['seconds per token'] * 1000:.2f} ms per token; prefill of 200 tokens
≈ {est['prefill seconds'] * 1000:.0f} ms. (0.8 - {est['prefill seconds']:.3f}) / {est['seconds per token']:.5f} = {tokens_in_budget():.0f} tokens
(dsnb.serve.latency.estimate_response_seconds). Counting all 15.7 B would give about a sixth of that.
"""
