"""One registry of the gradient-masking checklist: every check's name, kind and threshold in one place.

A check is a function ``check_<name>`` that returns the ``Check`` called ``<name>``. It registers
itself with ``@register_check(name, kind, threshold=..., samples_option=...)`` and builds its
result with ``conclude``, which writes the sentence for its state (the fail / inconclusive / pass
sentence, the inconclusive one always in the same words) and fills in its kind and the audit
option that gives it more inputs. A new check is one function with one decorator.

``CHECKS`` maps each check's name to its ``CheckSpec``; the report, the docs and the tests read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from lit_defense.diagnostics.thresholds import DEFAULT_THRESHOLDS, MaskingThresholds
from lit_defense.results import Check, CheckKind
from lit_defense.stats import State

F = TypeVar("F", bound=Callable[..., Check])
_THRESHOLDS = {f.name for f in fields(MaskingThresholds)}


@dataclass(frozen=True)
class CheckSpec:
    """What the checklist knows about one check before it runs.

    Args:
        name: the check's name (``Check.name``, the ``masking/<name>`` metric); its function is
            ``check_<name>``.
        kind: what a failure tells (``mechanism``, ``signature``, ``outcome`` or ``advisory``; see
            ``lit_defense.results.CheckKind``).
        threshold: the ``MaskingThresholds`` field that decides it (``None``: decided exactly).
        samples_option: the audit option that gives it more inputs when it is inconclusive
            (``None``: a check with no sampling error).
        word: what its threshold is called in its sentence (``threshold`` or ``tolerance``).
        function: the check itself.
    """

    name: str
    kind: CheckKind
    threshold: str | None = None
    samples_option: str | None = "--num_samples"
    word: str = "threshold"
    function: Callable[..., Check] | None = None

    def limit(self, thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> float | None:
        """The threshold's value in ``thresholds``."""
        return None if self.threshold is None else float(getattr(thresholds, self.threshold))


CHECKS: dict[str, CheckSpec] = {}


def register_check(name: str, kind: CheckKind, threshold: str | None = None,
                   samples_option: str | None = "--num_samples", word: str = "threshold") -> Callable[[F], F]:
    """Register the decorated function ``check_<name>`` as the check ``name`` (see ``CheckSpec``)."""
    if threshold is not None and threshold not in _THRESHOLDS:
        raise ValueError(f"check {name!r}: {threshold!r} is not a field of MaskingThresholds")

    def register(function: F) -> F:
        if function.__name__ != f"check_{name}":
            raise ValueError(f"the check {name!r} must be the function check_{name}, not {function.__name__}")
        if name in CHECKS:
            raise ValueError(f"a check named {name!r} is already registered")
        CHECKS[name] = CheckSpec(name, kind, threshold, samples_option, word, function)
        return function

    return register


def conclude(name: str, state: State, value: Any, evidence: Mapping[str, Any], *, fail: str, ok: str,
             unsure: str = "", n: int = 0, thresholds: MaskingThresholds | float = DEFAULT_THRESHOLDS,
             counted: str = "inputs") -> Check:
    """The registered check ``name``'s result: the sentence for ``state``, its kind, its option.

    ``value`` is the one number that decided it (already a finite float or ``None``: ``num``).
    ``fail`` and ``ok`` are the whole sentences for a failure and a pass; ``unsure`` is what was
    seen when the numbers cannot decide, completed here as "..., which ``n`` inputs cannot tell
    from the X% threshold." with the spec's threshold in ``thresholds`` (or ``thresholds`` itself
    where a caller passes the number it decided on).
    """
    spec = CHECKS[name]
    if state == "fail":
        summary = fail
    elif state == "inconclusive":
        limit = spec.limit(thresholds) if isinstance(thresholds, MaskingThresholds) else thresholds
        summary = f"{unsure}, which {n} {counted} cannot tell from the {limit:.0%} {spec.word}."
    else:
        summary = ok
    evidence = dict(evidence)
    if spec.samples_option is not None:
        evidence.setdefault("samples_option", spec.samples_option)
    return Check(name, state == "pass", value, summary, evidence, state=state, kind=spec.kind)


__all__ = ["CHECKS", "CheckSpec", "conclude", "register_check"]
