"""The width→λ scaling fit: recovery of a known rule, interval coverage, files, fallbacks, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from tests.helpers import assert_usage_error, run_command
from tuner.analysis import plots
from tuner.errors import ConfigError
from tuner.analysis.scaling import Trials, compare_forms, fit_trials, quadratic_optimum
from tuner.fit import fit_runs
from tuner.outputs.results import TRIAL_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
A, B = 3.0, 0.5  # the true rule λ*(w) = 3·w^0.5
WIDTHS = (1, 2, 4, 8, 16)


def synthetic_rows(seed: int, *, widths=WIDTHS, n: int = 10, noise: float = 0.01, curvature: float = 0.05,
                   span: float = 1.5) -> list[dict]:
    """n completed trials per width: robust = 0.6 − k·(log λ − log λ*(w))² + noise, λ log-uniform around λ*(w)."""
    rng = np.random.default_rng(seed)
    rows = []
    for width in widths:
        centre = math.log(A * width ** B)
        shift = rng.uniform(-0.5, 0.5)  # the sampled range is not centred on the optimum
        for i, x in enumerate(rng.uniform(centre - span + shift, centre + span + shift, n)):
            rows.append({"trial_id": f"w{width}-{seed}-{i}", "width": width, "lam": math.exp(x), "method": "trades",
                         "seed": seed, "status": "completed", "epochs_run": 10, "best_epoch": 9,
                         "val_robust_acc": 0.6 - curvature * (x - centre) ** 2 + noise * rng.standard_normal(),
                         "val_natural_acc": 0.9 - 0.05 * x + 0.02 * math.log(width),
                         "val_stability": 0.5 + 0.05 * x - 0.03 * math.log(width)})
    return rows


def write_trials(run_dir: Path, rows: list[dict], schema: pa.Schema = TRIAL_SCHEMA) -> Path:
    """trials.parquet as the search writes it: every schema column, unused ones None."""
    run_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    pq.write_table(table, run_dir / "trials.parquet")
    return run_dir


# --------------------------------------------------------------------------- the science


def test_quadratic_optimum_is_exact_on_a_noiseless_parabola_and_falls_back_at_edges():
    x = np.linspace(0.0, 3.0, 9)
    x_star, value, method = quadratic_optimum(x, 0.6 - 0.1 * (x - 1.2) ** 2)
    assert x_star[0] == pytest.approx(1.2) and value[0] == pytest.approx(0.6) and method[0] == 0
    x_star, _, method = quadratic_optimum(x, 0.6 - 0.1 * (x - 5.0) ** 2)  # optimum beyond the sampled range
    assert x_star[0] == pytest.approx(3.0) and method[0] == 1
    y = 0.1 * (x - 1.5) ** 2  # convex: no maximum, the best trial instead
    x_star, value, method = quadratic_optimum(x, y)
    assert method[0] == 2 and value[0] == y.max() and x_star[0] in (x[0], x[-1])


def test_recovers_the_exponent_of_a_known_rule():
    fit = fit_trials(Trials.from_rows(synthetic_rows(0)), predict=[32], seed=0)
    assert abs(fit.b - B) < 0.1  # the exponent's bootstrap sd here is about 0.03
    assert fit.a == pytest.approx(A, rel=0.2)
    a_ci, b_ci = fit.intervals()
    assert b_ci[0] < fit.b < b_ci[1] and a_ci[0] < fit.a < a_ci[1]
    assert all(o.fit == "quadratic" and o.n_trials == 10 for o in fit.per_width)
    (prediction,) = fit.predictions
    assert prediction["extrapolated"] and prediction["lam_ci"][0] < A * 32 ** B < prediction["lam_ci"][1]


def test_the_95_percent_interval_of_b_covers_the_true_exponent():
    seeds = range(40)
    covered = [lo <= B <= hi for lo, hi in
               (fit_trials(Trials.from_rows(synthetic_rows(s)), seed=s, n_boot=300).intervals()[1] for s in seeds)]
    assert np.mean(covered) >= 0.8, f"coverage {np.mean(covered):.2f}"  # 0.975 observed for these seeds


def test_model_comparison_picks_the_form_that_generated_the_optima():
    widths = np.array([1.0, 2, 4, 8, 16, 32])
    sigma = np.full(len(widths), 0.05)
    power = compare_forms(widths, A * widths ** B, sigma)
    assert power["criterion"] == "AICc" and power["best"] == "power_law"
    assert {m["form"] for m in power["models"]} == {"power_law", "linear_in_w", "linear_in_log_w"}
    assert sum(m["weight"] for m in power["models"]) == pytest.approx(1.0)
    assert compare_forms(widths, 2.0 + 0.5 * widths, sigma)["best"] == "linear_in_w"
    assert compare_forms(widths, 2.0 + 3.0 * np.log(widths), sigma)["best"] == "linear_in_log_w"


def test_two_widths_give_an_exact_fit_without_intervals():
    fit = fit_trials(Trials.from_rows(synthetic_rows(1, widths=(2, 8))), predict=[16])
    scaling = fit.to_dict()
    assert scaling["exact_fit"] is True and scaling["b_ci"] is None and scaling["a_ci"] is None
    lam2, lam8 = (o["lam_star"] for o in scaling["per_width"])
    assert scaling["b"] == pytest.approx(math.log(lam8 / lam2) / math.log(4))
    assert scaling["predictions"][0]["lam_ci"] is None
    assert scaling["model_comparison"]["models"] == []
    assert any("exact fit" in note for note in scaling["notes"])


def test_early_stopped_and_failed_trials_are_counted_but_not_fitted():
    rows = synthetic_rows(2)
    extra = []
    for width in WIDTHS:  # stopped early with a (low-fidelity) value that would move the optimum; failed with none
        extra.append({"width": width, "lam": 30.0, "status": "early_stopped", "val_robust_acc": 0.9,
                      "val_natural_acc": 0.9, "val_stability": 0.9})
        extra.append({"width": width, "lam": 0.5, "status": "error", "val_robust_acc": None})
    extra.append({"width": 64, "lam": 10.0, "status": "early_stopped", "val_robust_acc": 0.7})  # no completed trial
    fit = fit_trials(Trials.from_rows(rows + extra))
    clean = fit_trials(Trials.from_rows(rows))
    assert [o.lam_star for o in fit.per_width] == [o.lam_star for o in clean.per_width]
    assert fit.b == clean.b
    assert all((o.n_trials, o.n_early_stopped, o.n_failed) == (10, 1, 1) for o in fit.per_width)
    assert [o.width for o in fit.per_width] == list(WIDTHS)
    assert any("width 64 left out" in note for note in fit.notes)


def test_a_width_with_fewer_than_three_trials_gets_its_best_trial_and_no_interval():
    rows = synthetic_rows(3, widths=(1, 2, 4, 8)) + synthetic_rows(3, widths=(16,), n=2)
    fit = fit_trials(Trials.from_rows(rows))
    narrow = fit.per_width[-1]
    assert narrow.width == 16 and narrow.lam_star_ci is None and narrow.fit == "best_point" and narrow.note
    best = max((r for r in rows if r["width"] == 16), key=lambda r: r["val_robust_acc"])
    assert narrow.lam_star == pytest.approx(best["lam"])
    assert fit.intervals()[1] is not None  # the other widths still give the rule an interval


def test_no_width_with_three_trials_gives_the_rule_without_intervals():
    fit = fit_trials(Trials.from_rows(synthetic_rows(8, widths=(1, 4, 16), n=2)), predict=[8])
    assert fit.intervals() == (None, None) and fit.chi2_red is None and not fit.exact
    assert fit.predictions[0]["lam_ci"] is None
    assert any("no intervals" in note for note in fit.notes)


def test_runs_that_mix_methods_are_refused(tmp_path):
    rows = synthetic_rows(4)
    for row in rows[::2]:
        row["method"] = "pgd-at"
    with pytest.raises(ConfigError, match="mix training methods"):
        fit_runs([write_trials(tmp_path / "run", rows)], plots=False)


# --------------------------------------------------------------------------- files and the command


def test_fit_runs_pools_run_dirs_and_writes_scaling_json_and_plots(tmp_path):
    rows = synthetic_rows(5)
    width4 = [r for r in rows if r["width"] == 4]  # half in each search: pooled
    first = write_trials(tmp_path / "a", [r for r in rows if r["width"] < 4] + width4[:5])
    second = write_trials(tmp_path / "b", width4[5:] + [r for r in rows if r["width"] > 4])
    report = fit_runs([first, second], out_dir=tmp_path / "out", predict=[15, 20], n_boot=300)
    scaling = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert scaling == json.loads(json.dumps(report.scaling))
    for key in ("a", "b", "a_ci", "b_ci", "per_width", "model_comparison", "predictions"):
        assert key in scaling
    assert {o["width"]: o["n_trials"] for o in scaling["per_width"]} == {w: 10 for w in WIDTHS}
    assert [p["width"] for p in scaling["predictions"]] == [15, 20]
    assert set(report.files) == {"scaling.json", *plots.SIZES}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(report.files), "temporary file left"
    for name in plots.SIZES:
        image = imread(report.files[name])
        width, height = plots.pixel_size(name)
        assert image.shape[:2] == (height, width), name
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 1 and image.std() > 0, f"{name} is blank"
    text = "\n".join(report.summary_lines())
    assert "recommended λ for width 15" in text and "b = " in text


def test_command_prints_the_rule_and_the_recommendations(tmp_path):
    run = write_trials(tmp_path / "run", synthetic_rows(6))
    result = run_command("tuner.fit", str(run), "--predict", "15,20", "--bootstrap", "200", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "scaling rule λ* = a·w^b from 5 widths" in result.stdout
    assert "recommended λ for width 20" in result.stdout
    assert (run / "scaling.json").is_file() and (run / "lambda_vs_width.png").is_file()


def bad_runs(tmp_path: Path) -> dict[str, tuple[Path, list[str], tuple[str, ...]]]:
    """Name → (run dir, extra arguments, fragments the error line must hold)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = pa.schema([f for f in TRIAL_SCHEMA if f.name not in ("val_natural_acc", "val_stability")])
    failed = [{**row, "status": "error", "val_robust_acc": None} for row in synthetic_rows(7)]
    return {
        "no table": (empty, [], ("no trials.parquet", str(empty.resolve()), "python -m tuner.search")),
        "missing columns": (write_trials(tmp_path / "partial", synthetic_rows(7), partial), [],
                            ("val_natural_acc, val_stability",)),
        "one width": (write_trials(tmp_path / "one", synthetic_rows(7, widths=(4,))), [],
                      ("at least two widths", "width 4 only")),
        "all failed": (write_trials(tmp_path / "failed", failed), [], ("no usable trials", "50 error")),
        "bad predict": (write_trials(tmp_path / "ok", synthetic_rows(7)), ["--predict", "15,x"], ("--predict",)),
    }


@pytest.mark.parametrize("case", ["no table", "missing columns", "one width", "all failed", "bad predict"])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, case):
    run_dir, extra, fragments = bad_runs(tmp_path)[case]
    result = run_command("tuner.fit", str(run_dir), *extra, cwd=ROOT)
    assert_usage_error(result, *fragments)
    assert not (run_dir / "scaling.json").exists()
