"""The scaling fit's figures, as PNG files of a fixed pixel size (matplotlib's Agg canvas, no pyplot).

Each plot shows the trials the fit used (completed, with a metric); every width keeps one colour
across the figures. Files are written atomically, like scaling.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tuner.files import write_atomically
from tuner.analysis.scaling import ScalingFit, Trials

DPI = 100
SIZES = {  # file name → (width, height) in inches; pixels = inches × DPI
    "lambda_vs_width.png": (6.0, 4.5),
    "tradeoff_vs_lambda.png": (12.0, 4.0),
    "natural_vs_stability.png": (6.0, 4.5),
}
TRADEOFF_PANELS = (("robust", "validation robust accuracy"), ("natural", "validation natural accuracy"),
                   ("stability", "validation stability"))


def pixel_size(name: str) -> tuple[int, int]:
    """(width, height) in pixels of the plot file `name`."""
    width, height = SIZES[name]
    return round(width * DPI), round(height * DPI)


def write_plots(trials: Trials, fit: ScalingFit, out_dir: Path) -> dict[str, Path]:
    """All three figures in out_dir; returns file name → path."""
    colours = width_colours([o.width for o in fit.per_width])
    drawers: dict[str, Callable[[Figure], None]] = {
        "lambda_vs_width.png": lambda fig: draw_lambda_vs_width(fig, fit, colours),
        "tradeoff_vs_lambda.png": lambda fig: draw_tradeoff(fig, trials, fit, colours),
        "natural_vs_stability.png": lambda fig: draw_natural_vs_stability(fig, trials, colours),
    }
    paths = {}
    for name, draw in drawers.items():
        fig = Figure(figsize=SIZES[name], dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        paths[name] = out_dir / name
        write_atomically(paths[name], lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return paths


def width_colours(widths: list[int]) -> dict[int, tuple[float, ...]]:
    """One colour per width, narrow (dark) to wide (light), from viridis."""
    cmap = colormaps["viridis"]
    return {w: cmap(0.85 * i / max(len(widths) - 1, 1)) for i, w in enumerate(sorted(widths))}


def draw_lambda_vs_width(fig: Figure, fit: ScalingFit, colours: dict[int, tuple[float, ...]]) -> None:
    """λ* per width with its 95% interval, the fitted rule with its 95% band, and the predictions; log–log."""
    ax = fig.add_subplot()
    widths = [o.width for o in fit.per_width] + [p["width"] for p in fit.predictions]
    grid = np.geomspace(min(widths) / 1.15, max(widths) * 1.15, 200)
    band = fit.band(grid)
    if band is not None:
        ax.fill_between(grid, *band, color="tab:blue", alpha=0.2, label="95% band of the rule")
    exact = " (exact fit, 2 widths)" if fit.exact else ""
    ax.plot(grid, fit.lam_at(grid), color="tab:blue", label=f"λ* = {fit.a:.3g}·w^{fit.b:.3g}{exact}")
    for o in fit.per_width:
        if o.lam_star_ci is None:
            ax.plot([o.width], [o.lam_star], "o", mfc="white", color=colours[o.width])
            continue
        err = [[max(o.lam_star - o.lam_star_ci[0], 0.0)], [max(o.lam_star_ci[1] - o.lam_star, 0.0)]]
        ax.errorbar([o.width], [o.lam_star], yerr=err, fmt="o", capsize=3, color=colours[o.width])
    ax.plot([], [], "o", color="grey", label="λ*(w), 95% bootstrap interval (hollow: none)")
    for p in fit.predictions:
        err = None if p["lam_ci"] is None else [[p["lam"] - p["lam_ci"][0]], [p["lam_ci"][1] - p["lam"]]]
        ax.errorbar([p["width"]], [p["lam"]], yerr=err, fmt="*", ms=10, capsize=3, color="tab:red")
    if fit.predictions:
        ax.plot([], [], "*", ms=10, color="tab:red", label="recommended λ")
    ax.set(xscale="log", yscale="log", xlabel="width w", ylabel="λ* (best validation robust accuracy)",
           title="Best λ against width")
    plain_log_labels(ax.xaxis, ax.yaxis)
    ax.legend(fontsize="small")


def draw_tradeoff(fig: Figure, trials: Trials, fit: ScalingFit, colours: dict[int, tuple[float, ...]]) -> None:
    """Robust accuracy, natural accuracy and stability against λ (log), one curve per width, λ* dotted."""
    axes = fig.subplots(1, len(TRADEOFF_PANELS), sharex=True)
    usable = trials.usable
    for o in fit.per_width:
        here = usable & (trials.width == o.width)
        order = np.argsort(trials.lam[here])
        for ax, (metric, _) in zip(axes, TRADEOFF_PANELS):
            ax.plot(trials.lam[here][order], getattr(trials, metric)[here][order], "o-", ms=3, lw=1,
                    color=colours[o.width], label=f"w={o.width}")
            ax.axvline(o.lam_star, ls=":", lw=1, color=colours[o.width])
    for ax, (_, label) in zip(axes, TRADEOFF_PANELS):
        ax.set(xscale="log", xlabel="λ", ylabel=label)
        plain_log_labels(ax.xaxis)
    axes[0].legend(fontsize="small", title="dotted: λ*", title_fontsize="small")


def plain_log_labels(*axes: Axis) -> None:
    """Log-axis labels as plain numbers (3, 10, 20), not 3×10⁰."""
    for axis in axes:
        axis.set_major_formatter(ticker.LogFormatter())
        axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def draw_natural_vs_stability(fig: Figure, trials: Trials, colours: dict[int, tuple[float, ...]]) -> None:
    """Natural accuracy against stability, one colour per width: the paper's trade-off."""
    ax = fig.add_subplot()
    for width, colour in colours.items():
        here = trials.usable & (trials.width == width)
        ax.scatter(trials.stability[here], trials.natural[here], s=18, color=colour, label=f"w={width}")
    ax.set(xlabel="validation stability", ylabel="validation natural accuracy",
           title="Natural accuracy against stability")
    ax.legend(fontsize="small")
