"""The Tune trainable: what runs in a trial's worker process.

Every fresh worker imports this module before its first trial, so it imports the core and Ray
only, never the driver's Optuna or MLflow code (MLflow alone costs a fresh worker about 0.6 s).
A trial of one worker trains in the Tune trial's own process; a trial of several runs them with
Ray Train (`data_parallel`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

from tuner.core.config import TrialConfig
from tuner.orchestration.data_parallel import run_data_parallel
from tuner.orchestration.worker import run_reported
from tuner.plan import TrialResources, trial_name

# A data-parallel trial's Tune process only waits for its workers, which Ray Train places with
# the trial's CPUs and GPUs: it reserves memory for itself, no CPU a worker could be waiting for.
DATA_PARALLEL_DRIVER = {"cpu": 0, "memory": 512 * 2**20}


def rwt_trial(config: dict[str, Any], *, bases: dict[int, dict[str, Any]], resources: dict[int, TrialResources],
              storage: str, recorded: frozenset[str] = frozenset()) -> None:
    """One Tune trial: the core trial of `config`'s width, λ and seed, resuming from its checkpoint if any.

    A trial already in the results (`recorded`) returns at once: the driver was killed after
    recording it but before Tune's experiment state said it had finished.
    """
    trial_id = tune.get_context().get_trial_id()
    if trial_id in recorded:
        return
    width = config["width"]
    trial = TrialConfig.from_dict({**bases[width], "lam": config["lam"], "seed": config["seed"]})
    started_at = time.time()
    if resources[width].workers > 1:
        run_data_parallel(trial, resources=resources[width], storage=storage, name=trial_id, started_at=started_at)
        return

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = None if checkpoint_dir is None else tune.Checkpoint.from_directory(str(checkpoint_dir))
        tune.report(metrics, checkpoint=checkpoint)

    print(f"trial {trial_name(width, trial.lam, trial.seed, trial_id)}: width {width}, λ={trial.lam:g}, seed {trial.seed}")
    run_reported(trial, checkpoint=tune.get_checkpoint(), report=report, started_at=started_at)


class TrialRequest:
    """What Tune reserves for a trial, by its width (a picklable function of the trial's config)."""

    def __init__(self, resources: dict[int, TrialResources]) -> None:
        self.resources = resources

    def __call__(self, config: dict[str, Any]) -> tune.PlacementGroupFactory:
        r = self.resources[config["width"]]
        return resource_dict_to_pg_factory({"cpu": r.cpus, "gpu": r.gpus} if r.workers == 1 else DATA_PARALLEL_DRIVER)
