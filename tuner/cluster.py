"""Connecting the search driver to Ray: a local Ray for this machine, or an existing cluster."""

from __future__ import annotations

import logging

import ray


def connect(address: str | None) -> None:
    """Start or join Ray; trial output stays in the trials' logs, the driver prints one line per trial."""
    if ray.is_initialized():
        return
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
