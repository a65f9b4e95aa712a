"""`python -m tuner.fit`: fit the width→λ scaling rule λ* = a·w^b to the trials of one or more searches.

    python -m tuner.fit RUN_DIR [RUN_DIR ...] [--predict 15,20] [--out DIR]

Reads `trials.parquet` of each RUN_DIR (the same width in several runs pools its trials), writes
`scaling.json`, three figures and one figure per width (PNG and SVG) and `report.html` to --out
(default: the first RUN_DIR) and prints the conclusion, the per-width table and the recommendations.

From code: `fit_runs(run_dirs, out_dir=..., predict=[15, 20])` writes the files and returns a
FitReport (`.scaling` = scaling.json, `.files`, `.width_files`, `.summary_lines()`); it is
`draw_fit` (the fit and its figures, which need only the trials: the search draws them while its
last strong evaluations run) then `write_scaling` (scaling.json, with the ranking check of the
strong evaluations). fit_runs and draw_fit raise ConfigError when there is nothing to fit (e.g. a
single width), and then `plot_widths` draws the widths' trials without fitted curves.
`write_report` writes report.html either way. The estimator is `tuner.analysis.surface`, its
wording `tuner.analysis.scaling`, the figures `tuner.analysis.plots`, the report
`tuner.analysis.report`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner import cli
from tuner.analysis.ranking import ranking_checks
from tuner.analysis.scaling import Scaling, conclusion_with_a, fit_trials, number, prediction_text, width_cells
from tuner.analysis.trials import load_trials
from tuner.errors import ConfigError
from tuner.files import write_text_atomically
from tuner.plan import parse_widths

SCALING_FILE = "scaling.json"


@dataclasses.dataclass(frozen=True)
class FitReport:
    """A fit drawn (draw_fit) or written (fit_runs): the scaling.json content, its files by name, the fit itself."""

    scaling: dict[str, Any]
    files: dict[str, Path]  # "scaling.json" (once written) and each figure's file name → its path
    fit: Scaling = dataclasses.field(repr=False)
    out_dir: Path
    width_files: dict[int, dict[str, Path]] = dataclasses.field(default_factory=dict)  # width → its figure's files

    def summary_lines(self) -> list[str]:
        """The conclusion, the per-width table, checks, the form comparison and the predictions, for printing."""
        s = self.scaling
        lines = [f"scaling rule λ* = a·w^b from {s['n_widths']} widths, {s['n_trials_used']} trials "
                 f"({s['level']:.0%} profile-likelihood intervals):",
                 f"  {conclusion_with_a(s)}"]
        if s["advice"]:
            lines.append(f"  {s['advice']}")
        lines.append(f"  what the data show: {s['what_the_data_show']}")
        lines.append(f"  regime: {s['regime']['words']}")
        lines.append(f"  {'width':>5} {'λ*':>7} {'95% interval':>20} {'rule λ*':>8} {'near-optimal λ':>15} "
                     f"{'val robust':>10}  used/completed/stopped/failed")
        for o in s["per_width"]:
            width, lam, interval, rule, band, robust, counts = width_cells(o)
            lines.append(f"  {width:>5} {lam:>7} {interval:>20} {rule:>8} {band:>15} {robust:>10}  {counts}")
        lines.append(f"  near-optimal: within one seed-noise sd ({number(s['seed_noise_sd'], 2)}, from "
                     f"{s['seed_noise_source']}); curvature above the peak {s['shape_ratio']:g}× that below it")
        comparison = s["model_comparison"]
        if comparison["models"]:
            ranked = ", ".join(f"{m['form']} Δ{m['delta']:.1f} (weight {m['weight']:.2f})" for m in comparison["models"])
            lines.append(f"  forms by {comparison['criterion']}: {ranked}; {comparison['note']}")
        lines += [f"  {prediction_text(p)}" for p in s["predictions"]]
        lines += [f"  note: {note}" for note in s["notes"]]
        if not comparison["models"]:
            lines.append(f"  note: {comparison['note']}")
        lines.append(f"  wrote: {', '.join(str(path) for path in self.files.values())}")
        return lines


def output_files(out_dir: Path) -> list[Path]:
    """The files `fit_runs` writes into `out_dir`: scaling.json and the figures."""
    from tuner.analysis.plots import file_names

    return [Path(out_dir) / SCALING_FILE, *(Path(out_dir) / name for name in file_names())]


def fit_runs(run_dirs: Sequence[Path], *, out_dir: Path | None = None, predict: Sequence[int] = (),
             plots: bool = True) -> FitReport:
    """Fit the scaling rule to the trials of these run directories and write scaling.json (+ figures) to out_dir.

    out_dir defaults to the first run directory. The fit is deterministic (profile-likelihood
    intervals, no resampling). Raises ConfigError for input the fit cannot use.
    """
    return write_scaling(draw_fit(run_dirs, out_dir=out_dir, predict=predict, plots=plots))


def draw_fit(run_dirs: Sequence[Path], *, out_dir: Path | None = None, predict: Sequence[int] = (),
             plots: bool = True) -> FitReport:
    """All of fit_runs but scaling.json, whose ranking check reads the runs' strong evaluations: the fit and its
    figures, which need only the trials (a search draws them while its last strong evaluations run)."""
    if not run_dirs:
        raise ConfigError("no run directory given: pass the run directory of a search (runs/<name>)")
    trials = load_trials(run_dirs)
    scaling = fit_trials(trials, predict=predict)
    out_dir = Path(run_dirs[0] if out_dir is None else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    content = {**scaling.content, "run_dirs": [str(Path(d)) for d in run_dirs], "methods": list(trials.methods)}
    files, width_files = {}, {}
    if plots:
        from tuner.analysis import plots as plotting  # matplotlib only when plotting

        files.update(plotting.write_plots(scaling, out_dir))
        width_files = plotting.write_width_plots(trials, out_dir, scaling.fit)
    return FitReport(scaling=content, files=files, fit=scaling, out_dir=out_dir, width_files=width_files)


def write_scaling(drawn: FitReport) -> FitReport:
    """scaling.json for a drawn fit, with the ranking check of its runs' strong evaluations as they are now."""
    content = {**drawn.scaling, "ranking_check": ranking_checks([Path(d) for d in drawn.scaling["run_dirs"]])}
    path = drawn.out_dir / SCALING_FILE
    write_text_atomically(path, json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return dataclasses.replace(drawn, scaling=content, files={SCALING_FILE: path, **drawn.files})


def plot_widths(run_dirs: Sequence[Path], *, out_dir: Path) -> dict[int, dict[str, Path]]:
    """Each width's trials, robust accuracy against λ, without fitted curves (when there is no fit); width → files."""
    from tuner.analysis import plots as plotting

    return plotting.write_width_plots(load_trials(run_dirs), Path(out_dir))


def write_report(run_dirs: Sequence[Path], *, out_dir: Path, fitted: FitReport | None,
                 width_files: dict[int, dict[str, Path]], not_fitted: str | None = None) -> Path:
    """report.html in out_dir: the runs, the fit (or why there is none), the fit's and the widths' figures."""
    from tuner.analysis import report

    figures = [*(fitted.files.values() if fitted else ()), *(p for files in width_files.values() for p in files.values())]
    return report.write_report(run_dirs, out_dir=out_dir, scaling=None if fitted is None else fitted.scaling,
                               figures=figures, not_fitted=not_fitted)


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m tuner.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directory of a search (holding trials.parquet); several pool their trials")
    parser.add_argument("--predict", metavar="WIDTHS", help="comma-separated widths to recommend λ for, e.g. 15,20")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where scaling.json, the figures and report.html go (default: the first RUN_DIR)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    predict = [] if args.predict is None else parse_widths(args.predict, option="--predict")
    fitted = fit_runs(args.run_dirs, out_dir=args.out, predict=predict)
    print("\n".join(fitted.summary_lines()))
    report = write_report(args.run_dirs, out_dir=fitted.files[SCALING_FILE].parent, fitted=fitted,
                          width_files=fitted.width_files)
    print(f"  report: {report}")
    return 0


if __name__ == "__main__":
    cli.run(main)
