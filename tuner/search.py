"""`python -m tuner.search`: for each width, an Optuna study over λ run as Ray Tune trials.

    python -m tuner.search --widths 1,4,10 [--preset quick] [--trials N] [--resume] ...

CLI → plan → trials (one Tune run, one Optuna study per width) → results (Parquet, as each trial
finishes) → per-width summary.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuner import cli
from tuner.analysis.ranking import ranking_check
from tuner.errors import ConfigError
from tuner.files import write_text_atomically
from tuner.core.training import check_fits, prepare
from tuner.plan import SearchPlan, build_plan, parse_widths
from tuner.presets import DEFAULT_PRESET, PAPER_PRESET, add_trial_arguments, load_preset, trial_overrides
from tuner.outputs import tracking
from tuner.outputs.results import (EPOCHS_FILE, EVALUATION_FILE, SEARCH_FILE, STATUSES, TRIALS_FILE, EvaluationStore,
                                   ResultsStore, best_by_width, read_record)

if TYPE_CHECKING:
    from tuner.fit import FitReport
    from tuner.orchestration.resume import Reconciled


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m tuner.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", help="comma-separated widths, e.g. 1,4,10 (default: the preset's)")
    parser.add_argument("--preset", help=f"preset name or YAML path (default {DEFAULT_PRESET}, the offline demo)")
    parser.add_argument("--trials", type=int, help="λ values per width")
    parser.add_argument("--seeds", type=int, help="replicate seeds per λ (each a trial of its own; default 1)")
    parser.add_argument("--lam-range", help="LOW,HIGH of the log-uniform λ range")
    parser.add_argument("--lam-start", help="λ values to evaluate first, e.g. 6,18 (known good defaults)")
    parser.add_argument("--sampler", choices=["tpe", "gp"], help="Optuna sampler")
    parser.add_argument("--concurrency", type=int, help="at most this many trials at once")
    parser.add_argument("--workers-per-trial", type=int,
                        help="data-parallel workers per trial (Ray Train; NCCL on GPUs, gloo on CPUs)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial, split over its workers")
    parser.add_argument("--gpus-per-trial", type=float,
                        help="GPUs per trial; a fraction shares a GPU, N GPUs need --workers-per-trial N")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray, or RAY_ADDRESS)")
    parser.add_argument("--storage", help="Ray Tune/Train storage shared by all nodes: s3://BUCKET/PREFIX or a "
                        "path mounted on every node (default: OUT/NAME/ray, enough for one machine)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's "
                        "default sqlite:///mlflow.db in this directory)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where run directories go (default runs)")
    parser.add_argument("--name", help="run name (default <preset>-<date>-<time>); the run directory is OUT/NAME")
    parser.add_argument("--predict", help="widths to recommend λ for from the fitted scaling rule, e.g. 15,20")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="how often the status of running trials is printed when output is not a terminal "
                             "(default 30; a terminal shows it live)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run --name (default: the newest run in --out)")
    add_trial_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    stages = {"started": time.time()}  # Unix times of the search's stages, kept in search.json
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.resume:
        args, argv = resume_arguments(args)
    plan = make_plan(args)
    predict = [] if args.predict is None else parse_widths(args.predict, option="--predict")
    check_address(args.address)
    tracking_uri = tracking.resolve_uri(args.tracking_uri)
    tracking.check_reachable(tracking_uri)
    if starts_local_ray(args.address):
        plan.check_fits({"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()})
    stages["validated"] = time.time()
    record = {"argv": argv, "name": plan.name, "plan": plan.describe(), "tracking_uri": tracking_uri, "stages": stages}
    if args.resume:
        write_text_atomically(plan.run_dir / SEARCH_FILE, json.dumps(record, indent=2))
    else:
        create_run_dir(plan, record)

    if args.preset is None:
        print(f"no --preset: running the offline demo preset '{DEFAULT_PRESET}' (digits, small CNN, CPU-sized); "
              f"for the paper-scale protocol: python -m tuner.search --preset {PAPER_PRESET} --data-dir DIR --widths 1,4,10")
    print(plan.describe())

    if starts_local_ray(args.address):
        # Ray's own switch for a machine-local cluster (its default on macOS and Windows): every Ray
        # service binds to 127.0.0.1. Read when Ray is imported, so it is set before.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Trial workers at the driver's priority: Ray starts them at nice 15 by default, so on a laptop
        # or a shared node any other busy process starved the trials (a search slowed about 9×).
        os.environ.setdefault("RAY_worker_niceness", "0")
    from tuner.orchestration import cluster  # imports Ray: only once the input is known to be good
    from tuner.orchestration.progress import Console

    console = Console()
    reconciled = None
    if args.resume:
        from tuner.orchestration import resume

        reconciled = resume.reconcile(plan, echo=console.line)
    # MLflow's store opens (a new store creates its tables: 1.5 s) while Ray starts (3-4 s)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-open") as setup:
        tracker_opened = setup.submit(open_tracker, tracking_uri, plan, reconciled, echo=console.line)
        ray_connection = cluster.connect(args.address, tracking_uri=tracking_uri,
                                         local=starts_local_ray(args.address))
        tracker = tracker_opened.result()
    stages["ray"] = time.time()
    from tuner.orchestration.trials import TrialConfigError, run_search

    print(cluster.describe_capacity(plan))
    if ray_connection.dashboard:
        print(f"ray dashboard: {ray_connection.dashboard}")
    warn_about_cluster_storage(plan, tracking_uri, cluster.node_count())

    print(f"studies {', '.join(plan.study_name(width) for width in plan.widths)} in {plan.optuna_storage}")
    try:
        outcome = run_search(plan, tracker=tracker, console=console, progress_every=args.progress_every,
                             after_trials=functools.partial(draw_scaling_rule, plan, predict))
    except TrialConfigError:
        report_unlogged(tracker.close("FAILED"))
        raise
    stages["trials"] = time.time()
    if outcome.interrupted:
        print_summary(plan, stages, tracking_uri, state="interrupted")
        report_unlogged(tracker.close("KILLED"))
        print(f"continue it with: python -m tuner.search --resume --out {plan.run_dir.parent} --name {plan.name}")
        return cli.INTERRUPTED
    ray_closed = ray_connection.close_in_background()  # Ray's work is done: it stops while the driver finishes
    try:
        return finish(plan, record, tracker, drawn=outcome.after_trials)
    finally:
        ray_closed.join()


def finish(plan: SearchPlan, record: dict[str, Any], tracker: tracking.Tracker, *, drawn: Drawn | None) -> int:
    """After the trials: the summary, the scaling rule and report.html, the MLflow files; the search's exit status."""
    stages, tracking_uri = record["stages"], record["tracking_uri"]
    print_summary(plan, stages, tracking_uri, state="finished")
    rows = list(ResultsStore(plan.run_dir).trials.values())
    if drawn is None:  # nothing to draw: no trial completed
        errors = [row["error"] for row in rows if row.get("error")]
        print(f"error: no trial completed ({len(rows)} trial(s): " + ", ".join(
            f"{sum(r['status'] == s for r in rows)} {s}" for s in STATUSES) + ")"
            + (f"; first error: {errors[0]}" if errors else ""), file=sys.stderr)
        report_unlogged(tracker.close("FAILED"))
        return 1
    tracker.log_files([plan.run_dir / TRIALS_FILE, plan.run_dir / EPOCHS_FILE, plan.run_dir / EVALUATION_FILE])
    tracker.flush()  # every trial run exists now: the flat view lists them all
    record["mlflow"] = tracker.views()
    write_text_atomically(plan.run_dir / SEARCH_FILE, json.dumps(record, indent=2))  # the report reads it
    report = fit_scaling_rule(plan, tracker, drawn)
    tracker.log_files([report])
    print(f"report:  {report}")
    print(f"mlflow runs (nested search → width → trial): {record['mlflow']['runs_url']}")
    print(f"mlflow trials side by side (flat, parallel coordinates and scatter): {record['mlflow']['trials_url']}")
    report_unlogged(tracker.close())
    stages["finished"] = time.time()
    write_text_atomically(plan.run_dir / SEARCH_FILE, json.dumps(record, indent=2))
    return 0


def open_tracker(tracking_uri: str, plan: SearchPlan, reconciled: Reconciled | None, *,
                 echo: Callable[[str], None]) -> tracking.Tracker:
    """The search's MLflow runs; a resumed search's (`reconciled`) catch up with its results and close its orphans."""
    tracker = tracking.Tracker(tracking_uri, plan, echo=echo)
    if reconciled is not None:
        tracker.catch_up(list(reconciled.store.trials.values()), reconciled.store.epochs,
                         list(EvaluationStore(plan.run_dir).rows.values()))
        tracker.close_orphans(reconciled.keep)
    return tracker


def create_run_dir(plan: SearchPlan, record: dict[str, Any]) -> None:
    """The run directory, created with its search.json in one step (a directory renamed into place): a search
    killed at any moment leaves a run that --resume continues, or none; two searches never share one."""
    if plan.run_dir.exists():  # even empty: a directory renamed onto an empty one would replace it
        raise ConfigError(f"run directory {plan.run_dir} exists: pass --resume to continue it, or a new --name")
    try:
        plan.run_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=plan.run_dir.parent, prefix=f".{plan.run_dir.name}-"))
    except OSError as exc:
        raise ConfigError(f"cannot create a run directory in {plan.run_dir.parent} ({exc.strerror}): pass another "
                          f"--out") from None
    (staging / SEARCH_FILE).write_text(json.dumps(record, indent=2))
    try:
        staging.rename(plan.run_dir)
    except OSError:  # another search created it meanwhile
        shutil.rmtree(staging)
        raise ConfigError(f"run directory {plan.run_dir} exists: pass --resume to continue it, or a new --name") from None


def warn_about_cluster_storage(plan: SearchPlan, tracking_uri: str, nodes: int) -> None:
    """On several nodes, stores only the driver's node sees lose runs or fail trials: say so."""
    if nodes > 1 and tracking.is_local(tracking_uri):
        print(f"warning: MLflow store {tracking_uri} is local to the driver's node on a {nodes}-node cluster; run "
              f"'mlflow server' and pass --tracking-uri http://HOST:5000 so the runs outlive this node")
    if nodes > 1 and plan.storage is None:
        print(f"warning: Tune storage {plan.tune_storage} is a path on the driver's node: trials on other nodes "
              f"fail at their first checkpoint unless it is mounted there too; pass --storage s3://BUCKET/PREFIX "
              f"or a path mounted on every node")


def report_unlogged(failures: tracking.Failures) -> None:
    if failures.items:
        what = "; ".join(f"{name} ({reason})" for name, reason in list(failures.items.items())[:5])
        more = f" and {len(failures.items) - 5} more" if len(failures.items) > 5 else ""
        print(f"warning: {len(failures.items)} MLflow operation(s) could not be logged: {what}{more}; "
              f"python -m tuner.search --resume logs them from the Parquet results")


@dataclass(frozen=True)
class Drawn:
    """The scaling fit and its figures (no scaling.json yet), or why there is no fit and each width's figure."""

    fitted: FitReport | None
    not_fitted: str | None
    width_files: dict[int, dict[str, Path]]


def draw_scaling_rule(plan: SearchPlan, predict: list[int]) -> Drawn | None:
    """Fit λ*(width) and draw the figures: what needs only the trials, so the search does it while its last strong
    evaluations run. None when no trial completed. When there is nothing to fit, files left by an earlier fit of
    this run are removed (they would describe other data) and each width's trials are drawn without a curve."""
    if not any(row["status"] == "completed" for row in ResultsStore(plan.run_dir).trials.values()):
        return None
    from tuner import fit  # the estimator and SciPy: imported here, on this thread, not at the search's start

    try:
        fitted = fit.draw_fit([plan.run_dir], predict=predict)
    except ConfigError as exc:  # e.g. a single width: the search itself succeeded
        for stale in fit.output_files(plan.run_dir):
            stale.unlink(missing_ok=True)
        return Drawn(None, str(exc), fit.plot_widths([plan.run_dir], out_dir=plan.run_dir))
    return Drawn(fitted, None, fitted.width_files)


def fit_scaling_rule(plan: SearchPlan, tracker: tracking.Tracker, drawn: Drawn) -> Path:
    """The final stage: scaling.json (with the strong evaluations' ranking check), the rule printed, report.html;
    the fit's files and coefficients logged to the search's MLflow run and each width's figure to its run. Returns
    the report's path."""
    from tuner import fit

    fitted = None
    if drawn.fitted is None:
        print(f"scaling rule: not fitted ({drawn.not_fitted})")
    else:
        fitted = fit.write_scaling(drawn.fitted)
        print("\n".join(fitted.summary_lines()))
        tracker.log_files(list(fitted.files.values()))
        tracker.log_fit(a=fitted.scaling["a"], b=fitted.scaling["b"])
    for width, files in drawn.width_files.items():
        tracker.log_files(list(files.values()), width=width)
    return fit.write_report([plan.run_dir], out_dir=plan.run_dir, fitted=fitted, width_files=drawn.width_files,
                            not_fitted=drawn.not_fitted)


def make_plan(args: Any) -> SearchPlan:
    preset = load_preset(args.preset or DEFAULT_PRESET)
    search_overrides = {"widths": args.widths, "trials": args.trials, "seeds": args.seeds, "lam_range": args.lam_range,
                        "initial_lams": args.lam_start,
                        "sampler": args.sampler, "concurrency": args.concurrency,
                        "workers_per_trial": args.workers_per_trial, "cpus_per_trial": args.cpus_per_trial,
                        "gpus_per_trial": args.gpus_per_trial, "storage": args.storage}
    if args.name == "":
        raise ConfigError("--name must not be empty: pass a folder name, or leave --name out for <preset>-<date>-<time>")
    name = args.name or f"{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10_000:04d}"
    plan = build_plan(preset, name=name, out=args.out,
                      search_overrides=search_overrides, trial_overrides=trial_overrides(args))
    prepared = prepare(plan.trial)  # loads the data and builds the narrowest model: fail now, not inside a trial
    check_fits(plan.trial.replace(width=max(plan.widths)), prepared.data, prepared.device)
    return plan


def resume_arguments(args: Any) -> tuple[Any, list[str]]:
    """The arguments the run being resumed was started with (a new --address still applies)."""
    if args.name:
        run_dir = args.out / args.name
    else:
        runs = sorted((p.parent for p in args.out.glob(f"*/{SEARCH_FILE}")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ConfigError(f"nothing to resume in {args.out}: start a search without --resume, or pass --out/--name")
        run_dir = runs[-1]
    stored = read_record(run_dir)
    if stored is None:
        raise ConfigError(f"no search to resume at {run_dir}: pass the --out and --name it was started with")
    argv = [a for a in stored["argv"] if a != "--resume"] + ["--resume", "--name", stored["name"],
                                                            "--out", str(args.out)]
    if args.address:
        argv += ["--address", args.address]
    print(f"resuming {run_dir}")
    return build_parser().parse_args(argv), stored["argv"]


def run_record(run_dir: Path) -> dict[str, Any]:
    """What search.json says of a run (its arguments, name, tracking URI); ConfigError if it is not a search's."""
    record = read_record(run_dir)
    if record is None:
        raise ConfigError(f"{run_dir} is not the run directory of a search (no {SEARCH_FILE}): pass runs/<name>")
    return record


def run_plan(run_dir: Path) -> SearchPlan:
    """The plan a run directory's search was started with (as --resume rebuilds it)."""
    run_dir = Path(run_dir).resolve()
    record = run_record(run_dir)
    argv = [a for a in record["argv"] if a != "--resume"] + ["--name", record["name"], "--out", str(run_dir.parent)]
    return make_plan(build_parser().parse_args(argv))


def starts_local_ray(address: str | None) -> bool:
    """Whether the search starts a Ray for this machine rather than joining a cluster."""
    return address in (None, "local") and "RAY_ADDRESS" not in os.environ


def check_address(address: str | None) -> None:
    """Fail in one line, before anything is written, when a given Ray address does not answer."""
    if address is None or address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError):
        raise ConfigError(f"no Ray cluster answers at --address {address}: start one with 'ray start --head' "
                          f"and pass its HOST:PORT (6379 by default), or leave --address out to run locally") from None


def print_summary(plan: SearchPlan, stages: dict[str, float], tracking_uri: str, *, state: str) -> None:
    """The per-width table (PGD-20 and the strong suite side by side), the ranking check, and where things are."""
    rows = list(ResultsStore(plan.run_dir).trials.values())
    evaluations = list(EvaluationStore(plan.run_dir).rows.values())
    print(f"\nsearch {plan.name} {state} after {time.time() - stages['started']:.0f}s: "
          f"{len(rows)} of {len(plan.widths) * plan.trials_per_width} trials recorded")
    print(f"{'width':>5} {'best λ':>8} {'val rob':>8} {'val nat':>8} {'val stab':>8} "
          f"{'test rob':>8} {'test strong':>11} {'test nat':>8} {'test stab':>9}  completed/early-stopped/failed")
    for summary in best_by_width(rows, evaluations, plan.widths):
        best, counts = summary.best, "/".join(map(str, summary.counts))
        if best is None:
            print(f"{summary.width:>5} {'-':>8} {'(no completed trial)':>56}  {counts}")
            continue
        strong_text = "-" if summary.strong is None else f"{summary.strong['strong_robust_acc']:.3f}"
        print(f"{summary.width:>5} {best['lam']:>8.3g} {best['val_robust_acc']:>8.3f} {best['val_natural_acc']:>8.3f} "
              f"{best['val_stability']:>8.3f} {best['test_robust_acc']:>8.3f} {strong_text:>11} "
              f"{best['test_natural_acc']:>8.3f} {best['test_stability']:>9.3f}  {counts}")
    print(f"test rob: PGD-20 on the whole test split; test strong: suite {plan.evaluation.suite} (worst case per "
          f"example{'' if plan.evaluation.examples is None else f', first {plan.evaluation.examples} examples'})")
    for check in ranking_check(rows, evaluations, suite=plan.evaluation.suite):
        if check["changed"]:
            print(f"ranking check w{check['width']}: under {check['suite']} the best of the top {check['trials']} is "
                  f"λ={check['best_lam_strong']:.3g}, not λ={check['best_lam_pgd20']:.3g} as under PGD-20: PGD-20 "
                  f"overstates some λ (a sign of gradient masking); prefer the strong ranking")
        elif check["best_lam_strong"] != check["best_lam_pgd20"]:
            print(f"ranking check w{check['width']}: under {check['suite']} λ={check['best_lam_strong']:.3g} edges out "
                  f"λ={check['best_lam_pgd20']:.3g} (PGD-20's best of the top {check['trials']}) by "
                  f"{check['difference']:.3f}, within noise (±{check['noise_margin']:.3f}): no sign of gradient masking")
        else:
            print(f"ranking check w{check['width']}: the best of the top {check['trials']} on validation is "
                  f"λ={check['best_lam_pgd20']:.3g} under PGD-20 and under {check['suite']} alike")
    print(f"results: {plan.run_dir / TRIALS_FILE} (and epochs.parquet, evaluation.parquet)")
    print(f"optuna:  {plan.optuna_storage} (optuna-dashboard {plan.optuna_storage})")
    print(f"mlflow:  {tracking_uri}, experiment {plan.name} (mlflow ui --backend-store-uri {tracking_uri})")


if __name__ == "__main__":
    cli.run(main)
