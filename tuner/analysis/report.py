"""report.html: one self-contained page to share a search — plan, results, conclusion, figures, commands.

Everything is embedded (figures as data URIs), so the file can be mailed or attached to an MLflow
run and opened anywhere. It is written from the run directories' files alone (search.json,
trials.parquet, evaluation.parquet, the fit's outputs), so `python -m tuner.fit` rewrites it for
merged runs exactly as the search writes it for one.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.files import write_text_atomically
from tuner.outputs.results import STATUSES, EvaluationStore, ResultsStore, best_trial, read_record

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.92em; } td, th { padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; font-size: 0.88em; }
.conclusion { font-size: 1.15em; font-weight: 600; } img { max-width: 100%; }
"""


def run_record(run_dir: Path) -> dict[str, Any]:
    return read_record(run_dir) or {"name": Path(run_dir).name, "argv": []}


def write_report(run_dirs: Sequence[Path], *, out_dir: Path, conclusion: str | None, fit_lines: Sequence[str],
                 figures: Sequence[Path]) -> Path:
    """Write out_dir/report.html for these runs and the fit made of them; returns its path."""
    path = Path(out_dir) / REPORT_FILE
    write_text_atomically(path, render(run_dirs, conclusion=conclusion, fit_lines=fit_lines, figures=figures))
    return path


def render(run_dirs: Sequence[Path], *, conclusion: str | None, fit_lines: Sequence[str],
           figures: Sequence[Path]) -> str:
    records = [run_record(d) for d in run_dirs]
    title = " + ".join(r["name"] for r in records)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}: λ against width</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Which λ for which width: {esc(title)}</h1>",
             f"<p>Written {time.strftime('%Y-%m-%d %H:%M %Z')} by robust-width-tuner.</p>"]
    if conclusion:
        parts.append(f"<p class='conclusion'>{esc(conclusion)}</p>")
    for run_dir, record in zip(run_dirs, records):
        parts += [f"<h2>Search {esc(record['name'])}</h2>",
                  f"<pre>{esc(record.get('plan', ''))}</pre>" if record.get("plan") else "",
                  width_table(Path(run_dir))]
    parts += ["<h2>The scaling rule</h2>", f"<pre>{esc(chr(10).join(fit_lines))}</pre>"]
    parts += ["<h2>Figures</h2>"] + [figure(path) for path in figures if path.suffix == ".png" and path.exists()]
    parts += ["<h2>Commands</h2>", f"<pre>{esc(chr(10).join(commands(run_dirs, records)))}</pre>", "</body></html>"]
    return "\n".join(p for p in parts if p)


def width_table(run_dir: Path) -> str:
    """Per width: the best trial (validation robust accuracy, PGD-20), its test metrics and strong robust accuracy."""
    store = ResultsStore(run_dir)
    evaluations = list(EvaluationStore(run_dir).rows.values())
    header = ["width", "best λ", "val robust", "val natural", "val stability", "test robust (PGD-20)",
              "test robust (strong)", "test natural", "completed / early-stopped / failed"]
    body = []
    for width in sorted({r["width"] for r in store.trials.values()}):
        rows = store.for_width(width)
        counts = " / ".join(str(sum(r["status"] == s for r in rows)) for s in STATUSES)
        best = best_trial(rows)
        if best is None:
            body.append([str(width), "–", "–", "–", "–", "–", "–", "–", counts])
            continue
        strong = next((e for e in evaluations if e["trial_id"] == best["trial_id"] and e["split"] == "test"), None)
        body.append([str(width), f"{best['lam']:.3g}", f"{best['val_robust_acc']:.3f}", f"{best['val_natural_acc']:.3f}",
                     f"{best['val_stability']:.3f}", f"{best['test_robust_acc']:.3f}",
                     "–" if strong is None else f"{strong['strong_robust_acc']:.3f} ({strong['suite']})",
                     f"{best['test_natural_acc']:.3f}", counts])
    cells = "".join(f"<th>{esc(h)}</th>" for h in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{cells}</tr>{rows_html}</table>"


def figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<figure><img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'><figcaption>{esc(path.name)}</figcaption></figure>"


def commands(run_dirs: Sequence[Path], records: Sequence[dict[str, Any]]) -> list[str]:
    """What reproduces each run and opens its dashboards."""
    lines = []
    for run_dir, record in zip(run_dirs, records):
        run_dir = Path(run_dir)
        uri = record.get("tracking_uri", "sqlite:///mlflow.db")
        argv = " ".join(a if a and " " not in a else repr(a) for a in record.get("argv", []))
        lines += [f"# {record['name']}",
                  f"python -m tuner.search {argv}    # the search (again, with another --name)",
                  f"python -m tuner.search --resume --out {run_dir.parent} --name {record['name']}    # continue it",
                  f"python -m tuner.evaluate {run_dir} --trials top-3    # strong attacks on its best checkpoints",
                  f"optuna-dashboard {run_dir / 'optuna.journal'}",
                  f"mlflow ui --backend-store-uri {uri}    # then #/experiments/<id>/runs (Model training)", ""]
    lines.append(f"python -m tuner.fit {' '.join(str(d) for d in run_dirs)}    # the scaling rule and this report")
    return lines


def esc(text: object) -> str:
    return html.escape(str(text))
