"""Connecting the search driver to Ray: a local Ray for this machine, or an existing cluster."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

# Tune's progress tables off (the search prints one line per trial); no warning about
# snapshotting the experiment state after every checkpoint, which the search wants.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Results go to Parquet; of Tune's default loggers the search keeps only the JSON one (trials.py).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Tune warns when handling a result takes over 0.5 s and advises reporting less often; a search reports
# once an epoch, and its callback (Parquet written atomically, MLflow handed to a thread) takes about that
# on a busy laptop. Only a handler slower than 30 s says something worth a line.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "30")

import optuna  # noqa: E402
import ray  # noqa: E402

from tuner.plan import SearchPlan  # noqa: E402


# Messages of the libraries that tell a user of the search nothing (the search says it better):
# Ray's notice that token authentication is on (it stays on), Tune's advice to resume with
# Tuner.restore (the search names its own --resume command), and Tune's note on trials stopped
# before their first report (the search's results come from its Parquet tables, not Tune's).
NOISE = ("Token authentication is enabled for this Ray cluster",
         "Experiment has been interrupted, but the most recent state was saved",
         "Failed to fetch metrics for")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


def quiet() -> None:
    """Drop the libraries' messages that say nothing to the user; real warnings stay."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray._private"):
        logger = logging.getLogger(name)
        logger.addFilter(DropNoise())
        for handler in logger.handlers:
            handler.addFilter(DropNoise())


@dataclass(frozen=True)
class Connection:
    """The driver's connection to Ray."""

    dashboard: str | None  # the URL of Ray's dashboard, if it has one
    owned: bool  # made by connect(); False when the process was connected to Ray before

    def close_in_background(self) -> threading.Thread:
        """Leave Ray on a thread of its own, which the caller joins before it exits: stopping a local Ray's
        processes takes 1-2 s, which overlap what the driver does next (its report). Ray must not be used meanwhile."""
        thread = threading.Thread(target=ray.shutdown if self.owned else lambda: None, name="ray-shutdown")
        thread.start()
        return thread


def connect(address: str | None, *, tracking_uri: str, local: bool) -> Connection:
    """Start a Ray for this machine (`local`) or join the cluster at `address`.

    Trial output stays in the trials' logs; the driver prints one line per trial. The driver
    alone logs to MLflow, but every process of the search gets MLFLOW_TRACKING_URI on every node
    (for code of your own in a trial). A local Ray's processes inherit it from the driver; a
    cluster's get it from the job's runtime env, unless the search runs in a Ray job whose
    runtime env sets it already (Ray refuses one variable from two places). A local Ray gets no
    runtime env: with one, every worker waits for Ray's runtime-env agent (0.6 s per worker).
    """
    quiet()
    if ray.is_initialized():
        return Connection(dashboard=None, owned=False)
    runtime_env = None
    if local:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    elif not ("RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and "MLFLOW_TRACKING_URI" in os.environ):
        runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}}
    context = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env)
    quiet()  # ray.init may have set up its handlers again
    url = context.dashboard_url
    return Connection(dashboard=None if not url else url if "://" in url else f"http://{url}", owned=True)


def node_count() -> int:
    """Alive nodes of the Ray cluster the driver is connected to."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def describe_capacity(plan: SearchPlan) -> str:
    """The cluster's resources and how many trials of each width run at once on it."""
    total = ray.cluster_resources()
    lines = [f"ray: {node_count()} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"]
    for width, resources in plan.resources.items():
        at_once = plan.concurrency_for(width, total)
        waiting = "" if resources.trials_at_once(total) else " (none fits yet: waiting for the cluster to grow)"
        lines.append(f"  w{width}: up to {at_once} trial(s) at once{waiting}")
    return "\n".join(lines)
