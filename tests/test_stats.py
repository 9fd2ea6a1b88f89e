"""Welch's t-test against Student's t tables and Welch's formulas worked by hand."""

from __future__ import annotations

import math

import pytest

from analysis.stats import against_baseline, betainc, significant_drop, t_two_sided_p


@pytest.mark.parametrize("t,df,p", [
    (12.706, 1, 0.05), (4.303, 2, 0.05), (2.228, 10, 0.05), (2.086, 20, 0.05),
    (1.812, 10, 0.10), (3.169, 10, 0.01), (2.576, 1e6, 0.01), (1.960, 1e6, 0.05),
])
def test_t_distribution_matches_the_critical_value_tables(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)


def test_incomplete_beta_closed_forms():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert betainc(2, 1, 0.5) == pytest.approx(0.25)  # x^a for b = 1
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)  # symmetric
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_welch_by_hand():
    a, b = [0.80, 0.82, 0.78], [0.85, 0.86, 0.84, 0.85]
    va = sum((x - 0.8) ** 2 for x in a) / 2  # 0.0004
    vb = sum((x - 0.85) ** 2 for x in b) / 3  # 0.0000666...
    se2 = va / 3 + vb / 4
    t = (0.80 - 0.85) / math.sqrt(se2)
    df = se2 ** 2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    test = against_baseline(a, b)
    assert test.kind == "welch"
    assert test.t == pytest.approx(t) and test.df == pytest.approx(df)
    assert test.p == pytest.approx(t_two_sided_p(t, df))
    assert significant_drop(test)  # t = -4.08 on 2.5 df: p = 0.037


def test_one_sample_against_a_single_baseline_and_untestable_cells():
    test = against_baseline([0.80, 0.82], [0.84])
    assert test.kind == "one-sample" and test.df == 1
    assert test.t == pytest.approx((0.81 - 0.84) / math.sqrt(0.0002 / 2))
    assert not significant_drop(test)  # t = -3 on 1 df: p = 0.205
    assert against_baseline([0.8], [0.84, 0.85]) is None  # one run: no variance
    assert against_baseline([0.8, float("nan")], [0.84]) is None
    same = against_baseline([0.5, 0.5], [0.6, 0.6])
    assert same.p == 0.0 and significant_drop(same)
    assert not significant_drop(against_baseline([0.9, 0.91], [0.84, 0.85]))  # a rise
