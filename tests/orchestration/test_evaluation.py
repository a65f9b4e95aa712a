"""Which trials get the strong evaluation, and when the ranking check calls a change of the best λ real."""

from __future__ import annotations

import pytest

from tuner.errors import ConfigError
from tuner.orchestration.evaluation import choose, ranking_check


def trial(trial_id, width, lam, robust, status="completed"):
    return {"trial_id": trial_id, "width": width, "lam": lam, "seed": 0, "status": status, "val_robust_acc": robust,
            "checkpoint": f"/ckpt/{trial_id}"}


ROWS = [trial("a", 1, 1.0, 0.50), trial("b", 1, 3.0, 0.55), trial("c", 1, 9.0, 0.52), trial("d", 1, 27.0, 0.60, "early_stopped"),
        trial("e", 4, 2.0, 0.70), trial("f", 4, 6.0, 0.72)]


def test_choose_best_top_k_or_all_completed_trials_per_width():
    assert [r["trial_id"] for r in choose(ROWS, "best")] == ["b", "f"]
    assert [r["trial_id"] for r in choose(ROWS, "top-2")] == ["b", "c", "f", "e"]
    assert sorted(r["trial_id"] for r in choose(ROWS, "all")) == ["a", "b", "c", "e", "f"], "early-stopped: no test"
    for bad in ("top-0", "most", "top-x"):
        with pytest.raises(ConfigError, match="--trials takes best, top-K"):
            choose(ROWS, bad)


def evaluation(trial_id, width, strong, pgd=0.6, examples=300):
    return {"trial_id": trial_id, "width": width, "split": "val", "suite": "fast", "strong_robust_acc": strong,
            "pgd_robust_acc": pgd, "examples": examples}


def test_the_ranking_check_calls_a_change_only_beyond_noise():
    # width 1: PGD-20 ranks b first; under the suite c beats b by 0.10, far more than the noise (about 0.08 at n = 300)
    # width 4: under the suite e beats f by 0.01: within noise, not a change
    evaluations = [evaluation("b", 1, 0.40), evaluation("c", 1, 0.50), evaluation("a", 1, 0.30),
                   evaluation("f", 4, 0.60), evaluation("e", 4, 0.61)]
    checks = {c["width"]: c for c in ranking_check(ROWS, evaluations, suite="fast")}
    assert checks[1]["changed"] and checks[1]["best_lam_pgd20"] == 3.0 and checks[1]["best_lam_strong"] == 9.0
    assert checks[1]["noise_margin"] == pytest.approx(2 * (2 * 0.4 * 0.6 / 300) ** 0.5)
    assert not checks[4]["changed"] and checks[4]["best_lam_strong"] == 2.0
    assert checks[4]["difference"] == pytest.approx(0.01)


def test_the_ranking_check_needs_two_evaluated_trials_of_the_suite():
    assert ranking_check(ROWS, [evaluation("b", 1, 0.4)], suite="fast") == []
    assert ranking_check(ROWS, [evaluation("b", 1, 0.4), evaluation("c", 1, 0.5)], suite="standard") == []
