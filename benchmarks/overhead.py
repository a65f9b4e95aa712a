"""How much of a search's wall time is not spent in its trials, stage by stage, in one run.

    .venv/bin/python benchmarks/overhead.py [--out DIR] [-- SEARCH ARGS ...]

Runs `python -m tuner.search` as a user does (default: the demo, `--widths 1,4,10`) in a fresh
process, then reads back the stage times the search records in search.json and each trial's
start, finish and compute time from trials.parquet. Trial compute is Tune's time inside each
trial (data, model, epochs, test), plus the strong evaluations' own seconds (evaluation.parquet);
divided by the concurrency it is the wall time a search with no orchestration at all would take.
Overhead = 1 − (compute / concurrency) / wall. Prints each
stage and a Markdown row for BENCHMARKS.md. Target (issue 14): overhead at most 15% of the wall
time of the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="rwt-overhead-")))
    parser.add_argument("search_args", nargs="*", default=["--widths", "1,4,10"])
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tuner.search", *args.search_args, "--out", str(out), "--name", "overhead"]
    launched = time.time()
    subprocess.run(command, check=True, cwd=out, stdout=subprocess.DEVNULL)
    ended = time.time()
    run_dir = out / "overhead"
    stages = json.loads((run_dir / "search.json").read_text())["stages"]
    trials = [{**t, "started_at": t["started_at"].timestamp(), "finished_at": t["finished_at"].timestamp()}
              for t in pq.read_table(run_dir / "trials.parquet").to_pylist()]
    concurrency = max_overlap(trials)
    compute = sum(t["wall_seconds"] for t in trials)
    first_start = min(t["started_at"] for t in trials)
    last_finish = max(t["finished_at"] for t in trials)
    wall = ended - launched
    marks = [("python start, imports, input checks", launched, stages["started"]),
             ("validation (data, models, plan)", stages["started"], stages["validated"]),
             ("MLflow and Ray start", stages["validated"], stages["ray"]),
             ("until the first trial starts", stages["ray"], first_start),
             ("trials (first start to last finish)", first_start, last_finish),
             ("Tune ends the run", last_finish, stages["trials"]),
             ("summary, fit, plots, MLflow", stages["trials"], stages["finished"]),
             ("process exit (Ray shutdown)", stages["finished"], ended)]
    for label, start, stop in marks:
        print(f"{label:<40} {stop - start:7.1f} s")
    evaluations = pq.read_table(run_dir / "evaluation.parquet").to_pylist() if (run_dir / "evaluation.parquet").exists() else []
    evaluation = sum(e["seconds"] for e in evaluations) / concurrency  # the strong suite: work asked for, not overhead
    ideal = compute / concurrency + evaluation
    overhead = 1 - ideal / wall
    print(f"{'wall':<40} {wall:7.1f} s")
    print(f"{'trial compute / concurrency':<40} {compute / concurrency:7.1f} s  ({len(trials)} trials, {compute:.0f} s "
          f"at most {concurrency} at once)")
    print(f"{'strong evaluation / concurrency':<40} {evaluation:7.1f} s  ({len(evaluations)} evaluations)")
    print(f"{'overhead':<40} {overhead:7.1%}")
    print(f"\n| {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPUs | `{' '.join(args.search_args)}` | {len(trials)} | "
          f"{wall:.0f} s | {compute / concurrency:.0f} s | {evaluation:.0f} s | {overhead:.1%} | "
          + " / ".join(f"{stop - start:.1f}" for _, start, stop in marks) + " |")
    return 0


def max_overlap(trials: list[dict]) -> int:
    """The most trials that ran at one instant."""
    events = sorted([(t["started_at"], 1) for t in trials] + [(t["finished_at"], -1) for t in trials])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


if __name__ == "__main__":
    sys.exit(main())
