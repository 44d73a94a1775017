"""Load test of the A/B gateway on loopback (notebook 10): req/s, p50 / p99 latency, and a hostile mix that must get 4xx.

Two model servers (the course's SFT model, one per variant, each its own process serving
``create_app(ModelEngine(...))`` with an API key, as ``python -m dsnb.serve model`` does) and the gateway
(in this process, with a client key) run on free loopback ports; ``--clients`` concurrent clients, in a process
of their own (sharing an interpreter lock with the gateway made each slow the other), send
``--requests`` requests in total. The whole run is done twice, with the same plan: model servers that
answer one request at a time (``max_batch=1``, without merging identical requests in flight: the engine
before batching) and model servers that batch (``--max-batch``, the
engine's dynamic batching); the end compares the two (throughput ratio, cache-miss p50 / p99 ratios,
memory). Each run ends with a misses-only phase (``--saturate`` requests, every one new to the cache): the
model servers' throughput through the gateway, which is what batching changes; then the same number of
misses goes straight to the two model servers over HTTP (their API key, no gateway), which measures the model
servers alone: on two shared cores the gateway's and the clients' CPU per request, which batching does not
shrink, takes CPU from the model servers (CPU per answer of each process is printed for both). The mixed
run's own throughput is bound by the gateway and the clients, since four in five of its requests never reach
a model.
Before both runs, the engine alone (``engine_alone``: no HTTP, in this process) is timed the same two ways,
which shows how much of batching's gain the HTTP path keeps on a machine whose cores the servers, the
gateway and the clients share.
Targets for batching: >= 3x the model throughput and a miss p50 at most a third of one-at-a-time.
Valid requests repeat one of 40 questions at temperature 0 (cache hits after the first time);
``--miss-share`` of them carry a unique seed, which makes them cacheable but never seen before (cache
misses that reach a model). ``--hostile-share`` of all requests are hostile, drawn evenly from
``HOSTILE``: no client key, malformed JSON, a NaN temperature, an empty prompt, a lone surrogate, a
2 MiB body, a prompt longer than the context could hold, feedback with a NaN score, feedback on
another user's request. Before the run, ``--direct-oversized`` 10 MB prompts go straight to a model
server at once (the case that used to take it from 2.3 to 5.7 GiB).

It prints the throughput, the gateway's latency (from the event log) and the client's, the statuses
each kind of request got, the 5xx counts, lost rows (valid requests answered 200 whose row is not in
the event store) and each model server's resident memory before the run, at its peak and after.
A 429 (a model server at its limit of requests in progress) is retried after its ``Retry-After``, as
the openai client does; the number of retries is printed.
It fails unless valid requests get no 5xx, hostile ones get their 4xx, and no row is lost, in both
runs. Target: cache-hit p50 <= 2 ms at the gateway.

    python benchmarks/serving_load.py [--requests 2000] [--clients 50] [--miss-share 0.1] [--hostile-share 0.2]
                                      [--max-batch 16] [--saturate 800]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from transformers.utils.logging import disable_progress_bar

from dsnb.data.corpus import course_corpus
from dsnb.serve.gateway import Experiment, Gateway
from dsnb.serve.latency import percentiles
from dsnb.serve.runner import BackgroundServer, free_port
from dsnb.serve.simulate import summary_questions
from dsnb.serve.store import EventStore
from dsnb.train.dpo import sft_model_path

CLIENT_KEY, BACKEND_KEY = "bench-client-key", "bench-backend-key"
#: Hostile request kinds and the status each must get.
HOSTILE = {"no_key": 401, "malformed_json": 422, "nan_temperature": 422, "empty_prompt": 422, "lone_surrogate": 422,
           "body_2mib": 413, "prompt_too_long": 400, "feedback_nan": 422, "feedback_not_yours": 403}
JSON = {"content-type": "application/json"}
#: How often a client retries a 429 (a model server working on its limit of requests) before giving up.
RETRIES_429 = 10
#: A model server process: the course's SFT model behind create_app, batching up to argv[1] requests (1: one at
#: a time, and identical requests in flight generated separately, as the engine did before batching).
MODEL_NAME = "course-model"
SERVER = ("import os, sys, uvicorn; from dsnb.serve.engine import ModelEngine; from dsnb.serve.server import create_app; "
          f"n = int(sys.argv[1]); e = ModelEngine.load('dsnb-tiny-sft', 'sft-v2', name={MODEL_NAME!r}, max_batch=n, "
          "coalesce=n > 1); "
          "uvicorn.run(create_app(e, api_key=os.environ['DSNB_API_KEY']), host='127.0.0.1', port=int(sys.argv[2]), "
          "log_level='warning')")


def _memory(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of process ``pid`` (the peak from /proc: Linux only, else the resident)."""
    rss = psutil.Process(pid).memory_info().rss / 2**20
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        peak = rss
    return rss, peak


def _cpu_seconds(*pids: int) -> list[float]:
    """CPU seconds (user + system) each process has used so far."""
    return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids]


def _start_model_server(log: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, DSNB_API_KEY=BACKEND_KEY, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(max_batch), str(port)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the model server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


def _request(kind: str, user: str, prompt: str, unique: int | None, victim: str, direct: bool = False
             ) -> tuple[str, bytes, dict]:
    """(path, body, headers) of one request of ``kind`` ("valid" or one of ``HOSTILE``); ``direct``: a valid
    request addressed to a model server itself (its API key and model name) instead of the gateway."""
    auth = {**JSON, "Authorization": f"Bearer {BACKEND_KEY if direct else CLIENT_KEY}"}
    body: dict = {"model": MODEL_NAME if direct else "x", "user": user, "max_tokens": 16,
                  "messages": [{"role": "user", "content": prompt}]}
    body.update({"temperature": 0.7, "seed": unique} if unique is not None else {"temperature": 0})
    if kind == "valid":
        return "/v1/chat/completions", json.dumps(body).encode(), auth
    if kind == "no_key":
        return "/v1/chat/completions", json.dumps(body).encode(), JSON
    if kind == "malformed_json":
        return "/v1/chat/completions", json.dumps(body).encode()[:-7], auth
    if kind == "nan_temperature":
        return "/v1/chat/completions", json.dumps(dict(body, temperature=float("nan"))).encode(), auth
    if kind == "empty_prompt":
        return "/v1/completions", json.dumps({"model": "x", "user": user, "prompt": ""}).encode(), auth
    if kind == "lone_surrogate":
        return "/v1/chat/completions", json.dumps(dict(body, messages=[{"role": "user", "content": "a\ud800b"}])).encode(), auth
    if kind == "body_2mib":
        return "/v1/completions", json.dumps({"model": "x", "user": user, "prompt": "x" * (2 << 20)}).encode(), auth
    if kind == "prompt_too_long":  # under the body limit, over what 1,024 tokens can hold: refused untokenised
        return "/v1/completions", json.dumps({"model": "x", "user": user, "prompt": "def f(x): " * 30_000}).encode(), auth
    if kind == "feedback_nan":
        return "/v1/feedback", json.dumps({"request_id": victim, "user": user, "score": float("nan")}).encode(), auth
    if kind == "feedback_not_yours":
        return "/v1/feedback", json.dumps({"request_id": victim, "user": user, "score": 0.0}).encode(), auth
    raise ValueError(f"unknown request kind {kind!r}")


async def _drive(url: str | list[str], prompts: list[str], n: int, clients: int, miss_share: float,
                 hostile_share: float, seed: int, victim: str, first_id: int = 0) -> tuple[list[tuple], float]:
    """Send the planned requests from ``clients`` concurrent clients; (kind, status, cache, request id, seconds,
    429 retries) per request, and the wall time. A cache miss carries the seed ``first_id`` + its index.
    ``url``: the gateway's; a list of model servers' URLs sends valid requests straight to them in turn."""
    rng = np.random.default_rng(seed)
    kinds, urls = list(HOSTILE), [url] if isinstance(url, str) else url
    plan = []
    for i in range(n):
        kind = kinds[int(rng.integers(len(kinds)))] if rng.random() < hostile_share else "valid"
        user, prompt = f"user-{i % 500}", prompts[int(rng.integers(len(prompts)))]
        unique = first_id + i if rng.random() < miss_share else None
        plan.append((kind, urls[i % len(urls)], *_request(kind, user, prompt, unique, victim, len(urls) > 1)))
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:  # bodies built before the clock starts: the clients only send
        queue.put_nowait(item)
    out: list[tuple] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            kind, url, path, content, headers = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                for attempt in range(1, RETRIES_429 + 2):  # a 429 is retried after Retry-After, as openai's client does
                    r = await http.post(url + path, content=content, headers=headers)
                    if r.status_code != 429 or attempt > RETRIES_429:
                        break
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            except httpx.TransportError:  # the connection dropped (status 0): counted and printed, not a crash
                out.append((kind, 0, None, None, time.perf_counter() - t0, 0))
                continue
            out.append((kind, r.status_code, r.headers.get("x-cache"), r.headers.get("x-request-id"),
                        time.perf_counter() - t0, attempt - 1))

    # one connection per client, as separate users have: one shared pool of 50 connections costs the client process
    # more CPU the more of them are idle (httpcore checks every pooled connection on each request), so a faster
    # server would have made the load generator itself the bottleneck
    https = [httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=1)) for _ in range(clients)]
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for http in https))
        return out, time.perf_counter() - t0
    finally:
        await asyncio.gather(*(http.aclose() for http in https))


def _drive_apart(*args: object, **kwargs: object) -> tuple[list[tuple], float, float]:
    """``_drive`` run in a process of its own (the clients' process); also the CPU seconds it used."""
    cpu = time.process_time()
    results, wall = asyncio.run(_drive(*args, **kwargs))
    return results, wall, time.process_time() - cpu


async def _direct_oversized(url: str, n: int) -> list[int]:
    """``n`` 10 MB prompts at once, straight to a model server (with its API key)."""
    body = json.dumps({"model": MODEL_NAME, "prompt": "x" * 10_000_000}).encode()
    async with httpx.AsyncClient(timeout=300) as http:
        rs = await asyncio.gather(*(http.post(url + "/v1/completions", content=body,
                                              headers={**JSON, "Authorization": f"Bearer {BACKEND_KEY}"})
                                    for _ in range(n)))
    return [r.status_code for r in rs]


def _server_metrics(url: str) -> dict[str, float]:
    """A model server's batching figures from /metrics: requests batched, their mean batch size, coalesced."""
    samples = {(x.name, x.labels.get("le")): x.value for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text)
               for x in fam.samples}
    n = samples.get(("dsnb_model_batch_size_count", None), 0.0)
    return {"batched": n, "mean_batch": samples.get(("dsnb_model_batch_size_sum", None), 0.0) / n if n else 0.0,
            "coalesced": samples.get(("dsnb_model_coalesced_requests_total", None), 0.0)}


def run(args: argparse.Namespace, prompts: list[str], max_batch: int, clients: concurrent.futures.Executor) -> dict:
    """One load run against two model servers batching up to ``max_batch`` requests; prints it, returns its figures."""
    print(f"\n=== model servers with max_batch={max_batch} ({'one request at a time' if max_batch == 1 else 'batched'})")
    with tempfile.TemporaryDirectory() as tmp:
        (sa, url_a), (sb, url_b) = (_start_model_server(Path(tmp) / "a.log", max_batch),
                                    _start_model_server(Path(tmp) / "b.log", max_batch))
        store = EventStore(f"sqlite:///{Path(tmp) / 'events.sqlite'}")
        try:
            before = {v: _memory(p.pid) for v, p in (("A", sa), ("B", sb))}
            direct = asyncio.run(_direct_oversized(url_a, args.direct_oversized)) if args.direct_oversized else []
            gw = Gateway(Experiment("load", "s", {"A": 1, "B": 1}), {"A": [url_a], "B": [url_b]}, store=store,
                         backend_api_key=BACKEND_KEY, client_keys=[CLIENT_KEY])
            with BackgroundServer(gw.app) as g:
                warm = httpx.post(g.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                                  json={"model": "x", "user": "victim", "max_tokens": 4, "temperature": 0,
                                        "messages": [{"role": "user", "content": prompts[0]}]})
                assert warm.status_code == 200, warm.text
                cpu0 = _cpu_seconds(sa.pid, sb.pid, os.getpid())
                results, wall, client_cpu = clients.submit(
                    _drive_apart, g.url, prompts, args.requests, args.clients, args.miss_share, args.hostile_share,
                    args.seed, warm.headers["x-request-id"]).result()
                cpu = [b - a for a, b in zip(cpu0, _cpu_seconds(sa.pid, sb.pid, os.getpid()), strict=True)]
                sat_cpu0 = _cpu_seconds(sa.pid, sb.pid, os.getpid())
                saturated, saturated_wall, sat_client_cpu = clients.submit(  # misses only: what the servers generate
                    _drive_apart, g.url, prompts, args.saturate, args.clients, 1.0, 0.0, args.seed + 1, "",
                    first_id=args.requests).result()
                sat_cpu = [b - a for a, b in zip(sat_cpu0, _cpu_seconds(sa.pid, sb.pid, os.getpid()), strict=True)]
            direct_cpu0 = _cpu_seconds(sa.pid, sb.pid)
            straight, straight_wall, straight_client_cpu = clients.submit(  # the same misses, no gateway in between
                _drive_apart, [url_a, url_b], prompts, args.saturate, args.clients, 1.0, 0.0, args.seed + 2, "",
                first_id=args.requests + args.saturate).result()
            straight_cpu = [b - a for a, b in zip(direct_cpu0, _cpu_seconds(sa.pid, sb.pid), strict=True)]
            store.flush()
            time.sleep(2.0)  # let the servers settle before reading their memory
            after = {v: _memory(p.pid) for v, p in (("A", sa), ("B", sb))}
            batching = [_server_metrics(u) for u in (url_a, url_b)]
            rows = store.rows("requests")
            dead = store.dead_lettered
        finally:
            store.close()
            for p in (sa, sb):
                p.terminate()
                p.wait(30)
    valid = [r for r in results if r[0] == "valid"]
    hostile = [r for r in results if r[0] != "valid"]
    stored_ids = {r["request_id"] for r in rows}
    saturated_ids = {r[3] for r in saturated}
    saturated_rows = [r for r in rows if r["request_id"] in saturated_ids]
    rows = [r for r in rows if r["request_id"] not in saturated_ids]
    answered = [r for r in valid if r[1] == 200]
    lost = sum(r[3] not in stored_ids for r in answered)
    valid_5xx, hostile_5xx = sum(r[1] >= 500 for r in valid), sum(r[1] >= 500 for r in hostile)
    print(f"{len(results)} requests from {args.clients} clients in {wall:.1f} s: {len(results) / wall:.0f} req/s "
          f"({len(valid)} valid, {len(hostile)} hostile)")
    retried = [r for r in results if r[5]]
    print(f"429 (busy, retried after Retry-After): {sum(r[5] for r in retried)} answers to {len(retried)} requests")
    print(f"valid: final statuses {dict(sorted(Counter(r[1] for r in valid).items()))}; 5xx: {valid_5xx}; rows lost: {lost} "
          f"of {len(answered)} answered; event rows by status {dict(sorted(Counter(r['status'] for r in rows).items()))} "
          f"(the warm-up and refused requests with a user included), dead-lettered {dead}")
    wrong = []
    for kind, expected in HOSTILE.items():
        got = Counter(r[1] for r in hostile if r[0] == kind)
        wrong += [kind] if set(got) - {expected} else []
        print(f"hostile {kind:<19} n={sum(got.values()):4d}  statuses {dict(sorted(got.items()))}  (expected {expected})")
    print(f"hostile 5xx: {hostile_5xx}")
    print(f"CPU seconds during the mixed run: model server A {cpu[0]:.1f}, B {cpu[1]:.1f}, gateway {cpu[2]:.1f}, "
          f"clients {client_cpu:.1f} (wall {wall:.1f} s, {os.cpu_count()} cores = {os.cpu_count() * wall:.1f} CPU-s)")
    dropped = Counter(r[0] for r in results if r[1] == 0)
    if dropped:
        print(f"connections dropped before an answer (status 0), by kind: {dict(dropped)}")
    figures: dict = {"max_batch": max_batch, "req_s": len(results) / wall, "5xx": valid_5xx + hostile_5xx, "lost": lost,
                     "answered": len(answered), "peak_mib": max(after[v][1] for v in after)}
    for label in ("hit", "miss"):
        gw_ms = [r["latency_ms"] for r in rows if r["cache_hit"] == (label == "hit") and r["status"] == 200]
        client_ms = [1000 * r[4] for r in valid if r[2] == label]
        if gw_ms and client_ms:
            g, c = percentiles(gw_ms), percentiles(client_ms)
            figures[label] = {"n": len(gw_ms), "p50": g["p50"], "p99": g["p99"]}
            print(f"cache {label:<4} n={len(gw_ms):5d}  gateway p50 {g['p50']:7.2f} ms  p99 {g['p99']:7.2f} ms   "
                  f"client p50 {c['p50']:7.1f} ms  p99 {c['p99']:7.1f} ms")
    for v, b in zip("AB", batching, strict=True):
        print(f"model server {v}: {b['batched']:.0f} requests generated in batches of {b['mean_batch']:.1f} on average "
              f"(per request), {b['coalesced']:.0f} answered from an identical request in flight (both phases)")
    if direct:
        print(f"{len(direct)} concurrent 10 MB prompts straight to server A: statuses {direct}")
    for v in ("A", "B"):
        print(f"model server {v} resident memory: before {before[v][0]:.0f} MiB, peak {after[v][1]:.0f} MiB, "
              f"after {after[v][0]:.0f} MiB")
    hits = [r["latency_ms"] for r in rows if r["cache_hit"]]
    if hits:
        p50 = percentiles(hits)["p50"]
        print(f"target cache-hit p50 <= 2 ms at the gateway: {'met' if p50 <= 2 else 'NOT met'} ({p50:.2f} ms)")
    sat_ok = [r for r in saturated if r[1] == 200]
    sat_lost = sum(r[3] not in stored_ids for r in sat_ok)
    sat_ms = percentiles([1000 * r[4] for r in sat_ok]) if sat_ok else {"p50": float("nan"), "p99": float("nan")}
    figures["model_req_s"] = len(sat_ok) / saturated_wall
    figures["saturated"] = {"n": len(saturated), "p50": sat_ms["p50"], "p99": sat_ms["p99"]}
    print(f"misses only (what the model servers can generate): {len(saturated)} requests in {saturated_wall:.1f} s: "
          f"{figures['model_req_s']:.1f} answers/s; client p50 {sat_ms['p50']:.0f} ms, p99 {sat_ms['p99']:.0f} ms; "
          f"statuses {dict(sorted(Counter(r[1] for r in saturated).items()))}; cache "
          f"{dict(Counter(r[2] for r in sat_ok))}; rows lost {sat_lost} of {len(sat_ok)} "
          f"({len(saturated_rows)} rows stored)")
    n_sat = max(len(sat_ok), 1)
    print(f"  CPU per answer: model servers {1000 * (sat_cpu[0] + sat_cpu[1]) / n_sat:.1f} ms, gateway "
          f"{1000 * sat_cpu[2] / n_sat:.1f} ms, clients {1000 * sat_client_cpu / n_sat:.1f} ms")
    straight_ok = [r for r in straight if r[1] == 200]
    straight_ms = percentiles([1000 * r[4] for r in straight_ok]) if straight_ok else {"p50": float("nan")}
    figures["direct_req_s"] = len(straight_ok) / straight_wall
    figures["direct_cpu_ms"] = 1000 * sum(straight_cpu) / max(len(straight_ok), 1)
    print(f"misses straight to the model servers (HTTP, no gateway): {len(straight)} requests in {straight_wall:.1f} s: "
          f"{figures['direct_req_s']:.1f} answers/s; client p50 {straight_ms['p50']:.0f} ms; statuses "
          f"{dict(sorted(Counter(r[1] for r in straight).items()))}; CPU per answer: model servers "
          f"{figures['direct_cpu_ms']:.1f} ms, clients {1000 * straight_client_cpu / max(len(straight_ok), 1):.1f} ms")
    figures["failed"] = bool(valid_5xx or hostile_5xx or lost or wrong or any(s != 413 for s in direct)
                             or any(r[1] != 200 for r in valid) or sat_lost or len(sat_ok) != len(saturated)
                             or len(straight_ok) != len(straight))
    if figures["failed"]:
        print(f"FAILED: 5xx responses ({valid_5xx} valid, {hostile_5xx} hostile), {lost} lost rows, "
              f"unexpected statuses for {wrong or 'none'}, direct 10 MB prompts {direct}")
    return figures


def engine_alone(prompts: list[str], max_batch: int, requests: int = 256, threads: int = 32) -> dict[str, float]:
    """Answers/s of the engine alone (no HTTP, no gateway), one at a time against ``max_batch``, in this process.

    ``requests`` sampled cache misses (temperature 0.7, each its own seed) from ``threads`` threads, 16
    tokens each, as the load test's misses ask: how much of batching's gain the HTTP path keeps.
    """
    import concurrent.futures

    import torch

    from dsnb.serve.engine import ModelEngine

    torch.set_num_threads(1)  # as the model servers run (OMP_NUM_THREADS=1)
    one = ModelEngine.load("dsnb-tiny-sft", "sft-v2", name=MODEL_NAME, max_batch=1, coalesce=False)
    batched = ModelEngine(one.model, one.tokenizer, MODEL_NAME, max_batch=max_batch)
    ids = [one.chat_ids([{"role": "user", "content": prompts[i % len(prompts)]}]) for i in range(requests)]
    out = {}
    for label, engine in (("one at a time", one), (f"max_batch={max_batch}", batched)):
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i, e=engine: e.generate(ids[i], 16, 0.7, 1.0, i), range(requests)))
        out[label] = requests / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--miss-share", type=float, default=0.1)
    parser.add_argument("--hostile-share", type=float, default=0.2)
    parser.add_argument("--direct-oversized", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched run's max_batch (the other: 1)")
    parser.add_argument("--saturate", type=int, default=800,
                        help="requests of the misses-only phase that measures the model servers' throughput")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    disable_progress_bar()
    sft_model_path()  # the servers serve it but cannot build it (they import no training code)
    prompts = [q.prompt for q in summary_questions(course_corpus().pairs_in("test")[:40])]
    alone = engine_alone(prompts, args.max_batch)
    (a1, r1), (ab, rb) = alone.items()
    print(f"engine alone (no HTTP, one process, one thread): {rb:.1f} answers/s with {ab} against {r1:.1f} {a1}: "
          f"{rb / r1:.1f}x")
    spawn = multiprocessing.get_context("spawn")  # the clients get a process (and an interpreter lock) of their own
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as clients:
        one, batched = run(args, prompts, 1, clients), run(args, prompts, args.max_batch, clients)
    print("\n=== batched against one at a time (same plan)")
    ratio = batched["model_req_s"] / one["model_req_s"]
    print(f"misses through the gateway: {batched['model_req_s']:.1f} against {one['model_req_s']:.1f} answers/s: "
          f"{ratio:.1f}x (target >= 3x); client p50 {batched['saturated']['p50']:.0f} against "
          f"{one['saturated']['p50']:.0f} ms")
    print(f"model servers over HTTP, no gateway (misses only): {batched['direct_req_s']:.1f} against "
          f"{one['direct_req_s']:.1f} answers/s: {batched['direct_req_s'] / one['direct_req_s']:.1f}x (target >= 3x); "
          f"model-server CPU per answer {batched['direct_cpu_ms']:.1f} against {one['direct_cpu_ms']:.1f} ms "
          f"({one['direct_cpu_ms'] / batched['direct_cpu_ms']:.1f}x less)")
    print(f"whole mixed run: {batched['req_s']:.0f} against {one['req_s']:.0f} req/s "
          f"({batched['req_s'] / one['req_s']:.1f}x; four in five requests are cache hits or refusals, which the "
          "gateway answers without a model, so this ratio is bound by the gateway and client process, not by batching)")
    if "miss" in one and "miss" in batched:
        m1, mb = one["miss"], batched["miss"]
        print(f"cache miss at the gateway: p50 {mb['p50'] / 1000:.2f} s against {m1['p50'] / 1000:.2f} s "
              f"({m1['p50'] / mb['p50']:.1f}x lower, target >= 3x), p99 {mb['p99'] / 1000:.2f} s against "
              f"{m1['p99'] / 1000:.2f} s; misses {mb['n']} against {m1['n']}")
    print(f"5xx: {batched['5xx']} and {one['5xx']}; rows lost: {batched['lost']} of {batched['answered']} and "
          f"{one['lost']} of {one['answered']}; peak model-server memory {batched['peak_mib']:.0f} against "
          f"{one['peak_mib']:.0f} MiB")
    if one["failed"] or batched["failed"]:
        raise SystemExit("FAILED: see the runs above")


if __name__ == "__main__":
    main()
