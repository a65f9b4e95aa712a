"""Does the best λ of a width change when its top trials are ranked by a strong attack suite instead of PGD-20?

A change beyond noise is the sign of gradient masking at some λ: PGD-20 then overstates that λ's
robustness. Reads the rows of trials.parquet and evaluation.parquet; used by the search's summary
and written to scaling.json by the fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tuner.outputs.results import EvaluationStore, ResultsStore


def ranked(rows: Iterable[dict[str, Any]], width: int) -> list[dict[str, Any]]:
    """A width's completed trials with a checkpoint, best validation robust accuracy (PGD-20) first."""
    return sorted((r for r in rows if r["width"] == width and r["status"] == "completed" and r.get("checkpoint")),
                  key=lambda r: -r["val_robust_acc"])


def ranking_check(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]], *, suite: str) -> list[dict[str, Any]]:
    """Per width: does the best λ on validation change when the top trials are ranked by the suite, not PGD-20?

    A change (the suite's best beats PGD-20's best by more than two standard errors of the
    difference) is the sign of gradient masking at some λ: PGD-20 then overstates its robustness.
    """
    checks = []
    for width in sorted({r["width"] for r in rows}):
        evaluated = {e["trial_id"]: e for e in evaluations
                     if e["width"] == width and e["split"] == "val" and e["suite"] == suite}
        top = [r for r in ranked(rows, width) if r["trial_id"] in evaluated]
        if len(top) < 2:
            continue
        by_strong = max(top, key=lambda r: evaluated[r["trial_id"]]["strong_robust_acc"])
        leader, challenger = evaluated[top[0]["trial_id"]], evaluated[by_strong["trial_id"]]
        # two accuracies on the same n examples: a difference within 2 standard errors is noise
        p, n = leader["strong_robust_acc"], leader["examples"]
        margin = 2 * math.sqrt(2 * max(p * (1 - p), 1 / n) / n)
        difference = challenger["strong_robust_acc"] - leader["strong_robust_acc"]
        checks.append({"width": width, "suite": suite, "trials": len(top), "best_lam_pgd20": top[0]["lam"],
                       "best_lam_strong": by_strong["lam"], "difference": difference, "noise_margin": margin,
                       "changed": by_strong["trial_id"] != top[0]["trial_id"] and difference > margin,
                       "strong_robust_acc": {f"{r['lam']:.4g}": evaluated[r["trial_id"]]["strong_robust_acc"]
                                             for r in top},
                       "pgd20_robust_acc": {f"{r['lam']:.4g}": evaluated[r["trial_id"]]["pgd_robust_acc"]
                                            for r in top}})
    return checks


def ranking_checks(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """The ranking check of every run directory, for every suite its validation evaluations used."""
    checks = []
    for run_dir in run_dirs:
        rows, evaluations = list(ResultsStore(run_dir).trials.values()), list(EvaluationStore(run_dir).rows.values())
        for suite in sorted({e["suite"] for e in evaluations if e["split"] == "val"}):
            checks += [{"run_dir": str(run_dir), **check} for check in ranking_check(rows, evaluations, suite=suite)]
    return checks
