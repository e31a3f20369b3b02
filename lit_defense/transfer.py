"""Transfer attack: adversarial examples crafted on a surrogate model, applied to the target.

Needs no gradient of the target. If it beats white-box attacks on the target, the target's
gradients are masked. The surrogate is a lit-defense checkpoint, loaded safely.

It lives above the attack package (``lit_defense.transfer.Transfer``, not in ``lit_defense.attacks``):
loading a checkpoint needs the LightningModules, and those (adversarial training) need the attacks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import Attack, FixedBudgetAttack, GridResult
from lit_defense.attacks.gradient import PGD
from lit_defense.attacks.registry import register_attack
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense.rng import SampleRNG
from lit_defense.threat import Norm, ThreatModel


@register_attack
class Transfer(FixedBudgetAttack):
    """Adversarial examples crafted on a surrogate model, evaluated on the target.

    Args:
        surrogate_checkpoint: a lit-defense ``.ckpt`` of the surrogate (e.g. an undefended model).
        attack: the attack run on the surrogate (default: PGD-20, margin loss).
    """

    uses_gradients = False

    def __init__(self, surrogate_checkpoint: str, attack: Attack | None = None, eps: float = 0.1,
                 norm: Norm = "linf", seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        self.surrogate_checkpoint = surrogate_checkpoint
        self.attack = attack if attack is not None else PGD(eps=eps, norm=norm, steps=20, loss="margin", seed=seed)
        self._surrogate = module_from_checkpoint(surrogate_checkpoint, "surrogate checkpoint")

    @override
    def default_name(self) -> str:
        return f"transfer_{self.attack.name}"

    @property
    def answers_grid(self) -> bool:  # type: ignore[override]
        """Whether the surrogate's attack answers a grid of budgets in one run."""
        return self.attack.answers_grid

    def _on_device(self, x: torch.Tensor) -> nn.Module:
        surrogate = self._surrogate
        if next(surrogate.parameters()).device != x.device:
            surrogate.to(x.device)
        return surrogate

    @override
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        return self.attack.with_eps(self.eps)(self._on_device(x), x, y, generator.ids)

    @override
    def attack_grid(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                    ids: torch.Tensor | None = None) -> GridResult:
        """The surrogate attack's points for the grid, judged on the target ``model``.

        The norms the surrogate's attack found are the surrogate's, not the target's: none are kept.
        """
        points = self.attack.attack_grid(self._on_device(x), x, y, eps, ids).points
        return GridResult.judged(model, self.norm, eps, points, x, y)

    def with_eps(self, eps: float) -> Transfer:
        """A copy at budget ``eps`` that shares the loaded surrogate (no second checkpoint read)."""
        other = copy.copy(self)
        other.threat = ThreatModel(self.norm, eps)
        other.attack = self.attack.with_eps(eps)
        other._record_init_args(eps=eps, attack=other.attack)
        return other

