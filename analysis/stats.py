"""Welch's t-test (unequal variances) for "did this cell drop below FP32?", without SciPy.

t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b), Welch-Satterthwaite degrees of freedom
df = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)); the two-sided
p-value is I_{df/(df+t^2)}(df/2, 1/2), the regularized incomplete beta function (Student's t
distribution), computed by its continued fraction (modified Lentz). Against a baseline of one
run there is no variance to pool: a one-sample t-test against its value (df = n_a - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class TTest:
    t: float
    df: float
    p: float
    kind: str  # "welch" or "one-sample"


def _mean_var(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, sum((x - m) * (x - m) for x in xs) / (len(xs) - 1)


def against_baseline(values: list[float], baseline: list[float]) -> TTest | None:
    """values (>= 2 runs) against the baseline's runs: Welch with >= 2 baseline runs, a
    one-sample test against a single baseline run; None when untestable (< 2 runs, NaN or
    infinite values, or values so large that the arithmetic overflows)."""
    if len(values) < 2 or not baseline or not all(math.isfinite(v) for v in values + baseline):
        return None
    try:
        return _test(values, baseline)
    except (OverflowError, ZeroDivisionError, ValueError):
        return None


def _test(values: list[float], baseline: list[float]) -> TTest | None:
    m_a, v_a = _mean_var(values)
    if len(baseline) >= 2:
        m_b, v_b = _mean_var(baseline)
        se2_a, se2_b = v_a / len(values), v_b / len(baseline)
        se2 = se2_a + se2_b
        df = (se2 * se2 / (se2_a * se2_a / (len(values) - 1)
                           + se2_b * se2_b / (len(baseline) - 1))
              if se2 > 0 else float(len(values) + len(baseline) - 2))
        kind = "welch"
    else:
        m_b, se2, df, kind = baseline[0], v_a / len(values), float(len(values) - 1), "one-sample"
    diff = m_a - m_b
    if se2 == 0:  # no spread at all: any difference is certain, none is none
        return TTest(math.copysign(math.inf, diff) if diff else 0.0, df,
                     0.0 if diff else 1.0, kind)
    t = diff / math.sqrt(se2)
    return TTest(t, df, t_two_sided_p(t, df), kind)


def significant_drop(test: TTest | None) -> bool:
    return test is not None and test.t < 0 and test.p < ALPHA
