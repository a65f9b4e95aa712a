"""The scaling rule as a person reads it: which widths enter, the conclusion in words, scaling.json's content.

The estimator is `tuner.analysis.surface`. Here: widths with too few λ values are left out (with a
note), the conclusion follows b's 95% interval — "λ* grows with width", "λ* falls with width" or
"no evidence that λ* changes with width at this budget", with how many more trials or seeds a
narrower interval needs, computed from the data — and numbers are formatted for people.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tuner.analysis.surface import LEVEL, REACH, SD_LEVEL, SHAPE_RATIOS, Interval, SurfaceFit, fit_surface
from tuner.analysis.trials import Trials
from tuner.errors import ConfigError
from tuner.outputs.results import STATUSES

MIN_LAMS = 3  # distinct usable λ values a width needs to enter the fit
RESOLVE_B = 0.25  # a 95% half-width of b worth aiming for when the data show no change (λ* ×1.8 per decade of width)
METHOD = {
    "trials_used": "completed trials, and early-stopped trials at their fidelity (a per-width offset for each "
                   "number of epochs run below the most); failed trials are counted, not used",
    "model": "val_robust_acc = level(w) + offset(w, epochs) - curvature(w) * (d<0 ? d^2 : shape_ratio * d^2), "
             "d = log(lam) - log(lam_star(w)); lam_star(w) = a * w^b; shape_ratio (curvature above the peak / "
             "below it) profiled over " + ", ".join(f"{r:g}" for r in SHAPE_RATIOS),
    "intervals": f"profile likelihood (F test, residual variance): the range of each quantity over the "
                 f"{LEVEL:.0%} confidence region; an end the region reaches {REACH:g} beyond the sampled log-lam "
                 f"range is unbounded (null)",
    "per_width": "each width its own peak (same model, free of the rule); near-optimal band: sampled lam whose "
                 "fitted robust accuracy is within one seed-noise sd of the width's best",
}


# --------------------------------------------------------------------------- numbers for people


def number(x: float | None, digits: int = 3) -> str:
    """x with `digits` significant digits, never in e-notation; None → 'unbounded'."""
    if x is None:
        return "unbounded"
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    text = np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-")
    return text.rstrip(".")


def exponent(x: float | None) -> str:
    """An exponent such as b: two decimals, no negative zero; None → 'unbounded'."""
    if x is None:
        return "unbounded"
    text = f"{x:.2f}"
    return "0.00" if text == "-0.00" else text


def interval_text(interval: Interval, fmt: Any = number) -> str:
    return f"[{fmt(interval.low)}, {fmt(interval.high)}]"


def thousandths(x: float) -> float:
    """An exponent as scaling.json holds it (and the conclusion states it): three decimals, no negative zero."""
    return round(x, 3) + 0.0


def sig(x: float | None, digits: int = 4) -> float | None:
    """x rounded to `digits` significant digits (for scaling.json)."""
    return None if x is None else float(f"{x:.{digits}g}")


def conclusion_with_a(content: dict[str, Any]) -> str:
    """scaling.json's conclusion, with a and its interval where a is bounded on some side."""
    if content["a_ci"] == [None, None]:
        return content["conclusion"]
    return f"{content['conclusion']}; a = {number(content['a'])} {interval_text(Interval(*content['a_ci']))}"


def width_cells(entry: dict[str, Any]) -> list[str]:
    """A scaling.json per_width entry for a table: width, λ*, its interval, the rule's λ*, the near-optimal band,
    robust accuracy at λ*, and used/completed/stopped/failed trial counts."""
    band = entry["near_optimal_band"]
    return [str(entry["width"]), "no peak" if entry["lam_star"] is None else number(entry["lam_star"]),
            interval_text(Interval(*entry["lam_star_ci"])), "-" if entry["rule_lam"] is None else number(entry["rule_lam"]),
            f"{number(band[0])}–{number(band[1])}",
            "-" if entry["robust_acc_at_star"] is None else f"{entry['robust_acc_at_star']:.3f}",
            f"{entry['n_used']}/{entry['n_completed']}/{entry['n_early_stopped']}/{entry['n_failed']}"]


def prediction_text(prediction: dict[str, Any]) -> str:
    """A scaling.json prediction in words."""
    width = prediction["width"]
    if prediction["lam"] is None:
        return (f"recommended λ for width {width}: none: the trials do not locate λ* (its interval is unbounded both "
                f"ways); any λ in the widths' near-optimal bands is as good as they tell")
    extrapolated = ", extrapolated" if prediction["extrapolated"] else ""
    return (f"recommended λ for width {width}: {number(prediction['lam'])} "
            f"{interval_text(Interval(*prediction['lam_ci']))} ({prediction['form'].replace('_', ' ')}{extrapolated})")


# --------------------------------------------------------------------------- the fit and its words


@dataclasses.dataclass(frozen=True)
class Scaling:
    """The fitted surface, what scaling.json holds, and the trials it came from."""

    fit: SurfaceFit
    content: dict[str, Any]
    trials: Trials


def fit_trials(trials: Trials, *, predict: Sequence[int] = ()) -> Scaling:
    """The scaling rule from a pooled trial table; ConfigError when there is nothing to fit."""
    usable = trials.usable
    if not usable.any():
        counts = ", ".join(f"{int((trials.status == s).sum())} {s}" for s in STATUSES)
        raise ConfigError(f"no usable trials ({len(trials.status)} trials: {counts}; the fit needs trials with a "
                          f"validation robust accuracy): check the search's errors and run it again")
    widths, notes = [], []
    for width in trials.widths:
        lams = len(np.unique(trials.lam[usable & (trials.width == width)]))
        if lams >= MIN_LAMS:
            widths.append(width)
        else:
            notes.append(f"width {width} left out: {lams} usable λ value(s), the fit needs {MIN_LAMS}")
    if len(widths) < 2:
        raise ConfigError(f"the scaling fit needs at least two widths with {MIN_LAMS} or more usable λ values, got "
                          f"{', '.join(map(str, widths)) or 'none'} ({'; '.join(notes) or 'one width searched'}): "
                          f"search more widths or λ values (python -m tuner.search --widths 1,4,10 --trials 12)")
    try:
        fit = fit_surface(trials, widths)
    except ValueError as exc:
        raise ConfigError(f"too few trials for the scaling fit ({exc}): run more --trials or --seeds") from None
    return Scaling(fit=fit, content=_content(fit, trials, predict, notes), trials=trials)


def _content(fit: SurfaceFit, trials: Trials, predict: Sequence[int], notes: list[str]) -> dict[str, Any]:
    b_ci, a_ci = fit.b_interval(), fit.a_interval()
    words = conclusion(fit, trials)
    rule_lam, rule_ci = fit.lam_at(list(fit.data.width_values))
    per_width = []
    for result, lam, ci in zip(fit.per_width, rule_lam, rule_ci):
        entry = result.to_dict()
        entry.update({k: sig(v) if isinstance(v, float) else v for k, v in entry.items()})
        entry["lam_star_ci"] = [sig(v) for v in result.lam_star_ci.to_list()]
        entry["near_optimal_band"] = [sig(v) for v in result.band]
        entry["lam_range"] = [sig(v) for v in result.lam_range]
        entry["rule_lam"], entry["rule_lam_ci"] = determined(float(lam), ci), [sig(v) for v in ci.to_list()]
        per_width.append(entry)
    predictions = []
    for width in predict:
        p = fit.predict(width)
        predictions.append({**p, "lam": determined(p["lam"], Interval(*p["lam_ci"])),
                            "lam_ci": [sig(v) for v in p["lam_ci"]]})
    for name, check in fit.checks.items():
        if check["p"] < 0.05:
            notes.append({"curve_lack_of_fit": f"the curves miss the replicate means more than seed noise allows "
                                               f"(lack-of-fit p = {check['p']:.3f}): λ* may be biased",
                          "rule_lack_of_fit": f"the per-width peaks scatter about the power law more than their "
                                              f"noise allows (p = {check['p']:.3f}): see model_comparison"}[name])
    notes += [f"width {r.width}: {r.note}" for r in fit.per_width if r.note]
    return {
        "rule": "lam_star = a * width ** b", "conclusion": words["conclusion"], "direction": words["direction"],
        "advice": words["advice"], "what_the_data_show": words["shows"],
        "a": sig(fit.a), "a_ci": [sig(v) for v in a_ci.to_list()], "b": thousandths(fit.b),
        "b_ci": b_ci.map(thousandths).to_list(), "b_ci_68": fit.b_interval(SD_LEVEL).map(thousandths).to_list(),
        "level": LEVEL, "n_widths": len(fit.data.widths), "n_trials_used": fit.data.n,
        "seed_noise_sd": sig(fit.seed_sd), "seed_noise_source": fit.seed_sd_source,
        "shape_ratio": fit.shape_ratio, "per_width": per_width, "checks": fit.checks,
        "model_comparison": fit.comparison, "predictions": predictions, "method": METHOD, "notes": notes,
        "regime": regime(trials, list(fit.data.width_values)),
    }


def regime(trials: Trials, widths: list[int]) -> dict[str, Any]:
    """Which regime the trials are in: how stability and natural accuracy move with λ and with width.

    Least squares per metric over the usable trials of `widths`: metric = level(w) + slope·ln λ (one
    slope shared by the widths), so widths are compared at the same λ (the median λ tried), not at
    the different λ values their studies happened to sample. Wu et al. (paper scale) found that at a
    fixed λ stability falls with width; where it rises instead, the trials are in another regime
    (e.g. models too small for the task) and say nothing about the paper's effect.
    """
    keep = trials.usable & np.isin(trials.width, widths)
    log_lam, width = np.log(trials.lam[keep]), trials.width[keep]
    at = float(np.exp(np.median(log_lam)))
    design = np.column_stack([log_lam - math.log(at), *((width == w).astype(float) for w in widths)])
    result: dict[str, Any] = {"at_lam": sig(at, 3)}
    for name in ("stability", "natural"):
        coef = np.linalg.lstsq(design, getattr(trials, name)[keep], rcond=None)[0]
        result[name] = {"per_decade_of_lam": sig(float(coef[0]) * math.log(10), 3),
                        "by_width": {str(w): sig(float(c), 3) for w, c in zip(widths, coef[1:])}}
    levels = list(result["stability"]["by_width"].values())
    rises = all(b > a for a, b in zip(levels, levels[1:]))
    falls = all(b < a for a, b in zip(levels, levels[1:]))
    trend = "rises" if rises else "falls" if falls else "does not move steadily"
    stab, nat = result["stability"], result["natural"]
    result["stability_with_width"] = trend
    result["words"] = (
        f"at λ = {number(at, 2)}, stability {trend} with width ("
        + ", ".join(f"{v:.3f} at w{w}" for w, v in stab["by_width"].items())
        + f"); per tenfold λ, stability changes by {stab['per_decade_of_lam']:+.3f} and natural accuracy by "
        f"{nat['per_decade_of_lam']:+.3f}"
        + ("" if falls else ": not the regime of Wu et al., where stability falls with width at a fixed λ and "
                            "λ* grows with width; expect that at paper scale (--preset cifar10-wrn34)"))
    return result


def determined(value: float, interval: Interval) -> float | None:
    """The estimate, or None where its interval is unbounded both ways (any value fits: no estimate to give)."""
    return None if interval.low is None and interval.high is None else sig(value)


def budget_now(trials: Trials) -> tuple[int, int]:
    """(λ values per width, seeds per λ) the searches ran: medians over widths and over λ values."""
    lams, seeds = [], []
    for width in trials.widths:
        here = trials.width == width
        values, counts = np.unique(trials.lam[here], return_counts=True)
        lams.append(len(values))
        seeds.extend(counts)
    return int(np.median(lams)), int(np.median(seeds))


def conclusion(fit: SurfaceFit, trials: Trials) -> dict[str, str | None]:
    """What b's interval says, in words that follow it; advice when it says nothing; what the data do show."""
    b_ci = fit.b_interval().map(thousandths)  # as scaling.json holds it
    stated = (f"b = {exponent(thousandths(fit.b))} {interval_text(b_ci, exponent)}"
              if b_ci.low is not None or b_ci.high is not None else "b is not bounded either way (every value fits the trials)")
    b_ci = b_ci.map(lambda b: float(exponent(b)))  # the words follow the interval as printed
    if b_ci.low is not None and b_ci.low > 0:
        return {"direction": "grows", "conclusion": f"λ* grows with width: {stated}", "advice": None,
                "shows": _factor(fit, b_ci)}
    if b_ci.high is not None and b_ci.high < 0:
        return {"direction": "falls", "conclusion": f"λ* falls with width: {stated}", "advice": None,
                "shows": _factor(fit, b_ci)}
    bands = "; ".join(f"w{r.width} λ {number(r.band[0], 2)}–{number(r.band[1], 2)}" for r in fit.per_width)
    shows = (f"robust accuracy is within one seed-noise sd ({number(fit.seed_sd, 2)}) of each width's best over a wide "
             f"range of λ ({bands}); the data do not show whether λ* changes with width, nor that it stays the same")
    if b_ci.bounded and b_ci.half_width() <= RESOLVE_B:
        return {"direction": "none", "conclusion": f"no evidence that λ* changes with width: {stated}",
                "advice": None, "shows": f"{_factor(fit, b_ci)}: consistent with no change, and ruling out larger ones"}
    return {"direction": "none", "conclusion": f"no evidence that λ* changes with width at this budget: {stated}",
            "advice": _advice(fit, trials), "shows": shows}


def _factor(fit: SurfaceFit, b_ci: Interval) -> str:
    """b's interval as a ratio of λ* between the widest and the narrowest width."""
    w0, w1 = fit.data.width_values[0], fit.data.width_values[-1]
    ratio = b_ci.map(lambda b: (w1 / w0) ** b)
    if ratio.low is None and ratio.high is None:
        return f"λ* at width {w1} may be any multiple of λ* at width {w0}"
    if ratio.high is None:
        return f"λ* at width {w1} is at least {number(ratio.low, 2)} times λ* at width {w0}"
    if ratio.low is None:
        return f"λ* at width {w1} is at most {number(ratio.high, 2)} times λ* at width {w0}"
    return f"λ* at width {w1} is {number(ratio.low, 2)} to {number(ratio.high, 2)} times λ* at width {w0}"


def _advice(fit: SurfaceFit, trials: Trials) -> str:
    """How many λ values (--trials) or seeds (--seeds) would give b a useful 95% interval, from the one it has.

    Intervals shrink as 1/√trials. The aim: an interval that excludes 0 if b is what it seems
    (|b| ≥ RESOLVE_B: the end on 0's side must come within |b|), else one of ±RESOLVE_B. Measured
    on the 95% interval, or on the 68% one (about ±1 standard error) where the 95% one is unbounded.
    """
    lams, seeds = budget_now(trials)
    for level, z in ((LEVEL, 1.0), (SD_LEVEL, 1.96)):
        interval = fit.b_interval(level)
        if interval.bounded:
            break
    else:
        return (f"b is not bounded even at one standard error: the trials do not locate λ*; the data cannot say how "
                f"many more it takes; run at least --trials {4 * lams} (now {lams}) or --seeds {4 * seeds} "
                f"(now {seeds}), and check that every width's best trials lie inside --lam-range")
    if abs(fit.b) >= RESOLVE_B:
        toward_zero = fit.b - interval.low if fit.b > 0 else interval.high - fit.b
        factor, aim = (z * toward_zero / abs(fit.b)) ** 2, f"that excludes 0 if b is near {exponent(fit.b)}"
    else:
        factor, aim = (z * interval.half_width() / RESOLVE_B) ** 2, f"of about ±{RESOLVE_B:.2f}"
    factor = max(factor, 1.0)
    return (f"for a 95% interval {aim}, run --trials {math.ceil(lams * factor)} (now {lams}) or --seeds "
            f"{math.ceil(seeds * factor)} (now {seeds}): about {factor:.1f}× the trials")
