"""Connecting the search driver to Ray: a local Ray for this machine, or an existing cluster."""

from __future__ import annotations

import logging
import os

# Tune's progress tables off (the search prints one line per trial); no warning about
# snapshotting the experiment state after every checkpoint, which the search wants.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Results go to Parquet; of Tune's default loggers the search keeps only the JSON one (trials.py).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import optuna  # noqa: E402
import ray  # noqa: E402


def connect(address: str | None) -> None:
    """Start or join Ray; trial output stays in the trials' logs, the driver prints one line per trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


def node_count() -> int:
    """Alive nodes of the Ray cluster the driver is connected to."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))
