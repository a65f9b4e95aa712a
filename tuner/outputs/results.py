"""Search results as Parquet: one row per trial, one row per trial per epoch.

Both files are rewritten atomically (temporary file + rename) each time a trial finishes, so a
crash never leaves a half-written table and no finished trial is lost. Rows are keyed by the
Ray trial id: a trial recorded again (a resume) replaces its earlier rows instead of adding more.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tuner.files import write_atomically

SEARCH_FILE = "search.json"  # how a search was started (arguments, name, plan, tracking URI) and its stage times
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
STATUSES = ("completed", "early_stopped", "error")
SELECTED_METRICS = ("val_natural_acc", "val_robust_acc", "val_stability", "val_lipschitz")  # at the selected epoch
TEST_METRICS = ("test_natural_acc", "test_robust_acc", "test_stability")  # of the selected checkpoint

TRIAL_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("width", pa.int32()),
    ("lam", pa.float64()),
    ("method", pa.string()),
    ("seed", pa.int64()),
    ("replicate", pa.int32()),  # which of the λ's replicate seeds (0 .. seeds - 1)
    ("status", pa.string()),
    ("epochs_run", pa.int32()),
    ("best_epoch", pa.int32()),
    ("val_natural_acc", pa.float64()),
    ("val_robust_acc", pa.float64()),
    ("val_stability", pa.float64()),
    ("val_lipschitz", pa.float64()),
    ("test_natural_acc", pa.float64()),
    ("test_robust_acc", pa.float64()),
    ("test_stability", pa.float64()),
    ("wall_seconds", pa.float64()),
    ("optuna_trial", pa.int32()),
    ("workers", pa.int32()),  # data-parallel workers of the trial
    ("node", pa.string()),  # Ray node ID (of rank 0 for a data-parallel trial)
    ("node_ip", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),  # when the trial (last) started, and its last report
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("checkpoint", pa.string()),  # the trial's last checkpoint (a path or URI); its best.pt is the selected epoch
    ("error", pa.string()),
    ("note", pa.string()),  # e.g. "restarted from scratch: checkpoint … was unreadable"
])

EPOCH_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("width", pa.int32()),
    ("lam", pa.float64()),
    ("epoch", pa.int32()),
    ("train_natural_loss", pa.float64()),
    ("train_regularizer", pa.float64()),
    ("lr", pa.float64()),
    ("epoch_seconds", pa.float64()),
    ("val_natural_acc", pa.float64()),
    ("val_robust_acc", pa.float64()),
    ("val_stability", pa.float64()),
    ("val_lipschitz", pa.float64()),
])
EPOCH_KEYS = ("trial_id", "width", "lam", "epoch")
EPOCH_METRICS = tuple(name for name in EPOCH_SCHEMA.names if name not in EPOCH_KEYS)


class ResultsStore:
    """The trial and epoch tables of one run directory, kept in memory and on disk together."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.trials = {row["trial_id"]: row for row in _read(self.run_dir / TRIALS_FILE)}
        self.epochs: dict[str, list[dict[str, Any]]] = {}
        for row in _read(self.run_dir / EPOCHS_FILE):
            self.epochs.setdefault(row["trial_id"], []).append(row)

    def record(self, trial: dict[str, Any], epochs: list[dict[str, Any]]) -> None:
        """Add or replace one trial's rows and write both files."""
        if trial["status"] not in STATUSES:
            raise ValueError(f"unknown trial status {trial['status']!r}")
        trial_id = trial["trial_id"]
        self.trials[trial_id] = {name: trial.get(name) for name in TRIAL_SCHEMA.names}
        self.epochs[trial_id] = [{name: {"trial_id": trial_id, "width": trial["width"], "lam": trial["lam"],
                                         **row}.get(name) for name in EPOCH_SCHEMA.names} for row in epochs]
        _write(self.run_dir / TRIALS_FILE, list(self.trials.values()), TRIAL_SCHEMA)
        _write(self.run_dir / EPOCHS_FILE, [r for rows in self.epochs.values() for r in rows], EPOCH_SCHEMA)

    def for_width(self, width: int) -> list[dict[str, Any]]:
        return [row for row in self.trials.values() if row["width"] == width]


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial with the best validation robust accuracy at its selected epoch."""
    return max((r for r in rows if r["status"] == "completed"), key=lambda r: r["val_robust_acc"], default=None)


@dataclass(frozen=True)
class WidthBest:
    """A width's trial counts by status, its best completed trial, and that trial's strong evaluation on test."""

    width: int
    counts: tuple[int, ...]  # per STATUSES
    best: dict[str, Any] | None
    strong: dict[str, Any] | None


def best_by_width(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]],
                  widths: Iterable[int] | None = None) -> list[WidthBest]:
    """The per-width summary a search ends with (and report.html shows), for `widths` (default: those in `rows`)."""
    summaries = []
    for width in sorted({r["width"] for r in rows}) if widths is None else widths:
        width_rows = [r for r in rows if r["width"] == width]
        best = best_trial(width_rows)
        strong = None if best is None else next(
            (e for e in evaluations if e["trial_id"] == best["trial_id"] and e["split"] == "test"), None)
        summaries.append(WidthBest(width, tuple(sum(r["status"] == s for r in width_rows) for s in STATUSES),
                                   best, strong))
    return summaries


def _read(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def _write(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    write_atomically(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp))


EVALUATION_FILE = "evaluation.parquet"
EVALUATION_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("width", pa.int32()),
    ("lam", pa.float64()),
    ("seed", pa.int64()),
    ("split", pa.string()),  # test or val
    ("suite", pa.string()),
    ("epsilon", pa.float64()),
    ("examples", pa.int32()),
    ("natural_acc", pa.float64()),
    ("pgd_robust_acc", pa.float64()),  # PGD-20 (the trial's evaluation attack) on the same examples
    ("strong_robust_acc", pa.float64()),  # worst case per example over the suite and the clean input
    ("broken", pa.map_(pa.string(), pa.int64())),  # per attack: the examples it broke that nothing before it had
    ("seconds", pa.float64()),
    ("evaluated_at", pa.timestamp("us", tz="UTC")),
])
EVALUATION_KEY = ("trial_id", "split", "suite", "examples")


class EvaluationStore:
    """The strong evaluations of one run directory, one row per trial × split × suite × examples, written atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVALUATION_FILE
        self.rows = {key_of(row): row for row in _read(self.path)}

    def has(self, key: tuple) -> bool:
        return key in self.rows

    def record(self, row: dict[str, Any]) -> None:
        self.rows[key_of(row)] = {name: row.get(name) for name in EVALUATION_SCHEMA.names}
        _write(self.path, list(self.rows.values()), EVALUATION_SCHEMA)


def key_of(row: dict[str, Any]) -> tuple:
    return tuple(row[name] for name in EVALUATION_KEY)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's search.json, or None when it is not a search's."""
    path = Path(run_dir) / SEARCH_FILE
    return json.loads(path.read_text()) if path.exists() else None
