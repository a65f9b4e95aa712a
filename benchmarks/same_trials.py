"""Whether two searches computed the same trials: every trial both ran (same width, λ and seed), metric by metric.

    .venv/bin/python benchmarks/same_trials.py RUN_A RUN_B [--tolerance 0]

Checks that a faster harness computes what a slower one did: run the same search (the same
--seed) before and after a change, then compare the two run directories. Compared for each trial
both ran: the selected epoch and its validation and test metrics (trials.parquet), every epoch's
metrics except its duration (epochs.parquet), and its strong evaluations (evaluation.parquet). The
start-up grid's λ values and their replicates are the same in both runs; later λ values depend on
the order trials finished in, so they may differ, and those trials are only counted. Exit status
1 if a compared value differs by more than --tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tuner.outputs.results import EPOCH_METRICS, EPOCHS_FILE, EVALUATION_FILE, SELECTED_METRICS, TEST_METRICS, TRIALS_FILE

TRIAL_VALUES = ("status", "best_epoch", *SELECTED_METRICS, *TEST_METRICS)
EPOCH_VALUES = tuple(name for name in EPOCH_METRICS if name != "epoch_seconds")
EVALUATION_VALUES = ("natural_acc", "pgd_robust_acc", "strong_robust_acc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, type=Path, metavar="RUN_DIR")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest difference taken as equal (default 0)")
    args = parser.parse_args()
    tables = [read_run(run) for run in args.runs]
    both = sorted(set(tables[0]) & set(tables[1]))
    only = [len(set(t) - set(both)) for t in tables]
    print(f"{len(both)} trials in both runs (width, λ, seed); {only[0]} only in {args.runs[0]}, {only[1]} only in "
          f"{args.runs[1]}")
    compared, largest, differing = 0, 0.0, []
    for key in both:
        for name, a, b in pairs(tables[0][key], tables[1][key]):
            compared += 1
            difference = abs(a - b) if isinstance(a, float) and isinstance(b, float) else float(a != b)
            largest = max(largest, difference)
            if difference > args.tolerance:
                differing.append(f"w{key[0]} λ={key[1]:.6g} seed {key[2]} {name}: {a} against {b}")
    print(f"{compared} values compared, largest difference {largest:.3g}; {len(differing)} beyond {args.tolerance:g}")
    for line in differing[:20]:
        print(f"  {line}")
    return 1 if differing or not both else 0


def read_run(run_dir: Path) -> dict[tuple[int, float, int], dict[str, Any]]:
    """(width, λ, seed) → the trial's row, its epochs by number and its evaluations by (split, suite, examples)."""
    epochs: dict[str, dict[int, dict[str, Any]]] = {}
    for row in pq.read_table(run_dir / EPOCHS_FILE).to_pylist():
        epochs.setdefault(row["trial_id"], {})[row["epoch"]] = row
    evaluations: dict[str, dict[tuple, dict[str, Any]]] = {}
    if (run_dir / EVALUATION_FILE).exists():
        for row in pq.read_table(run_dir / EVALUATION_FILE).to_pylist():
            evaluations.setdefault(row["trial_id"], {})[(row["split"], row["suite"], row["examples"])] = row
    return {(row["width"], row["lam"], row["seed"]): {**row, "epochs": epochs.get(row["trial_id"], {}),
                                                      "evaluations": evaluations.get(row["trial_id"], {})}
            for row in pq.read_table(run_dir / TRIALS_FILE).to_pylist()}


def pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, value in a, value in b) for every value compared of one trial; a part only one run has counts as
    differing (its value in the other run is None)."""
    found = [(name, a[name], b[name]) for name in TRIAL_VALUES]
    for epoch in sorted(set(a["epochs"]) | set(b["epochs"])):
        ea, eb = a["epochs"].get(epoch, {}), b["epochs"].get(epoch, {})
        found += [(f"epoch {epoch} {name}", ea.get(name), eb.get(name)) for name in EPOCH_VALUES]
    for evaluation in sorted(set(a["evaluations"]) & set(b["evaluations"])):
        va, vb = a["evaluations"][evaluation], b["evaluations"][evaluation]
        found += [(f"{'/'.join(map(str, evaluation))} {name}", va[name], vb[name]) for name in EVALUATION_VALUES]
    return found


if __name__ == "__main__":
    sys.exit(main())
