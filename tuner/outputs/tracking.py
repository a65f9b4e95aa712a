"""MLflow tracking of a search: one run for the search, one per width, one per trial, nested.

Logging happens in the search driver, from the results Tune hands it, so trials on any node are
tracked without reaching the tracking server themselves. Runs are found again by tags, so a
resumed search continues its runs (one run per trial, whatever the retries and resumes), and a
step already in a metric's history is never logged again.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from tuner.errors import ConfigError
from tuner.core.training import BEST
from tuner.plan import SearchPlan, trial_name
from tuner.outputs.results import EPOCH_METRICS, SELECTED_METRICS, TEST_METRICS

KIND, SEARCH, WIDTH, TRIAL_ID = "rwt.kind", "rwt.search", "rwt.width", "ray_trial_id"
FINAL_STATUS = {"completed": RunStatus.FINISHED, "early_stopped": RunStatus.KILLED, "error": RunStatus.FAILED}


def resolve_uri(uri: str | None) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else MLflow's own default (sqlite:///mlflow.db here)."""
    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.get_tracking_uri()


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


class Tracker:
    """The search's MLflow runs; every method is safe to call again after a resume."""

    def __init__(self, uri: str, plan: SearchPlan) -> None:
        self.uri, self.plan = uri, plan
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(plan.name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(plan.name))
        self._runs: dict[tuple[str, str], str] = {}
        self._logged_steps: dict[str, int] = {}
        trial = plan.trial
        self.search_run = self._run(
            "search", plan.name, run_name=plan.name, parent=None,
            params={"preset": plan.preset, "widths": ",".join(map(str, plan.widths)), "trials": plan.trials,
                    "lam_low": plan.lam_low, "lam_high": plan.lam_high, "sampler": plan.sampler,
                    "seeds": plan.seeds, "startup": plan.startup, "paired": plan.paired,
                    "method": trial.method, "epochs": trial.epochs, "seed": trial.seed},
        )

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks: keep ids, not the client
        return {"uri": self.uri, "plan": self.plan, "experiment_id": self.experiment_id, "_runs": self._runs,
                "search_run": self.search_run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, client=MlflowClient(state["uri"]), _logged_steps={})

    def width_run(self, width: int) -> str:
        return self._run("width", str(width), run_name=f"{self.plan.name}-w{width}", parent=self.search_run,
                         params={"width": width}, tags={WIDTH: str(width)})

    def trial_run(self, trial_id: str, *, width: int, lam: float, seed: int, replicate: int,
                  optuna_trial: int | None) -> str:
        """The run of Ray trial `trial_id`, created with its params on first sight."""
        t = self.plan.trial
        params = {"width": width, "lam": lam, "method": t.method, "epsilon": t.epsilon, "train_steps": t.train_steps,
                  "train_step_size": t.train_step_size, "eval_steps": t.eval_steps, "eval_step_size": t.eval_step_size,
                  "epochs": t.epochs, "seed": seed, "replicate": replicate, "preset": self.plan.preset,
                  "model": t.model, "depth": t.depth, "dataset": t.dataset, "batch_size": t.batch_size,
                  "optimizer": "sgd", "lr": t.lr, "momentum": t.momentum, "weight_decay": t.weight_decay,
                  "lr_milestones": t.lr_milestones, "lr_gamma": t.lr_gamma}
        tags = {TRIAL_ID: trial_id, WIDTH: str(width), "optuna_trial": str(optuna_trial)}
        return self._run("trial", trial_id, run_name=trial_name(width, lam, seed, trial_id),
                         parent=self.width_run(width), params=params, tags=tags)

    def log_epochs(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Per-epoch metrics at step=epoch, for the epochs of `history` not logged yet."""
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

    def finish_trial(self, run_id: str, row: dict[str, Any]) -> None:
        """Final metrics (selected epoch, test), status and node tags; the run ends."""
        now = int(time.time() * 1000)
        final = {**{f"selected_{k}": row.get(k) for k in SELECTED_METRICS}, **{k: row.get(k) for k in TEST_METRICS},
                 "best_epoch": row.get("best_epoch"), "epochs_run": row.get("epochs_run")}
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in final.items() if v is not None],
            tags=[RunTag("status", row["status"]), RunTag("node", str(row.get("node"))), RunTag("node_ip", str(row.get("node_ip"))),
                  *([RunTag("error", row["error"][:4000])] if row.get("error") else [])],
        )
        self.client.set_terminated(run_id, RunStatus.to_string(FINAL_STATUS[row["status"]]))

    def finish_width(self, width: int, best: dict[str, Any] | None, checkpoint_dir: Path | None) -> None:
        """The best trial's λ and id, and its selected checkpoint as an artifact; the width run ends."""
        run_id = self.width_run(width)
        if best is not None:
            self.client.log_batch(run_id, metrics=[Metric("best_lam", best["lam"], int(time.time() * 1000), 0)],
                                  tags=[RunTag("best_trial", best["trial_id"])])
        if checkpoint_dir is not None and not self.client.list_artifacts(run_id, "best_checkpoint"):
            self.client.log_artifact(run_id, str(checkpoint_dir / BEST), "best_checkpoint")
        self.client.set_terminated(run_id)

    def log_files(self, files: list[Path]) -> None:
        """Artifacts of the search run (result tables, the scaling fit and its plots)."""
        for path in files:
            if path.exists():
                self.client.log_artifact(self.search_run, str(path))

    def log_fit(self, *, a: float, b: float) -> None:
        """The scaling rule λ* = a·w^b as the search run's metrics `fit_a`, `fit_b`."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.search_run, metrics=[Metric("fit_a", a, now, 0), Metric("fit_b", b, now, 0)])

    def finish_search(self) -> None:
        self.client.set_terminated(self.search_run)

    def _run(self, kind: str, key: str, *, run_name: str, parent: str | None, params: dict[str, Any],
             tags: dict[str, str] | None = None) -> str:
        """The run of this kind and key in the experiment, created (with params) if it is not there."""
        if (kind, key) in self._runs:
            return self._runs[(kind, key)]
        key_tag = {"search": SEARCH, "width": WIDTH, "trial": TRIAL_ID}[kind]
        found = self.client.search_runs([self.experiment_id],
                                        filter_string=f"tags.`{KIND}` = '{kind}' and tags.`{key_tag}` = '{key}'",
                                        max_results=1)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {KIND: kind, SEARCH: self.plan.name, MLFLOW_RUN_NAME: run_name, **(tags or {})}
            if parent:
                all_tags[MLFLOW_PARENT_RUN_ID] = parent
            run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._runs[(kind, key)] = run_id
        return run_id
