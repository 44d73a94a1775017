"""Reading the Trainer's log history: one logged metric as (steps, values), as notebooks plot it (03, 06)."""

from __future__ import annotations

from typing import Any


def logged(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric the Trainer logged, e.g. ``loss``, ``eval_loss`` or ``learning_rate``."""
    rows = [(int(r["step"]), float(r[key])) for r in log_history if key in r]
    return [s for s, _ in rows], [v for _, v in rows]
