"""GLUE metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantlib import metrics
from quantlib.tasks import TASKS


def test_mrpc_metrics_by_hand():
    preds = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    # tp 2, fp 1, fn 1, tn 2 -> acc 4/6, f1 2*2/(4+1+1)
    out = metrics.compute(TASKS["mrpc"], preds, labels)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["f1"] == pytest.approx(4 / 6)
    assert out["combined_score"] == pytest.approx(4 / 6)


def test_single_class_predictors_give_the_seed_baselines():
    labels = np.array([1] * 279 + [0] * 129)  # the MRPC dev set: 408 pairs, 68.38% positive
    pos = metrics.compute(TASKS["mrpc"], np.ones(408, int), labels)
    neg = metrics.compute(TASKS["mrpc"], np.zeros(408, int), labels)
    assert round(pos["accuracy"], 4) == 0.6838 and round(pos["f1"], 4) == 0.8122
    assert round(neg["accuracy"], 4) == 0.3162 and neg["f1"] == 0.0
    cola = metrics.compute(TASKS["cola"], np.ones(10, int), np.array([0, 1] * 5))
    assert cola == {"matthews_correlation": 0.0}


def test_matthews_by_hand():
    preds = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    labels = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews(preds, labels) == pytest.approx(want)
    # multiclass (MNLI-like): perfect and inverted cases
    y = np.array([0, 1, 2, 0, 1, 2])
    assert metrics.matthews(y, y) == pytest.approx(1.0)


def test_stsb_correlations():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 10.0])
    # pearson by hand: means 3 and 4, deviations (-2,-1,0,1,2) and (-2,-3,0,-1,6):
    # 18 / sqrt(10 * 50)
    out = metrics.compute(TASKS["stsb"], x, y)
    assert out["pearson"] == pytest.approx(18 / math.sqrt(10 * 50))
    assert out["spearmanr"] == pytest.approx(0.8)  # ranks 2,1,4,3,5: 1 - 6*4/(5*24)
    assert out["combined_score"] == pytest.approx((out["pearson"] + 0.8) / 2)
    constant = metrics.compute(TASKS["stsb"], np.ones(5), y)
    assert math.isnan(constant["pearson"]) and math.isnan(constant["combined_score"])


def test_rankdata_averages_ties():
    assert metrics.rankdata(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
