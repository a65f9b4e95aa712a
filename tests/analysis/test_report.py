"""report.html: self-contained, parses, holds the plan, both robust accuracies, the conclusion, every figure and
the commands that reproduce the run and open its dashboards."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.analysis.synthetic import synthetic_rows, write_trials
from tests.helpers import Page
from tuner import fit
from tuner.outputs.results import EVALUATION_SCHEMA, best_trial
from tuner.outputs.tracking import views_of

WIDTHS = (1, 4, 10)


def search_dir(path: Path, rows: list[dict], *, name: str) -> Path:
    """A run directory as a search leaves it: trials.parquet, search.json, a strong evaluation of width 4's best
    (when the run has width 4)."""
    for row in rows:
        row.update(test_robust_acc=row["val_robust_acc"] - 0.01, test_natural_acc=row["val_natural_acc"])
    write_trials(path, rows)
    best = best_trial([r for r in rows if r["width"] == 4])
    if best is not None:
        evaluation = {"trial_id": best["trial_id"], "width": 4, "lam": best["lam"], "split": "test", "suite": "aa-lite",
                      "strong_robust_acc": 0.4321, "pgd_robust_acc": 0.45, "natural_acc": 0.8, "broken": []}
        pq.write_table(pa.Table.from_pylist([{k: evaluation.get(k) for k in EVALUATION_SCHEMA.names}],
                                            schema=EVALUATION_SCHEMA), path / "evaluation.parquet")
    record = {"argv": ["--widths", "1,4,10", "--name", name], "name": name, "plan": f"plan of {name}: 3 widths",
              "tracking_uri": "sqlite:///mlflow.db", "mlflow": views_of("sqlite:///mlflow.db", "7", ["r1", "r2"])}
    (path / "search.json").write_text(json.dumps(record))
    return path


def test_the_report_of_merged_runs_embeds_every_figure_and_says_how_to_open_the_dashboards(tmp_path):
    rows = synthetic_rows(2, widths=WIDTHS, n=8)
    first = search_dir(tmp_path / "first", [r for r in rows if r["width"] != 10], name="first")
    second = search_dir(tmp_path / "second", [r for r in rows if r["width"] == 10], name="second")
    fitted = fit.fit_runs([first, second], out_dir=tmp_path / "out", predict=[20])
    path = fit.write_report([first, second], out_dir=tmp_path / "out", fitted=fitted, width_files=fitted.width_files)

    page = Page(path.read_text())
    pngs = [name for name in fitted.files if name.endswith(".png")]
    assert len(page.images) == len(pngs) + len(WIDTHS), "the fit's figures and one per width"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG"), "embedded, not linked"
    text = page.all_text
    assert fitted.scaling["conclusion"] in text and fitted.scaling["what_the_data_show"] in text
    assert fitted.scaling["regime"]["words"] in text
    assert "plan of first" in text and "plan of second" in text
    assert "0.432 (aa-lite)" in page.cells, "strong robust accuracy of width 4's best trial"
    for entry in fitted.scaling["per_width"]:
        assert f"{entry['n_used']}/{entry['n_completed']}/{entry['n_early_stopped']}/{entry['n_failed']}" in page.cells
    assert "recommended λ for width 20" in text
    for command in (f"optuna-dashboard {first / 'optuna.journal'}", "mlflow ui --backend-store-uri sqlite:///mlflow.db",
                    "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning",
                    "http://127.0.0.1:5000/#/compare-runs?runs=%5B%22r1%22%2C%22r2%22%5D&experiments=%5B%227%22%5D"
                    "&workflowType=machine_learning",
                    "python -m tuner.search --widths 1,4,10 --name second", f"python -m tuner.fit {first} {second}"):
        assert command in text, command


def test_without_a_fit_the_report_says_why_and_shows_each_widths_trials(tmp_path):
    run = search_dir(tmp_path / "run", synthetic_rows(2, widths=(4,), n=8), name="one-width")
    width_files = fit.plot_widths([run], out_dir=run)
    path = fit.write_report([run], out_dir=run, fitted=None, width_files=width_files,
                            not_fitted="the scaling fit needs at least two widths")
    page = Page(path.read_text())
    assert "Not fitted: the scaling fit needs at least two widths" in page.all_text
    assert len(page.images) == 1 and "0.432 (aa-lite)" in page.cells
