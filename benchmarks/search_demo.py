"""Time the demo search (`python -m tuner.search --widths 1,4,10`, default preset) end to end.

    .venv/bin/python benchmarks/search_demo.py [--out DIR]

Runs the command as a user does (a fresh process that starts its own local Ray), then reads the
results back: wall time, and per width the best trial's validation robust accuracy against chance
(0.1 for the ten digit classes). Target: under 3 minutes on 2 CPU cores, every width's best trial
clearly above chance. Prints a Markdown table row for BENCHMARKS.md.
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

CHANCE = 0.1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="rwt-bench-")))
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tuner.search", "--widths", "1,4,10", "--out", str(args.out), "--name", "bench"]
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=args.out)  # MLflow's default store lands there too
    seconds = time.monotonic() - started
    rows = pq.read_table(args.out / "bench" / "trials.parquet").to_pylist()
    best = {w: max((r["val_robust_acc"] for r in rows if r["width"] == w and r["val_robust_acc"] is not None),
                   default=float("nan")) for w in (1, 4, 10)}
    ok = seconds < 180 and all(v > 3 * CHANCE for v in best.values())
    print(f"\n| {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPUs | {seconds:.0f} s | "
          + " / ".join(f"w{w} {v:.3f}" for w, v in best.items())
          + f" | {len(rows)} trials | {'meets' if ok else 'MISSES'} target |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
