"""`python -m tuner.fit`: fit the width→λ scaling rule λ* = a·w^b to the trials of one or more searches.

    python -m tuner.fit RUN_DIR [RUN_DIR ...] [--predict 15,20] [--out DIR]

Reads `trials.parquet` of each RUN_DIR (the same width in several runs pools its trials), writes
`scaling.json` and three plots to --out (default: the first RUN_DIR) and prints the rule.

The estimator is `tuner.analysis.scaling`; the figures are `tuner.analysis.plots`.

From code (the search): `fit_runs(run_dirs, out_dir=..., predict=[15, 20])` writes the files and
returns a FitReport (`.scaling` = scaling.json, `.files`, `.summary_lines()`); it raises
ConfigError when there is nothing to fit (e.g. a single width). The fitting itself is pure
functions on arrays in `tuner.analysis.scaling`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner import cli
from tuner.analysis.scaling import N_BOOT, ScalingFit, fit_trials, load_trials
from tuner.errors import ConfigError
from tuner.files import write_text_atomically

SCALING_FILE = "scaling.json"



@dataclasses.dataclass(frozen=True)
class FitReport:
    """What fit_runs wrote: the scaling.json content, the files by name, and the fit itself."""

    scaling: dict[str, Any]
    files: dict[str, Path]  # "scaling.json" and each plot's file name → its path
    fit: ScalingFit = dataclasses.field(repr=False)

    def summary_lines(self) -> list[str]:
        """The rule, the per-width table, the model comparison and the predictions, for printing."""
        s, ci = self.scaling, _interval_text
        lines = [f"scaling rule λ* = a·w^b from {s['n_widths']} widths: a = {s['a']:.3g}{ci(s['a_ci'])}, "
                 f"b = {s['b']:.3g}{ci(s['b_ci'])}" + (" (exact fit through two points, no intervals)" if s["exact_fit"]
                                                        else " (95% bootstrap intervals)" if s["b_ci"] else ""),
                 f"{'width':>5} {'λ*':>8} {'95% interval':>18} {'val rob':>8}  used/early-stopped/failed  fit"]
        for o in s["per_width"]:
            interval = "-" if o["lam_star_ci"] is None else f"[{o['lam_star_ci'][0]:.3g}, {o['lam_star_ci'][1]:.3g}]"
            note = f" ({o['note']})" if o["note"] else ""
            counts = f"{o['n_trials']}/{o['n_early_stopped']}/{o['n_failed']}"
            lines.append(f"{o['width']:>5} {o['lam_star']:>8.3g} {interval:>18} {o['robust_acc_at_star']:>8.3f}  "
                         f"{counts:<25} {o['fit']}{note}")
        comparison = s["model_comparison"]
        if comparison["models"]:
            ranked = ", ".join(f"{m['form']} Δ{m['delta']:.1f} (weight {m['weight']:.2f})"
                               for m in comparison["models"])
            lines.append(f"model comparison by {comparison['criterion']} on log λ*: {ranked}")
        for p in s["predictions"]:
            extrapolated = " (extrapolated)" if p["extrapolated"] else ""
            lines.append(f"recommended λ for width {p['width']}: {p['lam']:.3g}{ci(p['lam_ci'])}{extrapolated}")
        lines += [f"note: {note}" for note in s["notes"] + ([comparison["note"]] if comparison.get("note") else [])]
        lines.append(f"wrote: {', '.join(str(path) for path in self.files.values())}")
        return lines


def _interval_text(interval: Sequence[float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.3g}, {interval[1]:.3g}]"


def output_files(out_dir: Path) -> list[Path]:
    """The files `fit_runs` writes into `out_dir`: scaling.json and the figures."""
    from tuner.analysis.plots import SIZES

    return [Path(out_dir) / SCALING_FILE, *(Path(out_dir) / name for name in SIZES)]


def fit_runs(run_dirs: Sequence[Path], *, out_dir: Path | None = None, predict: Sequence[int] = (), seed: int = 0,
             n_boot: int = N_BOOT, plots: bool = True) -> FitReport:
    """Fit the scaling rule to the trials of these run directories and write scaling.json (+ plots) to out_dir.

    out_dir defaults to the first run directory. Raises ConfigError for input the fit cannot use.
    """
    if not run_dirs:
        raise ConfigError("no run directory given: pass the run directory of a search (runs/<name>)")
    trials = load_trials(run_dirs)
    fit = fit_trials(trials, predict=predict, seed=seed, n_boot=n_boot)
    out_dir = Path(run_dirs[0] if out_dir is None else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scaling = {**fit.to_dict(), "run_dirs": [str(Path(d)) for d in run_dirs], "methods": list(trials.methods)}
    files = {SCALING_FILE: out_dir / SCALING_FILE}
    write_text_atomically(files[SCALING_FILE], json.dumps(scaling, indent=2) + "\n")
    if plots:
        from tuner.analysis import plots as plotting  # matplotlib only when plotting

        files.update(plotting.write_plots(trials, fit, out_dir))
    return FitReport(scaling=scaling, files=files, fit=fit)


def parse_predict(text: str) -> list[int]:
    """"15,20" → [15, 20]; each a positive integer width."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        widths = []
    if not widths or any(w <= 0 for w in widths):
        raise ConfigError(f"--predict takes comma-separated positive integer widths like 15,20, got {text!r}")
    return sorted(set(widths))


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m tuner.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directory of a search (holding trials.parquet); several pool their trials")
    parser.add_argument("--predict", metavar="WIDTHS", help="comma-separated widths to recommend λ for, e.g. 15,20")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where scaling.json and the plots go (default: the first RUN_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--bootstrap", type=int, default=N_BOOT, metavar="N", help=f"bootstrap resamples (default {N_BOOT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap needs at least 100 resamples for a 95% interval, got {args.bootstrap}")
    predict = [] if args.predict is None else parse_predict(args.predict)
    report = fit_runs(args.run_dirs, out_dir=args.out, predict=predict, seed=args.seed, n_boot=args.bootstrap)
    print("\n".join(report.summary_lines()))
    return 0


if __name__ == "__main__":
    cli.run(main)
