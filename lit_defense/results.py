"""The result types of evaluations and audits.

Plain data, below the code that produces them (``evaluation``, ``diagnostics``, ``audit``) and the
code that reports them (``report``, callbacks).

Nothing here runs an attack or imports one: a report can be read, compared or rendered without the
attack code, and the modules that produce results and the ones that render them never import each
other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def eps_key(eps: float) -> str:
    """How an eps appears in metric names: ``adv/<attack>/eps=<eps_key>/acc``."""
    return f"{eps:.6g}"


def num(value: Any, digits: int = 6) -> float | None:
    """A finite Python float (rounded), or ``None`` for NaN/inf/None: safe for JSON."""
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return round(value, digits) if math.isfinite(value) else None


@dataclass
class Check:
    """One item of the gradient-masking checklist.

    ``advisory`` checks are reported but do not decide the verdict.
    """

    name: str
    passed: bool
    value: float | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    advisory: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data."""
        return asdict(self)


@dataclass
class MaskingVerdict:
    """Whether gradient masking is suspected, which checks said so, and every check."""

    suspected: bool
    triggered: list[str]
    checks: list[Check]

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data."""
        return {
            "suspected": self.suspected,
            "triggered": list(self.triggered),
            "checks": [c.to_dict() for c in self.checks],
        }

    def explain(self) -> str:
        """The verdict in plain words."""
        if not self.suspected:
            advisory = [c for c in self.checks if not c.passed]
            text = "No sign of gradient masking: every check passed"
            if advisory:
                text += f" (advisory: {'; '.join(c.summary for c in advisory)})"
            return text + "."
        failed = [c for c in self.checks if not c.passed and not c.advisory]
        return "Gradient masking suspected: " + " ".join(c.summary for c in failed)


def verdict(checks: Sequence[Check]) -> MaskingVerdict:
    """The verdict of a list of checks: suspected when any non-advisory check failed."""
    triggered = [c.name for c in checks if not c.passed and not c.advisory]
    return MaskingVerdict(bool(triggered), triggered, list(checks))


def attack_curve(results: Sequence[dict[str, Any]], attack: str) -> dict[float, float]:
    """Eps -> robust accuracy of one attack, from the audit's result rows."""
    return {r["eps"]: r["robust_accuracy"] for r in results if r["attack"] == attack}


@dataclass
class ModelAudit:
    """The audit of one model.

    Every attack's robust accuracy per eps, the per-input worst case, the gradient-masking verdict,
    the attack roles, examples for the report's figures, and ``per_sample``: for every input,
    whether it is classified correctly, robust at each eps, fooled by each attack at each eps, and
    the smallest adversarial norm each minimum-norm attack found (``None``: none found);
    ``stages``: per stage of the plan, the inputs it attacked, how many each process took and the
    collective calls it made.
    """

    name: str
    source: str
    norm: str
    eps: list[float]
    num_samples: int
    clean_accuracy: float
    results: list[dict[str, Any]]
    worst_case: dict[str, float]
    gradient_masking: MaskingVerdict
    roles: dict[str, Any]
    seconds: float
    examples: dict[str, Any] = field(default_factory=dict, repr=False)
    per_sample: dict[str, Any] = field(default_factory=dict, repr=False)
    stages: dict[str, Any] = field(default_factory=dict)

    def curve(self, attack: str) -> dict[float, float]:
        """Eps -> robust accuracy of one attack."""
        return attack_curve(self.results, attack)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the examples' tensors and the per-sample results are left out)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("examples", "gradient_masking", "per_sample")}
        data["gradient_masking"] = self.gradient_masking.to_dict()
        return data

    def metrics(self) -> dict[str, float]:
        """The audit's numbers under the project's metric names (TensorBoard, callbacks)."""
        out = {"adv/clean/acc": self.clean_accuracy}
        for r in self.results:
            out[f"adv/{r['attack']}/eps={eps_key(r['eps'])}/acc"] = r["robust_accuracy"]
        for key, value in self.worst_case.items():
            out[f"adv/worst/eps={key}/acc"] = value
        for check in self.gradient_masking.checks:
            if check.value is not None:
                out[f"masking/{check.name}"] = check.value
        out["masking/suspected"] = float(self.gradient_masking.suspected)
        return out


__all__ = ["Check", "MaskingVerdict", "ModelAudit", "attack_curve", "eps_key", "num", "verdict"]
