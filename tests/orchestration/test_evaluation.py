"""Which trials get the strong evaluation, and when the ranking check calls a change of the best λ real."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.core.data import load_dataset
from tuner.errors import ConfigError
from tuner.analysis.ranking import ranking_check
from tuner.orchestration.evaluation import Request, StrongEvaluations, choose, width_requests
from tuner.outputs.results import EvaluationStore
from tuner.plan import build_plan
from tuner.presets import load_preset


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


def quick_plan(**evaluation):
    search = {"evaluation": {"suite": "fast", "trials": "best", "ranking": 3, "examples": None, **evaluation}}
    return build_plan(load_preset("quick"), name="t", out=Path("runs"), search_overrides=search, trial_overrides={})


def test_a_request_is_keyed_by_the_examples_it_evaluates_at_most_the_split():
    plan = quick_plan()
    data = load_dataset("digits", val_fraction=plan.trial.val_fraction, split_seed=plan.trial.split_seed)
    row = ROWS[1]
    assert Request(row, "test", "fast", None).key(plan) == ("b", "test", "fast", len(data.test))
    assert Request(row, "val", "fast", None).key(plan) == ("b", "val", "fast", len(data.val))
    assert Request(row, "val", "fast", 64).key(plan) == ("b", "val", "fast", 64)
    assert Request(row, "test", "fast", 10**6).key(plan) == Request(row, "test", "fast", None).key(plan), \
        "more examples than the split has is the whole split: the same evaluation, never done twice"


def test_a_width_gets_its_best_trials_on_test_and_its_top_trials_on_validation_for_the_ranking_check():
    asked = {(r.row["trial_id"], r.split, r.suite, r.examples) for r in width_requests(quick_plan(examples=100), ROWS, 1)}
    assert asked == {("b", "test", "fast", 100), ("b", "val", "fast", 100), ("c", "val", "fast", 100),
                     ("a", "val", "fast", 100)}, "early-stopped d: neither"
    top_two = width_requests(quick_plan(trials="top-2", ranking=0), ROWS, 4)
    assert [(r.row["trial_id"], r.split) for r in top_two] == [("f", "test"), ("e", "test")]
    assert width_requests(quick_plan(trials="off", ranking=0), ROWS, 1) == []
    lone = [trial("g", 8, 1.0, 0.5)]
    assert [(r.row["trial_id"], r.split) for r in width_requests(quick_plan(), lone, 8)] == [("g", "test")], \
        "one trial: no ranking to check"


class Recorded(StrongEvaluations):
    """StrongEvaluations on a cluster that runs two at once, recording what it hands Ray instead of starting it."""

    def __init__(self, plan, store) -> None:
        super().__init__(plan, store, on_row=lambda request, row: None, warn=print)
        self.handed: list[tuple[str, int, str]] = []

    def slots(self) -> int:
        return 2

    def submit(self, request: Request) -> tuple[str, str]:
        self.handed.append((request.row["trial_id"], request.row["width"], request.split))
        return request.row["trial_id"], request.split


def test_evaluations_go_costliest_first_so_the_last_to_finish_are_short(tmp_path):
    """Widths finish narrowest first (their trials are quicker); an early width's evaluations must not hold the
    cluster's last minutes while a wide width's wait behind them."""
    plan = quick_plan()
    rows = ROWS + [trial("w", 10, 2.0, 0.8), trial("x", 10, 6.0, 0.82), trial("y", 10, 18.0, 0.81)]
    evaluations = Recorded(plan, EvaluationStore(tmp_path))
    evaluations.width_done(1, rows)
    assert evaluations.handed == [("b", 1, "test"), ("b", 1, "val")], "the cluster's two slots: width 1's costliest"
    evaluations.width_done(4, rows)
    evaluations.width_done(10, rows)
    assert len(evaluations.handed) == 2 and evaluations.outstanding == 4 + 3 + 4
    while evaluations.pending:  # the evaluations finish in turn, each freeing its slot (as collect sees them)
        del evaluations.pending[next(iter(evaluations.pending))]
        evaluations.hand_over()
    widths = [width for _, width, _ in evaluations.handed[2:]]
    assert widths == [10] * 4 + [4] * 3 + [1] * 2
    assert evaluations.handed[2] == ("x", 10, "test"), "the widest width's test split (the most examples) first"
    evaluations.width_done(10, rows)
    assert evaluations.outstanding == 0, "a width's evaluations are asked for once"
