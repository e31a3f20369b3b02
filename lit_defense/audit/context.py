"""What every stage of one model's audit shares (``AuditContext``), and where the audit runs (``AuditRuntime``).

A stage reads the context (the model, its inputs, the options, what earlier stages found) and adds
to it: the probe's findings and the attack roles, the per-sample outcome (``PerSample``), result
rows and checks. ``AuditContext.audit`` turns it into the ``ModelAudit`` when the plan is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import Attack
from lit_defense.audit.display import AuditProgress
from lit_defense.audit.options import AuditOptions
from lit_defense.audit.probe import ModelProbe
from lit_defense.audit.progress import ProgressLog
from lit_defense.audit.sharding import Collective
from lit_defense.audit.stage import Stage
from lit_defense.cost import CostCounter
from lit_defense.judge import Judge
from lit_defense.results import Check, PerSample, eps_key
from lit_defense.roles import AttackRoles
from lit_defense.width import width_for


@dataclass
class AuditRuntime:
    """Where and how an audit runs; none of it changes a number.

    Args:
        collective: the processes and their collectives (one process by default).
        log: the resumable record of finished batches (``None``: not resumable).
        progress: what a long audit shows while it runs (silent by default).
    """

    collective: Collective = field(default_factory=Collective)
    log: ProgressLog | None = None
    progress: AuditProgress = field(default_factory=lambda: AuditProgress(1, enabled=False))


@dataclass
class AuditContext:
    """One model's audit while its plan runs.

    Set when the audit starts: ``model``, ``x``, ``y`` (the audited inputs), ``name``, ``source``,
    ``options`` (``eps`` sorted) and ``runtime``. Added by the stages, in the plan's order:
    ``checks`` and ``probe`` (the model checks), ``roles`` (the attacks), ``judge`` (how points are
    judged), ``res`` (the per-sample outcome the attacks fold into), ``results`` (one row per
    attack and eps), ``after`` (attack -> eps -> robust after it, as the cascade folds), ``found``
    (what a stage leaves for later ones, by stage name) and ``stages`` (each stage's info for
    ``report.json``); ``cost`` counts this process's model calls, ``stage_cost`` their rounds and
    work per stage of the plan.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    name: str
    source: str
    options: AuditOptions
    runtime: AuditRuntime
    checks: list[Check] = field(default_factory=list)
    probe: ModelProbe | None = None
    roles: AttackRoles[Attack] | None = None
    judge: Judge = field(default_factory=Judge)
    res: PerSample | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    after: dict[str, dict[float, torch.Tensor]] = field(default_factory=dict)
    found: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    cost: CostCounter = field(default_factory=CostCounter)
    stage_cost: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def eps(self) -> list[float]:
        """The eps grid, ascending."""
        return self.options.eps

    @property
    def n(self) -> int:
        """How many inputs the audit attacks."""
        return int(self.x.shape[0])

    @property
    def ids(self) -> torch.Tensor:
        """Every input's id (on the CPU: per-sample bookkeeping lives there; attacks run where ``x`` is)."""
        return torch.arange(self.n)

    @property
    def main_eps(self) -> float:
        """The middle eps of the grid (the checklist's attacks and the positive control run there)."""
        return self.eps[len(self.eps) // 2]

    @property
    def side_by_side(self) -> bool:
        """Whether a stage's attacks run side by side (``lit_defense.width``: the device's policy)."""
        return width_for(self.x.device).side_by_side

    def runner(self, stage: str, share: float = 0.0) -> Stage:
        """A sharded, recorded run of one stage of this model (``audit.stage.Stage``)."""
        rt = self.runtime
        return Stage(stage, self.name, rt.collective, rt.log, rt.progress, share, self.side_by_side)

    def add_results(self, attacks: list[str], values: dict[str, dict[float, torch.Tensor]], label: str,
                    eps_major: bool = False) -> None:
        """Result rows: each attack's accuracy at each eps (``values``: attack -> eps -> per-input mask or expectation)."""
        pairs = [(a, e) for e in self.eps for a in attacks] if eps_major else \
            [(a, e) for a in attacks for e in self.eps]
        self.results += [{"attack": a, "eps": e, "robust_accuracy": rate(values[a][e]), "stage": label}
                         for a, e in pairs]

    def worst_case(self) -> dict[str, float]:
        """Eps key -> the accuracy under the per-input worst case over every attack that ran."""
        return {eps_key(e): rate(self.res.expected_to(None, e)) for e in self.eps}


def rate(mask: torch.Tensor) -> float:
    """The fraction of inputs a per-sample mask holds (an accuracy over all audited inputs).

    Per-input expectations (a randomized model) give their mean.
    """
    if mask.dtype == torch.bool:
        return int(mask.sum()) / max(int(mask.numel()), 1)
    return float(mask.double().sum()) / max(int(mask.numel()), 1)


__all__ = ["AuditContext", "AuditRuntime", "rate"]
