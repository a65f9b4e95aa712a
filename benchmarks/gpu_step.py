"""WRN-34-10 and WRN-34-1 on a CUDA GPU: TRADES (K = 10) step and epoch time in fp32, bf16, bf16 +
channels_last (+ torch.compile), the GPU's busy share, and one checkpoint's robust accuracy
evaluated in fp32 and in bf16.

Everything runs through the trial code (`training.prepare`, `training.train_one_epoch`,
`training.count_split`) with the paper preset `cifar10-wrn34` (batch 128, ε = 8/255, K = 10 of
2/255, PGD-20 evaluation), changing only `precision`, `channels_last` and `compile`:

- step: seconds per training step (median over `--steps` steps after a warm-up that absorbs
  cudnn.benchmark's search and compilation), and the peak GPU memory;
- epoch: one `train_one_epoch` over the 45,000 training images (or its first `--epoch-steps`
  steps), data held and augmented on the GPU, as a trial runs it;
- busy: the share of `--steps` steps' wall time during which a GPU kernel or copy ran (union of
  the profiler's device intervals);
- accuracy: the model trained in the last mode (or `--checkpoint`, a trial's best.pt) evaluated
  with PGD-20 on `--eval-examples` validation images in fp32 (TF32 convolutions, PyTorch's
  default), fp32 without TF32 ("ieee") and bf16, with the same random starts.

Without `--data-dir` the images are random (CIFAR-10's shape): times are real, accuracies are
skipped. Without a CUDA GPU it says so and exits with status 2.

    python benchmarks/gpu_step.py --data-dir /data/cifar10           # the whole benchmark (estimated 20–30 min on an H100)
    python benchmarks/gpu_step.py --widths 10 --modes fp32,bf16+cl --epoch-steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from tuner.core import training
from tuner.core.data import Split, register_dataset
from tuner.core.metrics import Evaluation
from tuner.presets import PAPER_PRESET, load_preset

MODES = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False},
    "bf16+cl": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16+cl+compile": {"precision": "bf16", "channels_last": True, "compile": True},
}
WARMUP_STEPS = 5


@register_dataset("random-cifar10-shape")
def _random_images(*, data_dir: str | None, download: bool) -> tuple[Split, Split, int]:
    """50,000 + 10,000 random 3×32×32 images with random labels: CIFAR-10's cost, none of its content."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator))

    return split(50_000), split(10_000), 10


def with_train_steps(prepared: training.Prepared, steps: int) -> training.Prepared:
    """`prepared` whose training split is its first `steps` batches."""
    train = prepared.data.train[:steps * prepared.config.batch_size]
    return dataclasses.replace(prepared, data=dataclasses.replace(prepared.data, train=train))


def synchronized_seconds(run, *args: Any) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    run(*args)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def busy_share(prepared: training.Prepared, optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Share of the wall time of `steps` training steps during which the GPU ran a kernel or a copy."""
    window = with_train_steps(prepared, steps)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = synchronized_seconds(training.train_one_epoch, prepared.model, optimizer, window, 0)
    intervals = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for start, stop in intervals:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy / 1e6 / wall


def measure(config, *, steps: int, epoch_steps: int) -> tuple[dict[str, Any], training.Prepared]:
    """Step, epoch and busy measurements of one width and mode; returns them and the trained trial."""
    prepared = training.prepare(config)
    optimizer, _ = training.make_optimizer(prepared.model, config)
    torch.cuda.reset_peak_memory_stats()
    warmup = synchronized_seconds(training.train_one_epoch, prepared.model, optimizer,
                                  with_train_steps(prepared, WARMUP_STEPS), 0)
    per_step = []
    for _ in range(steps):
        per_step.append(synchronized_seconds(training.train_one_epoch, prepared.model, optimizer,
                                             with_train_steps(prepared, 1), 0))
    epoch = prepared if not epoch_steps else with_train_steps(prepared, epoch_steps)
    epoch_seconds = synchronized_seconds(training.train_one_epoch, prepared.model, optimizer, epoch, 1)
    n_steps = -(-len(epoch.data.train) // config.batch_size)
    return {"warmup_seconds": warmup, "step_seconds": statistics.median(per_step),
            "epoch_seconds": epoch_seconds, "epoch_steps": n_steps,
            "full_epoch_seconds_estimate": epoch_seconds * -(-len(prepared.data.train) // config.batch_size) / n_steps,
            "busy_share": busy_share(prepared, optimizer, steps),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}, prepared


def accuracy_by_precision(prepared: training.Prepared, examples: int) -> dict[str, dict[str, float]]:
    """PGD-20 metrics of the trial's model on the first `examples` validation images, by evaluation precision."""
    val = prepared.data.val[:examples]
    out = {}
    for name, precision, tf32 in (("fp32 (TF32 convolutions)", "fp32", "tf32"), ("fp32 ieee", "fp32", "ieee"),
                                  ("bf16", "bf16", "tf32")):
        torch.backends.cudnn.conv.fp32_precision = tf32
        evaluated = dataclasses.replace(prepared, config=prepared.config.replace(eval_precision=precision))
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = Evaluation.from_counts(training.count_split(evaluated, val))
        out[name] = {**result.as_dict("val"), "seconds": time.perf_counter() - started,
                     "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="CIFAR-10 (as for the paper preset); without it, random images")
    parser.add_argument("--widths", default="10,1")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=20, help="timed single steps (and the busy window)")
    parser.add_argument("--epoch-steps", type=int, default=0, help="time only this many steps of the epoch (0: all)")
    parser.add_argument("--checkpoint", type=Path, help="a trial's best.pt or last.pt for the accuracy comparison")
    parser.add_argument("--eval-examples", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="write the numbers to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_step.py needs a CUDA GPU and torch.cuda.is_available() is False here: run it on a machine with one",
              file=sys.stderr)
        sys.exit(2)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    preset = load_preset(PAPER_PRESET)
    data = {"data_dir": args.data_dir} if args.data_dir else {"dataset": "random-cifar10-shape"}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {PAPER_PRESET}: TRADES K=10, batch 128, "
          f"{'CIFAR-10 from ' + args.data_dir if args.data_dir else 'random images of CIFAR-10 shape'}")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": {}}
    for width in (int(w) for w in args.widths.split(",")):
        baseline = None
        for mode in modes:
            config = preset.trial_config(width=width, lam=6.0, device="cuda", **data, **MODES[mode])
            result, prepared = measure(config, steps=args.steps, epoch_steps=args.epoch_steps)
            baseline = baseline or result["full_epoch_seconds_estimate"]
            result["epoch_speedup_vs_first_mode"] = baseline / result["full_epoch_seconds_estimate"]
            report["results"][f"WRN-34-{width} {mode}"] = result
            print(f"WRN-34-{width:<3} {mode:<16} step {result['step_seconds'] * 1e3:7.1f} ms  epoch "
                  f"{result['epoch_seconds']:7.1f} s ({result['epoch_steps']} steps; whole epoch "
                  f"{result['full_epoch_seconds_estimate']:.0f} s, {result['epoch_speedup_vs_first_mode']:.2f}× "
                  f"the first mode)  GPU busy {result['busy_share']:.0%}  peak {result['peak_memory_gib']:.1f} GiB  "
                  f"warm-up {result['warmup_seconds']:.0f} s", flush=True)
        if args.data_dir:
            if args.checkpoint:
                prepared.model.load_state_dict(training.load_checkpoint(args.checkpoint)["model"])
            accuracy = accuracy_by_precision(prepared, args.eval_examples)
            report["results"][f"WRN-34-{width} accuracy by evaluation precision"] = accuracy
            for name, values in accuracy.items():
                print(f"    eval {name:<26} natural {values['val_natural_acc']:.4f}  robust {values['val_robust_acc']:.4f}  "
                      f"stability {values['val_stability']:.4f}  ({values['val_examples']} images, {values['seconds']:.0f} s, "
                      f"peak {values['peak_memory_gib']:.1f} GiB at eval batch {prepared.config.eval_batch_size})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
