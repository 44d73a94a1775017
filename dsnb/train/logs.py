"""Reading the Trainer's log history: one logged metric as (steps, values), as notebooks plot it (03, 06).

``LoggedRun`` gives a run's result object (``SFTResult``, ``DPOResult``) the same two readers.
"""

from __future__ import annotations

from typing import Any


def logged(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric the Trainer logged, e.g. ``loss``, ``eval_loss`` or ``learning_rate``."""
    rows = [(int(r["step"]), float(r[key])) for r in log_history if key in r]
    return [s for s, _ in rows], [v for _, v in rows]


class LoggedRun:
    """Readers for a result that keeps the Trainer's ``log_history`` (mixed into the SFT and DPO results)."""

    log_history: list[dict[str, Any]]

    @property
    def train_losses(self) -> tuple[list[int], list[float]]:
        """(steps, training loss) as logged."""
        return logged(self.log_history, "loss")

    def logged(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one logged metric, e.g. ``eval_loss`` or ``rewards/accuracies``."""
        return logged(self.log_history, key)
