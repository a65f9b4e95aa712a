"""What a search will run: widths, the λ range, trials and seeds, sampler, early stopping and resources.

Built from a preset's `search` section and the command-line flags, and validated as a whole
before anything is started or written. Resources are per trial and may depend on width: a
preset's `resources` rows each hold from their `min_width` up to the next row's, and the
`--workers-per-trial`, `--cpus-per-trial` and `--gpus-per-trial` flags override every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.cli import plural
from tuner.core.config import TrialConfig
from tuner.core.suites import get_suite
from tuner.errors import ConfigError
from tuner.presets import Preset

SAMPLERS = ("tpe", "gp")
# every key a preset's `search:` mapping may hold (an unknown one is a typo, refused by name)
SEARCH_KEYS = ("widths", "lam_range", "trials", "seeds", "startup", "paired", "sampler", "grace_period",
               "reduction_factor", "resources", "concurrency", "max_retries", "initial_lams", "storage", "evaluation")
EVALUATION_KEYS = ("suite", "trials", "ranking", "examples")
RESOURCE_FLAGS = {"workers": "--workers-per-trial", "cpus": "--cpus-per-trial", "gpus": "--gpus-per-trial"}


def trial_name(width: int, lam: float, seed: int, trial_id: str) -> str:
    """How a trial is named everywhere (Tune's folders, the Ray dashboard, MLflow): width, λ, seed and Ray trial id."""
    return f"w{width}-lam{lam:.3g}-s{seed}-{trial_id}"


@dataclass(frozen=True)
class TrialResources:
    """What one trial reserves: `workers` data-parallel workers sharing `cpus` and `gpus` evenly."""

    workers: int
    cpus: float
    gpus: float

    @property
    def per_worker(self) -> dict[str, float]:
        """Ray resources of one worker."""
        return {"CPU": self.cpus / self.workers, "GPU": self.gpus / self.workers}

    def trials_at_once(self, cluster: dict[str, float]) -> int:
        """How many such trials fit in `cluster` (Ray's resource totals) at once; 0 if none does now."""
        return int(min(math.floor(cluster.get(key, 0.0) / need + 1e-9) for key, need in
                       (("CPU", self.cpus), ("GPU", self.gpus)) if need > 0))

    def describe(self) -> str:
        if self.workers == 1:
            gpus = f", {self.gpus:g} GPU" if self.gpus else ""
            share = f" (up to {math.floor(1 / self.gpus + 1e-9)} trials per GPU)" if 0 < self.gpus < 1 else ""
            return f"1 worker, {self.cpus:g} CPU{gpus}{share}"
        worker = self.per_worker
        gpus = f", {worker['GPU']:g} GPU" if worker["GPU"] else ""
        return f"{self.workers} data-parallel workers × ({worker['CPU']:g} CPU{gpus})"


@dataclass(frozen=True)
class StrongEvaluation:
    """What the search evaluates with an attack suite (worst case per example) once a width is done.

    `trials`: "best" (each width's best trial, on test), "top-K" (its K best) or "off";
    `ranking`: how many of each width's best trials are re-evaluated on validation to check whether
    the best λ changes under the strong attack (0: no check); `examples`: the first N examples of a
    split (None: all of it).
    """

    suite: str
    trials: str
    ranking: int
    examples: int | None

    @property
    def test_count(self) -> int:
        return 0 if self.trials == "off" else 1 if self.trials == "best" else int(self.trials.removeprefix("top-"))


def parse_evaluation(values: Any) -> StrongEvaluation:
    """A preset's `search.evaluation` mapping, checked: suite, trials (best | top-K | off), ranking, examples."""
    if not isinstance(values, dict):
        raise ConfigError("a preset's search.evaluation must be a mapping like {suite: fast, trials: best, ranking: 3}")
    unknown = sorted(set(values) - set(EVALUATION_KEYS))
    if unknown:
        raise ConfigError(f"unknown search.evaluation setting(s) {', '.join(unknown)}; known: {', '.join(EVALUATION_KEYS)}")
    suite = get_suite(str(values.get("suite", "standard"))).name
    trials = str(values.get("trials", "best"))
    if not (trials in ("best", "off") or (trials.startswith("top-") and trials[4:].isdigit() and int(trials[4:]) >= 1)):
        raise ConfigError(f"search.evaluation.trials must be best, top-K (e.g. top-3) or off, got {trials!r}")
    ranking, examples = values.get("ranking", 3), values.get("examples")
    if not isinstance(ranking, int) or ranking < 0 or ranking == 1:
        raise ConfigError(f"search.evaluation.ranking must be 0 (no check) or a whole number >= 2, got {ranking!r}")
    if examples is not None and (not isinstance(examples, int) or examples < 1):
        raise ConfigError(f"search.evaluation.examples must be a positive whole number or null (all), got {examples!r}")
    return StrongEvaluation(suite, trials, ranking, examples)


@dataclass(frozen=True)
class SearchPlan:
    name: str
    run_dir: Path
    preset: str
    trial: TrialConfig  # the base trial; width and lam are set per trial
    widths: list[int]
    lam_low: float
    lam_high: float
    trials: int  # distinct λ values per width
    seeds: int  # replicate seeds per λ (a replicate is a trial of its own)
    startup: int  # λ values spread evenly over the log range before the sampler adapts
    paired: bool  # every width starts from the same λ values (a paired design across widths)
    sampler: str
    grace_period: int
    reduction_factor: int
    resources: dict[int, TrialResources]  # by width
    concurrency: int | None
    max_retries: int
    seed: int
    initial_lams: list[float]  # evaluated first (e.g. known defaults), then the sampler takes over
    storage: str | None  # Ray Tune/Train storage root shared by all nodes (s3://… or a mounted path)
    evaluation: StrongEvaluation

    @property
    def optuna_storage(self) -> Path:
        return self.run_dir / "optuna.journal"

    @property
    def tune_storage(self) -> str:
        """Where Tune and Train keep experiment state and checkpoints: STORAGE/NAME, else RUN_DIR/ray."""
        return f"{self.storage.rstrip('/')}/{self.name}" if self.storage else str(self.run_dir / "ray")

    @property
    def trials_per_width(self) -> int:
        return self.trials * self.seeds

    def study_name(self, width: int) -> str:
        return f"{self.name}-w{width}"

    def describe(self) -> str:
        """The plan in a few lines: the search, then the resources of a trial of each width."""
        cap = f", at most {self.concurrency} trials at once" if self.concurrency else ""
        seeds = f" × {self.seeds} seeds" if self.seeds > 1 else ""
        design = ("paired " if self.paired else "") + plural(self.startup, "start-up value")
        stopping = (f"ASHA grace {self.grace_period} reduction {self.reduction_factor}"
                    if self.grace_period < self.trial.epochs else "no early stopping")
        lines = [f"search {self.name}: preset {self.preset}, widths {','.join(map(str, self.widths))}, "
                 f"{self.trials} λ{seeds} per width over [{self.lam_low:g}, {self.lam_high:g}] (log; {design}, "
                 f"then {self.sampler}), {self.trial.method}, {plural(self.trial.epochs, 'epoch')}, "
                 f"{stopping}{cap}"]
        lines += [f"  w{width}: {resources.describe()} per trial" for width, resources in self.resources.items()]
        return "\n".join(lines)

    def concurrency_for(self, width: int, cluster: dict[str, float]) -> int:
        """Trials of `width` at once on `cluster` (Ray's resource totals when the width starts).

        Without --concurrency, as many as fit (at least 1, for a cluster still growing): Tune
        with a searcher starts no more than it is told. One-worker trials may be given more with
        --concurrency (Tune places them by their resources, and an autoscaler grows for them).
        A data-parallel trial's driver reserves nothing itself, so those trials never exceed
        what fits: drivers never launch workers that could only wait for a running trial's.
        """
        resources = self.resources[width]
        fits = max(1, resources.trials_at_once(cluster))
        if self.concurrency is None:
            return fits
        return self.concurrency if resources.workers == 1 else min(fits, self.concurrency)

    def evaluations_at_once(self, cluster: dict[str, float]) -> int:
        """Strong evaluations at once on `cluster` (at least 1): each takes one worker of a trial of its width."""
        workers = [TrialResources(1, r.per_worker["CPU"], r.per_worker["GPU"]) for r in self.resources.values()]
        return max(1, *(worker.trials_at_once(cluster) for worker in workers))

    def check_fits(self, machine: dict[str, float]) -> None:
        """Fail in one line if a trial of some width can never run on `machine` (a local Ray's resources)."""
        for width, resources in self.resources.items():
            if resources.trials_at_once(machine) == 0:
                raise ConfigError(
                    f"a width-{width} trial needs {resources.cpus:g} CPU and {resources.gpus:g} GPU but this machine "
                    f"has {machine.get('CPU', 0):g} CPU and {machine.get('GPU', 0):g} GPU: lower --cpus-per-trial/"
                    f"--gpus-per-trial, or pass --address of a cluster that has them")


def parse_widths(text: str, *, option: str = "--widths") -> list[int]:
    """"1,4,10" → [1, 4, 10], sorted; each a positive integer, given once (`option` names the flag in errors)."""
    usage = f"{option} takes comma-separated positive integers like 1,4,10, got {text!r}"
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ConfigError(usage)
    widths = [int(part) for part in parts]
    if any(w <= 0 for w in widths):
        raise ConfigError(usage)
    repeated = sorted({w for w in widths if widths.count(w) > 1})
    if repeated:
        raise ConfigError(f"{option} gives width {', '.join(map(str, repeated))} more than once: list each width once")
    return sorted(widths)


def parse_lam_range(value: Any) -> tuple[float, float]:
    """"1,30" or [1, 30] → (1.0, 30.0); 0 < low < high (λ is searched on a log scale)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--lam-range takes LOW,HIGH like 1,30, got {value!r}") from None
    if not (0 < low < high and math.isfinite(high)):
        raise ConfigError(f"--lam-range needs 0 < LOW < HIGH (λ is searched on a log scale), got {low:g},{high:g}")
    return low, high


def parse_lams(value: Any) -> list[float]:
    """"1,6,18" or [1, 6, 18] → [1.0, 6.0, 18.0]."""
    try:
        return [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except ValueError:
        raise ConfigError(f"--lam-start takes comma-separated numbers like 6,18, got {value!r}") from None


def parse_resources(rows: Any, widths: list[int], overrides: dict[str, Any]) -> dict[int, TrialResources]:
    """Each width's resources from the preset's `resources` rows, with the flags' values (None = not given) applied."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError("a preset's search.resources must be a list of rows like "
                          "{min_width: 1, workers: 1, cpus: 1, gpus: 0}")
    if not all(isinstance(r.get("min_width", 1), int) and isinstance(r.get("workers"), int) for r in rows):
        raise ConfigError("search.resources rows need whole numbers for min_width and workers")
    rows = sorted(rows, key=lambda r: r.get("min_width", 1))
    if rows[0].get("min_width", 1) > widths[0]:
        raise ConfigError(f"search.resources starts at min_width {rows[0]['min_width']}: add a row for width {widths[0]}")
    given = {k: v for k, v in overrides.items() if v is not None}
    by_width = {}
    for width in widths:
        row = {**[r for r in rows if r.get("min_width", 1) <= width][-1], **given}
        try:
            by_width[width] = TrialResources(int(row["workers"]), float(row["cpus"]), float(row["gpus"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"search.resources row {row} needs numbers for workers, cpus and gpus") from None
    return by_width


def resolve_storage(storage: str | None) -> str | None:
    """A storage URI (s3://…, gs://…) as given; a path made absolute (Ray needs one, and a job's cwd is temporary)."""
    if storage is None or "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def build_plan(preset: Preset, *, name: str, out: Path, search_overrides: dict[str, Any],
               trial_overrides: dict[str, Any]) -> SearchPlan:
    """The preset's settings with the flags given (None = not given) applied, validated as a whole.

    The plan's base trial has the narrowest width and the lowest λ; each trial sets its own.
    """
    unknown = sorted(set(preset.search) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"unknown search setting(s) {', '.join(unknown)} in preset {preset.name}; "
                          f"known: {', '.join(SEARCH_KEYS)}")
    resource_flags = {k: search_overrides.get(f"{k}_per_trial") for k in RESOURCE_FLAGS}
    values = {**preset.search, **{k: v for k, v in search_overrides.items()
                                  if v is not None and not k.endswith("_per_trial")}}
    widths = values["widths"]
    widths = parse_widths(widths if isinstance(widths, str) else ",".join(map(str, widths)))
    low, high = parse_lam_range(values["lam_range"])
    trial = preset.trial_config(width=widths[0], lam=low, **trial_overrides)
    if trial.data_dir:  # trials run in other working directories (and on other nodes): an absolute path
        trial = trial.replace(data_dir=str(Path(trial.data_dir).expanduser().resolve()))
    initial_lams = parse_lams(values.get("initial_lams") or [])
    plan = SearchPlan(
        name=name, run_dir=Path(out).resolve() / name, preset=preset.name, trial=trial, widths=widths, lam_low=low,
        lam_high=high, trials=int(values["trials"]), seeds=1 if values.get("seeds") is None else int(values["seeds"]),
        # the preset's start-up count, at most --trials, and at least the --lam-start values
        startup=max(min(int(values.get("startup") or math.ceil(int(values["trials"]) / 2)), int(values["trials"])),
                    len(initial_lams)),
        paired=bool(values.get("paired", False)), sampler=str(values["sampler"]),
        # a trial shorter than the grace period is never stopped early
        grace_period=min(int(values["grace_period"]), trial.epochs), reduction_factor=int(values["reduction_factor"]),
        resources=parse_resources(values.get("resources"), widths, resource_flags),
        concurrency=None if values["concurrency"] is None else int(values["concurrency"]),
        max_retries=int(values["max_retries"]), seed=trial.seed,
        initial_lams=initial_lams, storage=resolve_storage(values.get("storage")),
        evaluation=parse_evaluation(values.get("evaluation") or {}),
    )
    _validate(plan)
    return plan


def _validate(plan: SearchPlan) -> None:
    checks = [
        (plan.trials >= 1, f"--trials must be >= 1, got {plan.trials}"),
        (plan.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {plan.sampler!r}"),
        (plan.grace_period >= 1, f"grace_period must be >= 1 epoch, got {plan.grace_period}"),
        (plan.reduction_factor >= 2, f"reduction_factor must be >= 2, got {plan.reduction_factor}"),
        *(check for width, resources in plan.resources.items() for check in _resource_checks(width, resources, plan)),
        (plan.concurrency is None or plan.concurrency >= 1, f"--concurrency must be >= 1, got {plan.concurrency}"),
        (all(plan.lam_low <= lam <= plan.lam_high for lam in plan.initial_lams),
         f"--lam-start values must lie in the λ range [{plan.lam_low:g}, {plan.lam_high:g}]"),
        (len(plan.initial_lams) <= plan.trials, "--lam-start gives more values than --trials"),
        (plan.seeds >= 1, f"--seeds must be >= 1, got {plan.seeds}"),
        (plan.startup >= 1, f"startup must be >= 1, got {plan.startup}"),
        (plan.max_retries >= 0, f"max_retries must be >= 0, got {plan.max_retries}"),
        (plan.name and "/" not in plan.name and not plan.name.startswith("."),
         f"--name must be a plain folder name, got {plan.name!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _resource_checks(width: int, r: TrialResources, plan: SearchPlan) -> list[tuple[bool, str]]:
    if r.workers < 1:
        return [(False, f"{RESOURCE_FLAGS['workers']} must be >= 1, got {r.workers} (width {width})")]
    gpus = r.per_worker["GPU"]
    return [
        (r.cpus > 0, f"{RESOURCE_FLAGS['cpus']} must be > 0, got {r.cpus:g} (width {width})"),
        (r.gpus >= 0, f"{RESOURCE_FLAGS['gpus']} must be >= 0, got {r.gpus:g} (width {width})"),
        (gpus <= 1, f"a worker trains on one GPU, got {r.gpus:g} GPUs for {r.workers} worker(s) (width {width}): "
         f"pass --workers-per-trial {math.ceil(r.gpus)} for data-parallel training over {math.ceil(r.gpus)} GPUs"),
        (r.workers == 1 or gpus in (0, 1), f"data-parallel workers take one whole GPU each, got {gpus:g} (width "
         f"{width}: {r.gpus:g} GPUs over {r.workers} workers): pass --gpus-per-trial {r.workers} or 0"),
        (plan.trial.batch_size % r.workers == 0, f"batch size {plan.trial.batch_size} does not split over "
         f"{r.workers} workers (width {width}): pass a --batch-size divisible by {RESOURCE_FLAGS['workers']}"),
    ]
