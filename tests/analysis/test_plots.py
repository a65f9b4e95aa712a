"""Each width's figure: its trials' robust accuracy against λ, with the width's fitted curve where the fit used it."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.image import imread

from tests.analysis.synthetic import synthetic_rows
from tuner.analysis import plots
from tuner.analysis.scaling import fit_trials
from tuner.analysis.trials import Trials

CURVE = "fitted curve, 95% band"


def trials_with_a_sparse_width() -> Trials:
    """Widths 1, 4, 10 with 8 λ each (fitted) and width 20 with 2 (left out of the fit); a fifth stopped early."""
    rows = synthetic_rows(3, widths=(1, 4, 10), n=8, stopped=0.2)
    rows += [{**r, "trial_id": f"sparse-{r['trial_id']}"} for r in synthetic_rows(4, widths=(20,), n=2)]
    return Trials.from_rows(rows)


def drawn(trials: Trials, width: int, fit) -> Figure:
    fig = Figure(figsize=plots.WIDTH_SIZE)
    FigureCanvasAgg(fig)
    plots.draw_width(fig, trials, width, fit, (0.2, 0.3, 0.5, 1.0))
    return fig


def plotted_points(fig: Figure) -> set[tuple[float, float]]:
    """The (λ, robust accuracy) of the scattered trials."""
    return {tuple(np.round(p, 9)) for c in fig.axes[0].collections if isinstance(c, PathCollection)
            for p in c.get_offsets()}


def test_a_fitted_width_shows_its_trials_and_its_own_curve():
    trials = trials_with_a_sparse_width()
    fit = fit_trials(trials).fit
    fig = drawn(trials, 4, fit)
    here = trials.usable & (trials.width == 4)
    assert plotted_points(fig) == {tuple(np.round(p, 9)) for p in zip(trials.lam[here], trials.robust[here])}
    (curve,) = [line for line in fig.axes[0].lines if line.get_label() == CURVE]
    result = next(r for r in fit.per_width if r.width == 4)
    x, y = curve.get_data()
    assert np.isclose(x.min(), result.lam_range[0]) and np.isclose(x.max(), result.lam_range[1])
    assert np.isclose(x[np.argmax(y)], result.lam_star, rtol=0.02), "the curve peaks at the width's own λ*"
    assert "width 4: $\\lambda^*$" in fig.axes[0].get_title()


def test_a_width_the_fit_left_out_shows_its_trials_without_a_curve():
    trials = trials_with_a_sparse_width()
    for fit in (fit_trials(trials).fit, None):
        fig = drawn(trials, 20, fit)
        assert len(plotted_points(fig)) == 2
        assert CURVE not in [line.get_label() for line in fig.axes[0].lines]
        assert "no fitted curve" in fig.axes[0].get_title()


def test_write_width_plots_writes_a_png_and_svg_per_width(tmp_path):
    trials = trials_with_a_sparse_width()
    files = plots.write_width_plots(trials, tmp_path, fit_trials(trials).fit)
    assert {w: sorted(f) for w, f in files.items()} == {w: sorted(plots.width_file_names(w)) for w in (1, 4, 10, 20)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for f in files.values() for n in f)
    image = imread(files[4]["robust_vs_lambda_w4.png"])
    assert image.shape[:2] == (round(plots.WIDTH_SIZE[1] * plots.DPI), round(plots.WIDTH_SIZE[0] * plots.DPI))
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50, "nearly blank"
