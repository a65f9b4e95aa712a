"""What Optuna is told about a trial: its selected value when complete, PRUNED when ASHA stopped it."""

from __future__ import annotations

import optuna
from optuna.storages import InMemoryStorage
from ray import tune

from tuner.orchestration.trials import FINISHED, OBJECTIVE, PrunedAwareOptunaSearch


def test_early_stopped_trials_are_told_as_pruned_and_finished_ones_as_complete():
    storage = InMemoryStorage()
    searcher = PrunedAwareOptunaSearch(metric=OBJECTIVE, mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                                       study_name="s", storage=storage)
    searcher.set_search_properties(None, None, {"lam": tune.loguniform(1, 30)})
    for trial_id in ("stopped", "finished"):
        assert 1 <= searcher.suggest(trial_id)["lam"] <= 30
        searcher.on_trial_result(trial_id, {OBJECTIVE: 0.3, "epoch": 1, "training_iteration": 1})
    # ASHA stops "stopped" on its second result, which the searcher only sees on completion
    searcher.on_trial_complete("stopped", {OBJECTIVE: 0.35, "epoch": 2, "training_iteration": 2})
    # a resumed data-parallel trial counts Tune iterations from 1 again: the step is the epoch
    searcher.on_trial_result("finished", {OBJECTIVE: 0.7, "epoch": 2, "training_iteration": 1})
    searcher.on_trial_complete("finished", {OBJECTIVE: 0.7, "epoch": 2, "training_iteration": 1, FINISHED: 1})
    stopped, finished = optuna.load_study(study_name="s", storage=storage).trials
    # Optuna keeps a pruned trial's last intermediate value; its samplers rank pruned below complete
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.3, 2: 0.35}
    assert finished.state == optuna.trial.TrialState.COMPLETE and finished.value == 0.7
    assert finished.intermediate_values == {1: 0.3, 2: 0.7}
