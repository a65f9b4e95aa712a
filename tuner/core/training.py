"""One adversarial training trial: train, evaluate on validation every epoch, checkpoint, select, test.

After every epoch the model is evaluated (PGD-20 and the Lipschitz probe, REFERENCE.md section 3)
on the first `val_epoch_examples` of the validation split: a fixed random subset (the split is
in random order), the same for every trial of a search, so these per-epoch `val_*` metrics, which
ASHA compares, are comparable across trials. The epoch with the best robust accuracy on it is
selected, and its checkpoint is then evaluated on the rest of the validation split, so the
selected epoch's `val_*` in metrics.json cover the whole split, and once on the test split.
`run_trial` resumes from the checkpoint in its work directory, so a retried or resumed trial
never repeats a finished epoch, and each epoch reseeds the random generators from (seed, epoch)
so a resumed run matches an uninterrupted one.

Inside a `torch.distributed` process group (see `distributed`) every worker runs `run_trial`:
each trains and attacks on its own shard of the global batch, evaluation counts are summed over
all workers, and rank 0 alone logs and writes checkpoints and metrics.json.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from tuner.core import distributed
from tuner.core.config import TrialConfig
from tuner.core.data import Dataset, Split, batches, load_dataset
from tuner.core.device import (autocast, check_precision, device_memory, memory_format, place_data, place_model,
                               resolve_device)
from tuner.errors import ConfigError
from tuner.files import write_atomically, write_text_atomically
from tuner.core.metrics import Evaluation, evaluation_counts
from tuner.core.objectives import AttackSettings, get_objective

CHECKPOINT_DIR = "checkpoint"
LAST = "last.pt"  # everything needed to resume
BEST = "best.pt"  # the model state of the selected epoch
METRICS = "metrics.json"
PROGRESS_SECONDS = 60.0  # a long epoch says where it is at most this often


@dataclass(frozen=True)
class EpochReport:
    """What a trial tells its caller after each epoch, once that epoch's checkpoint is on disk."""

    record: dict[str, float]  # this epoch's metrics
    history: list[dict[str, float]]  # every epoch so far, this one included
    checkpoint_dir: Path | None  # None on workers other than rank 0, which write no checkpoint
    summary: dict[str, Any] | None  # the content of metrics.json, after the last epoch only


EpochCallback = Callable[[EpochReport], None]


@dataclass
class Prepared:
    """A trial's data and model, built (and so validated) before anything is written."""

    config: TrialConfig
    data: Dataset
    model: nn.Module
    device: torch.device
    workers: distributed.Workers


def prepare(config: TrialConfig) -> Prepared:
    """Load the data and build the model, placed for the device (see `device`); raises ConfigError on bad input, writes nothing."""
    get_objective(config.method)
    workers = distributed.current()
    if config.batch_size % workers.world_size:
        raise ConfigError(f"batch size {config.batch_size} does not split over {workers.world_size} workers: "
                          f"pass a --batch-size divisible by --workers-per-trial")
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    check_precision(config.eval_precision, device, setting="eval_precision")
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                        val_fraction=config.val_fraction, split_seed=config.split_seed)
    check_fits(config, data, device)
    torch.manual_seed(config.seed)
    model = place_model(create_model(config, data), device, channels_last=config.channels_last, compile=config.compile)
    return Prepared(config, place_data(data, device), model, device, workers)


def create_model(config: TrialConfig, data: Dataset) -> nn.Module:
    """The trial's model for this dataset's classes and channels, on the current default device."""
    normalize = None if config.normalize_mean is None else (config.normalize_mean, config.normalize_std)
    return models.create_model(config.model, width=config.width, num_classes=data.num_classes,
                               in_channels=data.in_channels, depth=config.depth, normalize=normalize)


def check_fits(config: TrialConfig, data: Dataset, device: torch.device) -> None:
    """ConfigError if the model's weights, gradients and momentum alone exceed the device's memory.

    Counted on the meta device (nothing allocated), so an absurd width fails in a line, not in the allocator.
    """
    with torch.device("meta"):
        parameters = sum(p.numel() for p in create_model(config, data).parameters())
    need, have = 3 * 4 * parameters, device_memory(device)
    if need > have:
        raise ConfigError(f"width {config.width} has {parameters:,} parameters: training needs at least "
                          f"{need / 2**30:,.1f} GiB for weights, gradients and momentum, more than the "
                          f"{have / 2**30:,.1f} GiB of {device}: choose smaller widths")


def train_attack(config: TrialConfig) -> AttackSettings:
    return AttackSettings(config.epsilon, config.train_step_size, config.train_steps)


def eval_attack(config: TrialConfig) -> AttackSettings:
    return AttackSettings(config.epsilon, config.eval_step_size, config.eval_steps)


def make_optimizer(model: nn.Module, config: TrialConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with the preset's momentum and weight decay, lr × gamma at the milestone fractions of the epochs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    milestones = sorted({max(1, round(m * config.epochs)) for m in config.lr_milestones})
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_gamma)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return seed * 1_000_003 + epoch + 10_007 * rank


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, prepared: Prepared, epoch: int, *,
                    log: Callable[[str], None] | None = None) -> dict[str, float]:
    """One pass over the training split (this worker's shard); returns the epoch means of the loss terms.

    `log` hears where a long epoch is, at most every PROGRESS_SECONDS (a paper-scale epoch takes minutes).
    """
    config, device, workers = prepared.config, prepared.device, prepared.workers
    started = reported = time.perf_counter()
    seen = 0
    objective = get_objective(config.method)
    attack = train_attack(config)
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))  # the same shuffle on every worker
    torch.manual_seed(epoch_seed(config.seed, epoch, workers.rank))  # attack starts of each worker's own
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in batches(prepared.data.train, config.batch_size // workers.world_size, shuffle=True,
                        generator=generator, augment=config.augment, rank=workers.rank,
                        world_size=workers.world_size, equal_shards=True, device=device,
                        memory_format=memory_format(config.channels_last)):
        with autocast(config.precision, device):
            value = objective(model, x, y, lam=config.lam, attack=attack)
        optimizer.zero_grad(set_to_none=True)
        value.loss.backward()
        optimizer.step()
        sums += torch.stack([torch.ones((), device=device), value.natural_loss, value.regularizer]).double() * len(y)
        seen += len(y) * workers.world_size
        if log and time.perf_counter() - reported >= PROGRESS_SECONDS:
            reported = time.perf_counter()
            log(f"epoch {epoch}/{config.epochs}: {seen:,} of {len(prepared.data.train):,} training examples, "
                f"{reported - started:.0f}s")
    n, natural, regularizer = distributed.all_sum(sums).tolist()
    if not math.isfinite(natural + regularizer):
        raise FloatingPointError(f"training diverged at epoch {epoch} (loss {natural + regularizer}) with "
                                 f"λ={config.lam:g}, lr={config.lr:g}: lower λ's range or the learning rate")
    return {"train_natural_loss": natural / n, "train_regularizer": regularizer / n}


def count_split(prepared: Prepared, split: Split) -> torch.Tensor:
    """Evaluation counts (`metrics.COUNTS`) of rank 0's model on `split`, in `eval_precision`, with attack
    random starts fixed by the seed.

    Each worker evaluates its shard; the counts are summed over workers, never their averages.
    """
    config, workers = prepared.config, prepared.workers
    distributed.sync_from_main(prepared.model)
    torch.manual_seed(epoch_seed(config.seed, -1, workers.rank))
    shard = batches(split, config.eval_batch_size, rank=workers.rank, world_size=workers.world_size,
                    device=prepared.device, memory_format=memory_format(config.channels_last))
    with autocast(config.eval_precision, prepared.device):
        counts = evaluation_counts(prepared.model, shard, eval_attack=eval_attack(config), probe_attack=train_attack(config))
    return distributed.all_sum(counts)


def evaluate_split(prepared: Prepared, split_name: str) -> Evaluation:
    """Metrics of rank 0's model on the whole "val" or "test" split (see `count_split`)."""
    return Evaluation.from_counts(count_split(prepared, getattr(prepared.data, split_name)))


def validation_parts(prepared: Prepared) -> tuple[Split, Split]:
    """The validation examples evaluated after every epoch (the first `val_epoch_examples`, all if None), and the rest."""
    val, n = prepared.data.val, prepared.config.val_epoch_examples
    n = len(val) if n is None else n
    return val[:n], val[n:]


def run_trial(prepared: Prepared, *, work_dir: Path, on_epoch: EpochCallback | None = None,
              log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train for `config.epochs` epochs (resuming from `work_dir`), then test the selected checkpoint.

    Writes `work_dir/checkpoint/{last,best}.pt` every epoch and `work_dir/metrics.json` at the
    end (rank 0 only); returns the content of metrics.json.
    """
    config, model, main = prepared.config, prepared.model, prepared.workers.is_main
    log = log if main else None
    trained = distributed.for_training(model, prepared.device)
    ckpt_dir = Path(work_dir) / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    optimizer, scheduler = make_optimizer(model, config)
    state = load_checkpoint(ckpt_dir / LAST)
    history: list[dict[str, float]] = []
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = state["history"]
        except (RuntimeError, KeyError, ValueError, TypeError):
            raise UnreadableCheckpoint(unreadable(ckpt_dir / LAST, f"it holds another model than {config.model} "
                                                                   f"width {config.width}")) from None
        if log and history:
            log(f"resuming after epoch {len(history)} from {ckpt_dir / LAST}")
    distributed.check_same(len(history), "the epochs already trained", prepared.device)

    epoch_val = validation_parts(prepared)[0]
    summary = None
    for epoch in range(len(history) + 1, config.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        record: dict[str, float] = {"epoch": epoch, "lr": lr}
        record.update(train_one_epoch(trained, optimizer, prepared, epoch, log=log))
        scheduler.step()
        record.update(Evaluation.from_counts(count_split(prepared, epoch_val)).as_dict("val"))
        record["epoch_seconds"] = time.perf_counter() - started
        history.append(record)
        if main:  # every worker holds rank 0's model; one copy is written
            if select_epoch(history) is record:
                atomic_save({"epoch": epoch, "model": model.state_dict()}, ckpt_dir / BEST)
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "history": history}, ckpt_dir / LAST)
        if log:
            log(format_epoch(record, config.epochs))
        if epoch == config.epochs:
            summary = finish_trial(prepared, history, work_dir=Path(work_dir))
        if on_epoch:
            on_epoch(EpochReport(record, list(history), ckpt_dir if main else None, summary))
    if summary is None:  # resumed after the last epoch was checkpointed
        summary = finish_trial(prepared, history, work_dir=Path(work_dir))
    return summary


def select_epoch(history: list[dict[str, float]]) -> dict[str, float]:
    """The epoch with the best per-epoch validation robust accuracy, the latest among ties.

    On a subset of n examples accuracies are multiples of 1/n and ties are common; the later of
    tied epochs has trained longer. (benchmarks/validation_cost.py: on 18 `quick` trials with 64
    examples per epoch, the latest among ties selected the whole split's epoch in 17, the
    earliest in 14.)
    """
    return max(history, key=lambda r: (r["val_robust_acc"], r["epoch"]))


def finish_trial(prepared: Prepared, history: list[dict[str, float]], *, work_dir: Path) -> dict[str, Any]:
    """Evaluate the selected checkpoint on the rest of the validation split and on the test split; write
    metrics.json (rank 0's, on every worker).

    Its `val_*` pool the selected epoch's per-epoch counts with those of the rest of the split:
    PGD-20 and the probe on the whole validation split, each example evaluated once.
    """
    config = prepared.config
    selected = select_epoch(history)
    if prepared.workers.is_main:
        prepared.model.load_state_dict(load_checkpoint(work_dir / CHECKPOINT_DIR / BEST)["model"])
    rest = count_split(prepared, validation_parts(prepared)[1])
    val = Evaluation.from_counts(Evaluation.from_dict(selected, "val").counts().to(rest.device) + rest)
    test = evaluate_split(prepared, "test")
    metrics: dict[str, Any] = {
        "width": config.width, "lam": config.lam, "method": config.method, "seed": config.seed,
        "model": config.model, "dataset": config.dataset,
        "best_epoch": int(selected["epoch"]), "epochs_run": len(history),
        **val.as_dict("val"),
        **test.as_dict("test"),
        "history": history,
    }
    if prepared.workers.is_main:
        write_text_atomically(work_dir / METRICS, json.dumps(metrics, indent=2))
    return metrics


def format_epoch(record: dict[str, float], epochs: int) -> str:
    return (f"epoch {int(record['epoch'])}/{epochs}  loss {record['train_natural_loss']:.3f}  "
            f"reg {record['train_regularizer']:.3f}  val[{int(record['val_examples'])}] nat {record['val_natural_acc']:.3f}  "
            f"rob {record['val_robust_acc']:.3f}  stab {record['val_stability']:.3f}  "
            f"lip {record['val_lipschitz']:.3g}  lr {record['lr']:.3g}  {record['epoch_seconds']:.1f}s")


class UnreadableCheckpoint(ConfigError):
    """A checkpoint that cannot be loaded (truncated, empty, not written by this tool) or holds another model."""


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint saved by this module, loaded with weights_only=True; None if absent.

    Never falls back to unpickling arbitrary objects: a file that weights_only refuses is unreadable.
    """
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):
        raise UnreadableCheckpoint(unreadable(path, "truncated, empty or not written by this tool")) from None


def unreadable(path: Path, why: str) -> str:
    return (f"checkpoint {path} cannot be used ({why}): delete {path.parent} to start the trial again, "
            f"or put back a good copy of {path.name}")


def atomic_save(obj: Any, path: Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))
