"""GLUE metrics computed locally with numpy (the hub's metric scripts are not needed).

Definitions follow sklearn (matthews_corrcoef, f1_score with positive label 1) and scipy
(pearsonr, spearmanr with average ranks for ties). Constant predictions give MCC 0 and a NaN
correlation, as in those libraries.
"""

from __future__ import annotations

import math

import numpy as np

from quantlib.tasks import Task


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(preds == labels))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    tp = float(np.sum((preds == 1) & (labels == 1)))
    fp = float(np.sum((preds == 1) & (labels != 1)))
    fn = float(np.sum((preds != 1) & (labels == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass MCC (Gorodkin), equal to sklearn.metrics.matthews_corrcoef."""
    classes = np.union1d(preds, labels)
    c = np.array([[np.sum((labels == a) & (preds == b)) for b in classes] for a in classes],
                 dtype=np.float64)
    t_k, p_k = c.sum(axis=1), c.sum(axis=0)
    n, correct = c.sum(), np.trace(c)
    cov_ypyp = n * n - float(p_k @ p_k)
    cov_ytyt = n * n - float(t_k @ t_k)
    if cov_ypyp == 0 or cov_ytyt == 0:
        return 0.0
    return float((correct * n - float(t_k @ p_k)) / math.sqrt(cov_ytyt * cov_ypyp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xm @ xm) * float(ym @ ym))
    return float("nan") if denom == 0 else float(xm @ ym / denom)


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (scipy.stats.rankdata 'average')."""
    a = np.asarray(a)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    first = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def compute(task: Task, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of one eval set, HF names without the eval_ prefix."""
    if task.is_regression:
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": p, "spearmanr": s, "combined_score": (p + s) / 2}
    if task.name == "cola":
        return {"matthews_correlation": matthews(preds, labels)}
    acc = accuracy(preds, labels)
    if task.name in ("mrpc", "qqp"):
        f = f1(preds, labels)
        return {"accuracy": acc, "f1": f, "combined_score": (acc + f) / 2}
    return {"accuracy": acc}
