"""Seconds per 1,000 examples and robust accuracy of PGD-20 and each attack suite, on a trained checkpoint, on CPU.

    .venv/bin/python benchmarks/attack_suites.py                          # quick: digits cnn w4, λ = 6
    .venv/bin/python benchmarks/attack_suites.py --preset cifar10-small --width 1 --n-examples 200

Trains the preset's trial once into `--run-dir` (resuming from its checkpoint when it is already
there), loads the selected checkpoint (`best.pt`), then on the first `--n-examples` test
examples times PGD with the preset's evaluation settings and each suite (same examples, random
starts seeded by `--seed`), each attack only on the examples still correctly classified. Prints Markdown table rows for BENCHMARKS.md. For cifar10 the data
come from `--data-dir` (default: the shared 12,000-image subset); without it the script says so
and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuner.core.config import parse_number
from tuner.core.data import Split, batches
from tuner.core.objectives import AttackSettings
from tuner.core.suites import Suite, SuiteAttack, evaluate_suite, list_suites
from tuner.core.training import BEST, CHECKPOINT_DIR, eval_attack, load_checkpoint, prepare, run_trial
from tuner.presets import load_preset

CIFAR10_SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--lam", type=float, default=6.0)
    parser.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    parser.add_argument("--epsilon", help="attack radius, e.g. 0.2 or 8/255 (default: the preset's; PGD's step scales along)")
    parser.add_argument("--data-dir", default=str(CIFAR10_SUBSET), help="CIFAR-10 folder (cifar10 presets)")
    parser.add_argument("--n-examples", type=int, default=1000, help="first N test examples (fewer if the split is smaller)")
    parser.add_argument("--suites", default=",".join(list_suites()), help="comma-separated suite names")
    parser.add_argument("--run-dir", type=Path, default=Path(tempfile.gettempdir()) / "rwt-bench-attack-suites")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    preset = load_preset(args.preset)
    if preset.trial["dataset"] == "cifar10" and not Path(args.data_dir).is_dir():
        print(f"skipped: no CIFAR-10 at {args.data_dir}; pass --data-dir")
        return 0
    config = preset.trial_config(width=args.width, lam=args.lam, epochs=args.epochs, device="cpu",
                                 data_dir=args.data_dir if preset.trial["dataset"] == "cifar10" else None)
    prepared = prepare(config)
    run_dir = args.run_dir / f"{args.preset}-w{args.width}-lam{args.lam:g}-e{config.epochs}"
    if load_checkpoint(run_dir / CHECKPOINT_DIR / BEST) is None:
        run_trial(prepared, work_dir=run_dir)
    model = prepared.model
    model.load_state_dict(load_checkpoint(run_dir / CHECKPOINT_DIR / BEST)["model"])
    model.eval()
    pgd = eval_attack(config)
    epsilon = config.epsilon if args.epsilon is None else parse_number(args.epsilon, name="--epsilon")
    pgd = AttackSettings(epsilon, pgd.step_size * epsilon / config.epsilon, pgd.steps)
    suites = [*args.suites.split(","), Suite(f"PGD-{pgd.steps} (step {pgd.step_size:.3g})",
                                              (SuiteAttack("pgd", {"steps": pgd.steps, "step_size": pgd.step_size}),), "")]
    test = prepared.data.test
    n = min(args.n_examples, len(test))
    split = Split(test.images[:n], test.labels[:n])
    where = (f"{time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPUs, {torch.get_num_threads()} threads | "
             f"{args.preset} {config.model} w{args.width}, λ {args.lam:g}, {config.epochs} epochs | ε {epsilon:.4g} | {n}")
    rows = []
    for suite in suites:
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        result = evaluate_suite(model, batches(split, config.eval_batch_size), suite=suite, epsilon=epsilon)
        seconds = time.perf_counter() - started
        broken = ", ".join(f"{name} {count}" for name, count in result.broken.items())
        rows.append(f"| {where} | {result.suite} | {broken} | {result.robust_acc:.3f} | {1000 * seconds / n:.1f} |")
        print(rows[-1], flush=True)
    print(f"\nnatural accuracy {result.natural_acc:.3f} on these {n} examples\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
