"""Exact intervals and paired tests (lit_defense.stats) against closed forms and brute force."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lit_defense.stats import (
    Estimate,
    Paired,
    binom_sf,
    clopper_pearson,
    decide_proportion,
    mcnemar_p,
    paired,
)


def _sf_exact(k, n, p):
    p = Fraction(p)
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


@pytest.mark.parametrize("k, n, p", [(3, 10, 0.2), (50, 128, 0.4), (399, 400, 0.99), (1, 1000, 0.001), (0, 5, 0.3)])
def test_binomial_tail_matches_the_exact_sum(k, n, p):
    assert math.isclose(binom_sf(k, n, p), _sf_exact(k, n, p), rel_tol=1e-9, abs_tol=1e-15)


def test_clopper_pearson_closed_forms_and_coverage_definition():
    # k = 0 and k = n have closed forms: (alpha/2)^(1/n)
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and math.isclose(hi, 1 - 0.025 ** (1 / 10), rel_tol=1e-9)
    lo, hi = clopper_pearson(400, 400)
    assert hi == 1.0 and math.isclose(lo, 0.025 ** (1 / 400), rel_tol=1e-9)
    # in general the bounds are where the binomial tails equal 2.5%
    lo, hi = clopper_pearson(330, 400)
    assert math.isclose(_sf_exact(330, 400, lo), 0.025, rel_tol=1e-6)
    assert math.isclose(1 - _sf_exact(331, 400, hi), 0.025, rel_tol=1e-6)
    assert lo < 330 / 400 < hi and hi - lo < 0.08  # ~ +-3.7 points at n = 400


def test_estimate_is_the_reports_shape():
    e = Estimate.of(0.055, 400)
    d = e.to_dict()
    assert set(d) == {"value", "ci", "k", "n"} and d["k"] == 22 and d["n"] == 400
    assert d["ci"][0] < d["value"] < d["ci"][1]
    assert e.text().startswith("5.5% [")
    with pytest.raises(ValueError, match="0 <= k <= n"):
        Estimate(5, 4)


def test_paired_counts_only_the_discordant_inputs():
    first = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    second = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    p = paired(first, second)
    assert (p.b, p.c, p.n) == (2, 1, 6) and math.isclose(p.difference, 1 / 6)
    assert math.isclose(mcnemar_p(2, 1), 0.5) and mcnemar_p(0, 0) == 1.0
    assert math.isclose(Paired(10, 0, 100).p_value, 0.5**10)
    with pytest.raises(ValueError, match="same inputs"):
        paired(first, second[:3])


def test_a_paired_interval_is_sharper_than_two_separate_ones():
    """Two models that agree on most inputs: 20 vs 15 discordant of 400, 10.0% vs 8.75% robust."""
    p = Paired(20, 15, 400)
    lo, hi = p.interval()
    assert lo < p.difference < hi and hi - lo < 0.10
    a, b = clopper_pearson(40, 400), clopper_pearson(35, 400)
    assert hi - lo < (a[1] - a[0]) + (b[1] - b[0])


def test_three_states():
    assert decide_proportion(0, 400, 0.10).state == "pass"
    assert decide_proportion(200, 400, 0.10).state == "fail"
    d = decide_proportion(45, 400, 0.10)  # 11.25% against 10%
    assert d.state == "inconclusive" and d.inputs_to_resolve > 400
    assert decide_proportion(400, 400, 0.95, above=False).state == "pass"
    assert decide_proportion(300, 400, 0.95, above=False).state == "fail"
