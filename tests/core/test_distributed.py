"""Data-parallel trials on CPU: two gloo workers against one process, same seed, same data."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.helpers import free_port
from tuner.core import distributed
from tuner.core.data import Split, batches
from tuner.core.metrics import evaluate
from tuner.core.training import Prepared, eval_attack, evaluate_split, make_optimizer, prepare, run_trial, train_attack, train_one_epoch
from tuner.presets import load_preset

pytestmark = pytest.mark.slow
EPOCHS = 3


def trial_config():
    return load_preset("quick").trial_config(width=2, lam=3.0, epochs=EPOCHS, device="cpu")


def join(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))  # a deadlock fails the test instead of hanging it


def spawn(worker, out: Path) -> None:
    mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")


def run_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One worker: the core trial, then a second evaluation of the final model on the validation split."""
    join(rank, world_size, port)
    try:
        prepared = prepare(trial_config())
        summary = run_trial(prepared, work_dir=Path(out) / f"rank{rank}", log=None)
        val = evaluate_split(prepared, "val")
        state = {k: v.tolist() for k, v in prepared.model.state_dict().items() if v.is_floating_point()}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(
            {"summary": {k: v for k, v in summary.items() if k != "history"}, "history": summary["history"],
             "val_examples": val.examples, "val": val.as_dict("val"), "state": state}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    spawn(run_worker, out)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    prepared = prepare(trial_config())
    return run_trial(prepared, work_dir=tmp_path_factory.mktemp("single"), log=None)


def test_validation_counts_cover_the_whole_split_exactly_once(two_workers, digits):
    _, ranks = two_workers
    assert [r["val_examples"] for r in ranks] == [len(digits.val)] * 2
    # every worker computes the same whole-split metrics from the summed counts
    assert ranks[0]["val"] == ranks[1]["val"]
    metrics = [[{k: v for k, v in e.items() if k != "epoch_seconds"} for e in r["history"]] for r in ranks]
    assert metrics[0] == metrics[1]


def test_summed_counts_equal_one_process_evaluating_the_same_model(two_workers, digits):
    """Clean predictions are deterministic: natural accuracy over the shards must be the whole split's, exactly."""
    _, ranks = two_workers
    model = prepare(trial_config()).model
    model.load_state_dict({k: torch.tensor(v) for k, v in ranks[0]["state"].items()}, strict=False)
    config = trial_config()
    one = evaluate(model, batches(digits.val, config.eval_batch_size), eval_attack=eval_attack(config),
                   probe_attack=train_attack(config))
    assert one.examples == ranks[0]["val_examples"]
    assert one.natural_acc == ranks[0]["val"]["val_natural_acc"]
    assert abs(one.robust_acc - ranks[0]["val"]["val_robust_acc"]) <= 0.03  # attack starts differ per worker


def test_workers_hold_rank_0s_model_and_rank_0_alone_writes_files(two_workers):
    out, ranks = two_workers
    assert ranks[0]["state"] == ranks[1]["state"]  # parameters and BatchNorm statistics
    assert (out / "rank0" / "metrics.json").exists() and (out / "rank0" / "checkpoint" / "best.pt").exists()
    assert not (out / "rank1" / "metrics.json").exists() and not list((out / "rank1" / "checkpoint").iterdir())


def test_two_workers_agree_with_one_within_noise(two_workers, one_worker, digits):
    """Same seed and global batch; the runs differ in attack starts and in BatchNorm batches (half per worker).

    The tolerance is 3 binomial standard errors of an accuracy near 0.5 on the split (about
    0.09); the runs measured here differ by less than 0.01.
    """
    _, ranks = two_workers
    two, one = ranks[0]["summary"], one_worker
    for split in ("val", "test"):
        tolerance = 3 * (0.25 / len(getattr(digits, split))) ** 0.5
        for metric in (f"{split}_natural_acc", f"{split}_robust_acc", f"{split}_stability"):
            assert abs(two[metric] - one[metric]) <= tolerance, (metric, two[metric], one[metric], tolerance)
    assert two["epochs_run"] == one["epochs_run"] == EPOCHS


def test_without_a_process_group_there_is_one_worker():
    assert distributed.current() == distributed.Workers(0, 1)
    assert distributed.all_sum(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]


def linear_prepared(rank_count: int) -> Prepared:
    """A BatchNorm-free model at ε = 0 (the attack returns x) on 512 training digits: one step of
    data-parallel SGD is then exactly one step on the global batch."""
    config = trial_config().replace(epsilon=0.0, batch_size=64)
    data = prepare(config).data
    data = dataclasses.replace(data, train=Split(data.train.images[:512], data.train.labels[:512]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Prepared(config, data, model, torch.device("cpu"), distributed.Workers(0, rank_count))


def train_linear(rank: int, world_size: int, port: int, out: str) -> None:
    join(rank, world_size, port)
    try:
        prepared = dataclasses.replace(linear_prepared(world_size), workers=distributed.current())
        optimizer, _ = make_optimizer(prepared.model, prepared.config)
        train_one_epoch(distributed.for_training(prepared.model, prepared.device), optimizer, prepared, epoch=1)
        if rank == 0:
            torch.save(prepared.model.state_dict(), Path(out) / "linear.pt")
        dist.barrier()  # neither worker tears gloo down while the other still uses it (that aborts the process)
    finally:
        dist.destroy_process_group()


def test_data_parallel_sgd_equals_one_process_on_the_global_batch(tmp_path):
    spawn(train_linear, tmp_path)
    prepared = linear_prepared(1)
    optimizer, _ = make_optimizer(prepared.model, prepared.config)
    train_one_epoch(prepared.model, optimizer, prepared, epoch=1)
    two = torch.load(tmp_path / "linear.pt")
    for name, value in prepared.model.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5)
