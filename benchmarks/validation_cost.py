"""What per-epoch validation costs, and whether evaluating a fixed subset every epoch selects the same epochs.

For every trial of a set (widths × λ × seeds of a preset) this runs the real trial (`run_trial`
with the preset's `val_epoch_examples`), timing its parts, and after every epoch also evaluates
that epoch's model (from `last.pt`) on the whole validation split, as every epoch did before,
and on first-n subsets of other sizes. It reports:

- the time shares of a trial: training, per-epoch validation, the selected epoch's completion on
  the rest of the validation split, test. "Before" replaces the per-epoch subset and the
  completion by the whole-split evaluation of every epoch, timed in the same run (the same code,
  `count_split`, on the whole split; that is what `val_epoch_examples: null` does);
- for each subset size, how often the selected epoch is the one PGD-20 on the whole split
  selects, and where not, the whole-split robust accuracy given up, against the seed noise (the
  standard deviation over seeds of the selected whole-split robust accuracy, pooled over the
  (width, λ) groups).

    python benchmarks/validation_cost.py --preset quick
    python benchmarks/validation_cost.py --preset cifar10-small --data-dir ../shared/data/cifar10-subset \\
        --widths 1 --lams 2,8 --seeds 0,1

Times are this process's CPU time by default (one torch thread, as a search's 1-CPU trial: the
computation's own time, which other busy processes barely change); `--clock wall` for elapsed time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # noqa: F401  (imported on the first SGD step otherwise: a one-time cost, not a trial's)

from tuner.core import training
from tuner.core.metrics import Evaluation
from tuner.presets import load_preset

PARTS = ("train", "epoch_val", "rest_val", "test")
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


@contextlib.contextmanager
def timed_parts(prepared: training.Prepared, seconds: dict[str, float], clock: Callable[[], float]) -> Iterator[None]:
    """Add the seconds run_trial spends training and evaluating each part of the data to `seconds`."""
    real_train, real_count = training.train_one_epoch, training.count_split
    val, test = prepared.data.val, prepared.data.test

    def part(split) -> str:
        if split.images.data_ptr() == test.images.data_ptr():
            return "test"
        is_epoch = split.images.data_ptr() == val.images.data_ptr() and len(split) == len(training.validation_parts(prepared)[0])
        return "epoch_val" if is_epoch else "rest_val"

    def train(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return real_train(*args, **kwargs)
        finally:
            seconds["train"] += clock() - started

    def count(p: training.Prepared, split) -> torch.Tensor:
        started = clock()
        try:
            return real_count(p, split)
        finally:
            seconds[part(split)] += clock() - started

    training.train_one_epoch, training.count_split = train, count
    try:
        yield
    finally:
        training.train_one_epoch, training.count_split = real_train, real_count


def run(config, subset_sizes: list[int], clock: Callable[[], float]) -> dict[str, Any]:
    """One trial: its part times, history, summary, and every epoch's robust accuracy on the whole split and on subsets."""
    prepared = training.prepare(config)
    real_count = training.count_split
    seconds: dict[str, float] = defaultdict(float)
    reference: list[dict[str, Any]] = []

    def on_epoch(report: training.EpochReport) -> None:
        started = clock()
        epoch_model = copy.deepcopy(prepared.model)  # at the last epoch, prepared.model holds best.pt by now
        epoch_model.load_state_dict(training.load_checkpoint(report.checkpoint_dir / training.LAST)["model"])
        evaluated = dataclasses.replace(prepared, model=epoch_model)
        val = prepared.data.val
        whole_started = clock()
        whole = Evaluation.from_counts(real_count(evaluated, val))
        whole_seconds = clock() - whole_started
        subsets = {n: Evaluation.from_counts(real_count(evaluated, val[:n])).robust_acc for n in subset_sizes}
        reference.append({"epoch": report.record["epoch"], "whole_robust": whole.robust_acc, "whole_seconds": whole_seconds,
                          "subset_robust": subsets})
        seconds["callback"] += clock() - started

    with tempfile.TemporaryDirectory() as work, timed_parts(prepared, seconds, clock):
        started = clock()
        summary = training.run_trial(prepared, work_dir=Path(work), on_epoch=on_epoch, log=None)
        total = clock() - started - seconds.pop("callback")
    return {"width": config.width, "lam": config.lam, "seed": config.seed, "seconds_total": total, "seconds": dict(seconds),
            "full_val_seconds": sum(r["whole_seconds"] for r in reference), "best_epoch": summary["best_epoch"],
            "val_robust_acc": summary["val_robust_acc"], "reference": reference,
            "val_examples": len(prepared.data.val)}


def selected(values: list[float]) -> int:
    """The epoch `training.select_epoch` selects from these per-epoch robust accuracies."""
    return int(training.select_epoch([{"epoch": i + 1, "val_robust_acc": v} for i, v in enumerate(values)])["epoch"])


def shares(trials: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Summed part seconds and shares of the trials' time, after (as run) and before (whole split every epoch)."""
    parts = {part: sum(t["seconds"].get(part, 0.0) for t in trials) for part in PARTS}
    after = sum(t["seconds_total"] for t in trials)
    other = after - sum(parts.values())
    full = sum(t["full_val_seconds"] for t in trials)
    before = after - parts["epoch_val"] - parts["rest_val"] + full
    return {
        "after": {"trial_seconds": after, **{f"{p}_share": parts[p] / after for p in PARTS}, "other_share": other / after},
        "before": {"trial_seconds": before, "train_share": parts["train"] / before, "epoch_val_share": full / before,
                   "rest_val_share": 0.0, "test_share": parts["test"] / before, "other_share": other / before},
    }


def agreement(trials: list[dict[str, Any]], subset_sizes: list[int]) -> dict[int, dict[str, Any]]:
    """Per subset size: selected epochs equal to the whole-split selection, and the whole-split robust accuracy lost."""
    out = {}
    for n in subset_sizes:
        same, lost = 0, []
        for t in trials:
            whole = [r["whole_robust"] for r in t["reference"]]
            chosen = selected([r["subset_robust"][n] for r in t["reference"]])
            same += chosen == selected(whole)
            lost.append(max(whole) - whole[chosen - 1])
        out[n] = {"same_epoch": same, "trials": len(lost), "mean_lost": statistics.fmean(lost), "max_lost": max(lost),
                  "lost_where_different": sorted((x for x in lost if x > 0), reverse=True)}
    return out


def seed_noise(trials: list[dict[str, Any]]) -> float:
    """Pooled standard deviation over seeds of the whole-split robust accuracy of the whole-split selected epoch."""
    groups: dict[tuple[int, float], list[float]] = defaultdict(list)
    for t in trials:
        groups[(t["width"], t["lam"])].append(max(r["whole_robust"] for r in t["reference"]))
    variances = [statistics.variance(v) for v in groups.values() if len(v) > 1]
    return math.sqrt(statistics.fmean(variances)) if variances else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--data-dir")
    parser.add_argument("--widths", default="1,4")
    parser.add_argument("--lams", default="1,4,16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--subsets", help="first-n subset sizes to compare (default: the preset's, half and twice it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a search's trial has 1 CPU by default)")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="cpu: this process's CPU time; wall: elapsed time")
    parser.add_argument("--out", type=Path, help="write every trial's numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    base = preset.trial_config(width=1, lam=1.0, device="cpu", data_dir=args.data_dir)
    n = base.val_epoch_examples
    subset_sizes = ([int(s) for s in args.subsets.split(",")] if args.subsets
                    else sorted({max(1, n // 2), n, 2 * n}))
    trials = []
    for width in (int(w) for w in args.widths.split(",")):
        for lam in (float(v) for v in args.lams.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                trial = run(base.replace(width=width, lam=lam, seed=seed), subset_sizes, CLOCKS[args.clock])
                trials.append(trial)
                whole = [round(r["whole_robust"], 3) for r in trial["reference"]]
                print(f"w{width} λ{lam:g} seed {seed}: {trial['seconds_total']:.1f} s, selected epoch {trial['best_epoch']} "
                      f"(whole split every epoch: {selected(whole)}, robust by epoch {whole})", flush=True)
    report = {"preset": args.preset, "val_epoch_examples": n, "val_examples": trials[0]["val_examples"],
              "torch_threads": torch.get_num_threads(), "clock": args.clock, "shares": shares(trials),
              "agreement": agreement(trials, subset_sizes), "seed_noise_sd": seed_noise(trials), "trials": trials}
    print(json.dumps({k: v for k, v in report.items() if k != "trials"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
