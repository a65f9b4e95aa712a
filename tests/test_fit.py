"""`python -m tuner.fit`, fit_runs and its halves (draw_fit, write_scaling): files, figures, conclusion, bad input."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from matplotlib.image import imread

from tests.analysis.synthetic import WIDTHS, synthetic_rows, write_trials
from tests.helpers import assert_usage_error, run_command
from tuner.analysis import plots
from tuner.analysis.ranking import ranked
from tuner.errors import ConfigError
from tuner.fit import SCALING_FILE, draw_fit, fit_runs, write_scaling
from tuner.outputs.results import TRIAL_SCHEMA, EvaluationStore

ROOT = Path(__file__).resolve().parents[1]


def test_fit_runs_pools_run_dirs_and_writes_scaling_json_and_figures(tmp_path):
    rows = synthetic_rows(5, stopped=0.2)
    width4 = [r for r in rows if r["width"] == 4]  # half in each search: pooled
    first = write_trials(tmp_path / "a", [r for r in rows if r["width"] < 4] + width4[:5])
    second = write_trials(tmp_path / "b", width4[5:] + [r for r in rows if r["width"] > 4])
    report = fit_runs([first, second], out_dir=tmp_path / "out", predict=[15, 20])
    scaling = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert scaling == json.loads(json.dumps(report.scaling))
    for key in ("conclusion", "a", "b", "a_ci", "b_ci", "per_width", "model_comparison", "predictions",
                "seed_noise_sd", "what_the_data_show"):
        assert key in scaling
    assert {o["width"]: o["n_used"] for o in scaling["per_width"]} == {w: 10 for w in WIDTHS}
    assert sum(o["n_early_stopped"] for o in scaling["per_width"]) == sum(r["status"] == "early_stopped" for r in rows)
    assert [p["width"] for p in scaling["predictions"]] == [15, 20]
    assert set(report.files) == {"scaling.json", *plots.file_names()}
    assert {w: sorted(f) for w, f in report.width_files.items()} == {w: plots.width_file_names(w) for w in WIDTHS}
    width_files = [name for files in report.width_files.values() for name in files]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*report.files, *width_files]), \
        "temporary file left"
    for name, path in report.files.items():
        if name.endswith(".png"):
            image = imread(path)
            width, height = plots.pixel_size(name)
            assert image.shape[:2] == (height, width), name
            assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50, f"{name} is nearly blank"
        elif name.endswith(".svg"):
            root = ET.parse(path).getroot()
            assert root.tag.endswith("svg") and len(list(root.iter())) > 100, name
    text = "\n".join(report.summary_lines())
    assert scaling["conclusion"] in text and "recommended λ for width 15" in text
    assert not re.search(r"\d[eE][-+]?\d", text), text


def test_a_drawn_fit_writes_scaling_json_with_the_strong_evaluations_finished_after_it(tmp_path):
    """The search draws the fit while its last strong evaluations run: their ranking check must still reach
    scaling.json, which write_scaling writes afterwards."""
    rows = [{**row, "checkpoint": f"/ckpt/{row['trial_id']}"} for row in synthetic_rows(6, n=12)]  # evaluable
    run = write_trials(tmp_path / "run", rows)
    drawn = draw_fit([run])
    assert set(drawn.files) == set(plots.file_names()) and not (run / SCALING_FILE).exists()
    top = ranked(rows, WIDTHS[0])[:2]
    store = EvaluationStore(run)
    for row, strong in zip(top, (0.30, 0.50)):  # under the suite the second beats the first, far beyond noise
        store.record({**{k: row[k] for k in ("trial_id", "width", "lam", "seed")}, "split": "val", "suite": "fast",
                      "epsilon": 0.1, "examples": 300, "natural_acc": 0.9, "pgd_robust_acc": 0.6,
                      "strong_robust_acc": strong, "broken": {}, "seconds": 1.0, "evaluated_at": None})
    written = write_scaling(drawn)
    scaling = json.loads((run / SCALING_FILE).read_text())
    assert scaling == json.loads(json.dumps(written.scaling))
    assert [(c["width"], c["changed"]) for c in scaling["ranking_check"]] == [(WIDTHS[0], True)]
    assert set(written.files) == {SCALING_FILE, *plots.file_names()}
    assert {k: v for k, v in scaling.items() if k != "ranking_check"} == json.loads(json.dumps(drawn.scaling))


def test_command_prints_the_conclusion_and_the_recommendations(tmp_path):
    run = write_trials(tmp_path / "run", synthetic_rows(6, n=12))
    result = run_command("tuner.fit", str(run), "--predict", "15,20", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "scaling rule λ* = a·w^b from 5 widths" in result.stdout
    assert "λ* grows with width: b = " in result.stdout and "what the data show:" in result.stdout
    assert "recommended λ for width 20" in result.stdout
    assert (run / "scaling.json").is_file() and (run / "lambda_vs_width.svg").is_file()
    assert f"report: {run / 'report.html'}" in result.stdout and "λ* grows with width" in (run / "report.html").read_text()


def test_no_run_directory_is_a_config_error():
    with pytest.raises(ConfigError, match="no run directory"):
        fit_runs([])


def bad_runs(tmp_path: Path) -> dict[str, tuple[Path, list[str], tuple[str, ...]]]:
    """Name → (run dir, extra arguments, fragments the error line must hold)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = pa.schema([f for f in TRIAL_SCHEMA if f.name not in ("val_natural_acc", "val_stability")])
    failed = [{**row, "status": "error", "val_robust_acc": None} for row in synthetic_rows(7)]
    mixed = [{**row, "method": "pgd-at" if i % 2 else "trades"} for i, row in enumerate(synthetic_rows(7))]
    return {
        "no table": (empty, [], ("no trials.parquet", str(empty.resolve()), "python -m tuner.search")),
        "missing columns": (write_trials(tmp_path / "partial", synthetic_rows(7), partial), [],
                            ("val_natural_acc, val_stability",)),
        "one width": (write_trials(tmp_path / "one", synthetic_rows(7, widths=(4,))), [],
                      ("at least two widths", "got 4")),
        "all failed": (write_trials(tmp_path / "failed", failed), [], ("no usable trials", "50 error")),
        "mixed methods": (write_trials(tmp_path / "mixed", mixed), [], ("mix training methods",)),
        "bad predict": (write_trials(tmp_path / "ok", synthetic_rows(7)), ["--predict", "15,x"], ("--predict",)),
    }


@pytest.mark.parametrize("case", ["no table", "missing columns", "one width", "all failed", "mixed methods",
                                  "bad predict"])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, case):
    run_dir, extra, fragments = bad_runs(tmp_path)[case]
    result = run_command("tuner.fit", str(run_dir), *extra, cwd=ROOT)
    assert_usage_error(result, *fragments)
    assert not (run_dir / "scaling.json").exists()
