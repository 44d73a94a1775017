"""Simulated users of the A/B gateway: questions over loopback, a fixed judge, thumbs up or down (notebook 10).

Each user asks a few of the course's summary questions (a function's signature -> its one-line
summary) through the gateway with their own user id, like a real client would (HTTP, the OpenAI
request format). Whether they like an answer is drawn with probability equal to the answer's
token-F1 against the real summary (``dsnb.data.preference.token_f1``, a deterministic judge), from
a generator seeded by (seed, user), so a run is reproducible; each verdict goes back as feedback.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from dsnb.data.corpus import SUMMARY_PROMPT, InstructionPair
from dsnb.data.preference import token_f1


@dataclass(frozen=True)
class Question:
    """A prompt and the reference answer the judge compares with."""

    prompt: str
    reference: str


def summary_questions(pairs: Sequence[InstructionPair]) -> list[Question]:
    """The summary task of notebook 03 for each function: signature in, docstring summary as reference."""
    return [Question(SUMMARY_PROMPT + p.signature, p.summary) for p in pairs]


def _one_user(client: httpx.Client, user: str, asks: list[Question], rng: np.random.Generator, max_tokens: int,
              judge: Callable[[str, str], float]) -> list[dict[str, Any]]:
    rows = []
    for q in asks:
        t0 = time.perf_counter()
        r = client.post("/v1/chat/completions", json={"model": "experiment", "user": user, "max_tokens": max_tokens,
                                                      "temperature": 0,
                                                      "messages": [{"role": "user", "content": q.prompt}]})
        seconds = time.perf_counter() - t0
        row = {"user": user, "question": q.prompt, "status": r.status_code, "variant": r.headers.get("x-variant"),
               "cache": r.headers.get("x-cache"), "seconds": seconds}
        if r.status_code == 200:
            answer = r.json()["choices"][0]["message"]["content"]
            quality = judge(answer, q.reference)
            liked = bool(rng.random() < quality)
            client.post("/v1/feedback", json={"request_id": r.json()["id"], "user": user, "score": float(liked)})
            row.update(request_id=r.json()["id"], version=r.json().get("system_fingerprint"), quality=quality,
                       liked=liked)
        rows.append(row)
    return rows


def simulate_users(url: str, questions: Sequence[Question], users: int, requests_per_user: int = 3, seed: int = 0,
                   workers: int = 4, max_tokens: int = 24,
                   judge: Callable[[str, str], float] = token_f1) -> list[dict[str, Any]]:
    """Run ``users`` simulated users against the gateway at ``url``; one dict per request, in user order."""
    if requests_per_user > len(questions):
        raise ValueError(f"requests_per_user={requests_per_user} but only {len(questions)} questions")
    plans = []
    for u in range(users):
        rng = np.random.default_rng([seed, u])
        asks = [questions[i] for i in rng.choice(len(questions), requests_per_user, replace=False)]
        plans.append((f"user-{seed}-{u}", asks, rng))
    with httpx.Client(base_url=url, timeout=120) as client, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _one_user(client, p[0], p[1], p[2], max_tokens, judge), plans)
        return [row for rows in results for row in rows]
