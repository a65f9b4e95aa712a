"""`python -m tuner.search` end to end on a real local Ray, with real Optuna storage and Parquet files."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request


import optuna
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.helpers import BIN, Page, assert_usage_error, free_port, run_command, write_preset
from tuner.outputs.results import EPOCH_SCHEMA, TRIAL_SCHEMA

pytestmark = pytest.mark.slow


def studies(run_dir):
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
            for s in optuna.get_all_study_summaries(storage)}


def test_parquet_tables_have_the_schema_and_one_row_per_trial(search_run):
    run_dir, _ = search_run
    trials = pq.read_table(run_dir / "trials.parquet")
    epochs = pq.read_table(run_dir / "epochs.parquet")
    assert trials.schema.equals(TRIAL_SCHEMA) and epochs.schema.equals(EPOCH_SCHEMA)
    rows = trials.to_pylist()
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert sorted(r["width"] for r in rows) == [1, 1, 1, 2, 2, 2]
    assert all(0.5 <= r["lam"] <= 20 for r in rows)
    assert epochs.num_rows == sum(r["epochs_run"] for r in rows)
    for r in rows:
        assert r["status"] in ("completed", "early_stopped")
        assert r["val_robust_acc"] <= r["val_natural_acc"]
        if r["status"] == "completed":
            assert r["epochs_run"] == 2 and r["test_robust_acc"] is not None
        else:
            assert r["epochs_run"] == 1 and r["test_robust_acc"] is None


def test_one_optuna_study_per_width_with_the_same_trials(search_run):
    run_dir, _ = search_run
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    by_study = studies(run_dir)
    assert set(by_study) == {"it-w1", "it-w2"}
    for width in (1, 2):
        ot_trials = by_study[f"it-w{width}"]
        parquet = [r for r in rows if r["width"] == width]
        assert sorted(t.params["lam"] for t in ot_trials) == pytest.approx(sorted(r["lam"] for r in parquet))
        states = sorted(t.state.name for t in ot_trials)
        expected = sorted("COMPLETE" if r["status"] == "completed" else "PRUNED" for r in parquet)
        assert states == expected


def test_harsh_asha_stops_some_trial_and_optuna_sees_it_pruned(search_run):
    run_dir, result = search_run
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert any(r["status"] == "early_stopped" for r in rows), result.stdout
    pruned = [t for ts in studies(run_dir).values() for t in ts if t.state == TrialState.PRUNED]
    assert pruned and all(t.intermediate_values and max(t.intermediate_values) == 1 for t in pruned)


def test_output_is_a_line_per_trial_periodic_status_the_dashboard_url_and_a_summary(search_run):
    """Output to a pipe (a Ray job's log, CI): plain status lines, no terminal control characters."""
    _, result = search_run
    lines = result.stdout.splitlines()
    trial_lines = [line for line in lines if line.strip().startswith(("w1 [", "w2 ["))]
    assert len(trial_lines) == 6
    status = [line for line in lines if re.match(r"^\[\d+m\d\ds\] \d+/6 done, \d+ stopped early, \d+ failed", line)]
    assert status and any("running: w" in line and " epoch " in line for line in status), result.stdout
    assert "\r" not in result.stdout and "\033" not in result.stdout
    assert re.search(r"^ray dashboard: http://127\.0\.0\.1:\d+$", result.stdout, re.MULTILINE)
    assert "completed/early-stopped/failed" in result.stdout
    assert result.stderr.strip() == "", "library noise on stderr"


def test_without_a_fit_report_html_says_why_and_shows_each_widths_trials(search_run):
    """Three λ per width are too few trials for the scaling fit (two widths need 7 coefficients): the report says
    so, and still embeds each width's trials."""
    run_dir, result = search_run
    page = Page((run_dir / "report.html").read_text())
    assert not (run_dir / "scaling.json").exists() and "scaling rule: not fitted" in result.stdout
    assert "Not fitted: " in page.all_text and "optuna-dashboard" in page.all_text
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert f"report:  {run_dir / 'report.html'}" in result.stdout
    assert all((run_dir / f"robust_vs_lambda_w{width}.png").is_file() for width in (1, 2))


def test_optuna_dashboard_serves_the_studies_with_their_metric_epochs_and_links(search_run):
    """The real optuna-dashboard on the run's journal, read through its HTTP API."""
    run_dir, _ = search_run
    port = free_port()
    server = subprocess.Popen([str(BIN / "optuna-dashboard"), str(run_dir / "optuna.journal"), "--host", "127.0.0.1",
                               "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        studies = json.loads(wait_for_url(f"http://127.0.0.1:{port}/api/studies", server))["study_summaries"]
        assert sorted(s["study_name"] for s in studies) == ["it-w1", "it-w2"]
        rows = {r["trial_id"]: r for r in pq.read_table(run_dir / "trials.parquet").to_pylist()}
        for summary in studies:
            study = json.loads(wait_for_url(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", server))
            assert study["objective_names"] == ["selected_val_robust_acc"]
            for trial in study["trials"]:
                attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
                row = rows[attrs["ray_trial_id"]]
                assert attrs["status"] == row["status"] and int(attrs["seed"]) == row["seed"]
                assert attrs["mlflow_run_id"], "the trial links to its MLflow run"
                steps = sorted(v["step"] for v in trial["intermediate_values"])
                assert steps == list(range(1, row["epochs_run"] + 1)), "every epoch, the last one included"
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_url(url: str, proc: subprocess.Popen, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.3)


def test_a_diverging_trial_is_an_error_and_the_others_finish(tmp_path):
    preset = write_preset(tmp_path / "p.yaml", max_retries=1, concurrency=1)
    result = run_command("tuner.search", "--preset", preset, "--widths", "1", "--trials", "3", "--seeds", "1", "--epochs", "1",
                         "--lam-range", "1,1e7", "--lam-start", "1,1e6", "--out", "runs", "--name", "err",
                         cwd=tmp_path)  # a relative --out, as in the demo
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["lam"]: r for r in pq.read_table(tmp_path / "runs" / "err" / "trials.parquet").to_pylist()}
    assert len(rows) == 3
    assert rows[1.0]["status"] == "completed"
    assert rows[1e6]["status"] == "error" and "diverged" in rows[1e6]["error"]
    states = sorted(t.state.name for t in studies(tmp_path / "runs" / "err")["err-w1"])
    assert states.count("FAIL") == sum(r["status"] == "error" for r in rows.values())
    # no tracking URI given: MLflow's default store in the working directory
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("err").experiment_id],
                              filter_string="tags.`rwt.kind` = 'trial'")
    status = {float(r.data.params["lam"]): (r.data.tags["status"], r.info.status) for r in runs}
    assert status[1.0] == ("completed", "FINISHED") and status[1e6] == ("error", "FAILED")


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    result = run_command("tuner.search", "--widths", "1", "--out", str(tmp_path / "runs"), "--name", "taken", cwd=tmp_path)
    assert_usage_error(result, "run directory", "exists: pass --resume")
    assert list((tmp_path / "runs" / "taken").iterdir()) == []
