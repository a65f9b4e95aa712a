"""The Ray Tune side of a search: one Tune run for every width, with its searcher, scheduler and trainable.

One Tuner runs the whole search, so trial workers (and the data and imports they hold) are reused
across widths and no width waits for another to start. Its searcher hands each new trial to a
width and asks that width's Optuna study (`<name>-w<width>`, in the run's journal file) for λ,
following the budget design of `tuner.orchestration.design`; its scheduler applies ASHA's rule
within each width. A trial stopped early is told to Optuna as PRUNED (its per-epoch values stay
as intermediate values), never as COMPLETE with a low-epoch value that would mislead the sampler.
What a trial runs in its worker process is `tuner.orchestration.trainable`.
"""

from __future__ import annotations

import datetime
import pickle
import signal
import threading
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from tuner import cli
from tuner.core.training import select_epoch
from tuner.errors import ConfigError
from tuner.orchestration.design import Budget, Proposal, Proposer, Rungs
from tuner.orchestration.evaluation import StrongEvaluations, selected_checkpoint
from tuner.orchestration.progress import Console, Progress
from tuner.orchestration.trainable import TrialRequest, rwt_trial
from tuner.orchestration.worker import CONFIG_ERROR, FINISHED, METRIC, NOTE, OBJECTIVE
from tuner.outputs.results import SELECTED_METRICS, TEST_METRICS, EvaluationStore, ResultsStore, best_trial
from tuner.outputs.tracking import Tracker
from tuner.plan import SearchPlan, trial_name

EXPERIMENT = "search"  # the Tune experiment's folder under the plan's Tune storage


def tune_trial_name(trial: Any) -> str:
    """Trial names (Tune's folders, the dashboard) that show width, λ and seed."""
    config = trial.config
    return trial_name(config["width"], config["lam"], config["seed"], trial.trial_id)


class WidthSearcher(tune.search.Searcher):
    """Every width's Optuna study behind one Tune searcher, spending the budget as `design.Proposer` says.

    Trials asked and not yet told are `open`, by Tune trial id. Optuna trials carry the Tune trial
    id, seed and replicate as user attributes, so the journal alone tells which trial is which.
    """

    def __init__(self, budget: Budget, *, journal: Path, name: str, caps: dict[int, int]) -> None:
        super().__init__(metric=OBJECTIVE, mode="max")
        self.budget, self.journal, self.name, self.caps = budget, str(journal), name, caps
        self.open: dict[str, Proposal] = {}
        self._proposer: Proposer | None = None  # opened on first use: Tune pickles the searcher first

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proposer": None}

    @property
    def proposer(self) -> Proposer:
        if self._proposer is None:
            storage = JournalStorage(JournalFileBackend(self.journal))
            studies = {}
            for width in self.budget.widths:
                study = optuna.create_study(study_name=f"{self.name}-w{width}", storage=storage, direction="maximize",
                                            sampler=self.budget.make_sampler(width), load_if_exists=True)
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what the dashboard shows
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([OBJECTIVE])
                studies[width] = study
            self._proposer = Proposer(self.budget, studies)
        return self._proposer

    def orphan_running(self) -> None:
        """Close as orphans the journal's running trials that this searcher did not ask (a lost Tune state)."""
        proposer = self.proposer
        known = {(p.width, p.number) for p in self.open.values()}
        for width, study in proposer.studies.items():
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (width, frozen.number) not in known:
                    proposer.orphan(width, frozen.number)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        proposer = self.proposer
        width = proposer.next_width(Counter(p.width for p in self.open.values()), self.caps)
        if width is None:
            return Searcher.FINISHED if all(proposer.remaining(w) == 0 for w in self.budget.widths) else None
        proposal = proposer.ask(width, ray_trial_id=trial_id)
        self.open[trial_id] = proposal
        return {"width": proposal.width, "lam": proposal.lam, "seed": proposal.seed,
                "replicate": proposal.replicate, "optuna_trial": proposal.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.open and result.get(OBJECTIVE) is not None:
            self.proposer.report(self.open[trial_id], int(result["epoch"]), result[OBJECTIVE])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        proposal = self.open.pop(trial_id, None)
        if proposal is None:
            return
        if error or result is None or result.get(OBJECTIVE) is None:
            self.proposer.tell(proposal, TrialState.FAIL)
            return
        # ASHA may stop a trial on a result the searcher never saw: keep it as an intermediate value
        self.proposer.report(proposal, int(result["epoch"]), result[OBJECTIVE])
        if result.get(FINISHED):
            self.proposer.tell(proposal, TrialState.COMPLETE, result[OBJECTIVE])
        else:
            self.proposer.tell(proposal, TrialState.PRUNED)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.open, file)

    def restore(self, checkpoint_path: str) -> None:
        """Continue with the trials Tune's saved state knows; close as FAIL those asked after it was saved.

        The journal records an ask at once, the searcher's state only at Tune's next snapshot: a
        driver killed in between leaves RUNNING Optuna trials that no Tune trial will finish.
        """
        with open(checkpoint_path, "rb") as file:
            self.open = pickle.load(file)
        self._proposer = None
        self.orphan_running()
        for proposal in self.open.values():
            self.proposer.adopt(proposal)


class WidthASHA(FIFOScheduler):
    """ASHA's early stopping within each width: a trial is only ever compared with trials of its own width."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.rungs: dict[int, Rungs] = {width: budget.rungs() for width in budget.widths}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if METRIC not in result or "epoch" not in result:
            return TrialScheduler.CONTINUE
        stop = self.rungs[trial.config["width"]].should_stop(trial.trial_id, int(result["epoch"]), result[METRIC])
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.rungs, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.rungs = pickle.load(file)


def trial_row(trial: Any, *, status: str, plan: SearchPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Tune trial's row for trials.parquet and its epoch rows for epochs.parquet."""
    result = trial.last_result or {}
    history = result.get("history", [])
    summary = result.get("summary", {})
    selected = select_epoch(history) if history else {}
    config = trial.config
    row: dict[str, Any] = {
        "trial_id": trial.trial_id, "width": config["width"], "lam": config["lam"], "method": plan.trial.method,
        "seed": config["seed"], "replicate": config["replicate"], "status": status,
        "epochs_run": len(history), "best_epoch": selected.get("epoch"),
        **{k: selected.get(k) for k in SELECTED_METRICS},
        **{k: summary.get(k) for k in TEST_METRICS},
        "wall_seconds": result.get("time_total_s"), "node": result.get("node"), "node_ip": result.get("node_ip"),
        "started_at": utc(result.get("started_at")), "finished_at": utc(result.get("reported_at")),
        "optuna_trial": config.get("optuna_trial"), "workers": plan.resources[config["width"]].workers,
        "checkpoint": checkpoint_uri(trial, plan), "note": result.get(NOTE),
    }
    if status == "error":
        # the driver's local copy: the one in storage may not be synced yet
        error = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
        row["error"] = (error.strip().splitlines() or ["unknown error"])[-1]
    return row, history


def utc(unix_time: float | None) -> datetime.datetime | None:
    return None if unix_time is None else datetime.datetime.fromtimestamp(unix_time, tz=datetime.timezone.utc)


def checkpoint_uri(trial: Any, plan: SearchPlan) -> str | None:
    """The trial's last checkpoint as a path or URI (Ray gives paths without the storage's s3:// scheme)."""
    result = trial.last_result or {}
    # a data-parallel trial's checkpoints are its Train run's, named in its results
    path = trial.checkpoint.path if trial.checkpoint is not None else result.get(CHECKPOINT_PATH_KEY)
    scheme = urllib.parse.urlparse(plan.tune_storage).scheme
    return f"{scheme}://{path}" if path and scheme and "://" not in path else path


class TrialConfigError(ConfigError):
    """Bad input found inside a trial (e.g. a dataset a trial cannot read): no retry can fix it."""


class ResultsCallback(tune.Callback):
    """Logs each epoch to MLflow; writes each finished trial to Parquet at once and prints one line for it; asks for
    a width's strong evaluations once its trials are done and records each as it finishes.

    It also notices a Ctrl-C (Tune ends the run on it; the search must then stop, not go on) and a
    trial that reports bad input (the search stops with that one line instead of retrying).
    """

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        self.tracker: Tracker | None = None
        self.console: Console | None = None
        self.evaluations: StrongEvaluations | None = None
        self.interrupted = False
        self.config_error: str | None = None  # the first bad input a trial reported
        self._linked: set[str] = set()  # trials whose Optuna trial names their MLflow run

    def attach(self, *, tracker: Tracker, console: Console, evaluations: StrongEvaluations) -> None:
        """This driver's tracker, console and strong evaluations (a restored experiment brings an unpickled
        callback without them)."""
        self.tracker, self.console, self.evaluations = tracker, console, evaluations

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "tracker": None, "console": None, "evaluations": None}

    def setup(self, **info: Any) -> None:
        """Wrap the SIGINT handler Tune has just installed, to know that it ended the run."""
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)

        def on_interrupt(signum: int, frame: Any) -> None:
            self.interrupted = True
            if callable(tune_handler):
                tune_handler(signum, frame)

        signal.signal(signal.SIGINT, on_interrupt)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if CONFIG_ERROR in result:
            self._record(trial, "error", error=result[CONFIG_ERROR])
            self.config_error = self.config_error or result[CONFIG_ERROR]
            return
        self._link_mlflow_run(trial)
        self.tracker.log_epochs(identity(trial), result.get("history", []))

    def _link_mlflow_run(self, trial: Any) -> None:
        """Give the trial's Optuna trial its MLflow run id at its first report (while it still runs)."""
        if trial.trial_id in self._linked:
            return
        run_id = self.tracker.trial_run_now(identity(trial))
        if run_id is None:
            return
        storage = JournalStorage(JournalFileBackend(str(self.plan.optuna_storage)))
        study_id = storage.get_study_id_from_name(self.plan.study_name(trial.config["width"]))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.config["optuna_trial"])
        if not storage.get_trial(trial_id).state.is_finished():
            storage.set_trial_user_attr(trial_id, "mlflow_run_id", run_id)
            self._linked.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, "completed" if (trial.last_result or {}).get(FINISHED) else "early_stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, "error")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.evaluations.collect(block=False)  # those done while trials run: recorded now, their slots reused

    def _record(self, trial: Any, status: str, *, error: str | None = None) -> None:
        store = ResultsStore(self.plan.run_dir)
        if trial.trial_id in store.trials:  # recorded before a resume: its row stands
            return
        row, history = trial_row(trial, status=status, plan=self.plan)
        if error is not None:
            row["error"] = error
        store.record(row, history)
        self.tracker.finish_trial(row, history)
        width = row["width"]
        done = len(store.for_width(width))
        if done == self.plan.trials_per_width:
            self.evaluations.width_done(width, list(store.trials.values()))
        detail = (f"val robust {row['val_robust_acc']:.3f} natural {row['val_natural_acc']:.3f} "
                  f"stability {row['val_stability']:.3f}" if row["val_robust_acc"] is not None else row.get("error", ""))
        seed = f" seed {row['seed']}" if self.plan.seeds > 1 else ""
        self.console.line(f"  w{width} [{done}/{self.plan.trials_per_width}] λ={row['lam']:<8.3g}{seed} {status:<13} "
                  f"{cli.plural(row['epochs_run'], 'epoch')}  {detail}  ({row['wall_seconds'] or 0:.0f}s)")


class StopOnConfigError(tune.Stopper):
    """Ends the whole run once a trial has reported bad input (see ResultsCallback.config_error)."""

    def __init__(self, results: ResultsCallback) -> None:
        self.results = results

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.results.config_error is not None


def identity(trial: Any) -> dict[str, Any]:
    """What names a Tune trial in every store: its id and the width, λ, seed and replicate it was given."""
    return {"trial_id": trial.trial_id, **trial.config}


@dataclass(frozen=True)
class Outcome:
    """How the Tune run ended: every trial done, or interrupted by Ctrl-C (then Tune's state is saved); what
    `after_trials` returned."""

    interrupted: bool
    after_trials: Any = None


def run_search(plan: SearchPlan, *, tracker: Tracker, console: Console, progress_every: float = 30.0,
               after_trials: Callable[[], Any] | None = None) -> Outcome:
    """Run (or, if its Tune experiment exists, resume) every width's study in one Tune run.

    `after_trials` runs on a thread of its own once every trial is recorded, while the strong
    evaluations finish (the search fits the scaling rule then: the fit needs only the trials).
    Raises TrialConfigError when a trial found bad input (the run is stopped, not retried).
    """
    experiment = f"{plan.tune_storage}/{EXPERIMENT}"
    bases = {width: plan.trial.replace(width=width).to_dict() for width in plan.widths}
    recorded = frozenset(ResultsStore(plan.run_dir).trials)
    trainable = tune.with_resources(
        tune.with_parameters(rwt_trial, bases=bases, resources=plan.resources,
                             storage=f"{plan.tune_storage}/workers", recorded=recorded),
        TrialRequest(plan.resources))
    if tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
        # the restored callbacks are unpickled copies, without this driver's tracker and console
        callbacks = tuner._local_tuner._run_config.callbacks
    else:
        budget = Budget.of(plan)
        caps = {width: plan.concurrency_for(width, ray.cluster_resources()) for width in plan.widths}
        searcher = WidthSearcher(budget, journal=plan.optuna_storage, name=plan.name, caps=caps)
        searcher.orphan_running()  # a resume without Tune's state: no Tune trial will finish those
        callbacks = [JsonLoggerCallback(), ResultsCallback(plan),
                     Progress(total=len(plan.widths) * plan.trials_per_width, every=progress_every)]
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=WidthASHA(budget), num_samples=len(plan.widths) * plan.trials_per_width,
                max_concurrent_trials=max(caps.values()),
                # a Train run's driver is not reusable: actors are reused only when no trial is data-parallel
                reuse_actors=all(r.workers == 1 for r in plan.resources.values()),
                trial_name_creator=tune_trial_name, trial_dirname_creator=tune_trial_name),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=plan.tune_storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=plan.max_retries),
                stop=StopOnConfigError(callbacks[1]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
            ),
        )
    evaluations = StrongEvaluations(plan, EvaluationStore(plan.run_dir), warn=console.line,
                                    on_row=lambda request, row: tracker.log_evaluation(request.row, row))
    (results,) = [c for c in callbacks if isinstance(c, ResultsCallback)]
    results.attach(tracker=tracker, console=console, evaluations=evaluations)
    for callback in callbacks:
        if isinstance(callback, Progress):
            callback.attach(console)
    try:
        tuner.fit()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a further Ctrl-C interrupts what follows
    if results.config_error is not None:
        raise TrialConfigError(results.config_error)
    if results.interrupted:
        return Outcome(interrupted=True)
    store = ResultsStore(plan.run_dir)
    rows = list(store.trials.values())
    for width in plan.widths:
        evaluations.width_done(width, rows)  # those done before a resume, or whose last trial ended the run
    if evaluations.outstanding:
        console.line(f"waiting for {cli.plural(evaluations.outstanding, 'strong evaluation')} "
                     f"({plan.evaluation.suite} suite)")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="after-trials") as meanwhile:
        after = meanwhile.submit(after_trials or (lambda: None))
        evaluations.collect()
    for width in plan.widths:
        best = best_trial(store.for_width(width))
        tracker.finish_width(width, best, None if best is None else selected_checkpoint(best, plan.run_dir))
    return Outcome(interrupted=False, after_trials=after.result())
