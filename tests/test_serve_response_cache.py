"""The response cache: key normalisation, TTL expiry, LRU bound, what is cacheable, Redis down -> bypass."""

from __future__ import annotations

import logging

import pytest

from dsnb.serve.response_cache import RedisCache, TTLCache, cache_key, cacheable, make_cache, normalize_prompt


def test_key_normalises_white_space_but_not_case_and_includes_everything_that_changes_the_answer():
    p = {"max_tokens": 8, "temperature": 0}
    assert normalize_prompt("  def f( x ):\n\n   return x  ") == "def f( x ): return x"
    assert cache_key("A", "v1", "def  f():", p) == cache_key("A", "v1", " def f():\n", p)
    assert cache_key("A", "v1", "def f():", p) != cache_key("A", "v1", "DEF F():", p)
    others = [cache_key("B", "v1", "q", p), cache_key("A", "v2", "q", p), cache_key("A", "v1", "q", {**p, "max_tokens": 9}),
              cache_key("A", "v1", "q", {**p, "seed": 1}), cache_key("A", "v1", "q", p)]
    assert len(set(others)) == 5
    assert cache_key("A", "v1", "q", {**p, "user": "someone"}) == cache_key("A", "v1", "q", p)


def test_cacheable_only_when_deterministic():
    assert cacheable({"temperature": 0})
    assert cacheable({"temperature": 0.7, "seed": 3})
    assert not cacheable({"temperature": 0.7})
    assert not cacheable({})  # OpenAI's default temperature is 1


def test_ttl_expiry_and_lru_bound():
    now = [0.0]
    cache = TTLCache(ttl=10, max_entries=2, clock=lambda: now[0])
    cache.set("a", 1)
    now[0] = 9.9
    assert cache.get("a") == 1
    now[0] = 10.0
    assert cache.get("a") is None and len(cache) == 0
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")  # a is now the most recently used
    cache.set("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert (cache.hits, cache.misses) == (4, 2)
    with pytest.raises(ValueError, match="ttl"):
        TTLCache(ttl=0)


def test_make_cache_follows_redis_url(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert isinstance(make_cache(), TTLCache)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    assert isinstance(make_cache(), RedisCache)


def test_unreachable_redis_misses_and_warns_once(caplog):
    cache = RedisCache("redis://127.0.0.1:9/0", timeout=0.2, warn_every=3600)
    with caplog.at_level(logging.WARNING, logger="dsnb.serve.response_cache"):
        assert cache.get("k") is None
        cache.set("k", {"x": 1})
        assert cache.get("k") is None
    assert cache.bypassed == 3
    assert caplog.text.count("unreachable") == 1
