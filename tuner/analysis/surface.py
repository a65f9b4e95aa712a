"""The response surface of validation robust accuracy over (log λ, width), and λ*(w) from it.

One model for every width and trial (x = log λ, y = a trial's validation robust accuracy at its
selected epoch, d = x − h(w)):

    y = α_w + φ_{w,e} − κ_w·(min(d, 0)² + ρ·max(d, 0)²) + ε,    κ_w ≥ 0,    ε ~ N(0, σ²) independent

- h(w) = log λ*(w), the peak. A form of the rule gives h at every width from two numbers,
  u = (log λ* of the narrowest width, log λ* of the widest): the power law λ* = a·w^b
  interpolates log λ* linearly in log w, so b = (u₁ − u₀)/(log w_max − log w_min);
  `linear_in_w` and `linear_in_log_w` interpolate λ* itself linearly in w or in log w.
- A parabola with a different curvature on each side of the peak: ρ = curvature above / below,
  one for all widths, profiled over SHAPE_RATIOS. Real curves rise and then flatten into a plateau
  (REFERENCE.md §8 gives ρ ≈ 0–0.5); a symmetric parabola there puts λ* inside the plateau with
  intervals that miss the truth (BENCHMARKS.md). ρ = 0 is a pure plateau: λ* is where it begins.
- α_w (level) and κ_w (curvature) per width; κ_w ≥ 0, so a width whose trials show no peak pins h
  down only through the direction of its slope.
- φ_{w,e}: trials of width w that ran e epochs (stopped early) sit φ below those that ran the most
  epochs, the reference fidelity of the whole surface. Per width, because how far a trial is from
  its last epoch depends on width (measured on `quick`: 0.13 at w1, 0.035 at w10 after 3 of 5).

All nuisance coefficients but ρ belong to one width, so for each ρ the residual sum of squares
splits by width: RSS(u) = min_ρ Σ_w R_w(ρ, h_w(u)), where the width's profile R_w(ρ, h) (least
squares in α, κ, φ for a fixed peak, κ ≥ 0) is computed once on a fine grid of h. Every form,
interval and width is then a sum of interpolated profiles.

**Intervals are profile-likelihood (F) intervals.** The 95% confidence region for u is
{u : RSS(u) ≤ RSS_min·(1 + F₁,df(0.95)/df)}, df = trials − coefficients; the interval of a
quantity q(u) (b, a, a prediction) is the range of q over the region (for a linear model, this is
Fieller's interval of a ratio). σ² comes from the residuals, so the intervals carry seed noise and
any lack of fit. A width's own λ* (a diagnostic, free of the rule) has the interval
{h : R_w(h) − min R_w ≤ σ̂²·F₁,df(0.95)}, profiled over ρ and the other widths' peaks, σ̂² from
the free model (every width its own peak). The optimum is a broad plateau: where the data do not
pin the peak down, the region runs to the edge of the grid (REACH beyond the sampled log-λ range)
and the interval is unbounded on that side (None), not cut off.

**Near-optimal band** of a width: the sampled λ whose fitted robust accuracy is within one
seed-noise sd of the curve's best. The seed-noise sd is the replicates' pure error when a search
ran replicate seeds (≥ 2 degrees of freedom), else the free model's residual sd (which also holds
any lack of fit). **Checks**: with replicates, a lack-of-fit F test of the curves against pure
error; with three or more widths, an F test of the rule's constraint on the free per-width peaks.
The three forms have the same number of coefficients, so AICc ranks them by RSS.

Pure functions on arrays; `tuner.analysis.trials` reads the trials, `tuner.analysis.scaling` words
the result, `tuner.fit` writes files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from tuner.analysis.trials import Trials

LEVEL = 0.95
SD_LEVEL = 0.6827  # the one-standard-error level: how much more data a narrower interval needs
REACH = 2.0  # a peak up to this far (in log λ) beyond the sampled range lies on the grid; beyond: unbounded
PROFILE_STEP = 0.01  # grid step of the per-width profiles, in log λ
COARSE_STEP = 0.1  # grid steps of u: a coarse grid finds the confidence region, a fine one measures it
RULE_STEP = 0.02
SHAPE_RATIOS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)  # ρ = curvature above the peak / below it, profiled out
FORMS = {  # name → (formula, interpolated in log λ (True) or in λ, the transform of w it is linear in)
    "power_law": ("lam = a * w**b", True, np.log),
    "linear_in_w": ("lam = c + d * w", False, lambda w: np.asarray(w, float)),
    "linear_in_log_w": ("lam = c + d * log(w)", False, np.log),
}
RULE_FORM = "power_law"  # the form of the paper's claim; another form replaces it for predictions only when clearly better
CLEARLY_BETTER = 2.0  # ΔAICc by which another form must beat the power law to be used for predictions


# --------------------------------------------------------------------------- one width


@dataclasses.dataclass(frozen=True)
class WidthData:
    """One width's usable trials: x = log λ, y, and the lower-fidelity group of each (−1: reference fidelity)."""

    width: int
    x: np.ndarray
    y: np.ndarray
    epochs: np.ndarray
    offset_index: np.ndarray
    n_offsets: int

    @property
    def n_coef(self) -> int:
        """α, κ and one φ per lower-fidelity group (the peak h not counted)."""
        return 2 + self.n_offsets

    def design(self, h: np.ndarray, ratio: float) -> np.ndarray:
        """(G, n, n_coef) for peaks h (G,): columns 1, −(min(d,0)² + ratio·max(d,0)²), lower-fidelity indicators."""
        d = self.x[None, :] - h[:, None]
        shape = -(np.minimum(d, 0) ** 2 + ratio * np.maximum(d, 0) ** 2)
        offsets = (self.offset_index[None, :, None] == np.arange(self.n_offsets)[None, None, :]).astype(float)
        return np.concatenate([np.stack([np.ones_like(d), shape], axis=-1),
                               np.broadcast_to(offsets, (*d.shape, self.n_offsets))], axis=-1)

    def solve(self, h: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """Least squares for each peak in h with κ ≥ 0: (coefficients (G, n_coef), RSS (G,))."""
        design = self.design(h, ratio)
        gram = np.einsum("gni,gnj->gij", design, design)
        rhs = np.einsum("gni,n->gi", design, self.y)
        coef = np.linalg.solve(gram + 1e-12 * np.eye(self.n_coef), rhs[..., None])[..., 0]
        concave = coef[:, 1] >= 0
        if not concave.all():  # κ < 0 would be a valley: refit with κ = 0 (a flat curve plus offsets)
            keep = [0, *range(2, self.n_coef)]
            sub = gram[~concave][:, keep][:, :, keep]
            flat = np.zeros((int((~concave).sum()), self.n_coef))
            flat[:, keep] = np.linalg.solve(sub + 1e-12 * np.eye(len(keep)), rhs[~concave][:, keep, None])[..., 0]
            coef[~concave] = flat
        residual = self.y[None, :] - np.einsum("gni,gi->gn", design, coef)
        return coef, np.einsum("gn,gn->g", residual, residual)


@dataclasses.dataclass(frozen=True)
class Profile:
    """R_w(ρ, h): a width's RSS for each shape ratio ρ and peak h on their grids."""

    data: WidthData
    ratios: np.ndarray  # (R,)
    h: np.ndarray  # (G,)
    rss: np.ndarray  # (R, G)

    @classmethod
    def of(cls, data: WidthData, ratios: np.ndarray, h: np.ndarray) -> Profile:
        return cls(data, ratios, h, np.stack([data.solve(h, float(r))[1] for r in ratios]))

    def at(self, h: np.ndarray) -> np.ndarray:
        """(R, len(h)): RSS at the peaks h (inside the grid) for every ratio, interpolated linearly on the even grid."""
        position = np.clip((h - self.h[0]) / (self.h[1] - self.h[0]), 0, len(self.h) - 1)
        left = np.minimum(position.astype(int), len(self.h) - 2)
        frac = position - left
        return self.rss[:, left] * (1 - frac) + self.rss[:, left + 1] * frac

    def curve(self, x: np.ndarray, h: float, ratio: float, sigma2: float) -> tuple[np.ndarray, np.ndarray]:
        """The fitted curve at the reference fidelity for peak h and ratio, and its standard error given them."""
        peak = np.array([h])
        coef, _ = self.data.solve(peak, ratio)
        design = self.data.design(peak, ratio)[0]
        at_x = WidthData(self.data.width, x, np.zeros_like(x), np.zeros(len(x), int), np.full(len(x), -1),
                         self.data.n_offsets).design(peak, ratio)[0]
        active = np.flatnonzero((coef[0] != 0) | (np.arange(self.data.n_coef) == 0))
        cov = sigma2 * np.linalg.pinv(design[:, active].T @ design[:, active])
        return at_x @ coef[0], np.sqrt(np.einsum("ni,ij,nj->n", at_x[:, active], cov, at_x[:, active]))


# --------------------------------------------------------------------------- all widths


@dataclasses.dataclass(frozen=True)
class SurfaceData:
    """The usable trials of the fitted widths, width by width, and the grid every peak lives on."""

    widths: tuple[WidthData, ...]
    h_grid: np.ndarray  # the sampled log-λ range ± REACH

    @classmethod
    def of(cls, trials: Trials, widths: Sequence[int]) -> SurfaceData:
        """The usable trials of these widths. A completed trial without epochs_run is at the reference fidelity."""
        usable = trials.usable
        reference = int(trials.epochs_run[usable].max(initial=0))
        parts = []
        for width in sorted(widths):
            keep = usable & (trials.width == width)
            epochs = np.where((trials.status[keep] == "completed") & (trials.epochs_run[keep] <= 0), reference,
                              trials.epochs_run[keep])
            lower = epochs < reference
            groups, index = np.unique(epochs[lower], return_inverse=True)
            offset_index = np.full(len(epochs), -1)
            offset_index[lower] = index.ravel()
            parts.append(WidthData(width=int(width), x=np.log(trials.lam[keep]), y=trials.robust[keep], epochs=epochs,
                                   offset_index=offset_index, n_offsets=len(groups)))
        x = np.concatenate([p.x for p in parts])
        low, high = float(x.min()) - REACH, float(x.max()) + REACH
        return cls(widths=tuple(parts), h_grid=np.linspace(low, high, int(round((high - low) / PROFILE_STEP)) + 1))

    @property
    def n(self) -> int:
        return sum(len(p.y) for p in self.widths)

    @property
    def width_values(self) -> tuple[int, ...]:
        return tuple(p.width for p in self.widths)


def pure_error(data: SurfaceData) -> tuple[float, int]:
    """Sum of squares and degrees of freedom of replicates about their (width, λ, epochs run) means."""
    ss, df = 0.0, 0
    for part in data.widths:
        key = np.unique(np.column_stack([np.round(part.x, 9), part.epochs]), axis=0, return_inverse=True)[1].ravel()
        counts = np.bincount(key)
        means = np.bincount(key, weights=part.y) / counts
        ss += float(np.sum((part.y - means[key]) ** 2))
        df += int(np.sum(counts - 1))
    return ss, df


def optima_of(form: str, u: np.ndarray, widths: Sequence[float], span: tuple[int, int]) -> np.ndarray:
    """log λ*(w) at `widths` for each row of u = (log λ* at span[0], at span[1]); nan where the form gives λ* ≤ 0."""
    _, in_logs, transform = FORMS[form]
    g = np.asarray(transform(np.asarray(widths, float)))
    g0, g1 = transform(np.asarray(span, float))
    t = (g - g0) / (g1 - g0)
    if in_logs:
        return u[:, :1] + (u[:, 1:] - u[:, :1]) * t
    lam = np.exp(u[:, :1]) + (np.exp(u[:, 1:]) - np.exp(u[:, :1])) * t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lam > 0, np.log(np.where(lam > 0, lam, 1.0)), np.nan)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A confidence interval; an end is None where the data do not bound it."""

    low: float | None
    high: float | None

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.bounded else math.inf

    def covers(self, value: float) -> bool:
        return (self.low is None or self.low <= value) and (self.high is None or value <= self.high)

    def map(self, f: Any) -> Interval:
        return Interval(None if self.low is None else float(f(self.low)), None if self.high is None else float(f(self.high)))

    def to_list(self) -> list[float | None]:
        return [self.low, self.high]


def interval_over(values: np.ndarray, inside: np.ndarray, edge: np.ndarray) -> Interval:
    """The range of a quantity over a confidence region; an end reached on the grid's edge (or nan) is unbounded."""
    v, e = values[inside], edge[inside]
    if np.isnan(v).any():  # a linear form whose λ* crosses zero: arbitrarily small
        finite = v[~np.isnan(v)]
        return Interval(None, float(finite.max()) if finite.size and not e[~np.isnan(v)][np.argmax(finite)] else None)
    low, high = int(np.argmin(v)), int(np.argmax(v))
    return Interval(None if e[low] else float(v[low]), None if e[high] else float(v[high]))


@dataclasses.dataclass(frozen=True)
class Region:
    """One form's RSS on a grid of u, and the confidence regions it defines."""

    form: str
    u: np.ndarray  # (G, 2)
    rss: np.ndarray  # (G,)
    edge: np.ndarray  # (G,) on the grid's outer edge
    df: int
    span: tuple[int, int]

    @property
    def best(self) -> np.ndarray:
        return self.u[int(np.argmin(self.rss))]

    @property
    def rss_min(self) -> float:
        return float(self.rss.min())

    def inside(self, level: float = LEVEL) -> np.ndarray:
        return self.rss <= self.rss_min * (1 + stats.f.ppf(level, 1, self.df) / self.df)

    def interval(self, values: np.ndarray, level: float = LEVEL) -> Interval:
        return interval_over(values, self.inside(level), self.edge)

    def optima(self, widths: Sequence[float]) -> np.ndarray:
        return optima_of(self.form, self.u, widths, self.span)


def fit_region(profiles: Sequence[Profile], h_grid: np.ndarray, form: str, df: int) -> Region:
    """RSS(u) = min over ρ of Σ_w R_w(ρ, h_w(u)) for `form`: on a coarse grid of u spanning the h grid, then
    on a fine grid (RULE_STEP) over the box around the coarse confidence region."""
    span = (profiles[0].data.width, profiles[-1].data.width)
    low, high = float(h_grid[0]), float(h_grid[-1])

    def evaluate(axis0: np.ndarray, axis1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.stack(np.meshgrid(axis0, axis1, indexing="ij"), axis=-1).reshape(-1, 2)
        h = optima_of(form, u, [p.data.width for p in profiles], span)
        rss = sum(p.at(h[:, k]) for k, p in enumerate(profiles)).min(axis=0)
        return u, np.where(np.isnan(h).any(axis=1), np.inf, rss)

    coarse = np.linspace(low, high, int(round((high - low) / COARSE_STEP)) + 1)
    u, rss = evaluate(coarse, coarse)
    threshold = rss.min() * (1 + stats.f.ppf(LEVEL, 1, df) / df)
    near = u[rss <= threshold * 1.05 + 1e-12]
    box = [(max(low, near[:, k].min() - 2 * COARSE_STEP), min(high, near[:, k].max() + 2 * COARSE_STEP))
           for k in range(2)]
    u, rss = evaluate(*(np.linspace(a, b, int(round((b - a) / RULE_STEP)) + 1) for a, b in box))
    edge = (np.isclose(u, low) | np.isclose(u, high)).any(axis=1)
    return Region(form=form, u=u, rss=rss, edge=edge, df=df, span=span)


# --------------------------------------------------------------------------- the fit


@dataclasses.dataclass(frozen=True)
class WidthResult:
    """One width's own curve (free of the rule): its peak λ* with an interval, and its near-optimal band."""

    width: int
    lam_star: float | None  # None: no peak (robust accuracy is flat in log λ at this width)
    lam_star_ci: Interval
    robust_at_star: float | None
    band: tuple[float, float]  # sampled λ within one seed-noise sd of the curve's best
    peak: float  # log λ of the fitted curve's peak (also where there is no significant peak)
    lam_range: tuple[float, float]  # the sampled λ range
    n_used: int
    n_completed: int
    n_early_stopped: int
    n_failed: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "lam_star": self.lam_star, "lam_star_ci": self.lam_star_ci.to_list(),
                "robust_acc_at_star": self.robust_at_star, "near_optimal_band": list(self.band),
                "lam_range": list(self.lam_range), "n_used": self.n_used, "n_completed": self.n_completed,
                "n_early_stopped": self.n_early_stopped, "n_failed": self.n_failed, "note": self.note}


@dataclasses.dataclass(frozen=True)
class SurfaceFit:
    """The fitted surface: the rule (power law), the per-width curves, checks, the form comparison."""

    data: SurfaceData
    profiles: tuple[Profile, ...]
    regions: dict[str, Region]
    sigma2_free: float  # residual variance of the free model (every width its own peak)
    df_free: int
    shape_ratio: float  # ρ of the free model: curvature above the peak / below it
    per_width: list[WidthResult]
    seed_sd: float
    seed_sd_source: str
    checks: dict[str, Any]
    comparison: dict[str, Any]

    @property
    def rule(self) -> Region:
        return self.regions[RULE_FORM]

    @property
    def log_w_span(self) -> float:
        widths = self.data.width_values
        return math.log(widths[-1]) - math.log(widths[0])

    def b_values(self) -> np.ndarray:
        return (self.rule.u[:, 1] - self.rule.u[:, 0]) / self.log_w_span

    @property
    def b(self) -> float:
        best = self.rule.best
        return float((best[1] - best[0]) / self.log_w_span)

    @property
    def a(self) -> float:
        return math.exp(self.rule.best[0] - self.b * math.log(self.data.width_values[0]))

    def b_interval(self, level: float = LEVEL) -> Interval:
        return self.rule.interval(self.b_values(), level)

    def a_interval(self) -> Interval:
        log_a = self.rule.u[:, 0] - self.b_values() * math.log(self.data.width_values[0])
        return self.rule.interval(log_a).map(math.exp)

    def curve(self, index: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Width `index`'s own fitted curve (reference fidelity) at x = log λ, and its standard error."""
        return self.profiles[index].curve(x, self.per_width[index].peak, self.shape_ratio, self.sigma2_free)

    def lam_at(self, widths: Sequence[float], form: str = RULE_FORM) -> tuple[np.ndarray, list[Interval]]:
        """λ*(w) of a form at these widths, with pointwise 95% intervals."""
        region = self.regions[form]
        values = region.optima(widths)
        return np.exp(values[int(np.argmin(region.rss))]), [region.interval(values[:, k]).map(math.exp)
                                                            for k in range(len(widths))]

    def predict(self, width: int) -> dict[str, Any]:
        """The recommended λ for a width, from the form the comparison picks for predictions."""
        form = self.comparison["prediction_form"]
        lam, (interval,) = self.lam_at([width], form)
        widths = self.data.width_values
        return {"width": int(width), "lam": float(lam[0]), "lam_ci": interval.to_list(), "form": form,
                "extrapolated": not widths[0] <= width <= widths[-1]}


def fit_surface(trials: Trials, widths: Sequence[int], *, forms: Sequence[str] = tuple(FORMS),
                ratios: Sequence[float] = SHAPE_RATIOS) -> SurfaceFit:
    """The surface over these widths' usable trials (two widths or more).

    Raises ValueError when the trials cannot fit the model's coefficients.
    """
    data = SurfaceData.of(trials, widths)
    coefficients = sum(p.n_coef for p in data.widths) + (len(ratios) > 1)  # + the shape ratio, when profiled
    df_free, df_rule = data.n - coefficients - len(data.widths), data.n - coefficients - 2
    if df_free < 1:
        raise ValueError(f"{data.n} usable trials cannot fit {coefficients + len(data.widths)} coefficients")
    ratio_grid = np.asarray(ratios, float)
    profiles = tuple(Profile.of(part, ratio_grid, data.h_grid) for part in data.widths)
    best_each = np.stack([p.rss.min(axis=1) for p in profiles])  # (W, R): each width at its own best peak
    free_by_ratio = best_each.sum(axis=0)
    ratio_index = int(np.argmin(free_by_ratio))
    rss_free = float(free_by_ratio[ratio_index])
    sigma2_free = max(rss_free, 1e-30) / df_free
    regions = {form: fit_region(profiles, data.h_grid, form, df_rule) for form in dict.fromkeys((RULE_FORM, *forms))}
    ss_pe, df_pe = pure_error(data)
    if df_pe >= 2:
        seed_sd, source = math.sqrt(ss_pe / df_pe), f"replicate seeds ({df_pe} degrees of freedom)"
    else:
        seed_sd, source = math.sqrt(sigma2_free), "residuals of the per-width curves (no replicates; holds any lack of fit)"
    per_width = []
    for k, profile in enumerate(profiles):
        others = free_by_ratio - best_each[k]  # (R,): the other widths at their own best peaks
        per_width.append(_width_result(trials, profile, profile.rss + others[:, None], sigma2_free, df_free, seed_sd))
    checks = _checks(data, rss_free, df_free, regions[RULE_FORM], ss_pe, df_pe)
    return SurfaceFit(data=data, profiles=profiles, regions=regions, sigma2_free=sigma2_free, df_free=df_free,
                      shape_ratio=float(ratio_grid[ratio_index]), per_width=per_width, seed_sd=seed_sd,
                      seed_sd_source=source, checks=checks, comparison=compare_forms(data, regions))


def _width_result(trials: Trials, profile: Profile, total: np.ndarray, sigma2: float, df: int,
                  seed_sd: float) -> WidthResult:
    """A width's peak from the free model's RSS as a function of (ρ, this width's peak) (`total`, (R, G))."""
    part = profile.data
    x_lo, x_hi = float(part.x.min()), float(part.x.max())
    counts = {"width": part.width, "lam_range": (math.exp(x_lo), math.exp(x_hi)), "n_used": len(part.y),
              "n_completed": trials.count(part.width, "completed"),
              "n_early_stopped": trials.count(part.width, "early_stopped"), "n_failed": trials.count(part.width, "error")}
    r, g = np.unravel_index(int(np.argmin(total)), total.shape)
    h, ratio = float(profile.h[g]), float(profile.ratios[r])
    grid = np.linspace(x_lo, x_hi, 401)
    fitted, _ = profile.curve(grid, h, ratio, sigma2)
    near = grid[fitted >= fitted.max() - seed_sd]
    band = (math.exp(near.min()), math.exp(near.max()))
    by_peak = total.min(axis=0)
    inside = by_peak - by_peak.min() <= sigma2 * stats.f.ppf(LEVEL, 1, df)
    edge = np.zeros(len(profile.h), bool)
    edge[[0, -1]] = True
    if inside.all():
        return WidthResult(lam_star=None, lam_star_ci=Interval(None, None), robust_at_star=None, band=band, peak=h,
                           note="no peak: robust accuracy is flat in log λ at this width", **counts)
    note = "" if x_lo <= h <= x_hi else "peak outside the sampled λ range: widen --lam-range"
    value, _ = profile.curve(np.array([h]), h, ratio, sigma2)
    return WidthResult(lam_star=math.exp(h), lam_star_ci=interval_over(profile.h, inside, edge).map(math.exp),
                       robust_at_star=float(value[0]), band=band, peak=h, note=note, **counts)


def _checks(data: SurfaceData, rss_free: float, df_free: int, rule: Region, ss_pe: float, df_pe: int) -> dict[str, Any]:
    """Lack of fit of the curves (against replicates) and of the rule (against free per-width peaks)."""
    checks: dict[str, Any] = {}
    if df_pe >= 2 and df_free > df_pe and ss_pe > 0:
        f = ((rss_free - ss_pe) / (df_free - df_pe)) / (ss_pe / df_pe)
        checks["curve_lack_of_fit"] = {"F": f, "df": [df_free - df_pe, df_pe],
                                       "p": float(stats.f.sf(f, df_free - df_pe, df_pe))}
    constraints = len(data.widths) - 2
    if constraints > 0:
        f = max(rule.rss_min - rss_free, 0.0) / constraints / (rss_free / df_free)
        checks["rule_lack_of_fit"] = {"F": f, "df": [constraints, df_free], "p": float(stats.f.sf(f, constraints, df_free))}
    return checks


def compare_forms(data: SurfaceData, regions: dict[str, Region]) -> dict[str, Any]:
    """AICc of each form (same coefficients, so a ranking by RSS), and the form predictions use, with the reason."""
    if len(data.widths) < 3 or len(regions) < 2:
        reason = ("two widths: every form passes through both peaks, so the forms cannot be told apart"
                  if len(data.widths) < 3 else "only the power law was fitted")
        return {"criterion": None, "models": [], "best": None, "prediction_form": RULE_FORM,
                "note": f"{reason}; predictions use the power law"}
    n = data.n
    k = n - regions[RULE_FORM].df + 1  # coefficients, and σ
    use_aicc = n > k + 1
    models = []
    for form, region in regions.items():
        aic = n * math.log(max(region.rss_min, 1e-300) / n) + 2 * k
        score = aic + 2 * k * (k + 1) / (n - k - 1) if use_aicc else aic
        models.append({"form": form, "formula": FORMS[form][0], "rss": region.rss_min, "score": score})
    best = min(m["score"] for m in models)
    total = sum(math.exp(-(m["score"] - best) / 2) for m in models)
    for m in models:
        m["delta"] = m["score"] - best
        m["weight"] = math.exp(-m["delta"] / 2) / total
    models.sort(key=lambda m: m["delta"])
    name = "AICc" if use_aicc else "AIC"
    power = next(m for m in models if m["form"] == RULE_FORM)
    if models[0]["form"] == RULE_FORM:
        form, note = RULE_FORM, "the power law fits best; predictions use it"
    elif power["delta"] >= CLEARLY_BETTER:
        form = models[0]["form"]
        note = f"{form} fits clearly better than the power law (Δ{name} {power['delta']:.1f}); predictions use it"
    else:
        form = RULE_FORM
        note = (f"{models[0]['form']} fits slightly better, by Δ{name} {power['delta']:.1f} < {CLEARLY_BETTER:g}, "
                f"which does not tell the forms apart; predictions use the power law")
    return {"criterion": name, "models": models, "best": models[0]["form"], "prediction_form": form, "note": note}
