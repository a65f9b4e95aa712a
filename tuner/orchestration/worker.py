"""A core trial run on a Ray worker, reporting every epoch: the part shared by one-process and data-parallel trials.

What a trial reports after each epoch is its epoch record plus the full history (so a resumed
driver can rebuild the trial's epochs), where it ran, when, and — on its last epoch — the test
metrics of the selected checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from tuner.core.config import TrialConfig
from tuner.core.training import CHECKPOINT_DIR, EpochReport, UnreadableCheckpoint, prepare, run_trial, select_epoch
from tuner.errors import ConfigError

METRIC = "val_robust_acc"  # ASHA compares this epoch's validation robust accuracy
OBJECTIVE = "selected_val_robust_acc"  # Optuna is told the selected (best-so-far) epoch's value
FINISHED = "trial_finished"  # 1 on the report of a trial's last epoch, which carries its test metrics
CONFIG_ERROR = "config_error"  # the one-line message of bad input the trial found (no retry can fix it)
NOTE = "note"  # what happened to the trial that its metrics do not say (e.g. restarted from scratch)

# report(metrics, checkpoint_dir): hands one epoch to Tune or Train; checkpoint_dir is None off rank 0
Report = Callable[[dict[str, Any], Path | None], None]


def epoch_metrics(epoch: EpochReport, *, started_at: float) -> dict[str, Any]:
    """The metrics reported for one epoch, with the node (Ray node ID and IP) it ran on."""
    metrics: dict[str, Any] = {**epoch.record, "history": epoch.history,
                               "node": ray.get_runtime_context().get_node_id(),
                               "node_ip": ray.util.get_node_ip_address(),
                               "started_at": started_at, "reported_at": time.time(),
                               OBJECTIVE: select_epoch(epoch.history)[METRIC],
                               FINISHED: int(epoch.summary is not None)}
    if epoch.summary is not None:
        metrics["summary"] = {k: v for k, v in epoch.summary.items() if k != "history"}
    return metrics


def run_reported(trial: TrialConfig, *, checkpoint: Any, report: Report, started_at: float) -> None:
    """Run `trial` in a scratch directory, resuming from `checkpoint` (a Ray Checkpoint) if given.

    Bad input the trial finds (a ConfigError) is reported as `CONFIG_ERROR`, not raised: raised,
    Tune would retry a trial that no retry can fix.
    """
    try:
        prepared = prepare(trial)
    except ConfigError as exc:
        report({CONFIG_ERROR: str(exc), OBJECTIVE: None}, None)  # Tune checks every result names the objective
        return
    work_dir = Path(tempfile.mkdtemp(prefix="rwt-trial-"))
    note: dict[str, str] = {}

    def run() -> None:
        run_trial(prepared, work_dir=work_dir, log=print,  # per-epoch lines in the trial's log
                  on_epoch=lambda epoch: report({**epoch_metrics(epoch, started_at=started_at), **note},
                                                epoch.checkpoint_dir))

    try:
        if checkpoint is not None:
            checkpoint.to_directory(str(work_dir / CHECKPOINT_DIR))
        try:
            run()
        except UnreadableCheckpoint as exc:  # a damaged checkpoint costs the trial's epochs, not the search
            print(f"{exc}; restarting the trial from scratch")
            shutil.rmtree(work_dir / CHECKPOINT_DIR)
            note[NOTE] = f"restarted from scratch: {str(exc).split(':')[0]}"
            prepared = prepare(trial)
            run()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
