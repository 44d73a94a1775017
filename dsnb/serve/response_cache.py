"""The gateway's response cache: in-process with a TTL by default, Redis when ``REDIS_URL`` is set (notebook 10).

A cached answer is only correct for the same question to the same model: the key is a hash of
(variant, model version, normalised prompt, generation parameters). Normalising collapses runs of
white space and trims the ends (it does not lower-case: code is case-sensitive). Only deterministic
requests are cached (temperature 0, or a fixed seed): caching a sampled answer would hand every user
the same sample.

``TTLCache`` is a bounded in-process LRU with expiry (``cachetools``). ``RedisCache`` uses the ``redis`` client with
short timeouts; if Redis is down or unreachable, ``get`` misses and ``set`` does nothing, with a
logged warning (at most one per ``warn_every`` seconds): the user gets an answer from the model,
never an error. ``make_cache`` picks one from the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import cachetools

logger = logging.getLogger(__name__)

#: Environment variable with a Redis URL (``redis://host:6379/0``); unset -> in-process cache.
REDIS_ENV = "REDIS_URL"
#: Generation parameters that change the answer (and so belong in the key).
KEY_PARAMS = ("max_tokens", "temperature", "top_p", "seed")


def normalize_prompt(text: str) -> str:
    """``text`` with runs of white space collapsed to one space and the ends trimmed (case kept)."""
    return re.sub(r"\s+", " ", text).strip()


def cacheable(params: Mapping[str, Any]) -> bool:
    """True if the request's answer is deterministic: temperature 0, or a fixed seed."""
    return float(params.get("temperature", 1.0)) == 0.0 or params.get("seed") is not None


def cache_key(variant: str, version: str, prompt: str, params: Mapping[str, Any]) -> str:
    """Hex SHA-256 of (variant, model version, normalised prompt, the parameters in ``KEY_PARAMS``)."""
    kept = {k: params.get(k) for k in KEY_PARAMS}
    blob = json.dumps([variant, version, normalize_prompt(prompt), kept], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class TTLCache:
    """In-process cache: entries expire ``ttl`` seconds after they were set; least recently used go first.

    ``cachetools.TTLCache`` behind a lock (the gateway reads it from several threads), with hit and miss counts.
    """

    blocking = False  # get/set never wait on the network

    def __init__(self, ttl: float = 300.0, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be > 0 seconds and max_entries >= 1")
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._data: cachetools.TTLCache[str, Any] = cachetools.TTLCache(max_entries, ttl, timer=clock)
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or None if absent or expired."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""
        with self._lock:
            self._data[key] = value

    def __len__(self) -> int:
        with self._lock:
            self._data.expire()
            return len(self._data)

    def describe(self) -> str:
        return f"in-process TTL cache (ttl {self.ttl:g} s, at most {self.max_entries} entries)"


class RedisCache:
    """Redis-backed cache (JSON values, ``SET key value EX ttl``); Redis down -> bypass with a warning."""

    blocking = True  # network round trips: the gateway calls it from a worker thread

    def __init__(self, url: str, ttl: float = 300.0, timeout: float = 0.25, warn_every: float = 30.0,
                 prefix: str = "dsnb:cache:") -> None:
        import redis

        self.url, self.ttl, self.prefix, self.warn_every = url, ttl, prefix, warn_every
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._last_warning = -float("inf")
        self.hits = self.misses = self.bypassed = 0

    def _down(self, exc: Exception) -> None:
        self.bypassed += 1
        now = time.monotonic()
        if now - self._last_warning >= self.warn_every:
            self._last_warning = now
            logger.warning("Redis cache at %s is unreachable (%s): requests bypass the cache", self.url, exc)

    def get(self, key: str) -> Any | None:
        try:
            raw = self.client.get(self.prefix + key)
        except self._errors as exc:
            self._down(exc)
            return None
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        try:
            self.client.set(self.prefix + key, json.dumps(value), ex=max(1, int(round(self.ttl))))
        except self._errors as exc:
            self._down(exc)

    def describe(self) -> str:
        return f"Redis cache at {self.url} (ttl {self.ttl:g} s)"


def make_cache(ttl: float = 300.0, url: str | None = None) -> TTLCache | RedisCache:
    """``RedisCache`` for ``url`` or ``$REDIS_URL`` if set, else an in-process ``TTLCache``."""
    url = url or os.environ.get(REDIS_ENV)
    return RedisCache(url, ttl) if url else TTLCache(ttl)
