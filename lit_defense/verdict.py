"""The gradient-masking checklist's result types: one ``Check``, the ``MaskingVerdict`` of a list.

Plain data like the rest of ``lit_defense.results`` (which re-exports them); the checks that
build them are in ``lit_defense.diagnostics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lit_defense.stats import State

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
    ``state == "pass"``. ``kind`` says whether it can decide the verdict (see ``CheckKind``);
    ``advisory`` is ``kind == "advisory"``. Each check is built by its function in
    ``lit_defense.diagnostics`` (``CHECKS`` lists them).
    """

    name: str
    passed: bool
    value: float | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    state: State = ""  # type: ignore[assignment]  # derived from ``passed`` when not given
    kind: CheckKind = "mechanism"

    def __post_init__(self) -> None:
        if not self.state:
            self.state = "pass" if self.passed else "fail"
        self.passed = self.state == "pass"

    @property
    def advisory(self) -> bool:
        """About the evaluation's own numbers, never the verdict (``kind == "advisory"``)."""
        return self.kind == "advisory"

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data (``advisory`` written out for readers of older reports)."""
        return {**asdict(self), "advisory": self.advisory}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        """A check from ``to_dict``'s data (a report's or a resumed audit's)."""
        data = dict(data)
        if data.pop("advisory", False):
            data["kind"] = "advisory"
        return cls(**data)


@dataclass
class MaskingVerdict:
    """Whether gradient masking is suspected, which checks said so, and every check.

    ``state``: ``suspected`` (a mechanism or signature check failed), ``inconclusive`` (none
    failed, but one could not be decided at this sample size) or ``not suspected``. ``triggered``
    lists the failed checks behind a suspicion (outcome checks corroborate it), ``inconclusive``
    the undecided deciding checks; ``suspected`` is ``state == "suspected"``.
    """

    state: Literal["suspected", "inconclusive", "not suspected"]
    triggered: list[str]
    checks: list[Check]
    inconclusive: list[str] = field(default_factory=list)

    @property
    def suspected(self) -> bool:
        """Whether gradient masking is suspected (``state == "suspected"``)."""
        return self.state == "suspected"

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
    state = "suspected" if failed else "inconclusive" if undecided else "not suspected"
    return MaskingVerdict(state, failed, list(checks), inconclusive=undecided)


__all__ = ["DECIDING", "Check", "CheckKind", "MaskingVerdict", "rerun_hint", "verdict"]
