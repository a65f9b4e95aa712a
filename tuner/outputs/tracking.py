"""MLflow tracking of a search: one run for the search, one per width, one per trial, nested.

Logging happens in the search driver, from the results Tune hands it, so trials on any node are
tracked without reaching the tracking server themselves. It happens on a background thread, in
order, so a slow or absent server never holds up the trials: an operation that fails for a
reason that may pass (the server unreachable, a locked database) is retried with back-off, the
search warns once and catches up when the server answers again, and what could not be logged by
the end is reported (a resumed search logs it from the Parquet results). Runs are found again by
tags, so a resumed search continues its runs (one run per trial, whatever the retries and
resumes), and a step already in a metric's history is never logged again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

# one attempt per request and a short timeout: retries and back-off are the Tracker's own
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME  # noqa: E402

from tuner.errors import ConfigError  # noqa: E402
from tuner.outputs.results import EPOCH_METRICS, SELECTED_METRICS, TEST_METRICS  # noqa: E402
from tuner.plan import SearchPlan, trial_name  # noqa: E402

logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."

KIND, SEARCH, WIDTH, TRIAL_ID = "rwt.kind", "rwt.search", "rwt.width", "ray_trial_id"
STRONG = "rwt.strong"  # prefix of the tags that mark each strong evaluation logged (see log_evaluation)
ORPHANED = "orphaned_trial"  # the kind of a trial run whose trial no store kept (see close_orphans)
# early-stopped trials end FINISHED (they did what ASHA asked); their `status` tag says early_stopped
FINAL_STATUS = {"completed": RunStatus.FINISHED, "early_stopped": RunStatus.FINISHED, "error": RunStatus.FAILED}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI opens on training runs
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
PERMANENT = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED")
BACKOFF = (1, 2, 4, 8, 16, 30, 60)  # seconds between attempts while the search runs
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
TRAINING_UI = "workflowType=machine_learning"  # MLflow 3's UI: the "Model training" side, not GenAI


def resolve_uri(uri: str | None) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else MLflow's own default (sqlite:///mlflow.db here); the scheme is checked."""
    if uri:
        mlflow.set_tracking_uri(uri)
    resolved = mlflow.get_tracking_uri()
    scheme = urlparse(resolved).scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"MLflow tracking URI {resolved!r} has no supported scheme ({', '.join(SCHEMES)}): pass "
                          f"--tracking-uri sqlite:///mlflow.db or http://HOST:5000")
    return resolved


def ui_address(uri: str) -> str:
    """Where the MLflow UI of this tracking URI answers: a tracking server serves it itself; for a local store,
    `mlflow ui --backend-store-uri URI` serves it at its default address."""
    return uri.rstrip("/") if urlparse(uri).scheme in ("http", "https") else UI_DEFAULT


def views_of(uri: str, experiment_id: str, trial_runs: list[str]) -> dict[str, str]:
    """The experiment's run table (runs nested under the search run), and the trials side by side, flat.

    MLflow 3's UI opens on its GenAI pages unless the browser chose "Model training" before (the
    experiment's kind tag does not override that choice); `workflowType` in the address does. The
    comparison page lists the given runs flat, with a parallel-coordinates plot and scatter plots.
    """
    ui = ui_address(uri)
    runs, experiments = (quote(json.dumps(ids, separators=(",", ":")), safe="")
                         for ids in (trial_runs, [experiment_id]))
    return {"experiment_id": experiment_id,
            "runs_url": f"{ui}/#/experiments/{experiment_id}/runs?{TRAINING_UI}",
            "trials_url": f"{ui}/#/compare-runs?runs={runs}&experiments={experiments}&{TRAINING_UI}"}


def is_local(uri: str) -> bool:
    """A store only this machine sees (a file path or sqlite), not a tracking server."""
    return urlparse(uri).scheme in ("", "file", "sqlite")


def check_reachable(uri: str) -> None:
    """Fail in one line, before any trial starts, when a tracking server does not answer."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=5):
            pass
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means the server is unusable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"no MLflow tracking server answers at {uri} ({reason[:120]}): start one with "
                          f"'mlflow server --host 127.0.0.1 --port 5000' or fix --tracking-uri") from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold a machine-wide lock on a sqlite store while it may be created.

    Two searches started at once in one directory would otherwise both create the tables of a
    new mlflow.db, and one fails (SQLAlchemy's CircularDependencyError).
    """
    if urlparse(uri).scheme != "sqlite":
        yield
        return
    from filelock import FileLock

    digest = hashlib.sha1(os.path.abspath(uri.removeprefix("sqlite:///")).encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"rwt-mlflow-{digest}.lock", timeout=300):
        yield


def is_permanent(exc: Exception) -> bool:
    """Whether retrying `exc` cannot help (a request MLflow rejects), as opposed to a server or database away."""
    return isinstance(exc, MlflowException) and exc.error_code in PERMANENT


@dataclass
class Operation:
    what: str  # for messages: "trial w4-lam6-s0-abc", "search run", ...
    call: Callable[[], None]
    attempts: int = 0


@dataclass
class Failures:
    """What could not be logged, by what it was for."""

    items: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, exc: Exception) -> None:
        self.items.setdefault(what, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)


class Tracker:
    """The search's MLflow runs, logged in order on a background thread; every method is safe after a resume.

    `trial` arguments are a trial's identity: a Parquet row or a dict with trial_id, width, lam,
    seed, replicate and optuna_trial.
    """

    def __init__(self, uri: str, plan: SearchPlan, *, echo: Callable[[str], None] = print) -> None:
        self.uri, self.plan, self.echo = uri, plan, echo
        with store_lock(uri):  # the client creates a new store's tables
            self.client = MlflowClient(uri)
            experiment = self.client.get_experiment_by_name(plan.name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(plan.name, tags=EXPERIMENT_KIND))
        self._runs: dict[tuple[str, str], str] = {}
        self.search_status_before: str | None = None  # of a search run found again (a resume, an evaluation)
        self._reopened: dict[str, str] = {}  # run id → status of a finished run found again and reopened
        self._run_lock = threading.RLock()
        self._logged_steps: dict[str, int] = {}
        self.failures = Failures()
        self._queue: queue.Queue[Operation | None] = queue.Queue()
        self._deadline: float | None = None  # set by close()
        self._unreachable_since: float | None = None
        trial = plan.trial
        self.search_run = self._run(
            "search", plan.name, run_name=plan.name, parent=None,
            params={"preset": plan.preset, "widths": ",".join(map(str, plan.widths)), "trials": plan.trials,
                    "seeds": plan.seeds, "startup": plan.startup, "paired": plan.paired,
                    "lam_low": plan.lam_low, "lam_high": plan.lam_high, "sampler": plan.sampler,
                    "method": trial.method, "epochs": trial.epochs, "seed": trial.seed},
        )
        self._thread = threading.Thread(target=self._work, name="mlflow-logging", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what the search logs

    def log_epochs(self, trial: dict[str, Any], history: list[dict[str, float]]) -> None:
        """Per-epoch metrics at step=epoch, for the epochs of `history` not logged yet."""
        self._submit(self._trial_label(trial), lambda: self._log_epochs(self._trial_run(trial), history))

    def finish_trial(self, trial: dict[str, Any], history: list[dict[str, float]]) -> None:
        """Every epoch, the final metrics (selected epoch, test), status and node tags; the run ends."""
        def finish() -> None:
            run_id = self._trial_run(trial)
            self._log_epochs(run_id, history)
            self._finish_trial(run_id, trial)

        self._submit(self._trial_label(trial), finish)

    def finish_width(self, width: int, best: dict[str, Any] | None, checkpoint: Path | None) -> None:
        """The best trial's λ and id, and its selected checkpoint (a local file) as an artifact; the width run ends."""
        self._submit(f"width {width} run", lambda: self._finish_width(width, best, checkpoint))

    def log_files(self, files: list[Path], *, width: int | None = None) -> None:
        """Artifacts of the search run (result tables, the scaling fit, its figures, report.html), or of the
        width's run (its figure); files that do not exist are skipped."""
        label = "search run" if width is None else f"width {width} run"

        def log(path: Path) -> None:
            if path.exists():
                self.client.log_artifact(self.search_run if width is None else self.width_run(width), str(path))

        for path in files:
            self._submit(f"{label} artifact {Path(path).name}", lambda path=path: log(Path(path)))

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait up to `timeout` s until everything submitted so far is logged (or given up); whether it was."""
        done = threading.Event()
        self._submit("flush", done.set)
        return done.wait(timeout)

    def views(self) -> dict[str, str]:
        """Where the MLflow UI shows this search (`views_of`), for the trial runs known to this tracker."""
        with self._run_lock:
            trial_runs = [run_id for (kind, _), run_id in self._runs.items() if kind == "trial"]
        return views_of(self.uri, self.experiment_id, trial_runs)

    def log_fit(self, *, a: float, b: float) -> None:
        """The scaling rule λ* = a·w^b as the search run's metrics `fit_a`, `fit_b`."""
        now = int(time.time() * 1000)
        self._submit("search run metrics", lambda: self.client.log_batch(
            self.search_run, metrics=[Metric("fit_a", a, now, 0), Metric("fit_b", b, now, 0)]))

    def log_evaluation(self, trial: dict[str, Any], evaluation: dict[str, Any]) -> None:
        """A strong evaluation as metrics of the trial's run: `<split>_strong_robust_acc`, `<split>_strong_pgd20_robust_acc`
        (PGD-20 on the same examples), `<split>_strong_natural_acc` and `<split>_broken_<attack>` per attack.

        The metrics hold the evaluation logged last, its suite and examples in the tags `<split>_strong_suite`
        and `<split>_strong_examples`; every evaluation also leaves a tag `rwt.strong.<split>.<suite>.<examples>`
        with its robust accuracy, by which it is logged once (a rerun or a resume's catch-up logs nothing).
        """
        split, suite, examples = evaluation["split"], evaluation["suite"], evaluation["examples"]
        logged = f"{STRONG}.{split}.{suite}.{examples}"
        values = {f"{split}_strong_robust_acc": evaluation["strong_robust_acc"],
                  f"{split}_strong_pgd20_robust_acc": evaluation["pgd_robust_acc"],
                  f"{split}_strong_natural_acc": evaluation["natural_acc"],
                  **{f"{split}_broken_{attack}": count for attack, count in dict(evaluation["broken"]).items()}}

        def log() -> None:
            run_id = self._trial_run(trial)
            if logged in self.client.get_run(run_id).data.tags:
                return
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                                  tags=[RunTag(f"{split}_strong_suite", suite), RunTag(f"{split}_strong_examples", str(examples)),
                                        RunTag(logged, f"{evaluation['strong_robust_acc']:.6g}")])

        self._submit(self._trial_label(trial), log)

    def catch_up(self, rows: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]],
                 evaluations: list[dict[str, Any]]) -> None:
        """Log what the Parquet results hold and MLflow may lack (after a resume, or a server that was away)."""
        for row in rows:
            self.finish_trial(row, epochs.get(row["trial_id"], []))
        trials = {row["trial_id"]: row for row in rows}
        for evaluation in evaluations:
            if evaluation["trial_id"] in trials:
                self.log_evaluation(trials[evaluation["trial_id"]], evaluation)

    def close_orphans(self, keep: set[str]) -> None:
        """End, as KILLED and marked `orphaned_trial`, the running trial runs of trials no store kept.

        A driver killed after a trial reported but before Tune saved its state leaves such a run:
        Tune's restored state never runs that trial again, so its run would stay RUNNING forever.
        """
        def close() -> None:
            runs = self.client.search_runs([self.experiment_id], max_results=10_000,
                                           filter_string=f"tags.`{KIND}` = 'trial' and attributes.status = 'RUNNING'")
            for run in runs:
                if run.data.tags.get(TRIAL_ID) not in keep:
                    self.client.log_batch(run.info.run_id, tags=[
                        RunTag(KIND, ORPHANED),
                        RunTag("closed", "its trial was not kept by Tune's saved state after a driver crash")])
                    self.client.set_terminated(run.info.run_id, "KILLED")

        self._submit("orphaned trial runs", close)

    def close(self, status: str = "FINISHED", *, timeout: float = 60.0) -> Failures:
        """End the search run (FINISHED, or KILLED when interrupted) and wait up to `timeout` s for the queue.

        Returns what could not be logged; a later --resume logs it from the Parquet results.
        """
        if status != "FINISHED":
            self._submit("open runs", lambda: self._end_open_runs(status))
        self._submit("reopened runs", self._end_reopened_runs)
        self._submit("search run", lambda: self.client.set_terminated(self.search_run, status))
        self._deadline = time.monotonic() + timeout
        self._queue.put(None)
        self._thread.join(timeout + 5)
        while True:  # whatever is still queued could not be logged
            try:
                operation = self._queue.get_nowait()
            except queue.Empty:
                break
            if operation is not None:
                self.failures.add(operation.what, TimeoutError(f"no answer from {self.uri} within {timeout:.0f}s"))
        return self.failures

    def trial_run_now(self, trial: dict[str, Any]) -> str | None:
        """The trial's MLflow run id, found or created now; None while the server is not answering."""
        if self._unreachable_since is not None:
            return None
        try:
            return self._trial_run(trial)
        except Exception as exc:  # noqa: BLE001 - the logging thread retries and reports
            if is_permanent(exc):
                self.failures.add(self._trial_label(trial), exc)
            return None

    # ------------------------------------------------------------------ the background thread

    def _submit(self, what: str, call: Callable[[], None]) -> None:
        self._queue.put(Operation(what, call))

    def _work(self) -> None:
        while (operation := self._queue.get()) is not None:
            while True:
                try:
                    operation.call()
                    self._recovered()
                    break
                except Exception as exc:  # noqa: BLE001 - any failure is retried or reported, never raised
                    if is_permanent(exc):
                        self.failures.add(operation.what, exc)
                        break
                    self._unreachable(exc)
                    operation.attempts += 1
                    delay = BACKOFF[min(operation.attempts, len(BACKOFF)) - 1]
                    if self._deadline is not None:  # closing: retry until the deadline, then give up
                        delay = min(delay, self._deadline - time.monotonic())
                        if delay <= 0:
                            self.failures.add(operation.what, exc)
                            break
                    time.sleep(delay)

    def _unreachable(self, exc: Exception) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            self.echo(f"warning: MLflow at {self.uri} is not answering ({reason}); training goes on and the "
                      f"runs will be logged when it answers again")

    def _recovered(self) -> None:
        if self._unreachable_since is not None:
            self.echo(f"MLflow at {self.uri} answers again after {time.monotonic() - self._unreachable_since:.0f}s: "
                      f"catching up")
            self._unreachable_since = None

    # ------------------------------------------------------------------ MLflow calls (on the thread)

    def width_run(self, width: int) -> str:
        return self._run("width", str(width), run_name=f"{self.plan.name}-w{width}", parent=self.search_run,
                         params={"width": width}, tags={WIDTH: str(width)})

    def _trial_label(self, trial: dict[str, Any]) -> str:
        return f"trial {trial_name(trial['width'], trial['lam'], trial['seed'], trial['trial_id'])}"

    def _trial_run(self, trial: dict[str, Any]) -> str:
        """The run of Ray trial `trial`, created with its params on first sight."""
        t, width = self.plan.trial, trial["width"]
        params = {"width": width, "lam": trial["lam"], "method": t.method, "epsilon": t.epsilon,
                  "train_steps": t.train_steps, "train_step_size": t.train_step_size, "eval_steps": t.eval_steps,
                  "eval_step_size": t.eval_step_size, "epochs": t.epochs, "seed": trial["seed"],
                  "replicate": trial["replicate"], "preset": self.plan.preset, "model": t.model, "depth": t.depth,
                  "dataset": t.dataset, "batch_size": t.batch_size, "optimizer": "sgd", "lr": t.lr,
                  "momentum": t.momentum, "weight_decay": t.weight_decay, "lr_milestones": t.lr_milestones,
                  "lr_gamma": t.lr_gamma}
        tags = {TRIAL_ID: trial["trial_id"], WIDTH: str(width), "optuna_trial": str(trial.get("optuna_trial"))}
        return self._run("trial", trial["trial_id"],
                         run_name=trial_name(width, trial["lam"], trial["seed"], trial["trial_id"]),
                         parent=self.width_run(width), params=params, tags=tags)

    def _log_epochs(self, run_id: str, history: list[dict[str, float]]) -> None:
        if run_id not in self._logged_steps:
            logged = self.client.get_metric_history(run_id, "val_robust_acc")
            self._logged_steps[run_id] = max((m.step for m in logged), default=0)
        new = [r for r in history if int(r["epoch"]) > self._logged_steps[run_id]]
        if not new:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(r[key]), now, int(r["epoch"])) for r in new for key in EPOCH_METRICS if key in r]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        self._logged_steps[run_id] = int(new[-1]["epoch"])

    def _finish_trial(self, run_id: str, row: dict[str, Any]) -> None:
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING" and run.data.tags.get("status") == row["status"]:
            return  # finished before (a resume's catch-up)
        now = int(time.time() * 1000)
        final = {**{f"selected_{k}": row.get(k) for k in SELECTED_METRICS}, **{k: row.get(k) for k in TEST_METRICS},
                 "best_epoch": row.get("best_epoch"), "epochs_run": row.get("epochs_run")}
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in final.items() if v is not None],
            tags=[RunTag("status", row["status"]), RunTag("node", str(row.get("node"))),
                  RunTag("node_ip", str(row.get("node_ip"))),
                  *(RunTag(key, row[key][:4000]) for key in ("error", "note") if row.get(key))],
        )
        self.client.set_terminated(run_id, RunStatus.to_string(FINAL_STATUS[row["status"]]))

    def _finish_width(self, width: int, best: dict[str, Any] | None, checkpoint: Path | None) -> None:
        run_id = self.width_run(width)
        if best is not None:
            self.client.log_batch(run_id, metrics=[Metric("best_lam", best["lam"], int(time.time() * 1000), 0)],
                                  tags=[RunTag("best_trial", best["trial_id"])])
        if checkpoint is not None and not self.client.list_artifacts(run_id, "best_checkpoint"):
            self.client.log_artifact(run_id, str(checkpoint), "best_checkpoint")
        self.client.set_terminated(run_id)

    def _end_open_runs(self, status: str) -> None:
        """Every run of this search still RUNNING ends with `status` (an interrupted search; a resume reopens them)."""
        runs = self.client.search_runs([self.experiment_id], max_results=10_000,
                                       filter_string="attributes.status = 'RUNNING'")
        for run in runs:
            if run.info.run_id != self.search_run:
                self.client.set_terminated(run.info.run_id, status)

    def _end_reopened_runs(self) -> None:
        """Runs this tracker reopened and nothing ended since (an evaluation's width runs) get their status back."""
        for run_id, status in list(self._reopened.items()):
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status)

    def _run(self, kind: str, key: str, *, run_name: str, parent: str | None, params: dict[str, Any],
             tags: dict[str, str] | None = None) -> str:
        """The run of this kind and key in the experiment, created (with params) if it is not there."""
        with self._run_lock:  # the driver's thread and the logging thread must not both create it
            if (kind, key) not in self._runs:
                self._runs[(kind, key)] = self._find_or_create_run(kind, key, run_name=run_name, parent=parent,
                                                                   params=params, tags=tags)
            return self._runs[(kind, key)]

    def _find_or_create_run(self, kind: str, key: str, *, run_name: str, parent: str | None,
                            params: dict[str, Any], tags: dict[str, str] | None) -> str:
        key_tag = {"search": SEARCH, "width": WIDTH, "trial": TRIAL_ID}[kind]
        found = self.client.search_runs([self.experiment_id],
                                        filter_string=f"tags.`{KIND}` = '{kind}' and tags.`{key_tag}` = '{key}'",
                                        max_results=1)
        if found:
            run_id = found[0].info.run_id
            finished_trial = kind == "trial" and "status" in found[0].data.tags  # a resume's catch-up
            if kind == "search":
                self.search_status_before = found[0].info.status
            if found[0].info.status != "RUNNING" and not finished_trial:
                self.client.update_run(run_id, status="RUNNING")
                if kind != "search":  # close() ends the search run itself
                    self._reopened[run_id] = found[0].info.status
        else:
            all_tags = {KIND: kind, SEARCH: self.plan.name, MLFLOW_RUN_NAME: run_name, **(tags or {})}
            if parent:
                all_tags[MLFLOW_PARENT_RUN_ID] = parent
            run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run_id
