"""The attacks behind the checklist's evaluation checks, and the checks they feed.

They run as units of the plan like every other attack (sharded, recorded, gathered); the checks
themselves (``lit_defense.diagnostics``) read only their per-sample results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lit_defense.attacks import Attack
from lit_defense.diagnostics import (
    MaskingThresholds,
    check_incomplete_optimisation,
    check_silent_success,
    check_unbounded,
)
from lit_defense.results import Check
from lit_defense.threat import check_eps


@dataclass
class ChecklistAttacks:
    """The attacks behind the checklist's evaluation checks (run as units like every other attack).

    ``unbounded``: the naive attack with the whole pixel range as budget (no random start: at that
    eps a random start is noise that fools by itself); ``probe``/``longer``: a margin PGD and the
    same at twice the steps (incomplete optimisation); ``first``/``last``: the probe keeping the
    first adversarial point met vs returning its last iterate (silent success).
    """

    unbounded: Attack
    probe: Attack
    longer: Attack
    first: Attack
    last: Attack

    @classmethod
    def build(cls, naive: Attack, probe: Attack, input_numel: int) -> ChecklistAttacks:
        """The checklist's attacks around the audit's naive attack and a margin-PGD probe."""
        big = 1.0 if naive.norm == "linf" else math.sqrt(input_numel)
        unbounded = naive.with_eps(check_eps(naive.norm, big))
        if "random_start" in unbounded.init_args:
            unbounded = unbounded.replace(random_start=False)
        step = probe.init_args.get("step_size")
        return cls(
            unbounded=unbounded.replace(name=f"unbounded_{naive.name}"),
            probe=probe.replace(name=probe.name),
            longer=probe.replace(steps=probe.steps * 2, step_size=None if step is None else step / 2,
                                 name=f"{probe.name}_2x_steps"),
            first=probe.replace(keep_first_adversarial=True, early_stop_every=0, name=f"{probe.name}_first"),
            last=probe.replace(keep_first_adversarial=False, early_stop_every=0, name=f"{probe.name}_last"),
        )

    def at_probe_eps(self) -> list[Attack]:
        """The four attacks that run at the probe's eps."""
        return [self.probe, self.longer, self.first, self.last]

    def checks(self, clean: torch.Tensor, fooled: dict[str, torch.Tensor], thresholds: MaskingThresholds
               ) -> list[Check]:
        """The three checks from per-sample results (``fooled``: attack name -> mask)."""
        robust = {name: clean & ~mask for name, mask in fooled.items()}
        return [
            check_unbounded(self.unbounded.name, self.unbounded.eps, fooled[self.unbounded.name][clean], thresholds),
            check_incomplete_optimisation(self.probe.name, self.probe.steps, self.longer.steps, self.probe.eps,
                                          robust[self.probe.name], robust[self.longer.name], thresholds),
            check_silent_success(self.probe.name, fooled[self.first.name], fooled[self.last.name], thresholds),
        ]


__all__ = ["ChecklistAttacks"]
