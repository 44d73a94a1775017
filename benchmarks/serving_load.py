"""Load test of the A/B gateway on loopback (notebook 10): req/s and p50 / p99 latency for cache hits and misses.

Two model servers (the course's SFT model, one per variant) and the gateway run in this process on free
loopback ports; ``--clients`` concurrent clients send ``--requests`` chat requests in total. Most repeat one
of 40 questions at temperature 0 (cache hits after the first time); ``--miss-share`` of them carry a unique
seed, which makes them cacheable but never seen before (cache misses that reach a model). It prints the
throughput, the gateway's latency (from the event log) and the client's, the 5xx count, and checks that the
event store holds one row per request. Target: cache-hit p50 <= 2 ms at the gateway.

    python benchmarks/serving_load.py [--requests 2000] [--clients 50] [--miss-share 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from transformers.utils.logging import disable_progress_bar

from dsnb.data.corpus import course_corpus
from dsnb.serve.engine import ModelEngine
from dsnb.serve.gateway import Experiment, Gateway
from dsnb.serve.latency import percentiles
from dsnb.serve.runner import BackgroundServer
from dsnb.serve.server import create_app
from dsnb.serve.simulate import summary_questions
from dsnb.serve.store import EventStore


async def _drive(url: str, prompts: list[str], n: int, clients: int, miss_share: float, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    plan = [(f"user-{i % 500}", prompts[int(rng.integers(len(prompts)))], i if rng.random() < miss_share else None)
            for i in range(n)]
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    out: list[tuple] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            user, prompt, unique = queue.get_nowait()
            body = {"model": "x", "user": user, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
            body.update({"temperature": 0.7, "seed": unique} if unique is not None else {"temperature": 0})
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=body)
            out.append((r.status_code, r.headers.get("x-cache"), time.perf_counter() - t0))

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--miss-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    disable_progress_bar()
    engine = ModelEngine.load("dsnb-tiny-sft", version="sft-v2", name="course-model")
    prompts = [q.prompt for q in summary_questions(course_corpus().pairs_in("test")[:40])]
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(f"sqlite:///{Path(tmp) / 'events.sqlite'}")
        with BackgroundServer(create_app(engine)) as a, BackgroundServer(create_app(engine)) as b:
            gw = Gateway(Experiment("load", "s", {"A": 1, "B": 1}), {"A": [a.url], "B": [b.url]}, store=store)
            with BackgroundServer(gw.app) as g:
                t0 = time.perf_counter()
                results = asyncio.run(_drive(g.url, prompts, args.requests, args.clients, args.miss_share, args.seed))
                wall = time.perf_counter() - t0
        store.flush()
        rows = store.rows("requests")
        store.close()
    server_5xx = sum(s >= 500 for s, _, _ in results)
    print(f"{len(results)} requests from {args.clients} clients in {wall:.1f} s: {len(results) / wall:.0f} req/s; "
          f"5xx: {server_5xx}; rows stored: {len(rows)} (sent {len(results)})")
    for label in ("hit", "miss"):
        gw_ms = [r["latency_ms"] for r in rows if r["cache_hit"] == (label == "hit")]
        client_ms = [1000 * t for _, c, t in results if c == label]
        if gw_ms:
            g, c = percentiles(gw_ms), percentiles(client_ms)
            print(f"cache {label:<4} n={len(gw_ms):5d}  gateway p50 {g['p50']:7.2f} ms  p99 {g['p99']:7.2f} ms   "
                  f"client p50 {c['p50']:7.1f} ms  p99 {c['p99']:7.1f} ms")
    hits = [r["latency_ms"] for r in rows if r["cache_hit"]]
    if hits:
        p50 = percentiles(hits)["p50"]
        print(f"target cache-hit p50 <= 2 ms at the gateway: {'met' if p50 <= 2 else 'NOT met'} ({p50:.2f} ms)")
    if server_5xx or len(rows) != len(results):
        raise SystemExit("FAILED: 5xx responses or lost rows")


if __name__ == "__main__":
    main()
