"""`python -m tuner.evaluate` on a finished search: the chosen trials' checkpoints under a suite, next to PGD-20,
in evaluation.parquet and MLflow, and a rerun that redoes nothing."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from tests.helpers import run_command
from tuner.outputs.results import EVALUATION_SCHEMA

pytestmark = pytest.mark.slow

EXAMPLES = 64
ATTACKS = ["apgd-ce", "apgd-t"]  # the fast suite, in order
# One torch thread, as the search's evaluation tasks have: on a busy shared machine two OpenMP threads that wait on
# each other made this small evaluation 13 times slower (129 s against 10 s, measured side by side).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def top_trials(rows: list[dict], k: int) -> set[str]:
    """Each width's k best completed trials by validation robust accuracy, as a user would pick them from trials.parquet."""
    chosen = set()
    for width in {r["width"] for r in rows}:
        completed = [r for r in rows if r["width"] == width and r["status"] == "completed"]
        chosen |= {r["trial_id"] for r in sorted(completed, key=lambda r: r["val_robust_acc"], reverse=True)[:k]}
    return chosen


def test_top_3_on_test_writes_a_row_per_trial_logs_each_trial_run_and_a_rerun_redoes_nothing(search_run):
    run_dir, _ = search_run
    tracking_uri = json.loads((run_dir / "search.json").read_text())["tracking_uri"]
    expected = top_trials(pq.read_table(run_dir / "trials.parquet").to_pylist(), 3)
    assert len(expected) >= 2
    args = (str(run_dir), "--trials", "top-3", "--suite", "fast", "--n-examples", str(EXAMPLES))

    first = run_command("tuner.evaluate", *args, cwd=run_dir.parent.parent, env=ONE_THREAD)
    assert first.returncode == 0, first.stdout + first.stderr
    table = pq.read_table(run_dir / "evaluation.parquet")
    assert table.schema.equals(EVALUATION_SCHEMA)
    ours = [r for r in table.to_pylist() if r["examples"] == EXAMPLES]  # the search's own evaluations use every example
    assert sorted(r["trial_id"] for r in ours) == sorted(expected), "one row per trial × split × suite"
    for row in ours:
        assert (row["split"], row["suite"], row["epsilon"]) == ("test", "fast", 0.1)
        broken = dict(row["broken"])
        assert list(broken) == ATTACKS
        # the worst case per example: what the clean input got right, less what each attack broke
        assert round(row["strong_robust_acc"] * EXAMPLES) == round(row["natural_acc"] * EXAMPLES) - sum(broken.values())
        assert row["strong_robust_acc"] <= row["pgd_robust_acc"] <= row["natural_acc"]
        printed = [line.split() for line in first.stdout.splitlines()]
        assert [row["width"], f"{row['lam']:.3g}", f"{row['strong_robust_acc']:.3f}"] in [
            [int(f[0]), f[1], f[6]] for f in printed if len(f) > 7 and f[0].isdigit()], "a table line per trial"

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(run_dir.name).experiment_id
    runs = {r.data.tags.get("ray_trial_id"): r for r in client.search_runs([experiment], max_results=1000)
            if r.data.tags.get("rwt.kind") == "trial"}
    for row in ours:
        run = runs[row["trial_id"]]
        assert run.data.metrics["test_strong_robust_acc"] == pytest.approx(row["strong_robust_acc"])
        assert run.data.metrics["test_strong_pgd20_robust_acc"] == pytest.approx(row["pgd_robust_acc"])
        assert run.data.metrics["test_broken_apgd-t"] == dict(row["broken"])["apgd-t"]
        assert run.data.tags["test_strong_examples"] == str(EXAMPLES)
    statuses = {r.data.tags.get("rwt.kind"): r.info.status for r in client.search_runs([experiment], max_results=1000)
                if r.info.status == "RUNNING"}
    assert not statuses, f"the evaluation left runs open: {statuses}"
    search = client.search_runs([experiment], filter_string="tags.`rwt.kind` = 'search'")[0].info.run_id
    artifact = pq.read_table(client.download_artifacts(search, "evaluation.parquet", str(run_dir.parent.parent)))
    assert artifact.equals(table), "the table is an artifact of the search run"

    history = {r["trial_id"]: len(client.get_metric_history(runs[r["trial_id"]].info.run_id, "test_strong_robust_acc"))
               for r in ours}
    again = run_command("tuner.evaluate", *args, cwd=run_dir.parent.parent, env=ONE_THREAD)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"({len(expected)} already in evaluation.parquet)" in again.stdout
    assert pq.read_table(run_dir / "evaluation.parquet").equals(table), "a rerun evaluates nothing again"
    assert history == {trial_id: len(client.get_metric_history(runs[trial_id].info.run_id, "test_strong_robust_acc"))
                       for trial_id in history}, "nor logs anything again"
