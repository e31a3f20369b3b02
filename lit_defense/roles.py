"""The roles the audit's attacks play (``AttackRoles``): one typed record instead of a dict of strings.

The same record holds the attacks themselves (``AttackRoles[Attack]``, what ``default_attacks``
builds) or their names (``AttackRoles[str]``, what a ``ModelAudit`` and ``report.json`` keep).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# the roles in the order the plan runs them (the order of ``report.json``'s ``roles``)
ROLE_NAMES = ("one_step", "naive", "adaptive", "cascade", "black_box", "refine")


@dataclass
class AttackRoles(Generic[T]):
    """The audit's attacks by role.

    Args:
        one_step: the one-step attack (FGSM), side by side with the others in the white box.
        naive: the cross-entropy PGD a naive evaluation runs (the "apparent" robustness).
        adaptive: the margin-loss PGD, and around it BPDA and EOT where the model needs them.
        cascade: the gradient attacks on the white box's survivors (APGD-CE, APGD-T, FMN).
        black_box: the gradient-free attacks on the survivors (random sampling, Square, RayS) and
            the extra attacks a user adds to the audit.
        refine: fresh starts on the survivors near the boundary.
    """

    one_step: T
    naive: T
    adaptive: list[T]
    cascade: list[T] = field(default_factory=list)
    black_box: list[T] = field(default_factory=list)
    refine: list[T] = field(default_factory=list)

    @property
    def white_box(self) -> list[T]:
        """The attacks the white-box stage runs side by side: one-step, naive, adaptive."""
        return [self.one_step, self.naive, *self.adaptive]

    @property
    def after_white_box(self) -> list[T]:
        """The attacks that run on the white box's survivors, in order: cascade, then gradient-free."""
        return [*self.cascade, *self.black_box]

    @property
    def margin(self) -> T:
        """The adaptive margin-loss attack itself (the first adaptive one, without wrappers)."""
        return self.adaptive[0]

    @property
    def every(self) -> list[T]:
        """Every attack, in the order the plan runs them."""
        return [*self.white_box, *self.after_white_box, *self.refine]

    def names(self) -> AttackRoles[str]:
        """The same roles holding the attacks' names."""
        def name(a: Any) -> str:
            return a if isinstance(a, str) else a.name

        return AttackRoles(name(self.one_step), name(self.naive), [name(a) for a in self.adaptive],
                           [name(a) for a in self.cascade], [name(a) for a in self.black_box],
                           [name(a) for a in self.refine])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``report.json``'s ``roles``): role -> name or list of names."""
        named = self.names()
        return {f.name: getattr(named, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackRoles[str]:
        """The roles of ``report.json`` (a role it lacks is empty)."""
        return AttackRoles(data["one_step"], data["naive"], list(data.get("adaptive", [])),
                           list(data.get("cascade", [])), list(data.get("black_box", [])),
                           list(data.get("refine", [])))


__all__ = ["ROLE_NAMES", "AttackRoles"]
