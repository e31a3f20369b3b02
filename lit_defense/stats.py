"""Exact intervals and paired tests for numbers measured on n inputs.

An accuracy measured on n images is an estimate: 330 of 400 is 82.5%, and its exact 95% interval
is [78.4%, 86.1%]. Two attacks (or two models) run on the *same* inputs are compared on their
per-sample outcomes: only the discordant inputs (fooled by one and not the other) carry
information (McNemar's test), so a paired comparison is far sharper than two intervals side by
side.

Everything here is plain Python floats (``math.lgamma``, a continued fraction for the incomplete
beta function): no torch kernel, so the numbers are the same on every CPU and numeric path.

- ``clopper_pearson(k, n)``: the exact (Clopper-Pearson) interval of a proportion.
- ``Estimate``: a proportion with its interval, written in reports as
  ``{"value": k/n, "ci": [low, high], "k": k, "n": n}`` (the *estimate* shape).
- ``paired_difference(b, c, n)``: the difference of two paired proportions, ``(b - c) / n``, with
  ``b``/``c`` the discordant counts, its interval and McNemar's exact one-sided p-value.
- ``decide(...)``: the three-state rule every check and claim uses (see ``Decision``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from lit_defense.binomial import betainc, binom_cdf, binom_sf, lower_bound, solve, upper_bound

CONFIDENCE = 0.95  # the intervals shown next to every number
ALPHA = 0.01  # one-sided significance a check or claim needs to fail

State = Literal["pass", "fail", "inconclusive"]


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of the proportion ``k / n``."""
    _check_counts(k, n)
    tail = (1.0 - confidence) / 2
    return lower_bound(k, n, tail), upper_bound(k, n, tail)


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"a proportion needs 0 <= k <= n, got k={k}, n={n}")


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact one-sided p-value that the first of two paired outcomes is more frequent.

    ``b``: inputs where only the first holds (e.g. fooled by attack A, not by B); ``c``: only the
    second. Under no difference each discordant input is a fair coin: p = P(Binom(b + c, 1/2) >= b).
    """
    return 1.0 if b + c == 0 else binom_sf(b, b + c, 0.5)


def _round(value: float) -> float:
    return round(float(value), 6)


@dataclass(frozen=True)
class Estimate:
    """A proportion ``k / n`` with its exact 95% interval (the *estimate* shape of the reports)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        _check_counts(self.k, self.n)

    @property
    def value(self) -> float:
        """The proportion k / n (0 when nothing was measured)."""
        return self.k / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        """The exact (Clopper-Pearson) 95% interval."""
        return clopper_pearson(self.k, self.n)

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci": [low, high], "k", "n"}``: JSON-ready."""
        lo, hi = self.ci
        return {"value": self.value, "ci": [_round(lo), _round(hi)], "k": self.k, "n": self.n}

    @classmethod
    def of(cls, value: float, n: int) -> Estimate:
        """The estimate of an accuracy ``value`` that was counted on ``n`` inputs."""
        return cls(round(value * n), n)

    def text(self) -> str:
        """``82.5% [78.4, 86.1]``."""
        lo, hi = self.ci
        return f"{100 * self.value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


@dataclass(frozen=True)
class Decision:
    """A measured quantity against a threshold, decided by the one rule of checks and claims.

    ``value`` is the point estimate, ``ci`` its 95% interval, ``low_alpha``/``high_alpha`` its
    one-sided (1 - alpha) bounds. For "bad when above ``threshold``":

    - ``fail``: significantly above the threshold (``low_alpha > threshold``);
    - ``inconclusive``: a check's number above the threshold but not significantly, or a claim's
      95% interval straddling its bar; ``inputs_to_resolve`` says about how many inputs (at the
      same rates) would decide it;
    - ``pass``: otherwise (see ``decide`` for checks vs claims).

    ``above=False`` mirrors it ("bad when below").
    """

    state: State
    value: float
    ci: tuple[float, float]
    threshold: float
    n: int
    low_alpha: float
    high_alpha: float
    inputs_to_resolve: int | None
    p_value: float | None = None

    def evidence(self) -> dict[str, Any]:
        """The numbers behind the decision, JSON-ready."""
        return {"state": self.state, "value": _round(self.value), "ci": [_round(self.ci[0]), _round(self.ci[1])],
                "threshold": self.threshold, "n": self.n,
                **({"p_value": _round(self.p_value)} if self.p_value is not None else {}),
                **({"inputs_to_resolve": self.inputs_to_resolve} if self.inputs_to_resolve else {})}


def decide(value: float, ci: tuple[float, float], bounds: tuple[float, float], threshold: float, n: int,
           above: bool = True, strict: bool = False) -> Decision:
    """The three-state rule (see ``Decision``); ``bounds`` are the one-sided (1 - alpha) bounds.

    A check is an *alarm* (``strict=False``): it fails only when significantly past its threshold,
    is inconclusive when its number is past the threshold but not significantly, and passes
    otherwise: no evidence of masking is a pass. A claim is an *assertion* (``strict=True``): it
    holds only when its whole 95% interval is on the right side of its bar, fails when
    significantly on the wrong side, and is inconclusive in between.
    """
    low, high = bounds
    beyond = value > threshold if above else value < threshold
    significant = low > threshold if above else high < threshold
    inside = ci[1] <= threshold if above else ci[0] >= threshold
    state: State = "fail" if significant else ("pass" if inside else "inconclusive") if strict else \
        ("inconclusive" if beyond else "pass")
    need = None
    if state == "inconclusive":
        # the interval's reach towards the threshold shrinks as 1/sqrt(n): this many inputs (at the
        # same rates) bring its edge to the threshold
        if beyond:
            reach = value - low if above else high - value
        else:
            reach = ci[1] - value if above else value - ci[0]
        distance = abs(value - threshold)
        need = math.ceil(n * (max(reach, 1e-9) / distance) ** 2) if distance > 0 else 100 * max(n, 1)
        need = max(min(need, 100 * max(n, 1)), n + 1)
    return Decision(state, value, ci, threshold, n, low, high, need)


def decide_proportion(k: int, n: int, threshold: float, above: bool = True, alpha: float = ALPHA,
                      strict: bool = False) -> Decision:
    """``decide`` for a proportion ``k / n`` (exact intervals).

    Its ``p_value`` is the exact one-sided binomial test of "past the threshold": P(X >= k) (or
    P(X <= k) with ``above=False``) for X ~ Binomial(n, threshold).
    """
    _check_counts(k, n)
    value = k / n if n else 0.0
    p = binom_sf(k, n, threshold) if above else binom_cdf(k, n, threshold)
    return replace(decide(value, clopper_pearson(k, n), (lower_bound(k, n, alpha), upper_bound(k, n, alpha)),
                          threshold, n, above, strict), p_value=p)


@dataclass(frozen=True)
class Paired:
    """Two outcomes on the same n inputs: ``b`` inputs where only the first holds, ``c`` only the second.

    ``difference`` is (b - c) / n, the first's rate minus the second's. Only the m = b + c
    discordant inputs carry information about it: the difference is q (2 s - 1), with q the rate
    of discordant inputs (m of n) and s the first's share among them (b of m). Its intervals take
    an exact (Clopper-Pearson) interval for each of q and s, each at half the error rate, and the
    extreme values of q (2 s - 1) over both (a union bound: at least the stated confidence, no
    normal approximation). ``p_value`` is McNemar's exact one-sided test of "the first holds more
    often".
    """

    b: int
    c: int
    n: int

    def __post_init__(self) -> None:
        _check_counts(self.b + self.c, self.n)

    @property
    def difference(self) -> float:
        """The difference (b - c) / n."""
        return (self.b - self.c) / self.n if self.n else 0.0

    def _range(self, q: tuple[float, float], s: tuple[float, float]) -> tuple[float, float]:
        """The lowest and highest q (2 s - 1) over the two intervals."""
        values = [qq * (2 * ss - 1) for qq in q for ss in s]
        return min(values), max(values)

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """The exact two-sided interval of the difference (see the class doc)."""
        half = 1 - (1 - confidence) / 2
        m = self.b + self.c
        return self._range(clopper_pearson(m, self.n, half), clopper_pearson(self.b, m, half))

    def bounds(self, alpha: float) -> tuple[float, float]:
        """The exact one-sided (1 - alpha) lower and upper bounds of the difference."""
        m, a = self.b + self.c, alpha / 2
        q = (lower_bound(m, self.n, a), upper_bound(m, self.n, a))
        low = self._range(q, (lower_bound(self.b, m, a), lower_bound(self.b, m, a)))[0]
        high = self._range(q, (upper_bound(self.b, m, a), upper_bound(self.b, m, a)))[1]
        return low, high

    @property
    def p_value(self) -> float:
        """McNemar's exact one-sided p-value (the first holds more often than the second)."""
        return mcnemar_p(self.b, self.c)

    def decide(self, threshold: float, above: bool = True, alpha: float = ALPHA, strict: bool = False) -> Decision:
        """``decide`` for the difference against ``threshold``."""
        return decide(self.difference, self.interval(), self.bounds(alpha), threshold, self.n, above, strict)

    def evidence(self) -> dict[str, Any]:
        """n, the discordant counts and McNemar's p-value."""
        return {"n": self.n, "discordant": [self.b, self.c], "p_value": _round(self.p_value)}


def paired(first: Any, second: Any) -> Paired:
    """The discordant counts of two per-sample outcomes (tensors or sequences) of equal length.

    Boolean outcomes (a deterministic model: right or wrong) give McNemar's counts. Expected
    outcomes in [0, 1] (a randomized model: each input's accuracy over its own randomness, from
    fresh draws) give the *expected* discordant counts of one draw per input, ``b = sum a (1 - b)``
    and ``c = sum b (1 - a)``, rounded: their difference is the exact mean difference of the
    expectations, and the one-draw McNemar test they feed is conservative for means over several
    draws (a mean's variance is at most one draw's). On 0/1 values it is McNemar's test exactly.
    This is the paired rule of every check and claim on a randomized model.
    """
    import torch

    def values(v: Any) -> torch.Tensor:
        t = torch.as_tensor(v).flatten().cpu()
        return t.bool() if t.dtype == torch.bool else t.double().clamp(0, 1)

    a, b = values(first), values(second)
    if a.numel() != b.numel():
        raise ValueError(f"paired outcomes need the same inputs, got {a.numel()} and {b.numel()} samples")
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return Paired(int((a & ~b).sum()), int((b & ~a).sum()), int(a.numel()))
    a, b = a.double(), b.double()
    only_a, only_b = float((a * (1 - b)).sum()), float((b * (1 - a)).sum())
    return Paired(round(only_a), round(only_b), int(a.numel()))


def expected_count(values: Any) -> int:
    """How many of the inputs an outcome holds for: a boolean mask's count, or the rounded sum of expectations."""
    import torch

    t = torch.as_tensor(values).flatten().cpu()
    return int(t.sum()) if t.dtype == torch.bool else round(float(t.double().sum()))


@dataclass(frozen=True)
class MeanEstimate:
    """A mean of per-input expectations in [0, 1] (a randomized model's accuracy), with its 95% interval.

    Each of the ``n`` inputs contributes its model's expected accuracy, estimated from ``draws``
    fresh passes; the mean's variance has two parts, the inputs' spread and the draws' noise, and
    the sample variance of the per-input estimates holds both (``variance``). The interval is the
    exact (Clopper-Pearson) one at the *effective* sample size (Korn & Graubard 1998): the number
    of single draws whose binomial variance equals the measured one, ``value (1 - value) /
    variance``. It never goes below ``n`` (what one draw per input would give: the widest) nor
    above ``n * draws`` (every draw independent). With one draw per input (a deterministic model)
    it is the exact interval of ``k / n``.
    """

    value: float
    n: int
    draws: int
    variance: float  # of the mean

    @classmethod
    def of(cls, values: Any, draws: int) -> MeanEstimate:
        """The estimate from per-input expectations (tensor or sequence) measured with ``draws`` passes each."""
        xs = [min(max(float(v), 0.0), 1.0) for v in (values.tolist() if hasattr(values, "tolist") else values)]
        n = len(xs)
        mean = sum(xs) / n if n else 0.0
        var = sum((v - mean) ** 2 for v in xs) / (n - 1) / n if n > 1 else 0.0
        return cls(mean, n, max(1, int(draws)), var)

    @property
    def n_effective(self) -> float:
        """The effective number of single draws (see the class doc), in ``[n, n * draws]``."""
        if self.n == 0:
            return 0.0
        spread = self.value * (1 - self.value)
        if spread <= 0:  # every value 0 (or 1): nothing says how much the inputs may differ
            return float(self.n)
        if self.variance <= 0:  # the inputs agree exactly: every draw counts
            return float(self.n * self.draws)
        return min(max(spread / self.variance, float(self.n)), float(self.n * self.draws))

    @property
    def ci(self) -> tuple[float, float]:
        """The exact 95% interval at the effective sample size."""
        n_eff = self.n_effective
        if n_eff <= 0:
            return 0.0, 1.0
        k = min(max(self.value * n_eff, 0.0), n_eff)
        tail = (1.0 - CONFIDENCE) / 2
        # the Clopper-Pearson bounds are Beta quantiles, defined for a non-integer k and n as well
        low = 0.0 if k <= 0 else solve(lambda p: betainc(k, n_eff - k + 1, p), tail)
        high = 1.0 if k >= n_eff else solve(lambda p: betainc(k + 1, n_eff - k, p), 1.0 - tail)
        return low, high

    @property
    def k(self) -> int:
        """The expected number of inputs classified correctly (rounded)."""
        return round(self.value * self.n)

    def to_dict(self) -> dict[str, Any]:
        """The *estimate* shape (``{"value", "ci", "k", "n"}``) plus ``draws`` and ``n_effective``."""
        lo, hi = self.ci
        return {"value": self.value, "ci": [_round(lo), _round(hi)], "k": self.k, "n": self.n,
                "draws": self.draws, "n_effective": _round(self.n_effective), "variance": self.variance}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeanEstimate:
        """The estimate back from ``to_dict``'s output."""
        return cls(float(data["value"]), int(data["n"]), int(data["draws"]), float(data["variance"]))

    def text(self) -> str:
        """``64.8% [59.8, 69.4]``."""
        lo, hi = self.ci
        return f"{100 * self.value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def worst_state(states: list[State]) -> State:
    """``fail`` if any failed, else ``inconclusive`` if any was, else ``pass``."""
    return "fail" if "fail" in states else "inconclusive" if "inconclusive" in states else "pass"


__all__ = [
    "ALPHA", "CONFIDENCE", "Decision", "Estimate", "MeanEstimate", "Paired", "betainc", "binom_cdf", "binom_sf", "clopper_pearson",
    "decide", "decide_proportion", "expected_count", "lower_bound", "mcnemar_p", "paired", "upper_bound", "worst_state",
]
