"""The search's figures, each as PNG (fixed pixel size) and SVG, drawn on matplotlib's Agg canvas (no pyplot).

The scaling fit's three figures (`write_plots`), and one per width (`write_width_plots`): that
width's validation robust accuracy against λ, with its fitted curve when the fit used the width,
for the width's MLflow run. Every width keeps one colour across the figures; trials stopped early
are hollow markers at the value they reached (a lower fidelity than the fitted curves). Files are
written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tuner.analysis.scaling import Scaling, exponent, interval_text, number
from tuner.analysis.surface import LEVEL, Interval, SurfaceFit
from tuner.analysis.trials import Trials
from tuner.files import write_atomically

DPI = 100
FORMATS = ("png", "svg")
SIZES = {  # figure name → (width, height) in inches; PNG pixels = inches × DPI
    "lambda_vs_width": (6.5, 4.8),
    "tradeoff_vs_lambda": (13.0, 4.4),
    "natural_vs_stability": (6.0, 4.5),
}
WIDTH_SIZE = (6.5, 4.6)  # each width's robust accuracy against λ
TRADEOFF_PANELS = (("robust", "validation robust accuracy"), ("natural", "validation natural accuracy"),
                   ("stability", "validation stability"))


def file_names() -> list[str]:
    """Every file write_plots writes."""
    return [f"{name}.{fmt}" for name in SIZES for fmt in FORMATS]


def pixel_size(name: str) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of figure `name` (with or without .png)."""
    width, height = SIZES[name.removesuffix(".png")]
    return round(width * DPI), round(height * DPI)


def write_plots(scaling: Scaling, out_dir: Path) -> dict[str, Path]:
    """Every figure in out_dir, as PNG and SVG; returns file name → path."""
    colours = width_colours(scaling.trials.widths)  # every width searched: the same colours as write_width_plots
    drawers: dict[str, Callable[[Figure], None]] = {
        "lambda_vs_width": lambda fig: draw_lambda_vs_width(fig, scaling, colours),
        "tradeoff_vs_lambda": lambda fig: draw_tradeoff(fig, scaling, colours),
        "natural_vs_stability": lambda fig: draw_natural_vs_stability(fig, scaling, colours),
    }
    paths: dict[str, Path] = {}
    for name, draw in drawers.items():
        paths.update(save(draw, out_dir, name, SIZES[name]))
    return paths


def width_file_names(width: int) -> list[str]:
    """The files write_width_plots writes for `width`."""
    return [f"robust_vs_lambda_w{width}.{fmt}" for fmt in FORMATS]


def write_width_plots(trials: Trials, out_dir: Path, fit: SurfaceFit | None = None) -> dict[int, dict[str, Path]]:
    """Each width's validation robust accuracy against λ in out_dir, as PNG and SVG, with the width's fitted
    curve where `fit` used it; returns width → file name → path."""
    colours = width_colours(trials.widths)
    return {width: save(lambda fig, width=width: draw_width(fig, trials, width, fit, colours[width]), out_dir,
                        f"robust_vs_lambda_w{width}", WIDTH_SIZE)
            for width in trials.widths}


def save(draw: Callable[[Figure], None], out_dir: Path, name: str, size: tuple[float, float]) -> dict[str, Path]:
    """One figure drawn by `draw`, written as out_dir/name.png and .svg; returns file name → path."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    paths = {}
    for fmt in FORMATS:
        path = paths[f"{name}.{fmt}"] = Path(out_dir) / f"{name}.{fmt}"
        write_atomically(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=DPI))
    return paths


def width_colours(widths: list[int]) -> dict[int, tuple[float, ...]]:
    """One colour per width, narrow (dark) to wide (light), from viridis."""
    cmap = colormaps["viridis"]
    return {w: cmap(0.85 * i / max(len(widths) - 1, 1)) for i, w in enumerate(sorted(widths))}


def draw_lambda_vs_width(fig: Figure, scaling: Scaling, colours: dict[int, tuple[float, ...]]) -> None:
    """Each width's own λ* with its interval and near-optimal band, the rule with its band, the predictions; log–log."""
    fit, content = scaling.fit, scaling.content
    ax = fig.add_subplot()
    widths = list(fit.data.width_values) + [p["width"] for p in content["predictions"]]
    grid = np.geomspace(min(widths) / 1.15, max(widths) * 1.15, 120)
    lam, intervals = fit.lam_at(grid)
    low, high = _limits(fit, lam)
    band_low = [low if i.low is None else i.low for i in intervals]
    band_high = [high if i.high is None else i.high for i in intervals]
    ax.fill_between(grid, band_low, band_high, color="tab:blue", alpha=0.15, lw=0,
                    label=rf"{LEVEL:.0%} band of the rule (clipped where unbounded)")
    b_ci = interval_text(fit.b_interval(), exponent)
    ax.plot(grid, lam, color="tab:blue", label=rf"$\lambda^* = a\,w^{{b}}$, $b$ = {exponent(fit.b)} {b_ci}")
    for result in fit.per_width:
        colour = colours[result.width]
        ax.plot([result.width] * 2, result.band, lw=9, alpha=0.25, color=colour, solid_capstyle="butt")
        if result.lam_star is not None:
            interval_bar(ax, result.width, result.lam_star, result.lam_star_ci, (low, high), colour, "o")
    ax.plot([], [], "o", color="grey", label=rf"each width's own $\lambda^*$, {LEVEL:.0%} interval (arrow: unbounded)")
    ax.plot([], [], lw=9, alpha=0.25, color="grey", label=r"near-optimal $\lambda$ (within one seed-noise sd)")
    predictions = [p for p in content["predictions"] if p["lam"] is not None]
    for p in predictions:
        interval_bar(ax, p["width"], p["lam"], Interval(*p["lam_ci"]), (low, high), "tab:red", "*")
    if predictions:
        ax.plot([], [], "*", ms=11, color="tab:red", label=r"recommended $\lambda$")
    ax.set(xscale="log", yscale="log", xlabel=r"width $w$", ylabel=r"$\lambda^*$ (best validation robust accuracy)",
           ylim=(low, high), title=content["conclusion"])
    ax.title.set_fontsize("medium")
    plain_log_labels(ax.xaxis, ax.yaxis)
    ax.legend(fontsize="x-small", loc="best")


def interval_bar(ax: Axes, x: float, value: float, interval: Interval, limits: tuple[float, float], colour: object,
                 marker: str) -> None:
    """A point with its interval on a log axis; an unbounded end runs to the axis limit and ends in an arrowhead."""
    low = limits[0] if interval.low is None else interval.low
    high = limits[1] if interval.high is None else interval.high
    ax.vlines(x, low, high, color=colour, lw=1.2)
    ax.plot([x], [value], marker, ms=11 if marker == "*" else 6, color=colour)
    for end, bounded, arrow, inset in ((low, interval.low is not None, "v", 1.12),
                                       (high, interval.high is not None, "^", 1 / 1.12)):
        ax.plot([x], [end if bounded else end * inset], "_" if bounded else arrow, ms=8 if bounded else 6,
                color=colour)


def _limits(fit: SurfaceFit, lam: np.ndarray) -> tuple[float, float]:
    """The y range: the sampled λ range, widened to the fitted rule; unbounded intervals are drawn to its edge."""
    x = np.concatenate([p.x for p in fit.data.widths])
    low = min(math.exp(x.min()), float(lam.min())) / 1.5
    high = max(math.exp(x.max()), float(lam.max())) * 1.5
    return low, high


def draw_tradeoff(fig: Figure, scaling: Scaling, colours: dict[int, tuple[float, ...]]) -> None:
    """Robust accuracy with each width's fitted curve, band, λ* and near-optimal band; natural accuracy; stability."""
    fit, trials = scaling.fit, scaling.trials
    axes = fig.subplots(1, len(TRADEOFF_PANELS), sharex=True)
    for k, result in enumerate(fit.per_width):
        colour = colours[result.width]
        draw_width_curve(axes[0], fit, k, colour, label=rf"$w$ = {result.width}")
        for ax, (metric, _) in zip(axes, TRADEOFF_PANELS):
            scatter_width(ax, trials, result.width, getattr(trials, metric), colour)
    curve_legend(axes[0])
    for ax, (_, label) in zip(axes, TRADEOFF_PANELS):
        ax.set(xscale="log", xlabel=r"$\lambda$", ylabel=label)
        plain_log_labels(ax.xaxis)
    axes[0].set_title(rf"each width's fitted curve (all epochs) with its {LEVEL:.0%} band", fontsize="small")
    axes[0].legend(fontsize="x-small")


def draw_width(fig: Figure, trials: Trials, width: int, fit: SurfaceFit | None, colour: tuple[float, ...]) -> None:
    """One width's trials, validation robust accuracy against λ, with its fitted curve when the fit used the width."""
    ax = fig.add_subplot()
    fitted = [] if fit is None else [r.width for r in fit.per_width]
    scatter_width(ax, trials, width, trials.robust, colour)
    ax.plot([], [], "o", color=colour, label="completed trial (at its selected epoch)")
    if width in fitted:
        draw_width_curve(ax, fit, fitted.index(width), colour, label=f"fitted curve, {LEVEL:.0%} band")
        result = fit.per_width[fitted.index(width)]
        if result.lam_star is not None:
            ax.set_title(rf"width {width}: $\lambda^*$ = {number(result.lam_star)} "
                         rf"{interval_text(result.lam_star_ci)}, near-optimal {number(result.band[0])}–"
                         rf"{number(result.band[1])}", fontsize="medium")
        else:
            ax.set_title(f"width {width}: no peak (robust accuracy is flat in λ)", fontsize="medium")
        curve_legend(ax)
    else:
        ax.plot([], [], "o", mfc="none", color="grey", label="stopped early (at its last epoch)")
        ax.set_title(f"width {width}: trials (no fitted curve: the scaling fit did not use this width)",
                     fontsize="medium")
    ax.set(xscale="log", xlabel=r"$\lambda$", ylabel="validation robust accuracy")
    plain_log_labels(ax.xaxis)
    ax.legend(fontsize="x-small")


def draw_width_curve(ax: Axes, fit: SurfaceFit, index: int, colour: object, *, label: str) -> None:
    """Width `index`'s fitted curve over its sampled λ with its 95% band, its near-optimal band and λ*."""
    result = fit.per_width[index]
    x = np.log(np.asarray(result.lam_range))
    grid = np.linspace(x[0], x[1], 200)
    curve, se = fit.curve(index, grid)
    ax.plot(np.exp(grid), curve, color=colour, lw=1.5, label=label)
    ax.fill_between(np.exp(grid), curve - 1.96 * se, curve + 1.96 * se, color=colour, alpha=0.15, lw=0)
    ax.plot(result.band, [curve.max() + 0.004] * 2, color=colour, lw=4, alpha=0.6, solid_capstyle="butt")
    if result.lam_star is not None:
        ax.axvline(result.lam_star, ls=":", lw=1, color=colour)


def curve_legend(ax: Axes) -> None:
    """Legend entries, in grey, for what draw_width_curve and scatter_width draw besides the curve."""
    ax.plot([], [], "o", mfc="none", color="grey", label="stopped early (at its last epoch)")
    ax.plot([], [], lw=4, alpha=0.6, color="grey", label="near-optimal λ")
    ax.plot([], [], ls=":", color="grey", label=r"$\lambda^*$ of the width")


def scatter_width(ax: Axes, trials: Trials, width: int, values: np.ndarray, colour: object) -> None:
    """A width's usable trials at λ: completed ones filled, early-stopped ones hollow."""
    here = trials.usable & (trials.width == width)
    stopped = here & (trials.status == "early_stopped")
    ax.scatter(trials.lam[here & ~stopped], values[here & ~stopped], s=16, color=colour, zorder=3)
    ax.scatter(trials.lam[stopped], values[stopped], s=16, facecolors="none", edgecolors=colour, zorder=3)


def plain_log_labels(*axes: Axis) -> None:
    """Log-axis ticks at 1, 2, 5 × 10^k labelled as plain numbers (0.5, 2, 20), never 5×10⁻¹ or 5e-01."""
    for axis in axes:
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: number(value)))
        axis.set_minor_formatter(ticker.NullFormatter())


def draw_natural_vs_stability(fig: Figure, scaling: Scaling, colours: dict[int, tuple[float, ...]]) -> None:
    """Natural accuracy against stability, one colour per width: the paper's trade-off."""
    trials = scaling.trials
    ax = fig.add_subplot()
    for width, colour in colours.items():
        here = trials.usable & (trials.width == width)
        stopped = here & (trials.status == "early_stopped")
        ax.scatter(trials.stability[here & ~stopped], trials.natural[here & ~stopped], s=18, color=colour,
                   label=rf"$w$ = {width}")
        ax.scatter(trials.stability[stopped], trials.natural[stopped], s=18, facecolors="none", edgecolors=colour)
    ax.scatter([], [], s=18, facecolors="none", edgecolors="grey", label="stopped early")
    ax.set(xlabel="validation stability", ylabel="validation natural accuracy",
           title="Natural accuracy against stability")
    ax.legend(fontsize="small")
