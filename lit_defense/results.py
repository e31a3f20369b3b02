"""The result types of evaluations and audits.

Plain data, below the code that produces them (``evaluation``, ``diagnostics``, ``audit``) and the
code that reports them (``report``, callbacks).

Nothing here runs an attack or imports one: a report can be read, compared or rendered without the
attack code, and the modules that produce results and the ones that render them never import each
other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lit_defense.per_sample import PerSample, eps_key
from lit_defense.roles import AttackRoles
from lit_defense.stats import Estimate, MeanEstimate
from lit_defense.verdict import DECIDING, Check, CheckKind, MaskingVerdict, rerun_hint, verdict


def num(value: Any, digits: int = 6) -> float | None:
    """A finite Python float (rounded), or ``None`` for NaN/inf/None: safe for JSON."""
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return round(value, digits) if math.isfinite(value) else None


@dataclass
class Examples:
    """Adversarial examples to show (``lit_defense.examples.build_examples`` builds them).

    For ``k`` inputs: the clean images ``x``, their labels ``y``, and per eps key the worst-case
    adversarial images ``adv`` and the model's predictions ``pred`` on them.
    """

    x: torch.Tensor
    y: torch.Tensor
    adv: dict[str, torch.Tensor] = field(default_factory=dict)
    pred: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def cpu(self) -> Examples:
        """The same examples on the CPU (detached), for drawing."""
        return Examples(self.x.detach().cpu(), self.y.detach().cpu(),
                        {k: v.detach().cpu() for k, v in self.adv.items()},
                        {k: v.detach().cpu() for k, v in self.pred.items()})


def attack_curve(results: Sequence[dict[str, Any]], attack: str) -> dict[float, float]:
    """Eps -> robust accuracy of one attack, from the audit's result rows."""
    return {r["eps"]: r["robust_accuracy"] for r in results if r["attack"] == attack}


@dataclass
class ModelAudit:
    """The audit of one model.

    Every attack's robust accuracy per eps, the per-input worst case, the gradient-masking verdict,
    the attack roles, examples for the report's figures, and ``per_sample`` (``PerSample``): for
    every input, whether it is classified correctly, robust at each eps, fooled by each attack at
    each eps, and the smallest adversarial norm each minimum-norm attack found;
    ``stages``: per stage of the plan, the inputs it attacked, how many each process took and the
    collective calls it made; ``adequacy``: the binarization test's counts (``--suite.adequacy_samples``).

    ``expected`` (a randomized model only): the numbers are expectations over the model's own
    randomness (``lit_defense.judge``): ``draws`` per judgement, ``clean`` and ``worst_case`` (eps
    key -> ``MeanEstimate`` data, intervals over inputs and draws) and ``majority_vote`` (``clean``
    and eps key -> the exact estimate of the inputs a vote over draws classifies correctly).
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
    roles: AttackRoles[str]
    seconds: float
    examples: Examples | None = field(default=None, repr=False)
    per_sample: PerSample | None = field(default=None, repr=False)
    stages: dict[str, Any] = field(default_factory=dict)
    adequacy: dict[str, Any] | None = None  # the binarization test (``lit_defense.adequacy``), when run
    expected: dict[str, Any] | None = None  # a randomized model's expectations and their intervals
    cost: dict[str, Any] | None = None  # rounds and work of this process's model calls, per stage too (``lit_defense.cost``)

    def curve(self, attack: str) -> dict[float, float]:
        """Eps -> robust accuracy of one attack."""
        return attack_curve(self.results, attack)

    def estimate(self, value: float, key: str | None = None) -> Estimate | MeanEstimate:
        """An accuracy of this audit (counted on ``num_samples`` inputs) with its exact interval.

        ``key`` (``clean`` or an eps key of ``worst_case``) names a randomized model's expected
        accuracy, whose interval accounts for the inputs and the draws (``MeanEstimate``); any
        other number gets the exact interval of one draw per input (never narrower).
        """
        if self.expected and key is not None:
            data = self.expected["clean"] if key == "clean" else self.expected["worst_case"].get(key)
            if data is not None:
                return MeanEstimate.from_dict(data)
        return Estimate.of(value, self.num_samples)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the examples' tensors and the per-sample results are left out).

        ``clean_accuracy`` and every ``worst_case`` entry are *estimates* (``{"value", "ci": [low,
        high], "k", "n"}``, ``lit_defense.stats.Estimate``); every ``results`` row carries ``ci``
        and ``n`` next to its ``robust_accuracy``.
        """
        skip = ("examples", "gradient_masking", "per_sample", "results", "worst_case", "clean_accuracy")
        data = {k: v for k, v in asdict(self).items() if k not in skip}
        data["clean_accuracy"] = self.estimate(self.clean_accuracy, "clean").to_dict()
        data["results"] = [{**r, "ci": self.estimate(r["robust_accuracy"]).to_dict()["ci"], "n": self.num_samples}
                           for r in self.results]
        data["worst_case"] = {k: self.estimate(v, k).to_dict() for k, v in self.worst_case.items()}
        data["gradient_masking"] = self.gradient_masking.to_dict()
        return data

    def metrics(self) -> dict[str, float]:
        """The audit's numbers under the project's metric names (TensorBoard, callbacks).

        Each accuracy ``.../acc`` comes with its interval as ``.../ci_low`` and ``.../ci_high``.
        """
        curves: dict[str, dict[str, Estimate | MeanEstimate]] = {}
        for r in self.results:
            curves.setdefault(r["attack"], {})[eps_key(r["eps"])] = self.estimate(r["robust_accuracy"])
        curves["worst"] = {key: self.estimate(value, key) for key, value in self.worst_case.items()}
        out = accuracy_metrics(curves, self.estimate(self.clean_accuracy, "clean"))
        for check in self.gradient_masking.checks:
            if check.value is not None:
                out[f"masking/{check.name}"] = check.value
        if self.adequacy and self.adequacy.get("valid"):
            out["adequacy/rate"] = float(self.adequacy["rate"])
            out["adequacy/ci_low"], out["adequacy/ci_high"] = (float(v) for v in self.adequacy["ci"])
        out["masking/suspected"] = float(self.gradient_masking.suspected)
        out["masking/inconclusive"] = float(self.gradient_masking.state == "inconclusive")
        return out


def interval_metrics(prefix: str, estimate: Estimate | MeanEstimate) -> dict[str, float]:
    """``{prefix/acc, prefix/ci_low, prefix/ci_high}`` of one accuracy."""
    lo, hi = estimate.ci
    return {f"{prefix}/acc": estimate.value, f"{prefix}/ci_low": lo, f"{prefix}/ci_high": hi}


def accuracy_metrics(curves: Mapping[str, Mapping[str, Estimate | MeanEstimate]],
                     clean: Estimate | MeanEstimate | None = None,
                     prefix: str = "adv", intervals: bool = True) -> dict[str, float]:
    """The project's metric names for accuracies, the one place they are formatted.

    ``<prefix>/<attack>/eps=<eps key>/acc`` for every attack (``worst`` included) and eps of
    ``curves``, and ``<prefix>/clean/acc`` when ``clean`` is given; with ``intervals`` each comes
    with ``.../ci_low`` and ``.../ci_high`` (the exact 95% interval).
    """
    def one(name: str, estimate: Estimate) -> dict[str, float]:
        return interval_metrics(name, estimate) if intervals else {f"{name}/acc": estimate.value}

    out = one(f"{prefix}/clean", clean) if clean is not None else {}
    for attack, per_eps in curves.items():
        for key, estimate in per_eps.items():
            out.update(one(f"{prefix}/{attack}/eps={key}", estimate))
    return out


def value_of(number: Any) -> float:
    """The value of a report number: an estimate (``{"value", "ci", ...}``) or a plain float."""
    return float(number["value"]) if isinstance(number, dict) else float(number)


WORST = "worst"


@dataclass
class RobustnessResult:
    """Plain result of ``evaluate_robustness``: serialises to JSON with ``to_json``."""

    norm: str
    eps: list[float]
    attacks: list[str]
    num_samples: int
    clean_accuracy: float
    robust_accuracy: dict[str, dict[str, float]]  # attack name (or "worst") -> eps_key -> accuracy
    cascade: bool = True
    seconds: float = 0.0

    def metrics(self, prefix: str = "adv", intervals: bool = False) -> dict[str, float]:
        """``{"adv/<attack>/eps=<eps>/acc": value}`` for every attack and ``worst``.

        With ``intervals``, each accuracy also gets its exact 95% interval as ``.../ci_low`` and
        ``.../ci_high``, and the clean accuracy is included (``adv/clean/acc`` and its interval).
        """
        curves = {name: {key: Estimate.of(value, self.num_samples) for key, value in per_eps.items()}
                  for name, per_eps in self.robust_accuracy.items()}
        clean = Estimate.of(self.clean_accuracy, self.num_samples) if intervals else None
        return accuracy_metrics(curves, clean, prefix, intervals)

    def worst(self, eps: float) -> float:
        """Worst-case robust accuracy at ``eps``."""
        return self.robust_accuracy[WORST][eps_key(eps)]

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        """The result as JSON (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> RobustnessResult:
        """The result back from ``to_dict``'s output."""
        return cls(**data)


@dataclass
class RobustnessCounts:
    """Integer counts (tensors) that add across shards (``lit_defense.metrics.RobustAccuracy`` sums them).

    ``n``, ``clean``, ``robust[attack, eps]``, ``worst[eps]``.
    """

    n: torch.Tensor
    clean: torch.Tensor
    robust: torch.Tensor
    worst: torch.Tensor

    def to_result(self, attacks: Sequence[Any], eps: Sequence[float], norm: str, cascade: bool,
                  seconds: float = 0.0) -> RobustnessResult:
        """Accuracies from the counts, per attack and eps, plus the worst case."""
        n = max(int(self.n), 1)
        acc = {
            a.name: {eps_key(e): int(self.robust[i, j]) / n for j, e in enumerate(eps)}
            for i, a in enumerate(attacks)
        }
        acc[WORST] = {eps_key(e): int(self.worst[j]) / n for j, e in enumerate(eps)}
        return RobustnessResult(
            norm=norm, eps=[float(e) for e in eps], attacks=[a.name for a in attacks],
            num_samples=int(self.n), clean_accuracy=int(self.clean) / n,
            robust_accuracy=acc, cascade=cascade, seconds=seconds,
        )



@dataclass
class AttackOutcome:
    """What one ``evaluation.robustness_counts`` run found, per input (tensors over its inputs, on their device).

    Attributes:
        clean_correct: the clean prediction's correctness, as the attacks saw it (a randomized
            model: some selection draw was right).
        clean_margin: the clean logit margin (true logit minus the largest other).
        fooled: attack -> eps key -> fooled by that attack (of the inputs it attacked).
        margin: attack -> eps key -> the margin it left (NaN where it did not run or kept none).
        robust: eps key -> fooled by no attack.
        min_norm: minimum-norm attack -> the smallest adversarial norm found (``inf``: none).
        examples: with ``keep_examples=k``, the first k inputs' worst-case adversarial inputs
            (``Examples``).
        clean_selected, clean_measured, selected, measured: judged in expectation (a randomized
            model, ``lit_defense.judge``): the clean points' and each attack's points' selected and
            measured expected accuracy (NaN where the attack did not run); empty otherwise.
    """

    clean_correct: torch.Tensor
    clean_margin: torch.Tensor
    fooled: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    margin: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    robust: dict[str, torch.Tensor] = field(default_factory=dict)
    min_norm: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: Examples | None = None
    clean_selected: torch.Tensor | None = None
    clean_measured: torch.Tensor | None = None
    selected: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    measured: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        """Whether the points were judged in expectation (a randomized model)."""
        return self.clean_measured is not None

    def expectations(self) -> dict[str, Any]:
        """The expected accuracies by name (``clean_selected``, ``clean_measured``, ``selected``, ``measured``), if judged."""
        if not self.judged:
            return {}
        return {"clean_selected": self.clean_selected, "clean_measured": self.clean_measured,
                "selected": self.selected, "measured": self.measured}


__all__ = ["DECIDING", "WORST", "AttackOutcome", "Check", "Examples", "RobustnessCounts", "RobustnessResult", "CheckKind", "MaskingVerdict", "ModelAudit", "PerSample", "accuracy_metrics", "attack_curve", "eps_key", "interval_metrics", "num",
           "rerun_hint", "value_of", "verdict"]
