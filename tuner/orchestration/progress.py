"""What the search driver shows while trials run: one line per finished trial, and a periodic status.

The status names the running trials (width, λ, seed, epoch, last validation robust accuracy),
counts what is done, stopped early, failed and waiting, and the elapsed time. In a terminal it
is a single line redrawn in place; when the output is a pipe or a file (a Ray job's log, CI) it
is a plain line every `every` seconds.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Any, TextIO

from ray import tune

from tuner.orchestration.worker import FINISHED, METRIC


class Console:
    """Lines for the record, and a status line that is redrawn in a terminal (and printed plainly elsewhere)."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._status = ""
        self._lock = threading.Lock()  # the MLflow thread prints too

    def line(self, text: str) -> None:
        with self._lock:
            if self.live and self._status:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            if self.live and self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def status(self, text: str) -> None:
        if not self.live:
            self.line(text)
            return
        with self._lock:
            self._status = text[: shutil.get_terminal_size().columns - 1]
            self.stream.write("\r\033[K" + self._status)
            self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            if self.live and self._status:
                self.stream.write("\r\033[K")
                self.stream.flush()
            self._status = ""


class Progress(tune.Callback):
    """Shows the search's status every `every` seconds (every second in a terminal) while trials run."""

    def __init__(self, *, total: int, every: float) -> None:
        self.total, self.requested_every = total, every
        self.console: Console | None = None
        self.every = every
        self.started = time.monotonic()
        self._shown = time.monotonic()
        self.latest: dict[str, tuple[int, float]] = {}  # trial id → (epoch, validation robust accuracy)

    def attach(self, console: Console) -> None:
        """This driver's console (a restored experiment brings an unpickled callback without it)."""
        self.console = console
        self.every = min(self.requested_every, 1.0) if console.live else self.requested_every
        self.started = self._shown = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "console": None}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if METRIC in result:
            self.latest[trial.trial_id] = (int(result["epoch"]), result[METRIC])

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._shown >= self.every:
            self._shown = time.monotonic()
            self.console.status(self.describe(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.console.clear()

    def describe(self, trials: list) -> str:
        """'[2m10s] 5/18 done, 2 stopped early, 0 failed, 1 waiting | running: w4 λ=6.47 s0 epoch 3 rob 0.812, ...'"""
        status = [t.status for t in trials]
        completed = sum(s == "TERMINATED" and (t.last_result or {}).get(FINISHED) for s, t in zip(status, trials))
        stopped = sum(s == "TERMINATED" for s in status) - completed
        running = [t for t in trials if t.status == "RUNNING"]
        elapsed = int(time.monotonic() - self.started)
        parts = [f"[{elapsed // 60}m{elapsed % 60:02d}s] {completed}/{self.total} done, {stopped} stopped early, "
                 f"{status.count('ERROR')} failed, {status.count('PENDING')} waiting"]
        described = []
        for trial in running:
            config = trial.config
            epoch, robust = self.latest.get(trial.trial_id, (0, None))
            where = f"epoch {epoch} rob {robust:.3f}" if robust is not None else "starting"
            described.append(f"w{config['width']} λ={config['lam']:.3g} s{config['seed']} {where}")
        if described:
            parts.append("running: " + ", ".join(described))
        return " | ".join(parts)
