"""The model server: OpenAI-compatible responses, bounded parameters, errors, API key, metrics, hot swap."""

from __future__ import annotations

import threading

import pytest
import torch
from fastapi.testclient import TestClient

from dsnb.model.scoring import greedy_generate
from dsnb.serve.engine import ModelEngine, PromptTooLong
from dsnb.serve.server import MAX_TOKENS, create_app

PROMPT = "Summarize this Python function in one line.\ndef read_config(path, encoding='utf-8'):"


@pytest.fixture(scope="module")
def engine(base_dir):
    return ModelEngine.load("dsnb-tiny", version="base-v1", name="course-model")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


def chat(client, **over):
    body = {"model": "course-model", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
            "temperature": 0}
    return client.post("/v1/chat/completions", json={**body, **over})


def test_chat_completion_is_the_greedy_answer_through_the_chat_template(client, engine):
    r = chat(client)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "course-model"
    assert body["system_fingerprint"] == "base-v1"
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
    expected = greedy_generate(engine.model, engine.tokenizer, [list(ids)], 8)[0]
    expected = [t for t in expected if t != engine.tokenizer.pad_token_id]
    eos = engine.tokenizer.eos_token_id
    expected = expected[:expected.index(eos)] if eos in expected else expected
    assert body["choices"][0]["message"]["content"] == engine.tokenizer.decode(expected, skip_special_tokens=True)
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["completion_tokens"] == len(expected)
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}


def test_completion_endpoint_and_models(client):
    r = client.post("/v1/completions", json={"model": "course-model", "prompt": "def add(a, b):", "max_tokens": 4,
                                             "temperature": 0})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    assert r.json()["usage"]["completion_tokens"] <= 4
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "course-model" and models["data"][0]["max_model_len"] == 1024
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_sampling_with_a_seed_is_reproducible(client):
    a = chat(client, temperature=1.0, seed=7, max_tokens=12).json()["choices"][0]["message"]["content"]
    b = chat(client, temperature=1.0, seed=7, max_tokens=12).json()["choices"][0]["message"]["content"]
    assert a == b


@pytest.mark.parametrize(("over", "param"), [
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_tokens": MAX_TOKENS + 1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"stream": True}, "stream"),
])
def test_bad_parameters_are_422_naming_the_field(client, over, param):
    r = chat(client, **over)
    assert r.status_code == 422
    assert r.json()["error"]["param"] == param
    assert param.split(".")[0] in r.json()["error"]["message"]


def test_malformed_json_is_422(client):
    r = client.post("/v1/chat/completions", content=b'{"model": "course-model", "messages": [',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]


def test_prompt_over_the_context_limit_is_400_with_the_limit(client):
    r = client.post("/v1/completions", json={"model": "course-model", "prompt": "x " * 2000, "max_tokens": 4})
    assert r.status_code == 400
    assert "1024" in r.json()["error"]["message"]


def test_unknown_model_is_404(client):
    r = chat(client, model="gpt-4")
    assert r.status_code == 404 and "course-model" in r.json()["error"]["message"]


def test_api_key(engine):
    with TestClient(create_app(engine, api_key="s3cret")) as c:
        assert chat(c).status_code == 401
        assert c.post("/v1/chat/completions", headers={"Authorization": "Bearer wrong"}, json={}).status_code == 401
        ok = c.post("/v1/chat/completions", headers={"Authorization": "Bearer s3cret"},
                    json={"model": "course-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_tokens_and_errors(engine):
    with TestClient(create_app(engine)) as c:
        for _ in range(3):
            tokens = chat(c).json()["usage"]["completion_tokens"]
        chat(c, temperature=9)
        text = c.get("/metrics").text
    assert _metric(text, "dsnb_model_requests_total", endpoint="/v1/chat/completions", status="200",
                   version="base-v1") == 3
    assert _metric(text, "dsnb_model_requests_total", status="422") == 1
    assert _metric(text, "dsnb_model_errors_total", kind="invalid_request") == 1
    assert _metric(text, "dsnb_model_generated_tokens_total", version="base-v1") == 3 * tokens
    assert _metric(text, "dsnb_model_request_seconds_count", endpoint="/v1/chat/completions") == 3


def test_engine_rejects_prompt_that_does_not_fit(engine):
    with pytest.raises(PromptTooLong, match="context limit is 1024"):
        engine.generate([1] * 1020, max_tokens=8)


def test_hot_swap_without_failed_requests_and_rollback(engine):
    """Requests keep succeeding while the model is swapped; after the swap they get the new version."""
    other = ModelEngine(engine.model, engine.tokenizer, "course-model", "base-v1")
    clone = type(engine.model)(engine.model.config)
    clone.load_state_dict({k: v * 0.5 for k, v in engine.model.state_dict().items()})
    statuses, versions = [], []
    with TestClient(create_app(other)) as c:
        def worker():
            for _ in range(6):
                r = chat(c, max_tokens=4)
                statuses.append(r.status_code)
                versions.append(r.json().get("system_fingerprint"))
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        other.swap(clone, "halved-v2")
        for t in threads:
            t.join()
        after = chat(c).json()["system_fingerprint"]
        assert after == "halved-v2"
        assert other.rollback() == "base-v1"
        assert chat(c).json()["system_fingerprint"] == "base-v1"
    assert statuses == [200] * 18
    assert set(versions) <= {"base-v1", "halved-v2"}
    with pytest.raises(RuntimeError, match="nothing to roll back"):
        other.rollback()
    assert torch.equal(other.model.model.embed_tokens.weight, engine.model.model.embed_tokens.weight)


def test_official_openai_client_against_uvicorn(engine):
    openai = pytest.importorskip("openai")
    from dsnb.serve.runner import BackgroundServer

    with BackgroundServer(create_app(engine, api_key="k")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
        out = client.chat.completions.create(model="course-model", messages=[{"role": "user", "content": PROMPT}],
                                             max_tokens=6, temperature=0)
        assert out.choices[0].message.role == "assistant"
        assert out.usage.completion_tokens <= 6 and out.system_fingerprint == "base-v1"
        text = client.completions.create(model="course-model", prompt="def f(x):", max_tokens=3, temperature=0)
        assert text.usage.completion_tokens <= 3
        assert [m.id for m in client.models.list()] == ["course-model"]
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="course-model", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=MAX_TOKENS + 1)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="bad", max_retries=0).models.list()
    assert not srv.thread.is_alive()


# -- hostile input: 4xx for bad input, never 5xx; size checked before tokenising; bounded work ------------------

def _raw(client, path: str, body: str, **headers):
    return client.post(path, content=body.encode(), headers={"content-type": "application/json", **headers})


def test_empty_prompt_is_422_naming_the_prompt(client):
    r = client.post("/v1/completions", json={"model": "course-model", "prompt": "", "max_tokens": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(("body", "param"), [
    ('{"model": "course-model", "prompt": "a\\ud800b", "max_tokens": 2}', "prompt"),
    ('{"model": "course-model", "prompt": "hi", "user": "a\\ud800b", "max_tokens": 2}', "user"),
    ('{"model": "course-model", "prompt": "hi", "user": "' + "u" * 200 + '", "max_tokens": 2}', "user"),
    ('{"model": "course-model", "prompt": "hi", "temperature": NaN}', "temperature"),
    ('{"model": "course-model", "prompt": "hi", "temperature": Infinity}', "temperature"),
    ('{"model": "course-model", "prompt": "hi", "temperature": 1e400}', "temperature"),
    ('{"model": "course-model", "prompt": "hi", "temperature": "abc"}', "temperature"),
    ('{"model": "course-model", "prompt": "hi", "temperature": null}', "temperature"),
    ('{"model": "course-model", "prompt": "hi", "temperature": []}', "temperature"),
    ('{"model": "course-model", "prompt": "hi", "top_p": NaN}', "top_p"),
    ('{"model": "course-model", "prompt": "hi", "seed": 1e40}', "seed"),
    ('{"model": "course-model", "prompt": "hi", "seed": 100000000000000000000000000000}', "seed"),
], ids=["surrogate-prompt", "surrogate-user", "long-user", "nan", "infinity", "1e400", "abc", "null", "list",
        "top_p-nan", "seed-float", "seed-huge"])
def test_hostile_fields_are_422_naming_the_field(client, body, param):
    r = _raw(client, "/v1/completions", body)
    assert r.status_code == 422 and r.json()["error"]["param"] == param


def test_lone_surrogate_in_a_chat_message_is_422(client):
    body = '{"model": "course-model", "messages": [{"role": "user", "content": "x\\udfffy"}]}'
    r = _raw(client, "/v1/chat/completions", body)
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages.0.content"
    assert "surrogate" in r.json()["error"]["message"]


class CountingTokenizer:
    """The engine's tokenizer, recording the length of every text it is asked to tokenise."""

    def __init__(self, tok) -> None:
        self.tok, self.seen = tok, []

    def __call__(self, text, *args, **kwargs):
        self.seen.append(len(text))
        return self.tok(text, *args, **kwargs)

    def apply_chat_template(self, messages, *args, **kwargs):
        self.seen.append(sum(len(m["content"]) for m in messages))
        return self.tok.apply_chat_template(messages, *args, **kwargs)

    def __len__(self) -> int:
        return len(self.tok)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_prompt_size_is_checked_before_tokenising(engine):
    spy = CountingTokenizer(engine.tokenizer)
    counted = ModelEngine(engine.model, spy, "course-model", "base-v1")
    with TestClient(create_app(counted)) as c:
        limit = counted.max_prompt_chars
        assert limit >= counted.context_limit  # every token covers at least one character
        for path, body in [("/v1/completions", {"prompt": "x" * (limit + 1)}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * (limit + 1)}]})]:
            r = c.post(path, json={"model": "course-model", "max_tokens": 2, **body})
            assert r.status_code == 400 and f"{limit}" in r.json()["error"]["message"]
        assert spy.seen == []  # refused without being tokenised
        big = c.post("/v1/completions", json={"model": "course-model", "prompt": "x" * 10_000_000})
        assert big.status_code == 413 and "bytes" in big.json()["error"]["message"]
        streamed = c.post("/v1/completions", headers={"content-type": "application/json"},  # no Content-Length
                          content=(b'{"model": "course-model", "prompt": "' if i == 0 else b"x" * 65536
                                   for i in range(200)))
        assert streamed.status_code == 413
        assert spy.seen == []
        assert c.post("/v1/completions", json={"model": "course-model", "prompt": "x y", "max_tokens": 2}).status_code == 200
        assert spy.seen == [3]


def test_concurrent_work_is_bounded_with_429(engine):
    app = create_app(engine, max_concurrent=1)
    statuses = []
    with TestClient(app) as c:
        engine._lock.acquire()  # the engine is busy: the first request waits inside the server
        try:
            first = threading.Thread(target=lambda: statuses.append(chat(c, max_tokens=2).status_code))
            first.start()
            for _ in range(1000):  # bounded wait until the first request holds the one slot
                if app.state.work.active == 1:
                    break
                threading.Event().wait(0.01)
            busy = chat(c, max_tokens=2)
        finally:
            engine._lock.release()
        first.join(60)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert "busy" in busy.json()["error"]["message"]
    assert statuses == [200] and app.state.work.active == 0
