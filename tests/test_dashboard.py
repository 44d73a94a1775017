"""Dashboards of TrainingMonitor histories (dsnb.train.dashboard)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from torch import nn  # noqa: E402

from dsnb.train.dashboard import PANELS, LiveDashboard, draw_dashboard, mean_imbalance, panel_series  # noqa: E402
from dsnb.train.monitor import TrainingMonitor  # noqa: E402


def _monitor(tmp_path, name, scale=1.0):
    m = TrainingMonitor(nn.Linear(2, 2), tmp_path / name, write=False)
    for step in range(1, 6):
        m.log_scalars(step, {"loss": scale * (5 - step / 2), "grad_norm": scale, "learning_rate": 1e-3 * step})
        m.scalar("activation/layer_00/std", 1.0, step)
        m.scalar("tokens_per_s", 1000.0, step)
        m.scalar("activation/layer_03/std", 2.0 * step, step)
        m.scalar("moe/layer_01/imbalance_max_over_mean", 1.0 + step, step)
        m.scalar("moe/layer_02/imbalance_max_over_mean", 3.0 + step, step)
    return m


def test_panel_series_picks_the_deepest_layer_and_averages_moe_layers(tmp_path):
    series = panel_series(_monitor(tmp_path, "a"))
    assert len(series) == len(PANELS)
    assert series[0] == ([1, 2, 3, 4, 5], [4.5, 4.0, 3.5, 3.0, 2.5])
    assert series[4][1] == [2.0, 4.0, 6.0, 8.0, 10.0]  # layer_03, not layer_00
    assert mean_imbalance({}) == ([], [])
    assert series[5] == ([1, 2, 3, 4, 5], [3.0, 4.0, 5.0, 6.0, 7.0])


def test_draw_dashboard_one_line_per_run_and_panel(tmp_path):
    runs = {"healthy": _monitor(tmp_path, "a"), "broken": _monitor(tmp_path, "b", scale=10.0)}
    fig = draw_dashboard(runs, title="t")
    axes = fig.axes
    assert len(axes) == 6 and [ax.get_title() for ax in axes] == [p[0] for p in PANELS]
    assert all(len([ln for ln in ax.get_lines()]) == 2 for ax in axes)
    assert axes[0].get_yscale() == "log" and axes[5].get_yscale() == "linear"
    fig2 = draw_dashboard(runs, fig=fig)  # redrawn in place, not stacked
    assert fig2 is fig and len(fig.axes) == 6


def test_live_dashboard_is_silent_outside_jupyter_and_validates(tmp_path):
    live = LiveDashboard({"a": _monitor(tmp_path, "a")}, every=1)
    live.redraw()
    assert live.redraws == 0  # no IPython kernel here: nothing drawn, nothing raised
    with pytest.raises(ValueError, match="every"):
        LiveDashboard({}, every=0)
