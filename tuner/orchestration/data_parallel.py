"""A trial trained data-parallel over several workers: a Ray Train TorchTrainer launched inside the Tune trial.

TorchTrainer starts the workers and their process group (NCCL on GPUs, gloo on CPUs); each
worker runs the same core trial on its shard (see `tuner.core.distributed`). Rank 0's epoch
metrics reach Tune through TuneReportCallback; its checkpoints go to the Train run's storage.
The run is named after the Tune trial, so a retried or resumed trial finds its Train run and
every worker restarts from the latest checkpoint.
"""

from __future__ import annotations

from typing import Any

import ray.train
import ray.train.torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from tuner.core.config import TrialConfig
from tuner.plan import TrialResources
from tuner.orchestration.worker import run_reported


def worker_loop(config: dict[str, Any]) -> None:
    """One Train worker: the core trial on this worker's device, reporting every epoch (a barrier)."""
    # this worker's GPU (Ray Train shares CUDA_VISIBLE_DEVICES among a node's workers), or the CPU
    trial = TrialConfig.from_dict(config["trial"]).replace(device=str(ray.train.torch.get_device()))

    def report(metrics: dict[str, Any], checkpoint_dir: Any) -> None:
        checkpoint = None if checkpoint_dir is None else ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        # the checkpoint directory stays: the next epoch keeps best.pt in it
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)

    run_reported(trial, checkpoint=ray.train.get_checkpoint(), report=report, started_at=config["started_at"])


def run_data_parallel(trial: TrialConfig, *, resources: TrialResources, storage: str, name: str,
                      started_at: float) -> None:
    """Train `trial` over `resources.workers` workers; returns when the Train run ends (raises if it failed)."""
    per_worker = resources.per_worker
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"trial": trial.to_dict(), "started_at": started_at},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=per_worker["GPU"] > 0,
            resources_per_worker={key: value for key, value in per_worker.items() if value > 0}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=0),  # Tune retries the whole trial
        ),
    )
    trainer.fit()
