"""The response-surface estimator: recovery of known rules and peaks, fidelity, honest intervals, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import fit_calibration
from tests.analysis.synthetic import A, B, WIDTHS, synthetic_rows
from tuner.analysis.surface import PROFILE_STEP, fit_surface
from tuner.analysis.trials import Trials


def fit(rows: list[dict], widths=WIDTHS, **kwargs):
    return fit_surface(Trials.from_rows(rows), widths, **kwargs)


def test_recovers_the_exponent_of_a_known_rule_from_noisy_trials():
    """One search (5 widths × 12 λ, noise 0.01); how often the interval covers is the coverage test's job."""
    result = fit(synthetic_rows(1, n=12))
    assert abs(result.b - B) < 0.05  # sd(b) over such searches: 0.025
    assert result.a == pytest.approx(A, rel=0.15)
    b_ci, a_ci = result.b_interval(), result.a_interval()
    assert b_ci.bounded and b_ci.half_width() < 0.1 and a_ci.bounded
    for r in result.per_width:
        assert abs(math.log(r.lam_star / (A * r.width ** B))) < 0.3 and r.lam_star_ci.bounded


def test_noiseless_asymmetric_curves_give_their_peaks_and_shape():
    """A rise then a flatter fall (curvature above the peak a quarter of that below): peaks and ρ are exact."""
    result = fit(synthetic_rows(1, noise=1e-5, ratio=0.25, n=12))
    assert result.shape_ratio == 0.25
    assert result.b == pytest.approx(B, abs=0.01)
    for r in result.per_width:
        assert math.log(r.lam_star) == pytest.approx(math.log(A * r.width ** B), abs=PROFILE_STEP)


def test_a_symmetric_parabola_misplaces_an_asymmetric_peak():
    """Why the shape ratio is profiled: forcing ρ = 1 on curves with ρ = 0.25 moves every peak into the plateau."""
    rows = synthetic_rows(1, noise=1e-5, ratio=0.25, n=12)
    symmetric = fit(rows, ratios=(1.0,))
    errors = [math.log(r.lam_star / (A * r.width ** B)) for r in symmetric.per_width]
    assert np.mean(errors) > 0.2 and all(e > 0.05 for e in errors), errors


def test_early_stopped_trials_enter_at_their_fidelity():
    """A per-width offset per number of epochs run: shifting every stopped trial of a width changes nothing."""
    rows = synthetic_rows(2, stopped=0.3)
    shifted = [{**r, "val_robust_acc": r["val_robust_acc"] + 0.05 * r["width"] ** 0.5}
               if r["status"] == "early_stopped" else r for r in rows]
    first, second = fit(rows), fit(shifted)
    assert first.b == second.b and first.b_interval() == second.b_interval()
    assert first.data.n == len(rows), "every stopped trial is used"


def test_failed_trials_are_counted_not_fitted():
    rows = synthetic_rows(3)
    failed = [{"width": w, "lam": 0.5, "status": "error", "val_robust_acc": None, "epochs_run": 2} for w in WIDTHS]
    with_failed, clean = fit(rows + failed), fit(rows)
    assert with_failed.b == clean.b and with_failed.b_interval() == clean.b_interval()
    assert all(r.n_failed == 1 and r.n_used == 10 for r in with_failed.per_width)


def test_flat_robust_accuracy_gives_unbounded_intervals_not_made_up_ones():
    result = fit(synthetic_rows(4, curvature=0.0, noise=0.02))
    assert result.b_interval().low is None and result.b_interval().high is None
    assert all(r.lam_star is None and "no peak" in r.note for r in result.per_width)


def test_replicates_measure_the_seed_noise():
    noise = 0.02
    with_seeds = fit(synthetic_rows(5, noise=noise, seeds=3, n=6))
    assert with_seeds.seed_sd == pytest.approx(noise, rel=0.25) and "replicate" in with_seeds.seed_sd_source
    assert "curve_lack_of_fit" in with_seeds.checks and with_seeds.checks["curve_lack_of_fit"]["p"] > 0.01
    without = fit(synthetic_rows(5, noise=noise, n=12))
    assert "residuals" in without.seed_sd_source and "curve_lack_of_fit" not in without.checks


def test_near_optimal_band_holds_the_peak_and_widens_with_noise():
    quiet, noisy = fit(synthetic_rows(6, noise=0.005, seeds=2)), fit(synthetic_rows(6, noise=0.03, seeds=2))
    for q, n in zip(quiet.per_width, noisy.per_width):
        assert q.band[0] <= q.lam_star <= q.band[1]
        assert n.band[1] / n.band[0] > q.band[1] / q.band[0]


def test_model_comparison_picks_the_form_that_generated_the_peaks():
    widths = (1, 2, 4, 8, 16, 32)
    power = fit(synthetic_rows(7, widths=widths, noise=0.002, n=12), widths)
    assert power.comparison["best"] == "power_law" and power.comparison["prediction_form"] == "power_law"
    linear = fit(synthetic_rows(7, widths=widths, noise=0.002, n=12, lam_star=lambda w: 0.5 + 1.5 * w), widths)
    assert linear.comparison["best"] == "linear_in_w" and linear.comparison["prediction_form"] == "linear_in_w"
    assert linear.predict(48)["form"] == "linear_in_w"
    assert linear.predict(48)["lam"] == pytest.approx(0.5 + 1.5 * 48, rel=0.15)
    assert sum(m["weight"] for m in linear.comparison["models"]) == pytest.approx(1.0)


def test_two_widths_still_give_an_interval_from_the_trials():
    result = fit(synthetic_rows(8, widths=(2, 8)), (2, 8))
    assert result.b_interval().bounded and result.b_interval().covers(B)
    assert result.comparison["models"] == [] and result.comparison["prediction_form"] == "power_law"
    assert "cannot be told apart" in result.comparison["note"]


def test_intervals_reach_nominal_coverage_on_simulated_searches():
    """A fixed set of 16 searches of the quick preset's design at 12 λ × 1 seed without early stopping (the
    full study, ≥ 200 searches per budget, is benchmarks/fit_calibration.py). The truth has λ-independent
    learning curves, so its λ* is exactly a·w^b. The intervals must cover b and also be informative."""
    setting = fit_calibration.parse_setting("quick:trials=12,grace_period=5")
    truth = fit_calibration.SCENARIOS["quadratic"]
    intervals = []
    for seed in range(16):
        trials, _ = fit_calibration.simulate_search(setting, truth, seed)
        intervals.append(fit_surface(trials, setting.plan().widths, forms=("power_law",)).b_interval())
    coverage = np.mean([i.covers(truth.b) for i in intervals])
    assert coverage >= 0.8, f"coverage {coverage:.2f}"
    assert np.mean([i.bounded for i in intervals]) >= 0.7, "intervals that cover by being unbounded say nothing"
    assert np.median([i.half_width() for i in intervals]) < 0.8


def rss_by_hand(x: np.ndarray, y: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Least squares of y = α − κ·(x − h)², κ ≥ 0 (else a flat line), for each peak h: the residual sum of squares."""
    rss = []
    for h in peaks:
        design = np.column_stack([np.ones_like(x), -(x - h) ** 2])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        fitted = design @ coef if coef[1] >= 0 else np.full_like(y, y.mean())
        rss.append(np.sum((y - fitted) ** 2))
    return np.array(rss)


def test_intervals_are_the_profile_likelihood_intervals_computed_by_hand():
    """Two widths, a symmetric parabola each: the free model and the rule have 2 × 3 coefficients, so both
    intervals use F(0.95; 1, n − 6) and σ² from the residuals; recomputed here on a finer grid of peaks."""
    rows = synthetic_rows(11, widths=(2, 8), n=8, noise=0.02)
    result = fit(rows, (2, 8), ratios=(1.0,), forms=("power_law",))
    quantile = stats.f.ppf(0.95, 1, len(rows) - 6)
    curves = []
    for width in (2, 8):
        x = np.log([r["lam"] for r in rows if r["width"] == width])
        y = np.array([r["val_robust_acc"] for r in rows if r["width"] == width])
        peaks = np.arange(x.min() - 1.5, x.max() + 1.5, 0.002)
        curves.append((peaks, rss_by_hand(x, y, peaks)))
    sigma2 = sum(rss.min() for _, rss in curves) / (len(rows) - 6)
    for (peaks, rss), found in zip(curves, result.per_width):
        inside = peaks[rss - rss.min() <= sigma2 * quantile]
        assert 0 < inside[0] and inside[-1] < peaks[-1], "bounded, or the test says nothing"
        np.testing.assert_allclose(np.log(found.lam_star_ci.to_list()), [inside[0], inside[-1]], atol=0.02)
    (h0, r0), (h1, r1) = curves
    total = r0[:, None] + r1[None, :]
    region = total <= total.min() * (1 + quantile / (len(rows) - 6))
    b = (h1[None, :] - h0[:, None]) / math.log(8 / 2)
    b_ci = result.b_interval()
    np.testing.assert_allclose([b_ci.low, b_ci.high], [b[region].min(), b[region].max()], atol=0.02)


def test_a_and_the_predictions_follow_the_rule_when_the_narrowest_width_is_not_one():
    """λ* = a·w^b: a is λ* at width 1, whichever widths were searched."""
    widths = (2, 4, 8, 16)
    result = fit(synthetic_rows(12, widths=widths, noise=1e-5, n=12), widths)
    assert result.b == pytest.approx(B, abs=0.01) and result.a == pytest.approx(A, rel=0.03)
    assert result.a_interval().to_list() == pytest.approx([A, A], rel=0.03)
    for width in (4, 32):
        assert result.predict(width)["lam"] == pytest.approx(A * width ** B, rel=0.05)
        assert result.predict(width)["lam"] == pytest.approx(result.a * width ** result.b, rel=0.01)
