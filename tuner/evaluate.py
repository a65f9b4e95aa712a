"""`python -m tuner.evaluate`: a search's selected checkpoints under an attack suite, next to PGD-20.

    python -m tuner.evaluate RUN_DIR [--suite standard] [--trials best|top-K|all] [--split test|val]
        [--n-examples N] [--tracking-uri URI]

Evaluates the selected checkpoint (best.pt) of the chosen trials of each width, prints PGD-20 and
the suite's robust accuracy (the worst case per example) side by side with the gap, writes each
result to RUN_DIR/evaluation.parquet as it finishes, and logs it to the trial's MLflow run (the
table goes to the search run). A rerun evaluates only what is not there yet.
"""

from __future__ import annotations

from pathlib import Path

from tuner import cli
from tuner.core.suites import DEFAULT_SUITE, get_suite, list_suites
from tuner.errors import ConfigError
from tuner.orchestration.evaluation import SPLITS, Request, choose, evaluate, load_selected
from tuner.outputs import tracking
from tuner.outputs.results import EVALUATION_FILE, EvaluationStore, ResultsStore
from tuner.search import run_plan, run_record


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m tuner.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory of a search (runs/<name>)")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help=f"attack suite: {', '.join(list_suites())} "
                        f"(default {DEFAULT_SUITE})")
    parser.add_argument("--trials", default="best", help="which trials of each width: best, top-K (e.g. top-3) or all "
                        "completed ones (default best)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate (default test)")
    parser.add_argument("--n-examples", type=int, metavar="N", help="evaluate the first N examples (default: all)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the search used)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    suite = get_suite(args.suite).name
    if args.n_examples is not None and args.n_examples < 1:
        raise ConfigError(f"--n-examples must be at least 1, got {args.n_examples}: pass a positive number, or leave "
                          f"it out to evaluate the whole split")
    run_dir = args.run_dir.resolve()
    record = run_record(run_dir)
    plan = run_plan(run_dir)
    rows = list(ResultsStore(run_dir).trials.values())
    chosen = choose(rows, args.trials)
    if not chosen:
        raise ConfigError(f"no completed trial with a checkpoint in {run_dir}: evaluate a search that has finished "
                          f"trials (python -m tuner.search), or resume it first")
    requests = [Request(row, args.split, suite, args.n_examples) for row in chosen]
    store = EvaluationStore(run_dir)
    todo = [r for r in requests if not store.has(r.key(plan))]
    prepared = {r.row["trial_id"]: load_selected(plan, r.row) for r in todo}  # every checkpoint fits before anything is written
    tracking_uri = tracking.resolve_uri(args.tracking_uri or record.get("tracking_uri"))
    tracking.check_reachable(tracking_uri)

    tracker = tracking.Tracker(tracking_uri, plan)
    print(f"{cli.plural(len(requests), 'evaluation')} of {run_dir.name} on {args.split} with suite {suite} "
          f"({len(requests) - len(todo)} already in {EVALUATION_FILE})")
    print(HEADER)
    for request in requests:
        key = request.key(plan)
        if not store.has(key):
            store.record(evaluate(plan, request, prepared=prepared[request.row["trial_id"]]))
            tracker.log_evaluation(request.row, store.rows[key])
        print(table_line(store.rows[key]))
    tracker.log_files([store.path])
    failures = tracker.close(tracker.search_status_before or "FINISHED")
    for what, reason in failures.items.items():
        print(f"warning: not logged to MLflow: {what} ({reason})")
    print(f"results: {store.path}")
    return 0


HEADER = (f"{'width':>5} {'λ':>8} {'seed':>4} {'examples':>8} {'natural':>8} {'PGD-20':>8} {'strong':>8} {'gap':>6}  "
          f"broken per attack")


def table_line(evaluation: dict) -> str:
    broken = ", ".join(f"{attack} {count}" for attack, count in dict(evaluation["broken"]).items())
    gap = evaluation["pgd_robust_acc"] - evaluation["strong_robust_acc"]
    return (f"{evaluation['width']:>5} {evaluation['lam']:>8.3g} {evaluation['seed']:>4} {evaluation['examples']:>8} "
            f"{evaluation['natural_acc']:>8.3f} {evaluation['pgd_robust_acc']:>8.3f} "
            f"{evaluation['strong_robust_acc']:>8.3f} {gap:>6.3f}  {broken}")


if __name__ == "__main__":
    cli.run(main)
