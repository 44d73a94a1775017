"""Sticky A/B assignment: a hash of (experiment salt, user id) into weighted buckets (notebook 10).

The article splits traffic with ``random.random() < 0.5`` on every request, so one user meets both
variants and nothing a user does afterwards can be credited to either. Hashing the user id with the
experiment's salt gives every user one variant for the whole experiment (sticky), needs no stored
state (every gateway replica computes the same answer), and a new salt reshuffles users for the
next experiment. ``bucket`` maps a user to a point in [0, 1); ``assign`` cuts [0, 1) by the weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def bucket(user_id: str, salt: str) -> float:
    """The user's point in [0, 1): the first 60 bits of SHA-256 of ``json.dumps([salt, user_id])`` over 2**60.

    The JSON list keeps the two apart: with ``salt + ":" + user_id`` the user "x:y" under salt "a" and the
    user "y" under salt "a:x" hashed the same text, so one experiment's split could repeat another's.
    """
    digest = hashlib.sha256(json.dumps([salt, user_id]).encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """``weights`` normalised to sum to 1 (each must be >= 0, at least one > 0)."""
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"variant weights must be >= 0 with a positive sum, e.g. {{'A': 50, 'B': 50}}; got {dict(weights)}")
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def assign(user_id: str, salt: str, weights: Mapping[str, float]) -> str:
    """The variant of ``user_id``: the weighted slice of [0, 1) that ``bucket`` falls in (weights in the given order)."""
    point, edge = bucket(user_id, salt), 0.0
    shares = check_weights(weights)
    for name, share in shares.items():
        edge += share
        if point < edge:
            return name
    return [k for k, s in shares.items() if s > 0][-1]  # rounding: the point fell past the last edge
