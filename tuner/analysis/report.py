"""report.html: one self-contained page to share a search — plan, results, conclusion, figures, commands.

Everything is embedded (figures as data URIs), so the file can be mailed or attached to an MLflow
run and opened anywhere. It is written from the run directories' files alone (search.json,
trials.parquet, evaluation.parquet) and the fit's scaling.json content and figures, so
`python -m tuner.fit` rewrites it for merged runs exactly as the search writes it for one.
"""

from __future__ import annotations

import base64
import html
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.analysis.scaling import conclusion_with_a, number, prediction_text, width_cells
from tuner.files import write_text_atomically
from tuner.outputs.results import EvaluationStore, ResultsStore, best_by_width, read_record

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.92em; } td, th { padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; font-size: 0.88em; }
.conclusion { font-size: 1.15em; font-weight: 600; } img { max-width: 100%; }
"""
BEST_HEADER = ("width", "best λ", "val robust (PGD-20)", "val natural", "val stability", "test robust (PGD-20)",
               "test robust (strong)", "test natural", "completed / early-stopped / failed")
FIT_HEADER = ("width", "λ*", "95% interval", "rule λ*", "near-optimal λ", "val robust at λ*",
              "used / completed / stopped / failed")


def write_report(run_dirs: Sequence[Path], *, out_dir: Path, scaling: dict[str, Any] | None, figures: Sequence[Path],
                 not_fitted: str | None = None) -> Path:
    """Write out_dir/report.html for these runs and the fit made of them (scaling.json's content, or None with the
    reason in `not_fitted`); PNGs among `figures` are embedded. Returns its path."""
    path = Path(out_dir) / REPORT_FILE
    write_text_atomically(path, render(run_dirs, scaling=scaling, figures=figures, not_fitted=not_fitted))
    return path


def render(run_dirs: Sequence[Path], *, scaling: dict[str, Any] | None, figures: Sequence[Path],
           not_fitted: str | None = None) -> str:
    records = [run_record(d) for d in run_dirs]
    title = " + ".join(r["name"] for r in records)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}: λ against width</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Which λ for which width: {esc(title)}</h1>",
             f"<p>Written {time.strftime('%Y-%m-%d %H:%M %Z')} by robust-width-tuner.</p>"]
    if scaling is not None:
        parts.append(f"<p class='conclusion'>{esc(scaling['conclusion'])}</p>")
    for run_dir, record in zip(run_dirs, records):
        parts += [f"<h2>Search {esc(record['name'])}</h2>",
                  f"<pre>{esc(record['plan'])}</pre>" if record.get("plan") else "",
                  "<p>Per width, its best completed trial (validation robust accuracy under PGD-20 at the selected "
                  "epoch) and that trial's checkpoint on the test split: PGD-20, and the strong suite where the "
                  "search evaluated it.</p>",
                  table(BEST_HEADER, best_rows(Path(run_dir)))]
    parts += ["<h2>The scaling rule λ* = a·w<sup>b</sup></h2>", fit_section(scaling, not_fitted)]
    embedded = [figure(path) for path in figures if path.suffix == ".png" and path.exists()]
    if embedded:
        parts += ["<h2>Figures</h2>", *embedded]
    parts += ["<h2>Commands</h2>", f"<pre>{esc(chr(10).join(commands(run_dirs, records)))}</pre>", "</body></html>"]
    return "\n".join(p for p in parts if p)


def run_record(run_dir: Path) -> dict[str, Any]:
    return read_record(run_dir) or {"name": Path(run_dir).name, "argv": []}


def best_rows(run_dir: Path) -> list[list[str]]:
    """The best-trial table's rows of one run directory."""
    rows = list(ResultsStore(run_dir).trials.values())
    body = []
    for summary in best_by_width(rows, list(EvaluationStore(run_dir).rows.values())):
        best, strong, counts = summary.best, summary.strong, " / ".join(map(str, summary.counts))
        if best is None:
            body.append([str(summary.width)] + ["–"] * (len(BEST_HEADER) - 2) + [counts])
            continue
        body.append([str(summary.width), number(best["lam"]), *(accuracy(best[k]) for k in (
                     "val_robust_acc", "val_natural_acc", "val_stability", "test_robust_acc")),
                     "–" if strong is None else f"{accuracy(strong['strong_robust_acc'])} ({strong['suite']})",
                     accuracy(best["test_natural_acc"]), counts])
    return body


def accuracy(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def fit_section(scaling: dict[str, Any] | None, not_fitted: str | None) -> str:
    """The conclusion in words, the per-width fit, the predictions and the notes; or why there is no fit."""
    if scaling is None:
        return f"<p>Not fitted: {esc(not_fitted or 'no fit was made')}.</p>"
    parts = [f"<p>From {scaling['n_widths']} widths and {scaling['n_trials_used']} trials "
             f"({scaling['level']:.0%} profile-likelihood intervals): {esc(conclusion_with_a(scaling))}.</p>"]
    if scaling["advice"]:
        parts.append(f"<p>{esc(scaling['advice'])}</p>")
    parts += [f"<p>What the data show: {esc(scaling['what_the_data_show'])}.</p>",
              f"<p>Regime: {esc(scaling['regime']['words'])}.</p>",
              table(FIT_HEADER, [width_cells(entry) for entry in scaling["per_width"]]),
              f"<p>Near-optimal λ: fitted validation robust accuracy within one seed-noise sd "
              f"({number(scaling['seed_noise_sd'], 2)}, from {esc(scaling['seed_noise_source'])}) of the width's "
              f"best. Forms: {esc(scaling['model_comparison']['note'])}.</p>"]
    items = [prediction_text(p) for p in scaling["predictions"]] + [f"note: {n}" for n in scaling["notes"]]
    if items:
        parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>")
    return "\n".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{esc(path.name)}</figcaption></figure>")


def commands(run_dirs: Sequence[Path], records: Sequence[dict[str, Any]]) -> list[str]:
    """What reproduces each run and opens its dashboards (Optuna, MLflow's run table and its flat trial view)."""
    lines = []
    for run_dir, record in zip(run_dirs, records):
        run_dir = Path(run_dir)
        uri = record.get("tracking_uri", "sqlite:///mlflow.db")
        lines += [f"# {record['name']}",
                  f"python -m tuner.search {shlex.join(record.get('argv', []))}    # the search (again, with another --name)",
                  f"python -m tuner.search --resume --out {run_dir.parent} --name {record['name']}    # continue it",
                  f"python -m tuner.evaluate {run_dir} --trials top-3    # strong attacks on its best checkpoints",
                  f"optuna-dashboard {run_dir / 'optuna.journal'}    # the Optuna studies, one per width"]
        if not uri.startswith(("http://", "https://")):
            lines.append(f"mlflow ui --backend-store-uri {uri}    # then open the addresses below")
        views = record.get("mlflow")
        if views:
            lines += [f"{views['runs_url']}    # MLflow: the runs, nested search → width → trial",
                      f"{views['trials_url']}    # MLflow: the trials side by side (parallel coordinates, scatter)"]
        lines.append("")
    lines.append(f"python -m tuner.fit {' '.join(str(d) for d in run_dirs)}    # the scaling rule and this report")
    return lines


def esc(text: object) -> str:
    return html.escape(str(text))
