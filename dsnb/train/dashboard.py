"""Dashboards of ``TrainingMonitor`` histories: live while training runs, static afterwards.

``draw_dashboard`` puts one or several runs side by side on six panels (loss, gradient norm with the
alert band, learning rate, tokens/s, activation std of the deepest decoder layer, MoE imbalance);
``LiveDashboard`` is a ``TrainerCallback`` that redraws it every ``every`` steps in a Jupyter output
(one figure updated in place) or does nothing outside Jupyter. The event files the monitor writes are
what ``tensorboard --logdir`` shows; these figures are the same numbers for a notebook. Taught in
notebook 07.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from dsnb.train.monitor import TrainingMonitor

#: (title, y label, log scale) of each panel, in order.
PANELS = (
    ("training loss", "loss (nats/token)", True),
    ("gradient norm (before clipping)", "L2 norm", True),
    ("learning rate", "learning rate", True),
    ("throughput", "tokens / s", False),
    ("activation std, deepest layer", "std of the layer output", True),
    ("MoE load imbalance (mean over layers)", "busiest expert / mean", False),
)


def _series(history: Mapping[str, list[tuple[int, float]]], tag: str) -> tuple[list[int], list[float]]:
    points = history.get(tag, [])
    return [s for s, _ in points], [v for _, v in points]


def deepest_activation_tag(history: Mapping[str, list[tuple[int, float]]]) -> str | None:
    """``activation/layer_NN/std`` of the highest-numbered decoder layer the monitor sampled, if any."""
    tags = sorted(t for t in history if re.fullmatch(r"activation/layer_\d+/std", t))
    return tags[-1] if tags else None


def mean_imbalance(history: Mapping[str, list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Steps and the busiest-expert / mean load averaged over the MoE layers (empty for dense models)."""
    per_layer = [dict(history[t]) for t in sorted(history) if t.endswith("/imbalance_max_over_mean")]
    if not per_layer:
        return [], []
    steps = sorted(set.intersection(*(set(d) for d in per_layer)))
    return steps, [sum(d[s] for d in per_layer) / len(per_layer) for s in steps]


def panel_series(monitor: TrainingMonitor) -> list[tuple[list[int], list[float]]]:
    """The (steps, values) each of ``PANELS`` shows for one run."""
    h = monitor.history
    lr = _series(h, "learning_rate") if "learning_rate" in h else _series(h, "learning_rate/optimizer")
    act = deepest_activation_tag(h)
    return [_series(h, "loss"), _series(h, "grad_norm"), lr, _series(h, "tokens_per_s"),
            _series(h, act) if act else ([], []), mean_imbalance(h)]


def draw_dashboard(runs: Mapping[str, TrainingMonitor] | TrainingMonitor, fig: Any = None, title: str = "") -> Any:
    """Draw the runs' histories on a 2 x 3 grid (a new figure, or ``fig`` cleared and redrawn); return it."""
    import matplotlib.pyplot as plt

    if isinstance(runs, TrainingMonitor):
        runs = {"run": runs}
    if fig is None:
        fig = plt.figure(figsize=(15, 6.5))
    fig.clear()
    axes = fig.subplots(2, 3).ravel()
    for name, monitor in runs.items():
        for ax, (steps, values) in zip(axes, panel_series(monitor), strict=True):
            if steps:
                ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
    band = next(iter(runs.values())).grad_band
    axes[1].axhspan(*band, color="green", alpha=0.12, label=f"alert band {band[0]:g}–{band[1]:g}")
    for ax, (panel_title, ylabel, log) in zip(axes, PANELS, strict=True):
        ax.set(title=panel_title, xlabel="optimizer step", ylabel=ylabel)
        if log and ax.has_data() and all(min(line.get_ydata(), default=1) > 0 for line in ax.get_lines()):
            ax.set_yscale("log")
    axes[1].legend(fontsize=8)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LiveDashboard(TrainerCallback):
    """Redraw ``draw_dashboard`` every ``every`` steps during training, in place, in a Jupyter output.

    ``runs``: the monitors to show (the running one and, for comparison, finished ones); the mapping is
    read at every redraw, so one dashboard can follow several runs added to it one after another (set
    ``title`` between them). Outside IPython it does nothing, so the same training code runs in scripts.
    """

    def __init__(self, runs: Mapping[str, TrainingMonitor], every: int = 10, title: str = ""):
        if every < 1:
            raise ValueError("every must be >= 1 (steps)")
        self.runs, self.every, self.title = runs, every, title
        self._fig = None
        self._handle = None
        self.redraws = 0

    def redraw(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython comes with the notebooks extra
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt

        self._fig = draw_dashboard(self.runs, self._fig, self.title)
        if self._handle is None:
            self._handle = display(self._fig, display_id=True)
            plt.close(self._fig)  # shown through the display handle only, not again at the cell's end
        else:
            self._handle.update(self._fig)
        self.redraws += 1

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self.redraw()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.redraw()
