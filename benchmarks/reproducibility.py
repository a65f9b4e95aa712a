"""Does the demo give the same answer with another seed? b and its interval for each of five seeds.

    .venv/bin/python benchmarks/reproducibility.py [--seeds 0,1,2,3,4] [--out DIR] [-- SEARCH ARGS ...]

Runs the default demo, `python -m tuner.search --widths 1,4,10 --seed S` (preset `quick`), once per
seed as a user does (a fresh process each, in a temporary directory unless --out), reads each run's
scaling.json and prints a Markdown table: per seed the fitted b with its 95% interval, the
conclusion, and the search's wall time; then the median of the b and whether every interval
covers it (the target). Arguments after `--` go to every search (e.g. `-- --trials 5 --epochs 2`
for a quick check of the script itself). Exit status 0 when the target is met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = ["--widths", "1,4,10"]


def run_search(seed: int, out: Path, extra: list[str]) -> tuple[dict | None, float]:
    """One demo search; its scaling.json (None if the fit did not run) and its wall time."""
    name = f"seed{seed}"
    command = [sys.executable, "-m", "tuner.search", *DEMO, "--seed", str(seed), "--out", str(out), "--name", name,
               *extra]
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=out)  # MLflow's default store lands there too
    seconds = time.monotonic() - started
    path = out / name / "scaling.json"
    return (json.loads(path.read_text()) if path.is_file() else None), seconds


def text(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.2f}"


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated search seeds (default 0,1,2,3,4)")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a new temporary directory)")
    args = parser.parse_args(own)
    out = (args.out or Path(tempfile.mkdtemp(prefix="rwt-repro-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {seed: run_search(seed, out, extra) for seed in seeds}
    fitted = {seed: scaling for seed, (scaling, _) in results.items() if scaling is not None}
    median = statistics.median(s["b"] for s in fitted.values()) if fitted else None
    print(f"\nreproducibility of `python -m tuner.search {' '.join(DEMO + extra)}`, {time.strftime('%Y-%m-%d')}, "
          f"runs in {out}\n")
    print("| seed | b | 95% interval | covers the median | conclusion | wall time |\n|---|---|---|---|---|---|")
    covered = []
    for seed, (scaling, seconds) in results.items():
        if scaling is None:
            print(f"| {seed} | not fitted | | | | {seconds:.0f} s |")
            covered.append(False)
            continue
        low, high = scaling["b_ci"]
        covers = (low is None or low <= median) and (high is None or median <= high)
        covered.append(covers)
        print(f"| {seed} | {scaling['b']:.2f} | [{text(low)}, {text(high)}] | {'yes' if covers else 'NO'} | "
              f"{scaling['conclusion']} | {seconds:.0f} s |")
    verdict = "meets" if covered and all(covered) else "MISSES"
    print(f"\nmedian b over {len(fitted)} fitted seeds: {text(median)}; every interval covers it: "
          f"{'yes' if all(covered) else 'no'} ({verdict} the target)")
    return 0 if verdict == "meets" else 1


if __name__ == "__main__":
    sys.exit(main())
