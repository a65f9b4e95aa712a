"""Synthetic trials from a known rule, as a search's trials.parquet holds them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tuner.outputs.results import TRIAL_SCHEMA

A, B = 3.0, 0.5  # the default rule λ*(w) = 3·w^0.5
WIDTHS = (1, 2, 4, 8, 16)


def synthetic_rows(seed: int, *, widths=WIDTHS, a: float = A, b: float = B, lam_star=None, n: int = 10,
                   noise: float = 0.01, curvature: float = 0.05, ratio: float = 1.0, span: float = 1.5, seeds: int = 1,
                   stopped: float = 0.0, stop_offset: float = 0.1, epochs: int = 10) -> list[dict]:
    """n λ values per width, each trained with `seeds` seeds: robust = level(w) − k·d²  (k·ratio above the peak).

    d = log λ − log λ*(w), λ*(w) = a·w^b unless `lam_star(w)` is given. λ is log-uniform over
    ±span around a shifted centre (the sampled range is not centred on the optimum); a share
    `stopped` of the trials is early-stopped after epochs/2 epochs, sitting `stop_offset` lower.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for width in widths:
        peak = math.log(a * width ** b if lam_star is None else lam_star(width))
        centre = peak + rng.uniform(-0.5, 0.5)
        for i, x in enumerate(rng.uniform(centre - span, centre + span, n)):
            d = x - peak
            mean = 0.6 + 0.02 * math.log(width) - curvature * d * d * (ratio if d > 0 else 1.0)
            for replicate in range(seeds):
                early = rng.uniform() < stopped
                rows.append({
                    "trial_id": f"w{width}-{seed}-{i}-{replicate}", "width": width, "lam": math.exp(x),
                    "method": "trades", "seed": seed + replicate, "status": "early_stopped" if early else "completed",
                    "epochs_run": epochs // 2 if early else epochs, "best_epoch": 1,
                    "val_robust_acc": mean - (stop_offset if early else 0.0) + noise * rng.standard_normal(),
                    "val_natural_acc": 0.9 - 0.05 * x + 0.02 * math.log(width),
                    "val_stability": 0.5 + 0.05 * x - 0.03 * math.log(width)})
    return rows


def write_trials(run_dir: Path, rows: list[dict], schema: pa.Schema = TRIAL_SCHEMA) -> Path:
    """trials.parquet as the search writes it: every schema column, unused ones None."""
    run_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    pq.write_table(table, run_dir / "trials.parquet")
    return run_dir
