"""What a resumed search finds: its stores checked against each other before Ray starts.

A run keeps four records of the same trials: the Parquet tables, the Optuna journal, Tune's
experiment state (under the Tune storage) and the MLflow runs. A crash can leave them out of
step; a file can be deleted or damaged. `reconcile` brings the first three in line before
anything starts, saying in one line what it rebuilt:

- a damaged `trials.parquet`/`epochs.parquet` is set aside and rebuilt from Tune's experiment
  state (each finished trial's last report carries its epochs and its test metrics); a missing
  one is rebuilt the same way;
- a finished Tune trial missing from Parquet (the driver died between the two) is added;
- a missing or damaged journal, or one that lacks trials Parquet has, is rebuilt from the Parquet
  rows and Tune's unfinished trials (`add_trial`, keeping every trial's number);
- a trial Parquet holds but the journal shows running is told its outcome;
- without Tune's experiment state, unfinished trials start again from scratch (said so).

What cannot be rebuilt (damaged Parquet and no Tune state) is refused in one line naming the
file and the way out. MLflow is brought in line once the tracker runs (`Tracker.catch_up`,
`Tracker.close_orphans`), with the trial ids `Reconciled.keep` says are real.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tuner.errors import ConfigError
from tuner.orchestration.trials import EXPERIMENT, trial_row
from tuner.orchestration.worker import FINISHED, METRIC
from tuner.outputs.results import EPOCHS_FILE, TRIALS_FILE, ResultsStore
from tuner.plan import SearchPlan

OUTCOME = {"completed": TrialState.COMPLETE, "early_stopped": TrialState.PRUNED, "error": TrialState.FAIL}


@dataclass(frozen=True)
class Reconciled:
    store: ResultsStore
    tune_state: bool  # Tune's experiment state exists: its unfinished trials continue from their checkpoints
    unfinished: frozenset[str]  # trial ids Tune will continue

    @property
    def keep(self) -> set[str]:
        """Trial ids some store keeps: their MLflow runs are real; other open trial runs are orphans."""
        return set(self.store.trials) | set(self.unfinished)


def tune_trials(plan: SearchPlan) -> list[Any] | None:
    """The trials of Tune's saved experiment state, or None when there is none."""
    from ray import tune

    experiment = f"{plan.tune_storage}/{EXPERIMENT}"
    if not tune.Tuner.can_restore(experiment):
        return None
    return list(tune.ExperimentAnalysis(experiment).trials)


def outcome(trial: Any) -> str | None:
    """A saved Tune trial's status as Parquet writes it, or None while it is unfinished."""
    if trial.status == "ERROR":
        return "error"
    if trial.status == "TERMINATED":
        return "completed" if (trial.last_result or {}).get(FINISHED) else "early_stopped"
    return None


def reconcile(plan: SearchPlan, *, echo: Callable[[str], None] = print) -> Reconciled:
    """Bring Parquet, the Optuna journal and Tune's state in line (see the module doc); raise ConfigError if impossible."""
    trials = tune_trials(plan)
    store = open_results(plan, has_tune_state=trials is not None, echo=echo)
    finished = {t.trial_id: t for t in trials or [] if outcome(t)}
    missing = [t for trial_id, t in finished.items() if trial_id not in store.trials]
    for trial in missing:
        store.record(*trial_row(trial, status=outcome(trial), plan=plan))
    if missing:
        echo(f"resume: {len(missing)} finished trial(s) were missing from {TRIALS_FILE}: added from Tune's experiment state")
    unfinished = [t for t in trials or [] if not outcome(t)]
    reconcile_journal(plan, store, unfinished, echo=echo)
    if trials is None and store.trials:
        echo(f"resume: Tune's experiment state under {plan.tune_storage} is missing: the {len(store.trials)} finished "
             f"trial(s) stand, unfinished ones start again from scratch")
    return Reconciled(store, trials is not None, frozenset(t.trial_id for t in unfinished))


def open_results(plan: SearchPlan, *, has_tune_state: bool, echo: Callable[[str], None]) -> ResultsStore:
    """The run's Parquet tables; damaged ones are set aside when Tune's state can rebuild them."""
    try:
        return ResultsStore(plan.run_dir)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0][:120]
    if not has_tune_state:
        raise ConfigError(f"{plan.run_dir / TRIALS_FILE} (or {EPOCHS_FILE}) is unreadable ({reason}) and Tune's experiment "
                          f"state is missing, so the results cannot be rebuilt: restore the file from a backup, or "
                          f"start a new search with another --name")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (TRIALS_FILE, EPOCHS_FILE):
        if (plan.run_dir / name).exists():
            (plan.run_dir / name).rename(plan.run_dir / f"{name}.damaged-{stamp}")
    echo(f"resume: {TRIALS_FILE} was unreadable ({reason}): set aside as *.damaged-{stamp}, rebuilt from Tune's "
         f"experiment state")
    return ResultsStore(plan.run_dir)


def journal_storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def read_journal(plan: SearchPlan) -> dict[int, list[optuna.trial.FrozenTrial]] | None:
    """Each width's Optuna trials, or None when the journal is missing or unreadable."""
    if not plan.optuna_storage.exists():
        return None
    try:
        storage = journal_storage(plan.optuna_storage)
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        return {width: optuna.load_study(study_name=plan.study_name(width), storage=storage).get_trials(deepcopy=False)
                if plan.study_name(width) in names else [] for width in plan.widths}
    except Exception:  # noqa: BLE001 - any failure to read it means rebuilding it
        return None


def reconcile_journal(plan: SearchPlan, store: ResultsStore, unfinished: list[Any], *,
                      echo: Callable[[str], None]) -> None:
    """Rebuild the journal if it is missing, damaged or lacks trials; tell it the outcomes Parquet holds."""
    studies = read_journal(plan)
    rows = list(store.trials.values())
    if studies is not None and all(row["optuna_trial"] is None or row["optuna_trial"] < len(studies[row["width"]])
                                   for row in rows):
        told = 0
        storage = journal_storage(plan.optuna_storage)
        for row in rows:
            if row["optuna_trial"] is not None and not studies[row["width"]][row["optuna_trial"]].state.is_finished():
                study = optuna.load_study(study_name=plan.study_name(row["width"]), storage=storage)
                study.tell(row["optuna_trial"], row["val_robust_acc"] if row["status"] == "completed" else None,
                           state=OUTCOME[row["status"]])
                told += 1
        if told:
            echo(f"resume: told the Optuna journal the outcome of {told} trial(s) recorded in {TRIALS_FILE}")
        return
    if plan.optuna_storage.exists():
        plan.optuna_storage.rename(plan.optuna_storage.with_name(f"{plan.optuna_storage.name}.damaged-"
                                                                 f"{time.strftime('%Y%m%d-%H%M%S')}"))
    rebuild_journal(plan, store, unfinished)
    echo(f"resume: {plan.optuna_storage.name} was missing, damaged or behind: rebuilt its studies from "
         f"{len(rows)} Parquet row(s) and {len(unfinished)} unfinished Tune trial(s)")


def rebuild_journal(plan: SearchPlan, store: ResultsStore, unfinished: list[Any]) -> None:
    """Every width's study re-created with its trials at their numbers; gaps become orphaned FAIL trials.

    User attributes are those `design.Proposer.ask` gives: `lam_index` counts the trials that are
    not orphans, `seeds` at a time.
    """
    storage = journal_storage(plan.optuna_storage)
    distribution = FloatDistribution(plan.lam_low, plan.lam_high, log=True)
    entries: dict[int, dict[int, dict[str, Any]]] = {width: {} for width in plan.widths}
    for row in store.trials.values():
        if row["optuna_trial"] is None:
            continue
        intermediate, best = {}, float("-inf")
        for epoch in sorted(store.epochs.get(row["trial_id"], []), key=lambda e: e["epoch"]):
            best = max(best, epoch[METRIC])
            intermediate[int(epoch["epoch"])] = best
        state = OUTCOME[row["status"]]
        entries[row["width"]][row["optuna_trial"]] = dict(
            state=state, value=row["val_robust_acc"] if state == TrialState.COMPLETE else None, lam=row["lam"],
            intermediate_values=intermediate, trial_id=row["trial_id"], seed=row["seed"], replicate=row["replicate"])
    for trial in unfinished:
        config = trial.config
        entries[config["width"]][config["optuna_trial"]] = dict(
            state=TrialState.RUNNING, value=None, lam=config["lam"], intermediate_values={}, trial_id=trial.trial_id,
            seed=config["seed"], replicate=config["replicate"])
    for width, by_number in entries.items():
        study = optuna.create_study(study_name=plan.study_name(width), storage=storage, direction="maximize",
                                    load_if_exists=True)
        position = 0
        for number in range(max(by_number, default=-1) + 1):
            entry = by_number.get(number)
            if entry is None:
                study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"lam": plan.lam_low},
                                                          distributions={"lam": distribution},
                                                          user_attrs={"orphaned": True}))
                continue
            study.add_trial(optuna.trial.create_trial(
                state=entry["state"], value=entry["value"], params={"lam": entry["lam"]},
                distributions={"lam": distribution}, intermediate_values=entry["intermediate_values"],
                user_attrs={"width": width, "seed": entry["seed"], "replicate": entry["replicate"],
                            "lam_index": position // plan.seeds, "ray_trial_id": entry["trial_id"]}))
            position += 1
