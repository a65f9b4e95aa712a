"""The width→λ scaling rule λ* = a·w^b: the estimator, pure functions on trial arrays.

How it is estimated, and why:

- **Which trials count.** Only `completed` trials with a finite validation robust accuracy and
  λ > 0 enter the fit. `error` trials have no metric and are left out. `early_stopped` trials are
  left out too: ASHA stopped them after a few epochs, so their value is a low-fidelity one (lower
  than the λ would reach) and would pull the curve towards the λ values that were trained longest.
  Both are counted per width in `scaling.json` (`n_early_stopped`, `n_failed`); `n_trials` counts
  the trials used. The plots show the trials used.
- **λ*(w) per width** is the maximizer of a smooth curve, not the argmax of noisy points: a
  quadratic in log λ fitted to validation robust accuracy, then refitted with Gaussian kernel
  weights (standard deviation half the sampled log-λ span) centred on the first maximizer, so
  trials far from the optimum weigh less. If the final quadratic is not concave, λ* is the best
  trial (`fit: best_point`); if its maximizer lies outside the sampled λ range, λ* is clipped to
  the range edge (`fit: clipped`, widen the search's --lam-range). A width with fewer than 3
  usable trials (distinct λ values) gets its best trial and no interval; a width with none is
  left out, with a note.
- **Its 95% interval**: percentile bootstrap over that width's trials (resampled with
  replacement, refitted the same way; 1000 resamples, fixed seed).
- **The rule** λ* = a·w^b: weighted least squares of log λ* on log w, each width weighted by
  1/σ², σ = (width of its 95% interval in log λ)/(2·1.96) (floored at a quarter of the median σ
  so one lucky narrow interval cannot dominate; a width without an interval gets the largest σ).
- **Intervals of a and b**: each bootstrap replicate refits the rule to one bootstrap draw of
  every width's log λ* (widths are independent searches, so their draws combine freely; a width
  without an interval draws from N(log λ*, σ²)). When the widths scatter about the line more
  than their intervals allow (reduced χ² > 1, i.e. the rule or the per-width intervals are off),
  the replicates' spread is widened by √χ²_red. Percentile 95% intervals. Predictions for new
  widths come from the same replicates.
- **Exactly two widths**: the line passes through both points; a and b are reported, marked
  `exact_fit`, with no intervals (a_ci, b_ci and prediction intervals null). One width: no fit.
- **Model comparison**: power law, λ = c + d·w and λ = c + d·log w, each fitted to the same
  weighted log λ* (so their likelihoods are comparable), ranked by AICc (AIC where there are
  too few widths for AICc); all have 2 coefficients, so the ranking is by weighted residuals.

On synthetic searches (5 widths, 10 trials each) the 95% interval of b covers the true exponent
in 95–98% of seeds.

The figures are in `tuner.analysis.plots`; `tuner.fit` reads run directories, writes the files and is the command.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import optimize

from tuner.errors import ConfigError
from tuner.outputs.results import STATUSES, TRIALS_FILE

REQUIRED_COLUMNS = ("width", "lam", "status", "val_robust_acc", "val_natural_acc", "val_stability")
N_BOOT = 1000
BANDWIDTH = 0.5  # kernel sd of the local quadratic, in units of the width's sampled log-λ span
MIN_TRIALS = 3  # fewer usable trials (distinct λ): best point, no interval
Z95 = 1.959964


# --------------------------------------------------------------------------- trials


@dataclasses.dataclass(frozen=True)
class Trials:
    """The trial rows that matter for the fit, as aligned arrays (one entry per trial)."""

    width: np.ndarray  # int
    lam: np.ndarray
    status: np.ndarray  # str: completed, early_stopped, error
    robust: np.ndarray  # validation robust accuracy at the selected epoch (nan if none)
    natural: np.ndarray
    stability: np.ndarray
    methods: tuple[str, ...] = ()  # the training methods present (trades, pgd-at)

    @property
    def usable(self) -> np.ndarray:
        """Completed trials with a finite robust accuracy and a positive finite λ: what the fit uses."""
        return ((self.status == "completed") & np.isfinite(self.robust) & np.isfinite(self.lam)
                & (np.nan_to_num(self.lam, nan=-1.0) > 0))

    @property
    def widths(self) -> list[int]:
        return sorted({int(w) for w in self.width})

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Trials:
        """From dicts with at least the REQUIRED_COLUMNS (None → nan); rows without a width are dropped."""
        rows = [r for r in rows if r.get("width") is not None]

        def floats(name: str) -> np.ndarray:
            return np.array([np.nan if r.get(name) is None else float(r[name]) for r in rows], dtype=float)

        return cls(width=np.array([int(r["width"]) for r in rows], dtype=int), lam=floats("lam"),
                   status=np.array([str(r.get("status")) for r in rows], dtype=str),
                   robust=floats("val_robust_acc"), natural=floats("val_natural_acc"),
                   stability=floats("val_stability"),
                   methods=tuple(sorted({str(r["method"]) for r in rows if r.get("method") is not None})))


def load_trials(run_dirs: Sequence[Path]) -> Trials:
    """All trials of the given run directories (each holding trials.parquet), pooled.

    Raises ConfigError for a missing or unreadable table, missing columns, or runs that mix
    training methods (their λ are not the same quantity).
    """
    rows: list[dict[str, Any]] = []
    for run_dir in dict.fromkeys(Path(d).resolve() for d in run_dirs):  # the same run given twice counts once
        path = run_dir / TRIALS_FILE
        if not path.is_file():
            raise ConfigError(f"no {TRIALS_FILE} in {run_dir}: run `python -m tuner.search` first and pass its "
                              f"run directory (runs/<name>)")
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"cannot read {path} ({exc}): pass the run directory of a search "
                              f"(python -m tuner.search writes {TRIALS_FILE})") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)} the fit needs: pass a "
                              f"{TRIALS_FILE} written by python -m tuner.search")
        columns = [c for c in (*REQUIRED_COLUMNS, "method") if c in table.column_names]
        rows.extend(table.select(columns).to_pylist())
    trials = Trials.from_rows(rows)
    if len(trials.methods) > 1:
        raise ConfigError(f"the runs mix training methods ({', '.join(trials.methods)}) whose λ differ in meaning: "
                          f"fit the runs of one method at a time")
    return trials


# --------------------------------------------------------------------------- λ*(w) of one width

METHODS = ("quadratic", "clipped", "best_point")


def quadratic_optimum(x: np.ndarray, y: np.ndarray, *, bandwidth: float = BANDWIDTH,
                      bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maximizer of a kernel-weighted quadratic fit of y on x, row by row.

    x, y: shape (B, n), or (n,) taken as B = 1; x = log λ. Returns (x*, fitted y at x*, method
    index into METHODS), each of shape (B,). bounds (default: the range of x in each row) is the sampled range:
    a concave maximizer outside it is clipped ("clipped"); a fit that is not concave, or a row
    with fewer than 3 distinct x, gives the row's best point ("best_point").
    """
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    lo = x.min(axis=1) if bounds is None else np.full(len(x), bounds[0])
    hi = x.max(axis=1) if bounds is None else np.full(len(x), bounds[1])
    centre, scale = (lo + hi) / 2, np.maximum(hi - lo, 1e-12)
    u = (x - centre[:, None]) / scale[:, None]  # the sampled range maps to [-1/2, 1/2]
    design = np.stack([np.ones_like(u), u, u * u], axis=-1)
    distinct = 1 + (np.diff(np.sort(u, axis=1), axis=1) > 1e-9).sum(axis=1)
    best = np.argmax(y, axis=1)
    u_best, y_best = np.take_along_axis(u, best[:, None], 1)[:, 0], np.take_along_axis(y, best[:, None], 1)[:, 0]

    def fit(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        gram = np.einsum("bni,bn,bnj->bij", design, weights, design)
        ok = (distinct >= 3) & (np.abs(np.linalg.det(gram)) > 1e-12)
        gram[~ok] = np.eye(3)
        coef = np.linalg.solve(gram, np.einsum("bni,bn,bn->bi", design, weights, y)[..., None])[..., 0]
        concave = ok & (coef[:, 2] < 0)
        peak = np.where(concave, -coef[:, 1] / (2 * np.where(concave, coef[:, 2], -1.0)), u_best)
        return coef, concave, peak, np.clip(peak, -0.5, 0.5)

    _, concave, peak, clipped = fit(np.ones_like(u))
    first = np.where(concave, clipped, u_best)
    coef, concave, peak, clipped = fit(np.exp(-0.5 * ((u - first[:, None]) / bandwidth) ** 2))
    value = coef[:, 0] + coef[:, 1] * clipped + coef[:, 2] * clipped ** 2
    method = np.where(~concave, 2, np.where(peak != clipped, 1, 0))
    u_star = np.where(concave, clipped, u_best)
    value = np.where(concave, value, y_best)
    return centre + scale * u_star, value, method


@dataclasses.dataclass(frozen=True)
class WidthOptimum:
    """λ*(w) of one width: the estimate, its bootstrap interval and draws, and how it was found."""

    width: int
    lam_star: float
    lam_star_ci: tuple[float, float] | None
    robust_acc_at_star: float
    n_trials: int  # trials used (completed, with a metric)
    n_early_stopped: int
    n_failed: int
    fit: str  # one of METHODS
    lam_range: tuple[float, float]  # the sampled λ range of the trials used
    note: str = ""
    log_draws: np.ndarray | None = dataclasses.field(default=None, repr=False)  # bootstrap draws of log λ*

    @property
    def log_sigma(self) -> float | None:
        """The 95% interval's width in log λ as a standard deviation (None without an interval)."""
        if self.lam_star_ci is None:
            return None
        return (math.log(self.lam_star_ci[1]) - math.log(self.lam_star_ci[0])) / (2 * Z95)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "lam_star": self.lam_star,
                "lam_star_ci": list(self.lam_star_ci) if self.lam_star_ci else None,
                "robust_acc_at_star": self.robust_acc_at_star, "n_trials": self.n_trials,
                "n_early_stopped": self.n_early_stopped, "n_failed": self.n_failed, "fit": self.fit,
                "lam_range": list(self.lam_range), "note": self.note}


def fit_width(width: int, lam: np.ndarray, robust: np.ndarray, *, n_early_stopped: int = 0, n_failed: int = 0,
              n_boot: int = N_BOOT, rng: np.random.Generator | None = None,
              bandwidth: float = BANDWIDTH) -> WidthOptimum:
    """λ*(w) from one width's usable trials (λ > 0, robust accuracy), with a percentile bootstrap interval."""
    rng = np.random.default_rng(0) if rng is None else rng
    x, y = np.log(np.asarray(lam, float)), np.asarray(robust, float)
    counts = {"width": int(width), "n_trials": len(x), "n_early_stopped": n_early_stopped, "n_failed": n_failed,
              "lam_range": (float(np.exp(x.min())), float(np.exp(x.max())))}
    if len(np.unique(x)) < MIN_TRIALS:
        best = int(np.argmax(y))
        return WidthOptimum(lam_star=float(np.exp(x[best])), lam_star_ci=None, robust_acc_at_star=float(y[best]),
                            fit="best_point", note=f"only {len(np.unique(x))} usable λ value(s): best trial, "
                                                   f"no interval", **counts)
    bounds = (float(x.min()), float(x.max()))
    x_star, value, method = (v[0] for v in quadratic_optimum(x, y, bandwidth=bandwidth, bounds=bounds))
    pick = rng.integers(0, len(x), size=(n_boot, len(x)))
    draws, _, boot_method = quadratic_optimum(x[pick], y[pick], bandwidth=bandwidth, bounds=bounds)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    fit = METHODS[int(method)]
    notes = {"quadratic": "", "best_point": "robust accuracy is not concave in log λ: best trial",
             "clipped": "optimum at the edge of the sampled λ range: widen --lam-range"}
    note = notes[fit]
    if fit == "quadratic" and (boot_method != 0).mean() > 0.2:
        note = f"{(boot_method != 0).mean():.0%} of bootstrap refits fell back (edge or not concave)"
    return WidthOptimum(lam_star=float(np.exp(x_star)), lam_star_ci=(float(np.exp(lo)), float(np.exp(hi))),
                        robust_acc_at_star=float(np.clip(value, 0.0, 1.0)), fit=fit, note=note,
                        log_draws=draws, **counts)


def fit_widths(trials: Trials, *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[list[WidthOptimum], list[str]]:
    """λ*(w) of every width that has a usable trial, and notes on the widths left out."""
    rng = np.random.default_rng(seed)
    usable, optima, notes = trials.usable, [], []
    for width in trials.widths:
        here = trials.width == width
        n_early = int((here & (trials.status == "early_stopped")).sum())
        n_failed = int((here & ~usable & (trials.status != "early_stopped")).sum())
        if not (here & usable).any():
            notes.append(f"width {width} left out: no completed trial with a metric "
                         f"({n_early} early-stopped, {n_failed} failed)")
            continue
        optima.append(fit_width(width, trials.lam[here & usable], trials.robust[here & usable],
                                n_early_stopped=n_early, n_failed=n_failed, n_boot=n_boot, rng=rng))
    return optima, notes


# --------------------------------------------------------------------------- the rule λ* = a·w^b

FORMS = {  # name → (formula, the transform g(w) of a form λ = c + d·g(w); None for the power law)
    "power_law": ("lam = a * w**b", None),
    "linear_in_w": ("lam = c + d * w", lambda w: w),
    "linear_in_log_w": ("lam = c + d * log(w)", np.log),
}


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """The rule λ* = a·w^b fitted to the per-width optima, with its bootstrap replicates."""

    per_width: list[WidthOptimum]
    log_a: float
    b: float
    replicates: np.ndarray | None  # (B, 2) bootstrap replicates of (log a, b); None: no intervals
    exact: bool  # two widths: the line passes through both
    chi2_red: float | None  # weighted residual χ² per degree of freedom (None: exact fit, or no intervals)
    inflation: float  # factor applied to the replicates' deviations (√χ²_red if > 1, else 1)
    comparison: dict[str, Any]
    predictions: list[dict[str, Any]]
    notes: list[str]
    n_boot: int
    seed: int

    @property
    def a(self) -> float:
        return math.exp(self.log_a)

    def lam_at(self, widths: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.exp(self.log_a + self.b * np.log(np.asarray(widths, float)))

    def band(self, widths: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise 95% interval of the rule's λ at these widths (None without replicates)."""
        if self.replicates is None:
            return None
        logs = self.replicates[:, :1] + self.replicates[:, 1:] * np.log(np.asarray(widths, float))[None, :]
        lo, hi = np.percentile(logs, [2.5, 97.5], axis=0)
        return np.exp(lo), np.exp(hi)

    def intervals(self) -> tuple[list[float] | None, list[float] | None]:
        """95% percentile intervals of a and b (None without replicates)."""
        if self.replicates is None:
            return None, None
        (la_lo, b_lo), (la_hi, b_hi) = np.percentile(self.replicates, [2.5, 97.5], axis=0)
        return [math.exp(la_lo), math.exp(la_hi)], [float(b_lo), float(b_hi)]

    def to_dict(self) -> dict[str, Any]:
        """What scaling.json holds."""
        a_ci, b_ci = self.intervals()
        return {"rule": "lam_star = a * width ** b", "a": self.a, "b": self.b, "a_ci": a_ci, "b_ci": b_ci,
                "exact_fit": self.exact, "n_widths": len(self.per_width),
                "per_width": [o.to_dict() for o in self.per_width], "model_comparison": self.comparison,
                "predictions": self.predictions, "chi2_red": self.chi2_red, "interval_inflation": self.inflation,
                "method": {"trials_used": "completed trials with a validation robust accuracy; early-stopped "
                                          "(low-fidelity) and failed trials excluded",
                           "lam_star": "maximizer of a kernel-weighted quadratic of val_robust_acc in log lam",
                           "lam_star_ci": "percentile bootstrap over the width's trials",
                           "a_b_ci": "percentile bootstrap: weighted refit to per-width bootstrap draws, "
                                     "widened by sqrt(chi2_red) when > 1",
                           "n_boot": self.n_boot, "seed": self.seed},
                "notes": self.notes}


def fit_scaling(optima: Sequence[WidthOptimum], *, predict: Sequence[int] = (), seed: int = 0,
                notes: Sequence[str] = ()) -> ScalingFit:
    """λ* = a·w^b by weighted least squares in log–log space, with bootstrap intervals (see module doc)."""
    optima = sorted(optima, key=lambda o: o.width)
    if len(optima) < 2:
        raise ValueError("the scaling fit needs at least two widths")
    n, notes = len(optima), list(notes)
    logw = np.log([o.width for o in optima])
    ell = np.log([o.lam_star for o in optima])
    sigma = _weights_sigma(optima, notes)
    design = np.column_stack([np.ones(n), logw])
    hat = np.linalg.solve(design.T @ (design / sigma[:, None] ** 2), (design / sigma[:, None] ** 2).T)  # (2, n)
    coef = hat @ ell
    replicates, chi2_red, inflation = None, None, 1.0
    if n == 2:
        notes.append("exact fit: two widths determine a and b exactly, so there are no intervals; "
                     "search a third width for intervals and a model comparison")
    elif any(o.log_draws is not None for o in optima):
        chi2_red = float(np.sum(((ell - design @ coef) / sigma) ** 2) / (n - 2))
        inflation = math.sqrt(max(1.0, chi2_red))
        rng = np.random.default_rng(seed + 1)
        n_draws = next(len(o.log_draws) for o in optima if o.log_draws is not None)
        draws = np.column_stack([o.log_draws if o.log_draws is not None
                                 else math.log(o.lam_star) + s * rng.standard_normal(n_draws)
                                 for o, s in zip(optima, sigma)])
        replicates = coef + inflation * (draws @ hat.T - coef)
    else:
        notes.append(f"no width has {MIN_TRIALS} usable λ values: equal weights, no intervals")
    comparison = compare_forms(np.array([o.width for o in optima], float), np.exp(ell), sigma)
    fit = ScalingFit(per_width=list(optima), log_a=float(coef[0]), b=float(coef[1]), replicates=replicates,
                     exact=n == 2, chi2_red=chi2_red, inflation=inflation, comparison=comparison, predictions=[],
                     notes=notes, n_boot=0 if replicates is None else len(replicates), seed=seed)
    return dataclasses.replace(fit, predictions=[_prediction(fit, width) for width in predict])


def _prediction(fit: ScalingFit, width: int) -> dict[str, Any]:
    band = fit.band([width])
    widths = [o.width for o in fit.per_width]
    return {"width": int(width), "lam": float(fit.lam_at([width])[0]),
            "lam_ci": None if band is None else [float(band[0][0]), float(band[1][0])],
            "extrapolated": not min(widths) <= width <= max(widths)}


def _weights_sigma(optima: Sequence[WidthOptimum], notes: list[str]) -> np.ndarray:
    """Per-width standard deviation of log λ* from its 95% interval, floored; widths without one get the largest."""
    known = [o.log_sigma for o in optima if o.log_sigma is not None]
    if not known:
        return np.ones(len(optima))
    floor = max(0.25 * float(np.median(known)), 1e-3)
    if len(known) < len(optima):
        notes.append(f"widths without an interval weigh as the least certain one (σ = {max(known):.3g} in log λ)")
    return np.array([max(o.log_sigma, floor) if o.log_sigma is not None else max(max(known), floor)
                     for o in optima])


def compare_forms(widths: np.ndarray, lam_star: np.ndarray, sigma: np.ndarray) -> dict[str, Any]:
    """Power law, linear in w, linear in log w, each fitted to log λ* with weights 1/σ², ranked by AICc/AIC.

    The likelihood is Gaussian in log λ* with standard deviations s·σ (s fitted), so every form is
    scored on the same data; each has 2 coefficients + s, k = 3.
    """
    n, k = len(widths), 3
    if n <= 2:
        return {"criterion": None, "models": [], "best": None,
                "note": "two widths: every two-coefficient form passes through both points; no comparison"}
    ell, models = np.log(lam_star), []
    for name, (formula, g) in FORMS.items():
        params, pred = _fit_form(g, widths, lam_star, sigma)
        rss = float(max(np.sum(((ell - pred) / sigma) ** 2), 1e-300))
        aic = n * math.log(rss / n) + 2 * k
        aicc = aic + 2 * k * (k + 1) / (n - k - 1) if n > k + 1 else None
        models.append({"form": name, "formula": formula, "params": params, "weighted_rss": rss, "aic": aic,
                       "aicc": aicc})
    criterion = "aicc" if n > k + 1 else "aic"
    best = min(m[criterion] for m in models)
    total = sum(math.exp(-(m[criterion] - best) / 2) for m in models)
    for m in models:
        m["delta"] = m[criterion] - best
        m["weight"] = math.exp(-m["delta"] / 2) / total
    models.sort(key=lambda m: m["delta"])
    note = "" if n > k + 1 else f"AICc needs at least {k + 2} widths: ranked by AIC, a weak ranking with {n}"
    return {"criterion": {"aicc": "AICc", "aic": "AIC"}[criterion], "models": models,
            "best": models[0]["form"], "response": "log lam_star, weighted by 1/sigma^2 as the rule", "note": note}


def _fit_form(g: Callable[[np.ndarray], np.ndarray] | None, widths: np.ndarray, lam: np.ndarray,
              sigma: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Coefficients and fitted log λ of one form; linear forms by nonlinear least squares in log λ."""
    ell = np.log(lam)
    if g is None:
        design = np.column_stack([np.ones(len(widths)), np.log(widths)]) / sigma[:, None]
        (log_a, b), *_ = np.linalg.lstsq(design, ell / sigma, rcond=None)
        return {"a": math.exp(log_a), "b": float(b)}, log_a + b * np.log(widths)
    x = g(widths)

    def residuals(p: np.ndarray) -> np.ndarray:
        return (np.log(np.maximum(p[0] + p[1] * x, 1e-12)) - ell) / sigma

    design = np.column_stack([np.ones(len(x)), x]) / (lam * sigma)[:, None]  # delta method: sd(λ) ≈ λσ
    start, *_ = np.linalg.lstsq(design, lam / (lam * sigma), rcond=None)
    if np.any(start[0] + start[1] * x <= 0):
        start = np.array([float(np.mean(lam)), 0.0])
    p = optimize.least_squares(residuals, start).x
    return {"c": float(p[0]), "d": float(p[1])}, np.log(np.maximum(p[0] + p[1] * x, 1e-12))


def fit_trials(trials: Trials, *, predict: Sequence[int] = (), seed: int = 0, n_boot: int = N_BOOT) -> ScalingFit:
    """Per-width optima and the scaling rule from a pooled trial table; ConfigError when there is nothing to fit."""
    if not trials.usable.any():
        counts = ", ".join(f"{int((trials.status == s).sum())} {s}" for s in STATUSES)
        raise ConfigError(f"no usable trials ({len(trials.status)} trials: {counts}; the fit needs completed trials "
                          f"with a validation robust accuracy): check the search's errors and run it again")
    optima, notes = fit_widths(trials, n_boot=n_boot, seed=seed)
    if len(optima) < 2:
        raise ConfigError(f"the scaling fit needs at least two widths with completed trials, got width "
                          f"{optima[0].width} only: search more widths (python -m tuner.search --widths 1,4,10) "
                          f"or pass several run directories")
    return fit_scaling(optima, predict=predict, seed=seed, notes=notes)
