"""Strong robustness evaluation of a search's selected checkpoints: an attack suite next to PGD-20.

PGD-20 alone can overstate robustness, and a λ that only looks best under a weak attack may be
masking gradients. This module evaluates a trial's selected checkpoint (best.pt) with an attack
suite (`tuner.core.suites`: the worst case per example over the suite and the clean input) and
PGD-20 on the same examples, and checks whether each width's ranking of λ on validation changes
under the suite. It runs in the `tuner.evaluate` command and, as Ray tasks, in every search once a
width's trials are done. Checkpoints in remote storage (s3://…) are read through Ray's
checkpoint API, as the search writes them.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from tuner.analysis.ranking import ranked
from tuner.core.data import Split, batches, load_dataset
from tuner.core.suites import evaluate_suite
from tuner.core.training import BEST, Prepared, eval_attack, load_checkpoint, prepare
from tuner.errors import ConfigError
from tuner.outputs.results import EvaluationStore
from tuner.plan import SearchPlan

SPLITS = ("test", "val")


@dataclass(frozen=True)
class Request:
    """One evaluation: a trial's selected checkpoint, a split, a suite, the first `examples` examples (None: all)."""

    row: dict[str, Any]  # the trial's row of trials.parquet
    split: str
    suite: str
    examples: int | None

    def key(self, plan: SearchPlan) -> tuple:
        """The evaluation's key in evaluation.parquet (trial, split, suite, examples evaluated)."""
        data = load_dataset(plan.trial.dataset, data_dir=plan.trial.data_dir, download=False,
                            val_fraction=plan.trial.val_fraction, split_seed=plan.trial.split_seed)
        size = len(getattr(data, self.split))
        return (self.row["trial_id"], self.split, self.suite, size if self.examples is None else min(self.examples, size))


def selected_checkpoint(row: dict[str, Any], run_dir: Path) -> Path | None:
    """A trial's selected checkpoint (best.pt) as a local file: where it lies on local storage, else a copy
    downloaded into the run directory (best/<trial id>/)."""
    if not row.get("checkpoint"):
        return None
    if "://" not in row["checkpoint"]:
        return Path(row["checkpoint"]) / BEST
    local = Path(run_dir) / "best" / row["trial_id"]
    if not (local / BEST).exists():
        from ray import tune  # only here: Tune costs a fresh evaluation worker 0.7 s to import

        tune.Checkpoint(row["checkpoint"]).to_directory(str(local))
    return local / BEST


def load_selected(plan: SearchPlan, row: dict[str, Any]) -> Prepared:
    """The trial's data and model, with its selected checkpoint loaded; ConfigError if it is missing or does not fit."""
    path = selected_checkpoint(row, plan.run_dir)
    if path is None or not path.exists():
        raise ConfigError(f"trial {row['trial_id']} (width {row['width']}, λ={row['lam']:g}) has no selected checkpoint "
                          f"({path or 'none recorded'}): only completed trials of a search with its checkpoints can be "
                          f"evaluated")
    prepared = prepare(plan.trial.replace(width=row["width"], lam=row["lam"], seed=row["seed"]))
    state = load_checkpoint(path)
    try:
        prepared.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:160]
        raise ConfigError(f"checkpoint {path} does not match trial {row['trial_id']}'s model ({plan.trial.model}, width "
                          f"{row['width']}): {reason}; pass the run directory the checkpoint belongs to") from None
    return prepared


def evaluate(plan: SearchPlan, request: Request, *, prepared: Prepared | None = None) -> dict[str, Any]:
    """The evaluation row of one request (see EVALUATION_SCHEMA); attack starts seeded by the trial's seed."""
    started = time.perf_counter()
    prepared = prepared or load_selected(plan, request.row)
    split: Split = getattr(prepared.data, request.split)
    if request.examples is not None:
        split = Split(split.images[:request.examples], split.labels[:request.examples])
    torch.manual_seed(request.row["seed"])
    config = prepared.config
    result = evaluate_suite(prepared.model, batches(split, config.eval_batch_size, device=prepared.device),
                            suite=request.suite, epsilon=config.epsilon, pgd=eval_attack(config))
    row = request.row
    return {"trial_id": row["trial_id"], "width": row["width"], "lam": row["lam"], "seed": row["seed"],
            "split": request.split, "suite": result.suite, "epsilon": result.epsilon,
            "examples": result.examples, "natural_acc": result.natural_acc,
            "pgd_robust_acc": result.pgd_robust_acc, "strong_robust_acc": result.robust_acc,
            "broken": result.broken, "seconds": time.perf_counter() - started,
            "evaluated_at": datetime.datetime.now(datetime.timezone.utc)}


def choose(rows: list[dict[str, Any]], which: str) -> list[dict[str, Any]]:
    """The trials `which` names, per width: best, top-K or all (completed, with a checkpoint)."""
    count = {"best": 1, "all": None}.get(which)
    if count is None and which != "all":
        if not (which.startswith("top-") and which[4:].isdigit() and int(which[4:]) >= 1):
            raise ConfigError(f"--trials takes best, top-K (e.g. top-3) or all, got {which!r}")
        count = int(which[4:])
    return [r for width in sorted({r["width"] for r in rows}) for r in ranked(rows, width)[:count]]


def width_requests(plan: SearchPlan, rows: list[dict[str, Any]], width: int) -> list[Request]:
    """What the search evaluates once `width` is done: its best trial(s) on test, its top trials on validation."""
    settings = plan.evaluation
    ordered = ranked(rows, width)
    test = [Request(r, "test", settings.suite, settings.examples) for r in ordered[:settings.test_count]]
    val = [Request(r, "val", settings.suite, settings.examples)
           for r in (ordered[:settings.ranking] if settings.ranking and len(ordered) >= 2 else [])]
    return test + val


class StrongEvaluations:
    """The search's strong evaluations: Ray tasks asked for as each width's trials are all done, each recorded as it
    finishes (also while trials still run: `collect(block=False)` after each of Tune's steps).

    Each task takes the resources of one worker of a trial of its width (its GPU on a GPU cluster),
    so evaluations wait for room as trials do and never slow a running trial down. Ray gets no more
    of them at a time than the cluster runs side by side; the rest wait here and go costliest first
    (widest model, then most examples), so the evaluations that end a search are short ones even
    though the widest width, whose trials are the slowest, usually finishes last.
    """

    def __init__(self, plan: SearchPlan, store: EvaluationStore, *,
                 on_row: Callable[[Request, dict[str, Any]], None], warn: Callable[[str], None]) -> None:
        self.plan, self.store, self.on_row, self.warn = plan, store, on_row, warn
        self.waiting: list[Request] = []  # costliest first (equal costs: in the order asked)
        self.pending: dict[Any, Request] = {}  # handed to Ray: object ref → request
        self.widths_asked: set[int] = set()

    @property
    def outstanding(self) -> int:
        """Evaluations asked for and not collected yet."""
        return len(self.waiting) + len(self.pending)

    def width_done(self, width: int, rows: list[dict[str, Any]]) -> None:
        """Ask for what the search evaluates for `width`, unless it is in evaluation.parquet already."""
        if width in self.widths_asked:
            return
        self.widths_asked.add(width)
        self.waiting += [request for request in width_requests(self.plan, rows, width)
                         if not self.store.has(request.key(self.plan))]
        self.waiting.sort(key=lambda request: (request.row["width"], request.key(self.plan)[3]), reverse=True)
        self.hand_over()

    def hand_over(self) -> None:
        """Hand Ray the costliest waiting evaluations while it has fewer than the cluster runs at once."""
        while self.waiting and len(self.pending) < self.slots():
            request = self.waiting.pop(0)
            self.pending[self.submit(request)] = request

    def slots(self) -> int:
        """How many evaluations the cluster runs side by side (asked each time: an autoscaling cluster grows)."""
        return self.plan.evaluations_at_once(ray.cluster_resources())

    def submit(self, request: Request) -> Any:
        """Start one evaluation as a Ray task; returns its object ref."""
        worker = self.plan.resources[request.row["width"]].per_worker
        task = ray.remote(evaluate).options(num_cpus=worker["CPU"], num_gpus=worker["GPU"])
        return task.remote(self.plan, request)

    def collect(self, *, block: bool = True) -> None:
        """Record each finished evaluation (a failed one is a warning, not an error) and hand Ray the next; with
        `block`, until every evaluation asked for is done, else only those finished already."""
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            request = self.pending.pop(ready[0])
            self.hand_over()
            try:
                row = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - one evaluation failing must not lose the search
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
                self.warn(f"warning: strong evaluation of trial {request.row['trial_id']} on {request.split} failed: "
                          f"{reason}")
                continue
            self.store.record(row)
            self.on_row(request, row)
