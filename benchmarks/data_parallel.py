"""Time one trial trained by 1 worker against the same trial over 2 data-parallel workers (Ray Train, gloo).

    .venv/bin/python benchmarks/data_parallel.py [--width 4] [--epochs 5] [--out DIR]

Runs `python -m tuner.search --trials 1 --lam-start 6` twice as a user does, with
`--workers-per-trial 1` and `2` and the same 2 CPUs per trial, then reads the trial's row back:
its wall time (Tune's, from trial start to last report) and its selected validation and test
robust accuracy. On CPUs this measures the overhead of data parallelism (process group, gradient
all-reduce, Ray Train start-up), not a speed-up: that needs one GPU per worker. Prints Markdown
table rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def run(workers: int, *, width: int, epochs: int, out: Path) -> str:
    name = f"dp{workers}"
    command = [sys.executable, "-m", "tuner.search", "--widths", str(width), "--trials", "1", "--lam-start", "6",
               "--epochs", str(epochs), "--workers-per-trial", str(workers), "--cpus-per-trial", "2",
               "--out", str(out), "--name", name]
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=out, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    (row,) = pq.read_table(out / name / "trials.parquet").to_pylist()
    return (f"| {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPUs | {workers} | w{width}, {epochs} epochs | "
            f"{row['wall_seconds']:.0f} s | {seconds:.0f} s | val robust {row['val_robust_acc']:.3f}, "
            f"test robust {row['test_robust_acc']:.3f}, test natural {row['test_natural_acc']:.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="rwt-bench-dp-")))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(workers, width=args.width, epochs=args.epochs, out=out) for workers in (1, 2)]
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
