"""The trials a scaling fit reads: trials.parquet of one or more searches, as aligned arrays.

Which trials the fit uses, and at which fidelity, is decided here (`Trials.usable`); the
estimator (`tuner.analysis.surface`) works on the arrays only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tuner.errors import ConfigError
from tuner.outputs.results import TRIALS_FILE

REQUIRED_COLUMNS = ("width", "lam", "status", "val_robust_acc", "val_natural_acc", "val_stability")
OPTIONAL_COLUMNS = ("method", "epochs_run")


@dataclasses.dataclass(frozen=True)
class Trials:
    """The trial rows that matter for the fit, one entry per trial."""

    width: np.ndarray  # int
    lam: np.ndarray
    status: np.ndarray  # str: completed, early_stopped, error
    epochs_run: np.ndarray  # int; 0 where unknown
    robust: np.ndarray  # validation robust accuracy at the selected epoch (nan if none)
    natural: np.ndarray
    stability: np.ndarray
    methods: tuple[str, ...] = ()  # the training methods present (trades, pgd-at)

    @property
    def usable(self) -> np.ndarray:
        """Completed trials, and early-stopped ones that say how many epochs they ran, with a finite robust
        accuracy and a positive λ. An early-stopped trial enters at its fidelity (`tuner.analysis.surface`).
        """
        return (((self.status == "completed") | ((self.status == "early_stopped") & (self.epochs_run > 0)))
                & np.isfinite(self.robust) & np.isfinite(self.lam) & (np.nan_to_num(self.lam, nan=-1.0) > 0))

    @property
    def widths(self) -> list[int]:
        return sorted({int(w) for w in self.width})

    def count(self, width: int, status: str) -> int:
        return int(((self.width == width) & (self.status == status)).sum())

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Trials:
        """From dicts with at least the REQUIRED_COLUMNS (None → nan, or 0 epochs); rows without a width are dropped."""
        rows = [r for r in rows if r.get("width") is not None]

        def floats(name: str) -> np.ndarray:
            return np.array([np.nan if r.get(name) is None else float(r[name]) for r in rows], dtype=float)

        def ints(name: str, missing: int) -> np.ndarray:
            return np.array([missing if r.get(name) is None else int(r[name]) for r in rows], dtype=int)

        return cls(width=ints("width", 0), lam=floats("lam"),
                   status=np.array([str(r.get("status")) for r in rows], dtype=str),
                   epochs_run=ints("epochs_run", 0), robust=floats("val_robust_acc"),
                   natural=floats("val_natural_acc"), stability=floats("val_stability"),
                   methods=tuple(sorted({str(r["method"]) for r in rows if r.get("method") is not None})))


def load_trials(run_dirs: Sequence[Path]) -> Trials:
    """All trials of the given run directories (each holding trials.parquet), pooled.

    Raises ConfigError for a missing or unreadable table, missing columns, or runs that mix
    training methods (their λ are not the same quantity).
    """
    rows: list[dict[str, Any]] = []
    for run_dir in dict.fromkeys(Path(d).resolve() for d in run_dirs):  # the same run given twice counts once
        path = run_dir / TRIALS_FILE
        if not path.is_file():
            raise ConfigError(f"no {TRIALS_FILE} in {run_dir}: run `python -m tuner.search` first and pass its "
                              f"run directory (runs/<name>)")
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"cannot read {path} ({exc}): pass the run directory of a search "
                              f"(python -m tuner.search writes {TRIALS_FILE})") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)} the fit needs: pass a "
                              f"{TRIALS_FILE} written by python -m tuner.search")
        columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.column_names]
        rows.extend(table.select(columns).to_pylist())
    trials = Trials.from_rows(rows)
    if len(trials.methods) > 1:
        raise ConfigError(f"the runs mix training methods ({', '.join(trials.methods)}) whose λ differ in meaning: "
                          f"fit the runs of one method at a time")
    return trials
