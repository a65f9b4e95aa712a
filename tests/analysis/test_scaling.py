"""The conclusion in words follows b's interval; advice is computed; numbers print as people write them."""

from __future__ import annotations

import math
import re

import pytest

from tests.analysis.synthetic import synthetic_rows
from tuner.analysis.scaling import budget_now, exponent, fit_trials, number, regime
from tuner.analysis.trials import Trials
from tuner.errors import ConfigError

E_NOTATION = re.compile(r"\d[eE][-+]?\d")


def scaling_of(rows: list[dict], **kwargs):
    return fit_trials(Trials.from_rows(rows), **kwargs).content


def stated_interval(content: dict) -> str:
    return f"b = {exponent(content['b'])} [{exponent(content['b_ci'][0])}, {exponent(content['b_ci'][1])}]"


@pytest.mark.parametrize("b, words, direction", [(0.5, "λ* grows with width: ", "grows"),
                                                 (-0.5, "λ* falls with width: ", "falls")])
def test_a_clear_exponent_is_stated_with_its_interval(b, words, direction):
    content = scaling_of(synthetic_rows(0, b=b, a=6.0, n=12))
    low, high = content["b_ci"]
    assert (low > 0) if direction == "grows" else (high < 0)
    assert content["direction"] == direction
    assert content["conclusion"] == words + stated_interval(content)
    assert content["advice"] is None and "times λ* at width 1" in content["what_the_data_show"]


def test_an_interval_holding_zero_says_no_evidence_and_how_many_more_trials():
    rows = synthetic_rows(2, b=0.0, a=5.0, widths=(1, 4, 10), n=10, noise=0.02, curvature=0.03)
    content = scaling_of(rows)
    low, high = content["b_ci"]
    assert low < 0 < high and high - low > 0.5
    assert content["conclusion"] == "no evidence that λ* changes with width at this budget: " + stated_interval(content)
    assert budget_now(Trials.from_rows(rows)) == (10, 1)
    advice = re.search(r"of about ±0.25, run --trials (\d+) \(now 10\) or --seeds (\d+) \(now 1\)", content["advice"])
    assert advice and int(advice[1]) > 10 and int(advice[2]) > 1, content["advice"]
    assert "do not show whether λ* changes with width" in content["what_the_data_show"]


def test_an_interval_unbounded_both_ways_gives_no_estimate():
    content = scaling_of(synthetic_rows(1, b=0.0, a=5.0, widths=(1, 4, 10), n=6, noise=0.03, curvature=0.02),
                         predict=[20])
    assert content["b_ci"] == [None, None]
    assert content["conclusion"] == ("no evidence that λ* changes with width at this budget: b is not bounded either "
                                     "way (every value fits the trials)")
    assert "not bounded even at one standard error" in content["advice"] and "--trials 24 (now 6)" in content["advice"]
    assert content["predictions"][0]["lam"] is None and content["predictions"][0]["lam_ci"] == [None, None]


def test_a_narrow_interval_around_zero_rules_out_a_change():
    content = scaling_of(synthetic_rows(2, b=0.0, a=5.0, n=12, noise=0.003))
    low, high = content["b_ci"]
    assert low < 0 < high and high - low < 0.5
    assert content["conclusion"] == "no evidence that λ* changes with width: " + stated_interval(content)
    assert content["advice"] is None and "times λ* at width 1" in content["what_the_data_show"]


def test_numbers_never_print_in_e_notation_or_as_negative_zero():
    assert not E_NOTATION.search(number(-1.34e-16)) and not E_NOTATION.search(number(1.5e7))
    assert number(1234.5) == "1230" and number(0.456789) == "0.457" and number(6.0) == "6"
    assert exponent(-1.34e-16) == "0.00" and exponent(0.456) == "0.46" and exponent(None) == "unbounded"
    assert number(None) == "unbounded"


def test_scaling_json_rounds_its_numbers():
    content = scaling_of(synthetic_rows(3, b=0.0, a=5.0, n=12, noise=0.003))
    text = repr({k: v for k, v in content.items() if k not in ("model_comparison", "checks")})
    assert not E_NOTATION.search(text), text


def test_widths_with_too_few_lam_values_are_left_out_with_a_note():
    rows = synthetic_rows(4, widths=(1, 2, 4)) + synthetic_rows(4, widths=(8,), n=2)
    content = scaling_of(rows)
    assert [w["width"] for w in content["per_width"]] == [1, 2, 4]
    assert any("width 8 left out: 2 usable λ value(s)" in note for note in content["notes"])
    with pytest.raises(ConfigError, match="at least two widths"):
        scaling_of(synthetic_rows(4, widths=(1,)) + synthetic_rows(4, widths=(8,), n=2))


def test_predictions_use_the_preferred_form_and_say_so():
    content = scaling_of(synthetic_rows(5, n=12), predict=[32])
    (prediction,) = content["predictions"]
    assert prediction["form"] == content["model_comparison"]["prediction_form"] and prediction["extrapolated"]
    assert "predictions use" in content["model_comparison"]["note"]


@pytest.mark.parametrize("sign, trend", [(+1, "rises"), (-1, "falls")])
def test_the_regime_compares_widths_at_the_same_lam(sign, trend):
    """Stability = 0.5 + sign·0.05·ln w + 0.1·ln λ: each width samples other λ values (narrow ones the high λ,
    which alone would make stability look falling with width); compared at one λ, the width trend is recovered."""
    rows = []
    for width, lams in ((1, [8.0, 16.0, 32.0]), (4, [2.0, 4.0, 8.0]), (16, [0.5, 1.0, 2.0])):
        for lam in lams:
            stability = 0.5 + sign * 0.05 * math.log(width) + 0.1 * math.log(lam)
            rows.append({"width": width, "lam": lam, "status": "completed", "epochs_run": 5, "val_robust_acc": 0.5,
                         "val_natural_acc": 0.9 - 0.02 * math.log(lam), "val_stability": stability})
    result = regime(Trials.from_rows(rows), [1, 4, 16])
    assert result["stability_with_width"] == trend
    at = result["at_lam"]
    for width, level in result["stability"]["by_width"].items():
        assert level == pytest.approx(0.5 + sign * 0.05 * math.log(int(width)) + 0.1 * math.log(at), abs=2e-3)
    assert result["stability"]["per_decade_of_lam"] == pytest.approx(0.1 * math.log(10), abs=1e-3)
    assert result["natural"]["per_decade_of_lam"] == pytest.approx(-0.02 * math.log(10), abs=1e-3)
    assert ("not the regime of Wu et al." in result["words"]) == (trend == "rises")
