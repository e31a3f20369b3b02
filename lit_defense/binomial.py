"""The binomial distribution in plain Python floats: its tails and the exact confidence bounds of a proportion.

``math.lgamma`` and a continued fraction for the regularized incomplete beta function: no torch
kernel, so the numbers are the same on every CPU and numeric path (``lit_defense.stats`` builds
its intervals and tests on them).
"""

from __future__ import annotations

import math
from typing import Any


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for the regularized incomplete beta function."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(k, n - k + 1, p)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return 1.0 - binom_sf(k + 1, n, p)


def solve(f: Any, target: float) -> float:
    """The p in [0, 1] where the monotone increasing ``f(p)`` crosses ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def lower_bound(k: int, n: int, alpha: float) -> float:
    """The exact one-sided (1 - alpha) lower confidence bound of a proportion k / n."""
    if n <= 0 or k <= 0:
        return 0.0
    return solve(lambda p: binom_sf(k, n, p), alpha)


def upper_bound(k: int, n: int, alpha: float) -> float:
    """The exact one-sided (1 - alpha) upper confidence bound of a proportion k / n."""
    if n <= 0 or k >= n:
        return 1.0
    return solve(lambda p: 1.0 - binom_cdf(k, n, p), 1.0 - alpha)



__all__ = ["betainc", "binom_cdf", "binom_sf", "lower_bound", "solve", "upper_bound"]
