"""MLflow tracking of a search against a real `mlflow server`, through the client and the REST API."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import Page, mlflow_server, run_command

pytestmark = pytest.mark.slow

EPOCHS = 2
TRIALS = 4  # per width: the fewest with which the scaling fit of two widths has a residual degree of freedom
FIT_FIGURES = {f"{name}.{fmt}" for name in ("lambda_vs_width", "tradeoff_vs_lambda", "natural_vs_stability")
               for fmt in ("png", "svg")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def tracked(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    result = run_command("tuner.search", "--widths", "1,2", "--trials", str(TRIALS), "--seeds", "1",
                         "--epochs", str(EPOCHS),
                         "--tracking-uri", server, "--out", "runs", "--name", "tracked", cwd=tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    return client, experiment, runs, tmp / "runs" / "tracked", result


def by_kind(runs, kind):
    return [r for r in runs if r.data.tags.get("rwt.kind") == kind]


def test_runs_nest_search_then_width_then_trial(tracked):
    _, _, runs, _, _ = tracked
    (search,) = by_kind(runs, "search")
    widths = by_kind(runs, "width")
    trials = by_kind(runs, "trial")
    assert len(widths) == 2 and len(trials) == 2 * TRIALS, "one run per width and per trial"
    assert {w.data.tags["mlflow.parentRunId"] for w in widths} == {search.info.run_id}
    width_ids = {w.data.params["width"]: w.info.run_id for w in widths}
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == width_ids[t.data.params["width"]]
    assert len({t.data.tags["ray_trial_id"] for t in trials}) == 2 * TRIALS


def test_trial_runs_hold_params_epoch_histories_final_metrics_and_tags(tracked):
    client, _, runs, _, _ = tracked
    for t in by_kind(runs, "trial"):
        params = t.data.params
        assert {"width", "lam", "method", "epsilon", "train_steps", "train_step_size", "eval_steps", "eval_step_size",
                "epochs", "seed", "preset", "model", "dataset", "batch_size", "lr", "momentum",
                "weight_decay"} <= set(params)
        assert params["method"] == "trades" and params["epochs"] == str(EPOCHS)
        for key in ("val_robust_acc", "val_natural_acc", "val_stability", "val_lipschitz", "train_natural_loss",
                    "train_regularizer", "lr", "epoch_seconds"):
            history = client.get_metric_history(t.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
        assert {"selected_val_robust_acc", "test_robust_acc", "test_natural_acc", "test_stability"} <= set(t.data.metrics)
        assert t.data.tags["status"] == "completed" and t.info.status == "FINISHED"
        assert t.data.tags["node"] and t.data.tags["optuna_trial"] in {str(i) for i in range(TRIALS)}


def test_artifacts_results_fit_and_report_on_search_run_checkpoint_and_figure_on_width_runs(tracked):
    client, _, runs, _, _ = tracked
    (search,) = by_kind(runs, "search")
    assert {a.path for a in client.list_artifacts(search.info.run_id)} == {
        "trials.parquet", "epochs.parquet", "evaluation.parquet", "scaling.json", "report.html", *FIT_FIGURES}
    assert {"fit_a", "fit_b"} <= set(search.data.metrics)
    for w in by_kind(runs, "width"):
        width = w.data.params["width"]
        assert {a.path for a in client.list_artifacts(w.info.run_id)} == {
            "best_checkpoint", f"robust_vs_lambda_w{width}.png", f"robust_vs_lambda_w{width}.svg"}
        assert [a.path for a in client.list_artifacts(w.info.run_id, "best_checkpoint")] == ["best_checkpoint/best.pt"]
        assert "best_lam" in w.data.metrics


def test_the_experiment_opens_on_training_runs_and_one_url_shows_the_trials_flat(tracked):
    _, experiment, runs, run_dir, result = tracked
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    views = json.loads((run_dir / "search.json").read_text())["mlflow"]
    assert views["runs_url"] in result.stdout and views["trials_url"] in result.stdout
    page, query = views["trials_url"].split("#/")[1].split("?")
    params = urllib.parse.parse_qs(query)
    assert page == "compare-runs" and json.loads(params["experiments"][0]) == [experiment.experiment_id]
    assert params["workflowType"] == ["machine_learning"] and views["runs_url"].endswith(
        f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
    assert sorted(json.loads(params["runs"][0])) == sorted(t.info.run_id for t in by_kind(runs, "trial"))


def test_report_html_is_the_search_runs_artifact_with_every_figure_embedded(tracked, tmp_path):
    client, _, runs, run_dir, result = tracked
    (search,) = by_kind(runs, "search")
    text = Path(client.download_artifacts(search.info.run_id, "report.html", str(tmp_path))).read_text()
    assert text == (run_dir / "report.html").read_text() and f"report:  {run_dir / 'report.html'}" in result.stdout
    sources = Page(text).images
    assert len(sources) == 3 + 2, "the fit's three figures and one per width"
    assert all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]{1000,}", s) for s in sources)
    scaling = json.loads((run_dir / "scaling.json").read_text())
    assert scaling["conclusion"] in text and "optuna-dashboard" in text and "compare-runs" in text


def test_rest_api_sees_the_same_runs(server, tracked):
    _, experiment, runs, _, _ = tracked
    request = urllib.request.Request(
        f"{server}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"experiment_ids": [experiment.experiment_id],
                         "filter": "tags.`rwt.kind` = 'trial'", "max_results": 100}).encode())
    body = json.loads(urllib.request.urlopen(request, timeout=10).read())
    assert len(body["runs"]) == 2 * TRIALS
    for run in body["runs"]:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert tags["status"] == "completed" and "lam" in params and "width" in params


def test_the_search_ends_with_the_scaling_fit(tracked):
    *_, run_dir, result = tracked
    scaling = json.loads((run_dir / "scaling.json").read_text())
    assert [w["width"] for w in scaling["per_width"]] == [1, 2]
    assert [w["n_used"] for w in scaling["per_width"]] == [TRIALS, TRIALS]
    assert scaling["a"] > 0 and len(scaling["b_ci"]) == 2
    assert "scaling rule λ* = a·w^b from 2 widths" in result.stdout and scaling["conclusion"] in result.stdout
    # the ranking check the summary prints is kept with the fit
    assert {c["width"] for c in scaling["ranking_check"]} == {1, 2}
    for check in scaling["ranking_check"]:
        assert check["suite"] == "fast" and check["trials"] == 3 and f"ranking check w{check['width']}:" in result.stdout
