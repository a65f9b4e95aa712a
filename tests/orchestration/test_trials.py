"""The Tune searcher and scheduler of a search: what Optuna is told, per-width early stopping, restore."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from tuner.orchestration.design import Budget
from tuner.orchestration.trials import WidthASHA, WidthSearcher
from tuner.orchestration.worker import FINISHED, METRIC, OBJECTIVE

BUDGET = Budget(widths=(1, 4), trials=2, seeds=2, startup=2, lam_low=1.0, lam_high=30.0, sampler="tpe", epochs=3,
                grace_period=1, reduction_factor=2, seed=0)


def searcher(tmp_path) -> WidthSearcher:
    return WidthSearcher(BUDGET, journal=tmp_path / "optuna.journal", name="s", caps={1: 2, 4: 2})


def study_trials(tmp_path, width):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    return optuna.load_study(study_name=f"s-w{width}", storage=storage).trials


def test_finished_trials_are_complete_stopped_ones_pruned_and_errors_failed(tmp_path):
    s = searcher(tmp_path)
    configs = {trial_id: s.suggest(trial_id) for trial_id in ("a", "b", "c")}
    assert [c["width"] for c in configs.values()] == [1, 4, 1]
    assert configs["a"]["lam"] == configs["c"]["lam"] and (configs["a"]["seed"], configs["c"]["seed"]) == (0, 1)
    for trial_id in configs:
        s.on_trial_result(trial_id, {OBJECTIVE: 0.3, "epoch": 1})
    s.on_trial_complete("a", {OBJECTIVE: 0.7, "epoch": 3, FINISHED: 1})
    s.on_trial_complete("b", {OBJECTIVE: 0.35, "epoch": 2, FINISHED: 0})  # stopped by ASHA after epoch 2
    s.on_trial_complete("c", error=True)
    a, c = study_trials(tmp_path, 1)
    (b,) = study_trials(tmp_path, 4)
    assert a.state == TrialState.COMPLETE and a.value == 0.7 and a.intermediate_values == {1: 0.3, 3: 0.7}
    assert b.state == TrialState.PRUNED and b.intermediate_values == {1: 0.3, 2: 0.35}
    assert c.state == TrialState.FAIL
    assert a.user_attrs["ray_trial_id"] == "a" and c.user_attrs["seed"] == 1


def test_the_budget_ends_the_search(tmp_path):
    s = searcher(tmp_path)
    ids = [f"t{i}" for i in range(8)]
    for trial_id in ids:
        assert s.suggest(trial_id) is not None
        s.on_trial_complete(trial_id, {OBJECTIVE: 0.5, "epoch": 3, FINISHED: 1})
    assert s.suggest("t8") == WidthSearcher.FINISHED


def test_restore_keeps_open_trials_and_closes_those_asked_after_the_snapshot(tmp_path):
    s = searcher(tmp_path)
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot knows "a" ...
    s.suggest("b")  # ... but not "b": the driver died before the next snapshot
    restored = searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert set(restored.open) == {"a"}
    (a,) = study_trials(tmp_path, 1)
    (b,) = study_trials(tmp_path, 4)
    assert a.state == TrialState.RUNNING and b.state == TrialState.FAIL and b.user_attrs["orphaned"]
    again = restored.suggest("b2")
    assert again["width"] == 4 and again["replicate"] == 0, "the orphan's place in the budget is asked again"
    restored.on_trial_complete("a", {OBJECTIVE: 0.6, "epoch": 3, FINISHED: 1})
    assert study_trials(tmp_path, 1)[0].state == TrialState.COMPLETE


class Trial:
    def __init__(self, trial_id, width):
        self.trial_id, self.config = trial_id, {"width": width}


def test_asha_compares_a_trial_only_with_its_own_width():
    scheduler = WidthASHA(BUDGET)
    # a strong width-4 trial reaches the rung first; a weak width-1 trial is not stopped by it
    assert scheduler.on_trial_result(None, Trial("w4", 4), {METRIC: 0.9, "epoch": 1}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, Trial("w1a", 1), {METRIC: 0.4, "epoch": 1}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, Trial("w1b", 1), {METRIC: 0.3, "epoch": 1}) == TrialScheduler.STOP
