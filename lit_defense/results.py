"""The result types of evaluations and audits.

Plain data, below the code that produces them (``evaluation``, ``diagnostics``, ``audit``) and the
code that reports them (``report``, callbacks).

Nothing here runs an attack or imports one: a report can be read, compared or rendered without the
attack code, and the modules that produce results and the ones that render them never import each
other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from lit_defense.roles import AttackRoles
from lit_defense.stats import Estimate, MeanEstimate, State


def eps_key(eps: float) -> str:
    """How an eps appears in metric names: ``adv/<attack>/eps=<eps_key>/acc``."""
    return f"{eps:.6g}"


def num(value: Any, digits: int = 6) -> float | None:
    """A finite Python float (rounded), or ``None`` for NaN/inf/None: safe for JSON."""
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return round(value, digits) if math.isfinite(value) else None


# What a check tells (see ``verdict``):
# - ``mechanism``: the gradients themselves are unusable (saturation, zero gradients, finite
#   differences, randomness, autograd in the forward pass, probabilities): masking on its own;
# - ``signature``: an outcome that only masked gradients explain (gradient-free or random search
#   beating every white-box attack, an unbounded attack failing, one step beating many, robust
#   accuracy rising with eps): masking on its own;
# - ``outcome``: one attack beats another (a margin loss beats CE-PGD). On a model whose gradients
#   are fine that only says the naive attack is weak; it corroborates a mechanism, never flags alone;
# - ``advisory``: about the evaluation's own numbers (converged? path kept?), never the verdict.
CheckKind = Literal["mechanism", "signature", "outcome", "advisory"]
DECIDING: tuple[str, ...] = ("mechanism", "signature")


@dataclass
class Check:
    """One item of the gradient-masking checklist.

    ``state`` is ``pass``, ``fail`` or ``inconclusive`` (the numbers cannot tell at this sample
    size: ``evidence["inputs_to_resolve"]`` says how many inputs would); ``passed`` is
    ``state == "pass"``. ``kind`` says whether it can decide the verdict (see ``CheckKind``).
    """

    name: str
    passed: bool
    value: float | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    advisory: bool = False
    state: State = ""  # type: ignore[assignment]  # derived from ``passed`` when not given
    kind: CheckKind = "mechanism"

    def __post_init__(self) -> None:
        if not self.state:
            self.state = "pass" if self.passed else "fail"
        self.passed = self.state == "pass"
        if self.advisory:
            self.kind = "advisory"
        self.advisory = self.kind == "advisory"

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data."""
        return asdict(self)


@dataclass
class MaskingVerdict:
    """Whether gradient masking is suspected, which checks said so, and every check.

    ``state``: ``suspected`` (a mechanism or signature check failed), ``inconclusive`` (none
    failed, but one could not be decided at this sample size) or ``not suspected``. ``triggered``
    lists the failed checks behind a suspicion (outcome checks corroborate it), ``inconclusive``
    the undecided deciding checks; ``suspected`` is ``state == "suspected"``.
    """

    suspected: bool
    triggered: list[str]
    checks: list[Check]
    state: str = ""
    inconclusive: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.state:
            self.state = "suspected" if self.suspected else "inconclusive" if self.inconclusive else "not suspected"

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data."""
        return {
            "suspected": self.suspected,
            "state": self.state,
            "triggered": list(self.triggered),
            "inconclusive": list(self.inconclusive),
            "checks": [c.to_dict() for c in self.checks],
        }

    def explain(self) -> str:
        """The verdict in plain words, with what to run when the numbers cannot decide."""
        weak = [c for c in self.checks if c.kind == "outcome" and c.state == "fail"]
        notes = [c for c in self.checks if c.kind == "advisory" and c.state == "fail"]
        if self.suspected:
            failed = [c for c in self.checks if c.name in self.triggered]
            return "Gradient masking suspected: " + " ".join(c.summary for c in failed)
        if self.state == "inconclusive":
            undecided = [c for c in self.checks if c.name in self.inconclusive]
            text = "Inconclusive: no check failed, but " + "; ".join(
                f"{c.name} cannot be decided on {c.evidence.get('n', '?')} inputs "
                f"(re-run with about {c.evidence.get('inputs_to_resolve', '?')}: {rerun_hint(c)})"
                for c in undecided) + "."
        else:
            text = "No sign of gradient masking: every mechanism and signature check passed."
        if weak:
            text += " The naive attack is weak (" + " ".join(c.summary for c in weak) + \
                ") With usable gradients that is not masking: report the worst case, not the naive number."
        if notes:
            text += f" Advisory: {'; '.join(c.summary for c in notes)}"
        return text


def rerun_hint(check: Check) -> str:
    """Which audit option gives an inconclusive check more inputs."""
    option = check.evidence.get("samples_option", "--num_samples")
    return f"{option}={check.evidence.get('inputs_to_resolve', '?')}"


def verdict(checks: Sequence[Check]) -> MaskingVerdict:
    """The verdict of a list of checks.

    Suspected when a mechanism or signature check failed (failed outcome checks then corroborate
    it); inconclusive when none failed and one of them is undecided; otherwise not suspected.
    """
    failed = [c.name for c in checks if c.kind in DECIDING and c.state == "fail"]
    undecided = [c.name for c in checks if c.kind in DECIDING and c.state == "inconclusive"]
    if failed:
        failed += [c.name for c in checks if c.kind == "outcome" and c.state == "fail"]
    return MaskingVerdict(bool(failed), failed, list(checks), inconclusive=undecided)


def attack_curve(results: Sequence[dict[str, Any]], attack: str) -> dict[float, float]:
    """Eps -> robust accuracy of one attack, from the audit's result rows."""
    return {r["eps"]: r["robust_accuracy"] for r in results if r["attack"] == attack}


@dataclass
class PerSample:
    """Every input's outcome over the same ``n`` inputs: the type an audit's results travel in.

    Paired statistics need nothing else: two attacks, two eps or two models compared input by input
    (``lit_defense.stats.paired(a.robust_to(...), b.robust_to(...))``).

    Attributes:
        clean: per input, classified correctly (bool ``(n,)``).
        fooled_by: attack -> eps key (``eps_key``) -> per input, fooled by that attack at that
            eps (among the inputs it attacked).
        robust: eps key -> per input, correct and fooled by no attack folded in so far.
        min_norm: attack -> per input, the smallest adversarial perturbation it found (``inf``: none).
        draws: passes per judgement (``lit_defense.judge``): 1 for a deterministic model; more for
            a randomized one, which is judged in expectation over its own randomness. Then
            ``clean`` and ``robust`` say whether some *selection* draw was right (which inputs are
            still attacked), ``fooled_by`` that none was, and the numbers come from the
            expectations below.
        clean_selected, clean_measured: (randomized) per input, the expected accuracy at the clean
            point, from two independent sets of draws.
        selected_by, measured_by: (randomized) attack -> eps key -> per input, the same at the
            attack's point (non-finite where it did not attack the input).
    """

    clean: torch.Tensor
    fooled_by: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    robust: dict[str, torch.Tensor] = field(default_factory=dict)
    min_norm: dict[str, torch.Tensor] = field(default_factory=dict)
    draws: int = 1
    clean_selected: torch.Tensor | None = None
    clean_measured: torch.Tensor | None = None
    selected_by: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    measured_by: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def start(cls, clean: torch.Tensor, eps: Sequence[float], draws: int = 1,
              clean_selected: torch.Tensor | None = None, clean_measured: torch.Tensor | None = None) -> PerSample:
        """Before any attack: every correct input is robust at every eps.

        A randomized model (``draws`` > 1) also takes the clean points' two expected accuracies.
        """
        clean = clean.bool()
        if draws > 1 and (clean_selected is None or clean_measured is None):
            raise ValueError("a randomized model's results need the clean points' selected and measured expectations")
        return cls(clean=clean, robust={eps_key(e): clean.clone() for e in eps}, draws=draws,
                   clean_selected=None if draws == 1 else clean_selected.float().cpu(),  # type: ignore[union-attr]
                   clean_measured=None if draws == 1 else clean_measured.float().cpu())  # type: ignore[union-attr]

    @property
    def randomized(self) -> bool:
        """Whether the results are expectations over the model's randomness (more than one draw)."""
        return self.draws > 1

    def _pick(self, names: Sequence[str], key: str) -> torch.Tensor:
        """Per input, the measured expectation at the point (clean, or one of ``names``') with the lowest selected one.

        The selection and the measurement use independent draws, so taking the lowest of many
        noisy estimates does not bias the number reported (ties keep the earlier point).
        """
        best_sel = self.clean_selected.clone()  # type: ignore[union-attr]
        best = self.clean_measured.clone()  # type: ignore[union-attr]
        for name in names:
            sel = self.selected_by.get(name, {}).get(key)
            if sel is None:
                continue
            sel = torch.where(torch.isfinite(sel), sel, torch.full_like(sel, math.inf))
            better = sel < best_sel
            best_sel = torch.where(better, sel, best_sel)
            best = torch.where(better, self.measured_by[name][key], best)
        return best

    def expected_clean(self) -> torch.Tensor:
        """Per input, the expected accuracy at the clean point (a deterministic model: correct or not)."""
        return self.clean_measured if self.randomized else self.clean  # type: ignore[return-value]

    def expected_to(self, attack: str | None, eps: float) -> torch.Tensor:
        """``robust_to`` as an expectation: per input, the expected accuracy at ``attack``'s point (``None``: the worst).

        A deterministic model: ``robust_to`` itself (boolean). A randomized one: the measured
        expectation at the attack's point, or at the worst point of all attacks (selected on
        other draws, ``_pick``); an input the attack did not attack keeps its clean one.
        """
        if not self.randomized:
            return self.robust_to(attack, eps)
        key = eps_key(eps)
        if attack is None:
            return self._pick(list(self.selected_by), key)
        return self._pick([attack], key) if attack in self.selected_by else self.clean_measured.clone()  # type: ignore[union-attr]

    def expected_after(self, attack: str, eps: float) -> torch.Tensor:
        """``robust_after`` as an expectation: the worst point of ``attack`` and every attack folded in before it."""
        if not self.randomized:
            return self.robust_after(attack, eps)
        names = list(self.selected_by)
        return self._pick(names[:names.index(attack) + 1] if attack in names else names, eps_key(eps))

    @property
    def n(self) -> int:
        """The number of inputs."""
        return int(self.clean.numel())

    def robust_to(self, attack: str | None, eps: float) -> torch.Tensor:
        """Per input: correct and not fooled by ``attack`` at ``eps`` (``None``: by any attack)."""
        key = eps_key(eps)
        if attack is None:
            return self.robust[key]
        return self.clean & ~self.fooled_by[attack][key]

    def robust_after(self, attack: str, eps: float) -> torch.Tensor:
        """Per input: correct and fooled by neither ``attack`` nor any attack folded in before it."""
        key, out = eps_key(eps), self.clean.clone()
        for name, by_eps in self.fooled_by.items():
            out &= ~by_eps[key]
            if name == attack:
                return out
        raise KeyError(f"no attack {attack!r} was folded in; these were: {list(self.fooled_by)}")

    def fold(self, fooled: dict[str, dict[str, torch.Tensor]], attacks: Sequence[str], eps: Sequence[float],
             selected: dict[str, dict[str, torch.Tensor]] | None = None,
             measured: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, dict[float, torch.Tensor]]:
        """Fold attacks' results in, in order (in place).

        Each joins ``fooled_by`` and removes the inputs it fooled from ``robust``; an attack missing
        from ``fooled`` (it ran nowhere) fooled nothing. A randomized model's results also take
        each attack's ``selected`` and ``measured`` expectations (attack -> eps key -> per input).
        Returns, per attack and eps, what is left after it and everything before: the inputs still
        robust (deterministic; the cumulative robust accuracy is its mean), or the expected
        accuracy at the worst point so far (randomized).
        """
        after: dict[str, dict[float, torch.Tensor]] = {}
        for name in attacks:
            by_eps = fooled.get(name) or {}
            self.fooled_by[name] = {eps_key(e): by_eps.get(eps_key(e), torch.zeros(self.n, dtype=torch.bool))
                                    for e in eps}
            if self.randomized:
                missing = torch.full((self.n,), math.nan)
                self.selected_by[name] = {eps_key(e): (selected or {}).get(name, {}).get(eps_key(e), missing).float().cpu()
                                          for e in eps}
                self.measured_by[name] = {eps_key(e): (measured or {}).get(name, {}).get(eps_key(e), missing).float().cpu()
                                          for e in eps}
            for e in eps:
                self.robust[eps_key(e)] = self.robust[eps_key(e)] & ~self.fooled_by[name][eps_key(e)]
            after[name] = {e: self.expected_to(None, e) if self.randomized else self.robust[eps_key(e)].clone()
                           for e in eps}
        return after

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (``per_sample.json``).

        Keys ``clean_correct``, ``robust``, ``fooled_by`` and ``min_norm`` (``None``: no norm found).
        """
        out = {
            "clean_correct": self.clean.tolist(),
            "robust": {key: mask.tolist() for key, mask in self.robust.items()},
            "fooled_by": {name: {key: m.tolist() for key, m in by_eps.items()} for name, by_eps in self.fooled_by.items()},
            "min_norm": {name: [None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()]
                         for name, norms in self.min_norm.items()},
        }
        if self.randomized:
            def values(t: torch.Tensor) -> list[float | None]:
                return [None if not math.isfinite(v) else round(v, 6) for v in t.tolist()]

            out["expected"] = {
                "draws": self.draws, "clean_selected": values(self.clean_selected),  # type: ignore[arg-type]
                "clean_measured": values(self.clean_measured),  # type: ignore[arg-type]
                "selected_by": {a: {k: values(t) for k, t in by.items()} for a, by in self.selected_by.items()},
                "measured_by": {a: {k: values(t) for k, t in by.items()} for a, by in self.measured_by.items()},
            }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerSample:
        """The results back from ``to_dict``'s output (one model of ``per_sample.json``)."""
        def mask(values: list[bool]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.bool)

        def floats(values: list[float | None]) -> torch.Tensor:
            return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)

        exp = data.get("expected") or {}
        return cls(
            clean=mask(data["clean_correct"]),
            fooled_by={name: {key: mask(m) for key, m in by_eps.items()} for name, by_eps in data.get("fooled_by", {}).items()},
            robust={key: mask(m) for key, m in data.get("robust", {}).items()},
            min_norm={name: torch.tensor([math.inf if v is None else v for v in norms], dtype=torch.float32)
                      for name, norms in data.get("min_norm", {}).items()},
            draws=int(exp.get("draws", 1)),
            clean_selected=floats(exp["clean_selected"]) if exp else None,
            clean_measured=floats(exp["clean_measured"]) if exp else None,
            selected_by={a: {k: floats(v) for k, v in by.items()} for a, by in exp.get("selected_by", {}).items()},
            measured_by={a: {k: floats(v) for k, v in by.items()} for a, by in exp.get("measured_by", {}).items()},
        )


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
    examples: dict[str, Any] = field(default_factory=dict, repr=False)
    per_sample: PerSample | None = field(default=None, repr=False)
    stages: dict[str, Any] = field(default_factory=dict)
    adequacy: dict[str, Any] | None = None  # the binarization test (``lit_defense.adequacy``), when run
    expected: dict[str, Any] | None = None  # a randomized model's expectations and their intervals

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


__all__ = ["Check", "CheckKind", "MaskingVerdict", "ModelAudit", "PerSample", "accuracy_metrics", "attack_curve", "eps_key", "interval_metrics", "num",
           "rerun_hint", "value_of", "verdict"]
