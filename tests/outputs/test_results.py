"""Parquet results: explicit schema, rows keyed by trial id, atomic rewrites."""

from __future__ import annotations

import pyarrow.parquet as pq

from tuner.outputs.results import EPOCH_SCHEMA, TRIAL_SCHEMA, ResultsStore


def trial(trial_id, status="completed", lam=1.0):
    return {"trial_id": trial_id, "width": 2, "lam": lam, "method": "trades", "seed": 0, "status": status,
            "epochs_run": 2, "best_epoch": 2, "val_robust_acc": 0.5}


def test_record_writes_both_tables_and_replaces_a_trial_recorded_again(tmp_path):
    store = ResultsStore(tmp_path)
    epochs = [{"epoch": 1, "val_robust_acc": 0.4}, {"epoch": 2, "val_robust_acc": 0.5}]
    store.record(trial("a"), epochs)
    store.record(trial("b", status="early_stopped", lam=3.0), epochs[:1])
    ResultsStore(tmp_path).record(trial("a", lam=1.0), epochs)  # a resumed driver records "a" again
    trials = pq.read_table(tmp_path / "trials.parquet")
    assert trials.schema.equals(TRIAL_SCHEMA)
    assert sorted(trials.column("trial_id").to_pylist()) == ["a", "b"]
    rows = pq.read_table(tmp_path / "epochs.parquet")
    assert rows.schema.equals(EPOCH_SCHEMA)
    assert sorted(zip(rows.column("trial_id").to_pylist(), rows.column("epoch").to_pylist())) == [
        ("a", 1), ("a", 2), ("b", 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.parquet", "trials.parquet"], "temporary file left"
    assert ResultsStore(tmp_path).for_width(2)[0]["width"] == 2
