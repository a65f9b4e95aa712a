"""The Ray Tune side of a search: the trainable that runs one core trial, and one Tuner per width.

Each width gets its own Optuna study (`<name>-w<width>`) in the run's journal file, driven by
Ray Tune's OptunaSearch; ASHA stops weak trials on the epoch counter. A trial stopped early is
told to Optuna as PRUNED (its per-epoch values stay as intermediate values), never as COMPLETE
with a low-epoch value that would mislead the sampler. A trial of one worker trains in the Tune
trial's own process; a trial of several runs them with Ray Train (`data_parallel`).
"""

from __future__ import annotations

import time
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tuner.core.config import TrialConfig
from tuner.core.training import select_epoch
from tuner.orchestration.data_parallel import run_data_parallel
from tuner.plan import SearchPlan, TrialResources
from tuner.orchestration.worker import FINISHED, METRIC, OBJECTIVE, run_reported
from tuner.outputs.results import SELECTED_METRICS, TEST_METRICS, ResultsStore, best_trial
from tuner.outputs.tracking import Tracker

# A data-parallel trial's Tune process only waits for its workers, which Ray Train places with
# the trial's CPUs and GPUs: it reserves memory for itself, no CPU a worker could be waiting for.
DATA_PARALLEL_DRIVER = {"cpu": 0, "memory": 512 * 2**20}


def trial_function(config: dict[str, Any], *, base: dict[str, Any], resources: TrialResources, storage: str,
                   recorded: frozenset[str] = frozenset()) -> None:
    """One Tune trial: the core trial at `config["lam"]`, resuming from its checkpoint if any.

    A trial already in the results (`recorded`) returns at once: the driver was killed after
    recording it but before Tune's experiment state said it had finished.
    """
    trial_id = tune.get_context().get_trial_id()
    if trial_id in recorded:
        return
    trial = TrialConfig.from_dict({**base, "lam": config["lam"]})
    started_at = time.time()
    if resources.workers > 1:
        run_data_parallel(trial, resources=resources, storage=storage, name=trial_id, started_at=started_at)
        return

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    run_reported(trial, checkpoint=tune.get_checkpoint(), report=report, started_at=started_at)


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells trials stopped before their last epoch as PRUNED, not COMPLETE.

    Intermediate values are reported at step = epoch: Tune's iteration counter starts again at 1
    when a data-parallel trial (which has no Tune checkpoint) resumes.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: result["epoch"]})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = not error and result is not None and not result.get(FINISHED)
        if stopped_early and trial_id in self._ot_trials and self.metric in result:
            # ASHA may stop a trial on a result the searcher never saw: keep it as an intermediate
            # value (Optuna ignores, with a warning, a step already reported).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._ot_trials[trial_id].report(result[self.metric], result["epoch"])
        super().on_trial_complete(trial_id, None if stopped_early else result, error)

    def restore(self, checkpoint_path: str) -> None:
        """Restore, then close as FAIL the study's trials asked after this state was saved.

        The journal records an ask at once, the searcher's state only at Tune's next snapshot:
        a driver killed in between leaves RUNNING trials no one will finish or tell.
        """
        super().restore(checkpoint_path)
        known = {trial.number for trial in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number not in known:
                self._ot_study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        return None if config is None else {**config, "optuna_trial": self._ot_trials[trial_id].number}


def make_sampler(plan: SearchPlan) -> optuna.samplers.BaseSampler:
    startup = min(10, max(2, plan.trials // 2))
    if plan.sampler == "gp":
        return optuna.samplers.GPSampler(seed=plan.seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=startup)


def trial_row(trial: Any, *, width: int, status: str, plan: SearchPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Tune trial's row for trials.parquet and its epoch rows for epochs.parquet."""
    result = trial.last_result or {}
    history = result.get("history", [])
    summary = result.get("summary", {})
    selected = select_epoch(history) if history else {}
    row: dict[str, Any] = {
        "trial_id": trial.trial_id, "width": width, "lam": trial.config["lam"],
        "method": plan.trial.method, "seed": plan.trial.seed, "status": status,
        "epochs_run": len(history), "best_epoch": selected.get("epoch"),
        **{k: selected.get(k) for k in SELECTED_METRICS},
        **{k: summary.get(k) for k in TEST_METRICS},
        "wall_seconds": result.get("time_total_s"), "node": result.get("node"), "node_ip": result.get("node_ip"),
        "started_at": result.get("started_at"), "finished_at": result.get("reported_at"),
        "optuna_trial": trial.config.get("optuna_trial"), "workers": plan.resources[width].workers,
        "checkpoint": checkpoint_uri(trial, plan),
    }
    if status == "error":
        # the driver's local copy: the one in storage may not be synced yet
        error = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
        row["error"] = (error.strip().splitlines() or ["unknown error"])[-1]
    return row, history


def checkpoint_uri(trial: Any, plan: SearchPlan) -> str | None:
    """The trial's last checkpoint as a path or URI (Ray gives paths without the storage's s3:// scheme)."""
    result = trial.last_result or {}
    # a data-parallel trial's checkpoints are its Train run's, named in its results
    path = trial.checkpoint.path if trial.checkpoint is not None else result.get(CHECKPOINT_PATH_KEY)
    scheme = urllib.parse.urlparse(plan.tune_storage).scheme
    return f"{scheme}://{path}" if path and scheme and "://" not in path else path


class ResultsCallback(tune.Callback):
    """Logs each epoch to MLflow; writes each finished trial to Parquet at once and prints one line for it."""

    def __init__(self, plan: SearchPlan, width: int, tracker: Tracker, *, echo: Callable[[str], None] = print) -> None:
        self.plan, self.width, self.tracker, self.echo = plan, width, tracker, echo

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.tracker.log_epochs(self._run(trial), result.get("history", []))

    def _run(self, trial: Any) -> str:
        return self.tracker.trial_run(trial.trial_id, width=self.width, lam=trial.config["lam"],
                                      optuna_trial=trial.config.get("optuna_trial"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, "completed" if (trial.last_result or {}).get(FINISHED) else "early_stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, "error")

    def _record(self, trial: Any, status: str) -> None:
        store = ResultsStore(self.plan.run_dir)
        if trial.trial_id in store.trials:  # recorded before a resume: its row stands
            return
        row, history = trial_row(trial, width=self.width, status=status, plan=self.plan)
        store.record(row, history)
        run_id = self._run(trial)
        self.tracker.log_epochs(run_id, history)
        self.tracker.finish_trial(run_id, row)
        done = sum(1 for r in store.for_width(self.width))
        detail = (f"val robust {row['val_robust_acc']:.3f} natural {row['val_natural_acc']:.3f} "
                  f"stability {row['val_stability']:.3f}" if row["val_robust_acc"] is not None else row.get("error", ""))
        self.echo(f"  w{self.width} [{done}/{self.plan.trials}] λ={row['lam']:<8.3g} {status:<13} "
                  f"{row['epochs_run']} epochs  {detail}  ({row['wall_seconds'] or 0:.0f}s)")


def run_width(plan: SearchPlan, width: int, *, tracker: Tracker, echo: Callable[[str], None] = print) -> None:
    """Run (or, if its Tune experiment exists, resume) the study of one width."""
    base = plan.trial.replace(width=width).to_dict()
    del base["lam"]
    recorded = frozenset(row["trial_id"] for row in ResultsStore(plan.run_dir).for_width(width))
    resources = plan.resources[width]
    experiment = f"{plan.tune_storage}/w{width}"
    trainable = tune.with_resources(
        tune.with_parameters(trial_function, base=base, resources=resources, storage=f"{experiment}-workers",
                             recorded=recorded),
        {"cpu": resources.cpus, "gpu": resources.gpus} if resources.workers == 1 else DATA_PARALLEL_DRIVER)
    if tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    else:
        storage = JournalStorage(JournalFileBackend(str(plan.optuna_storage)))
        searcher = PrunedAwareOptunaSearch(metric=OBJECTIVE, mode="max", sampler=make_sampler(plan),
                                           study_name=plan.study_name(width), storage=storage,
                                           points_to_evaluate=[{"lam": lam} for lam in plan.initial_lams] or None)
        scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max", max_t=plan.trial.epochs,
                                  grace_period=plan.grace_period, reduction_factor=plan.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space={"lam": tune.loguniform(plan.lam_low, plan.lam_high)},
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=plan.trials,
                                        max_concurrent_trials=plan.concurrency_for(width, ray.cluster_resources()),
                                        reuse_actors=resources.workers == 1),  # a Train run's driver is not reusable
            run_config=tune.RunConfig(
                name=f"w{width}", storage_path=plan.tune_storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=plan.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[JsonLoggerCallback(), ResultsCallback(plan, width, tracker, echo=echo)],
            ),
        )
    started = time.monotonic()
    tuner.fit()
    best = best_trial(ResultsStore(plan.run_dir).for_width(width))
    if best and best["checkpoint"]:
        with tune.Checkpoint(best["checkpoint"]).as_directory() as checkpoint_dir:  # a local copy if in s3://…
            tracker.finish_width(width, best, Path(checkpoint_dir))
    else:
        tracker.finish_width(width, best, None)
    echo(f"  w{width}: study done in {time.monotonic() - started:.0f}s")
