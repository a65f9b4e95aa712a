"""What a search will run: widths, the λ range, trials, sampler, early stopping and resources.

Built from a preset's `search` section and the command-line flags, and validated as a whole
before anything is started or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.core.config import TrialConfig
from tuner.core.errors import ConfigError
from tuner.presets import Preset

SAMPLERS = ("tpe", "gp")


@dataclass(frozen=True)
class SearchPlan:
    name: str
    run_dir: Path
    preset: str
    trial: TrialConfig  # the base trial; width and lam are set per trial
    widths: list[int]
    lam_low: float
    lam_high: float
    trials: int
    sampler: str
    grace_period: int
    reduction_factor: int
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int | None
    max_retries: int
    seed: int
    initial_lams: list[float]  # evaluated first (e.g. known defaults), then the sampler takes over

    @property
    def optuna_storage(self) -> Path:
        return self.run_dir / "optuna.journal"

    @property
    def tune_storage(self) -> Path:
        return self.run_dir / "ray"

    def study_name(self, width: int) -> str:
        return f"{self.name}-w{width}"

    def describe(self) -> str:
        gpus = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
        cap = f", at most {self.concurrency} at once" if self.concurrency else ""
        return (f"search {self.name}: preset {self.preset}, widths {','.join(map(str, self.widths))}, "
                f"{self.trials} trials each over λ in [{self.lam_low:g}, {self.lam_high:g}] (log, {self.sampler}), "
                f"{self.trial.method}, {self.trial.epochs} epochs, ASHA grace {self.grace_period} "
                f"reduction {self.reduction_factor}; {self.cpus_per_trial:g} CPU{gpus} per trial{cap}")


def parse_widths(text: str) -> list[int]:
    """"1,4,10" → [1, 4, 10], sorted and deduplicated; each a positive integer."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--widths takes comma-separated positive integers like 1,4,10, got {text!r}") from None
    if not widths or any(w <= 0 for w in widths):
        raise ConfigError(f"--widths takes comma-separated positive integers like 1,4,10, got {text!r}")
    return sorted(set(widths))


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


def build_plan(preset: Preset, *, name: str, out: Path, search_overrides: dict[str, Any],
               trial_overrides: dict[str, Any]) -> SearchPlan:
    """The preset's settings with the flags given (None = not given) applied, validated as a whole.

    The plan's base trial has the narrowest width and the lowest λ; each trial sets its own.
    """
    values = {**preset.search, **{k: v for k, v in search_overrides.items() if v is not None}}
    widths = values["widths"]
    widths = parse_widths(widths if isinstance(widths, str) else ",".join(map(str, widths)))
    low, high = parse_lam_range(values["lam_range"])
    trial = preset.trial_config(width=widths[0], lam=low, **trial_overrides)
    plan = SearchPlan(
        name=name, run_dir=Path(out).resolve() / name, preset=preset.name, trial=trial, widths=widths, lam_low=low,
        lam_high=high, trials=int(values["trials"]), sampler=str(values["sampler"]),
        # a trial shorter than the grace period is never stopped early
        grace_period=min(int(values["grace_period"]), trial.epochs), reduction_factor=int(values["reduction_factor"]),
        cpus_per_trial=float(values["cpus_per_trial"]), gpus_per_trial=float(values["gpus_per_trial"]),
        concurrency=None if values["concurrency"] is None else int(values["concurrency"]),
        max_retries=int(values["max_retries"]), seed=trial.seed,
        initial_lams=parse_lams(values.get("initial_lams") or []),
    )
    _validate(plan)
    return plan


def _validate(plan: SearchPlan) -> None:
    checks = [
        (plan.trials >= 1, f"--trials must be >= 1, got {plan.trials}"),
        (plan.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {plan.sampler!r}"),
        (plan.grace_period >= 1, f"grace_period must be >= 1 epoch, got {plan.grace_period}"),
        (plan.reduction_factor >= 2, f"reduction_factor must be >= 2, got {plan.reduction_factor}"),
        (plan.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {plan.cpus_per_trial:g}"),
        (plan.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0, got {plan.gpus_per_trial:g}"),
        (plan.gpus_per_trial <= 1 or plan.gpus_per_trial.is_integer(),
         f"--gpus-per-trial above 1 must be a whole number, got {plan.gpus_per_trial:g}"),
        (plan.concurrency is None or plan.concurrency >= 1, f"--concurrency must be >= 1, got {plan.concurrency}"),
        (all(plan.lam_low <= lam <= plan.lam_high for lam in plan.initial_lams),
         f"--lam-start values must lie in the λ range [{plan.lam_low:g}, {plan.lam_high:g}]"),
        (len(plan.initial_lams) <= plan.trials, "--lam-start gives more values than --trials"),
        (plan.max_retries >= 0, f"max_retries must be >= 0, got {plan.max_retries}"),
        (plan.name and "/" not in plan.name and not plan.name.startswith("."),
         f"--name must be a plain folder name, got {plan.name!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
