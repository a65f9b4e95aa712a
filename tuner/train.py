"""`python -m tuner.train`: one adversarial training trial, the unit every search runs.

    python -m tuner.train --preset quick --width 4 --lam 6 [--epochs N] [--seed S] [--out DIR]

Prints one line per epoch, checkpoints every epoch (an interrupted run given the same --out
resumes), and writes DIR/metrics.json with the selected epoch's validation metrics and the
test metrics of that checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from tuner import cli
from tuner.errors import ConfigError
from tuner.core.training import prepare, run_trial
from tuner.presets import DEFAULT_PRESET, add_trial_arguments, load_preset, trial_overrides


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m tuner.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name or YAML path (default {DEFAULT_PRESET})")
    parser.add_argument("--width", type=int, required=True, help="widening factor of the model")
    parser.add_argument("--lam", type=float, required=True, help="robust-regularization weight λ (TRADES' beta)")
    parser.add_argument("--out", type=Path, help="output directory (default runs/train/<preset>-w<width>-lam<lam>-s<seed>)")
    add_trial_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = load_preset(args.preset)
    config = preset.trial_config(width=args.width, lam=args.lam, **trial_overrides(args))
    prepared = prepare(config)  # validates data and model before anything is written
    out = args.out or Path("runs/train") / f"{preset.name}-w{config.width}-lam{config.lam:g}-s{config.seed}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a directory (an existing one resumes its trial)")
    print(f"trial: {preset.name}, {config.model} width {config.width}, {config.method} λ={config.lam:g}, "
          f"seed {config.seed}, {config.epochs} epochs on {prepared.device} → {out}")
    metrics = run_trial(prepared, work_dir=out)
    print(f"selected epoch {metrics['best_epoch']} on validation: robust {metrics['val_robust_acc']:.3f}, "
          f"natural {metrics['val_natural_acc']:.3f}; test: robust {metrics['test_robust_acc']:.3f}, "
          f"natural {metrics['test_natural_acc']:.3f}, stability {metrics['test_stability']:.3f}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    cli.run(main)
