"""Calibrate the scaling fit: simulated searches from a known surface, through the real budget logic and estimator.

    .venv/bin/python benchmarks/fit_calibration.py [--searches 200] [--budgets quick cifar10-wrn34 PRESET:k=v,...]
        [--scenarios quadratic null plateau] [--processes 2]

Each simulated search spends a real preset's budget exactly as a search does: its plan
(`tuner.plan.build_plan`), `Budget.of(plan)`, the `Proposer` with in-memory Optuna studies, ASHA's
`Rungs` per width, and the preset's concurrency on a stated machine (trials start as resources
free up, epochs take the time their width takes). Each trial's validation robust accuracy is
drawn epoch by epoch from a known surface with a learning curve and seed noise; the trial
records the best epoch so far, as a real one does. The estimator is `tuner.analysis` itself.

Reported over N searches: coverage of b's 95% interval (an unbounded end covers), its median
width (unbounded intervals counted as wider than any bounded one), the share unbounded,
sd (and 1.4826·MAD) and median bias of b, the median |log λ̂*(w) − log λ*(w)| per width (each
width's own peak) and the coverage of its interval, and the compute a search spends (trial-epochs,
and for the demo preset the estimated wall time on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from tuner.analysis.surface import LEVEL, Interval, fit_surface
from tuner.analysis.trials import Trials
from tuner.orchestration.design import Budget, Proposal, Proposer
from tuner.plan import SearchPlan, build_plan
from tuner.presets import load_preset

NOISE_SD = 0.02  # seed-to-seed sd of a trial's validation robust accuracy (REFERENCE.md §8: 0.013-0.021)
CURVATURE = 0.01  # drop of robust accuracy per (ln λ)² from the peak (REFERENCE.md §8: a broad plateau)
DEMO_OVERHEAD = 1.15  # fixed overhead on top of the trials' epochs (Ray start, evaluation, bookkeeping)
DEMO_LIMIT_S = 180.0


# --------------------------------------------------------------------------- the known truth


@dataclasses.dataclass(frozen=True)
class Truth:
    """Validation robust accuracy of a trial at each epoch: surface − learning-curve deficit + seed noise.

    surface(x, w) = level(w) − c·(x − x*(w))², with c = `curvature` below the peak and
    c·`asymmetry` above it (asymmetry < 1: a rise then a plateau), x*(w) = log a + b·log w.
    At epoch t of E the mean lies `deficit`·w^−0.4·d(s)·(1 + `lam_speed`·(x − 1.5)) below the
    surface, s = (t − 1)/(E − 1), d(s) = (e^(−s/τ) − e^(−1/τ))/(1 − e^(−1/τ)), τ = 0.6: d falls
    from 1 at the first epoch to 0 at the last; lam_speed ≠ 0: λ changes how fast a trial learns.
    Measured on `quick` (widths 1, 4, 10; λ 0.5, 3, 20; 2 seeds; 5 epochs): robust accuracy 0.38
    (w1), 0.19 (w4), 0.16 (w10) below its last epoch at epoch 1, d(s) ≈ 1, .5, .3, .13, 0, and a
    smaller deficit at λ 20 than at λ 3 (lam_speed ≈ −0.15). Noise: a persistent per-trial part and
    a per-epoch part, each noise_sd/√2.
    """

    name: str
    a: float = 3.0
    b: float = 0.5
    curvature: float = CURVATURE
    asymmetry: float = 1.0
    width_curvature: float = 0.0  # curvature ∝ w^width_curvature
    deficit: float = 0.38
    lam_speed: float = 0.0
    noise_sd: float = NOISE_SD

    def log_lam_star(self, width: float) -> float:
        return math.log(self.a) + self.b * math.log(width)

    def surface(self, x: np.ndarray, width: float) -> np.ndarray:
        d = x - self.log_lam_star(width)
        c = self.curvature * width ** self.width_curvature * np.where(d > 0, self.asymmetry, 1.0)
        return 0.70 + 0.04 * math.log(width) - c * d * d

    def mean(self, x: np.ndarray, width: float, epoch: np.ndarray | int, epochs: int) -> np.ndarray:
        tau = 0.6
        s = (np.asarray(epoch, float) - 1) / max(epochs - 1, 1)
        d = (np.exp(-s / tau) - math.exp(-1 / tau)) / (1 - math.exp(-1 / tau))
        speed = np.maximum(1 + self.lam_speed * (x - 1.5), 0.2)
        return self.surface(x, width) - self.deficit * width ** -0.4 * d * speed

    def noise(self, rng: np.random.Generator, epochs: int) -> np.ndarray:
        part = self.noise_sd / math.sqrt(2)
        return part * rng.standard_normal() + part * rng.standard_normal(epochs)

    def effective_log_lam_star(self, width: float, epochs: int, x_range: tuple[float, float]) -> float:
        """argmax over log λ of E[the best epoch's value], by simulation with common random numbers."""
        rng = np.random.default_rng(0)
        xs = np.linspace(*x_range, 801)
        noise = self.noise_sd / math.sqrt(2) * rng.standard_normal((4000, epochs))
        curves = self.mean(xs[:, None], width, np.arange(1, epochs + 1)[None, :], epochs)  # (x, epoch)
        expected = np.array([np.max(c[None, :] + noise, axis=1).mean() for c in curves])
        return float(xs[int(np.argmax(expected))])


SCENARIOS = {
    "quadratic": Truth("quadratic"),
    "null": Truth("null", a=5.0, b=0.0),
    "plateau": Truth("plateau", asymmetry=0.25, width_curvature=-0.3, lam_speed=-0.15),
    # the quadratic truth with the seed noise of a 5,000-image validation split (CIFAR-10, binomial sd ≈ 0.007)
    "quadratic-cifar-noise": Truth("quadratic, sd 0.007", noise_sd=0.007),
}


# --------------------------------------------------------------------------- the budgets


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where a simulated search runs: resource totals and each width's epoch time (seconds, or relative)."""

    resources: dict[str, float]
    epoch_time: tuple[float, float, float]  # an epoch of width w takes c0 + c1·w + c2·w²
    cpu_seconds: bool  # epoch times are CPU seconds of a 1-CPU trial (the demo): report a wall time

    def epoch_seconds(self, width: int) -> float:
        c0, c1, c2 = self.epoch_time
        return c0 + c1 * width + c2 * width * width


QUICK_MACHINE = Machine({"CPU": 2}, (0.31, 0.196, 0.0), True)  # ~4 CPU-s at w1, ~15 at w8 for 8 epochs (issue 10)
CLUSTER = Machine({"CPU": 104, "GPU": 8}, (0.05, 0.0, 0.01), False)  # WRN-34-k on a GPU: ∝ k², relative units


@dataclasses.dataclass(frozen=True)
class Setting:
    """A budget to calibrate: a preset with search overrides, and the machine it runs on."""

    label: str
    preset: str
    overrides: dict[str, object]
    machine: Machine

    def plan(self) -> SearchPlan:
        return build_plan(load_preset(self.preset), name="calibration", out=Path("/nonexistent"),
                          search_overrides=dict(self.overrides), trial_overrides={})


SETTINGS = {
    "quick": Setting("quick (preset)", "quick", {}, QUICK_MACHINE),
    "cifar10-wrn34": Setting("cifar10-wrn34 (preset)", "cifar10-wrn34", {}, CLUSTER),
}


def parse_setting(text: str) -> Setting:
    """A named setting, or PRESET:key=value,key=value (e.g. quick:trials=8,seeds=2,startup=4,grace_period=5)."""
    if text in SETTINGS:
        return SETTINGS[text]
    preset, _, rest = text.partition(":")
    overrides = {k: int(v) for k, v in (item.split("=") for item in rest.split(",") if item)}
    return Setting(text, preset, overrides, SETTINGS[preset].machine)


# --------------------------------------------------------------------------- one simulated search


@dataclasses.dataclass
class Running:
    proposal: Proposal
    values: np.ndarray  # the trial's value at every epoch, drawn when it starts
    epoch: int
    next_at: float
    resources: dict[str, float]


def simulate_search(setting: Setting, truth: Truth, seed: int) -> tuple[Trials, dict[str, float]]:
    """One search of `setting`'s budget on `truth`; returns its trials and what it cost."""
    plan = setting.plan()
    budget = dataclasses.replace(Budget.of(plan), seed=seed)
    epochs = budget.epochs
    rng = np.random.default_rng(seed + 7_000_003)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {w: optuna.create_study(direction="maximize", sampler=budget.make_sampler(w)) for w in budget.widths}
    proposer = Proposer(budget, studies)
    rungs = {w: budget.rungs() for w in budget.widths}
    free = dict(setting.machine.resources)
    running: list[Running] = []
    rows: list[dict[str, object]] = []
    now, epoch_total, cpu_total = 0.0, 0, 0.0

    def need(width: int) -> dict[str, float]:
        r = plan.resources[width]
        return {"CPU": r.cpus, "GPU": r.gpus}

    def start_trials() -> None:
        while True:
            counts: dict[int, int] = {}
            for r in running:
                counts[r.proposal.width] = counts.get(r.proposal.width, 0) + 1
            fits = {w: all(free.get(k, 0) + 1e-9 >= v for k, v in need(w).items() if v > 0) for w in budget.widths}
            cap_total = plan.concurrency is None or len(running) < plan.concurrency
            caps = {w: counts.get(w, 0) + int(fits[w] and cap_total) for w in budget.widths}
            width = proposer.next_width(counts, caps)
            if width is None:
                return
            proposal = proposer.ask(width)
            values = truth.mean(np.full(epochs, math.log(proposal.lam)), width, np.arange(1, epochs + 1), epochs) + truth.noise(rng, epochs)
            for k, v in need(width).items():
                free[k] = free.get(k, 0) - v
            running.append(Running(proposal, values, 0, now + setting.machine.epoch_seconds(width), need(width)))

    start_trials()
    while running:
        trial = min(running, key=lambda r: r.next_at)
        now = trial.next_at
        trial.epoch += 1
        epoch_total += 1
        cpu_total += setting.machine.epoch_seconds(trial.proposal.width)
        t = trial.epoch
        best = float(trial.values[:t].max())
        width = trial.proposal.width
        proposer.report(trial.proposal, t, best)
        stop = rungs[width].should_stop(f"{width}-{trial.proposal.number}", t, float(trial.values[t - 1]))
        if stop or t == epochs:
            status = "completed" if t == epochs else "early_stopped"
            proposer.tell(trial.proposal, TrialState.COMPLETE if t == epochs else TrialState.PRUNED, best)
            rows.append({"width": width, "lam": trial.proposal.lam, "status": status, "epochs_run": t,
                         "val_robust_acc": best, "val_natural_acc": 0.0, "val_stability": 0.0,
                         "seed": trial.proposal.seed, "replicate": trial.proposal.replicate, "method": "trades"})
            running.remove(trial)
            for k, v in trial.resources.items():
                free[k] = free.get(k, 0) + v
            start_trials()
        else:
            trial.next_at = now + setting.machine.epoch_seconds(width)
    cost = {"trial_epochs": epoch_total, "cpu_seconds": cpu_total if setting.machine.cpu_seconds else math.nan}
    return Trials.from_rows(rows), cost


# --------------------------------------------------------------------------- calibration


@dataclasses.dataclass(frozen=True)
class Outcome:
    b: float | None
    b_low: float | None
    b_high: float | None
    log_lam_errors: tuple[float | None, ...]  # per width: log λ̂* − log λ*
    lam_covered: tuple[bool | None, ...]
    trial_epochs: int
    cpu_seconds: float


def true_optima(setting: Setting, truth: Truth) -> list[float]:
    """The effective log λ*(w) of each of the setting's widths."""
    plan = setting.plan()
    x_range = (math.log(plan.lam_low) - 2, math.log(plan.lam_high) + 2)
    return [truth.effective_log_lam_star(w, plan.trial.epochs, x_range) for w in plan.widths]


def run_one(job: tuple[Setting, Truth, int, list[float]]) -> Outcome:
    setting, truth, seed, true = job
    trials, cost = simulate_search(setting, truth, seed)
    fit = fit_surface(trials, setting.plan().widths, forms=("power_law",))
    interval = fit.b_interval()
    errors, covered = [], []
    for result, x_true in zip(fit.per_width, true):
        if result.lam_star is None:
            errors.append(None)
            covered.append(None)
            continue
        errors.append(math.log(result.lam_star) - x_true)
        covered.append(result.lam_star_ci.map(math.log).covers(x_true))
    return Outcome(fit.b, interval.low, interval.high, tuple(errors), tuple(covered), cost["trial_epochs"],
                   cost["cpu_seconds"])


def summarize(setting: Setting, truth: Truth, true: list[float], outcomes: Sequence[Outcome]) -> dict[str, object]:
    """Coverage, width and spread of b (true b: the slope of the effective log λ* on log w); per-width λ*; cost."""
    b0 = float(np.polyfit(np.log(setting.plan().widths), true, 1)[0])
    covered = [Interval(o.b_low, o.b_high).covers(b0) for o in outcomes]
    widths = [math.inf if o.b_low is None or o.b_high is None else o.b_high - o.b_low for o in outcomes]
    estimates = np.array([o.b for o in outcomes], float)
    n_widths = len(outcomes[0].log_lam_errors)
    lam_error = [np.nanmedian([abs(o.log_lam_errors[k]) if o.log_lam_errors[k] is not None else np.nan
                               for o in outcomes]) for k in range(n_widths)]
    lam_cover = [np.mean([c for o in outcomes if (c := o.lam_covered[k]) is not None] or [np.nan])
                 for k in range(n_widths)]
    cpu = float(np.mean([o.cpu_seconds for o in outcomes]))
    return {"setting": setting.label, "scenario": truth.name, "b_true": b0, "searches": len(outcomes),
            "coverage": float(np.mean(covered)), "median_width": float(np.median(widths)),
            "unbounded": float(np.mean(np.isinf(widths))), "sd_b": float(np.nanstd(estimates)),
            "robust_sd_b": float(1.4826 * np.nanmedian(np.abs(estimates - np.nanmedian(estimates)))),
            "bias_b": float(np.nanmedian(estimates) - b0), "lam_error": lam_error, "lam_coverage": lam_cover,
            "trial_epochs": float(np.mean([o.trial_epochs for o in outcomes])), "cpu_seconds": cpu,
            "demo_wall_s": cpu / 2 * DEMO_OVERHEAD if not math.isnan(cpu) else math.nan}


def calibrate(setting: Setting, truth: Truth, searches: int, *, processes: int = 1,
              first_seed: int = 0) -> dict[str, object]:
    true = true_optima(setting, truth)
    jobs = [(setting, truth, first_seed + i, true) for i in range(searches)]
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            outcomes = pool.map(run_one, jobs)
    else:
        outcomes = [run_one(job) for job in jobs]
    return summarize(setting, truth, true, outcomes)


def table_row(s: dict[str, object]) -> str:
    lam = " / ".join(f"{e:.2f}" for e in s["lam_error"])
    lam_cov = " / ".join(f"{c:.0%}" for c in s["lam_coverage"])
    width = "unbounded" if math.isinf(s["median_width"]) else f"{s['median_width']:.2f}"
    wall = "" if math.isnan(s["demo_wall_s"]) else f"{s['demo_wall_s']:.0f} s"
    return (f"| {s['setting']} | {s['scenario']} (b = {s['b_true']:.2f}) | {s['searches']} | {s['coverage']:.1%} | "
            f"{width} | {s['unbounded']:.0%} | {s['sd_b']:.2f} ({s['robust_sd_b']:.2f}) | {s['bias_b']:+.2f} | {lam} | "
            f"{lam_cov} | "
            f"{s['trial_epochs']:.0f} | {wall} |")


HEADER = ("| budget | truth | searches | coverage of b (95%) | median width | unbounded | sd(b) (robust) | bias | "
          "median abs log-λ* error per width | λ* coverage per width | trial-epochs | demo wall (2 cores) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--searches", type=int, default=200, help="simulated searches per budget and truth (200)")
    parser.add_argument("--budgets", nargs="+", default=list(SETTINGS), metavar="BUDGET",
                        help="quick, cifar10-wrn34, or PRESET:key=value,... (e.g. quick:trials=8,seeds=2,grace_period=5)")
    parser.add_argument("--scenarios", nargs="+", default=["quadratic", "null", "plateau"], choices=list(SCENARIOS))
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    print(f"fit calibration, {time.strftime('%Y-%m-%d')}, {args.searches} searches per row, nominal level "
          f"{LEVEL:.0%}\n\n{HEADER}")
    for budget in args.budgets:
        for name in args.scenarios:
            started = time.monotonic()
            summary = calibrate(parse_setting(budget), SCENARIOS[name], args.searches, processes=args.processes)
            print(table_row(summary) + f"  <!-- {time.monotonic() - started:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
