"""Fast Minimum-Norm attack (FMN, Pintor et al. 2021), L-inf and L2.

Each input's smallest adversarial perturbation, so one run gives robust accuracy at every eps of
a grid.

Each step moves the perturbation down the logit margin ``z_y - max_{j != y} z_j`` (an L2-normalised
gradient step, its size cosine-annealed from ``alpha_init`` to ``alpha_init / 100``) and projects
it onto a ball of radius ``epsilon``, which adapts per input: while no adversarial point is known,
``epsilon`` is the current norm plus the first-order distance to the boundary (``|margin|`` over the
gradient's dual norm); once one is, it shrinks by ``gamma`` at each adversarial iterate (never
above the smallest adversarial norm found) and grows by ``gamma`` otherwise.

``targets=k`` runs it once per target class, the k most likely wrong classes at the clean input,
down the targeted margin ``z_y - z_t``, and keeps each input's smallest norm over them (the
minimum-norm counterpart of APGD-T; AutoAttack's FAB-T plays this role). The untargeted margin
follows the nearest *logit*, which need not be the nearest boundary, so it can overestimate an
input's distance to the boundary by far (``benchmarks/results/vs_autoattack_l2_1.0.json``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import Attack, MinNormAttack, margin_loss
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.side_by_side import value_and_grad
from lit_defense.threat import Norm, per_sample


@register_attack
class FMN(MinNormAttack):
    """Fast Minimum-Norm attack (see module doc).

    Args:
        steps: iterations.
        alpha_init: initial step size (L2 length of the step), annealed to ``alpha_init / 100``.
        gamma_init: initial rate at which the radius adapts, annealed to ``gamma_final``.
        gamma_final: final radius adaptation rate.
        eps: the budget used only when the attack is called at one budget (``attack(model, x, y)``).
    """

    uses_gradients = True

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", steps: int = 100, alpha_init: float = 1.0,
                 gamma_init: float = 0.05, gamma_final: float = 0.001, targets: int = 0, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if steps < 1 or alpha_init <= 0 or not 0 < gamma_final <= gamma_init < 1 or targets < 0:
            raise ConfigError(
                f"FMN needs steps >= 1, alpha_init > 0, 0 < gamma_final <= gamma_init < 1 and targets >= 0; "
                f"got {steps}, {alpha_init}, {gamma_init}, {gamma_final}, {targets}."
            )
        self.targets = targets
        self.steps = steps
        self.alpha_init = alpha_init
        self.gamma_init = gamma_init
        self.gamma_final = gamma_final

    @override
    def default_name(self) -> str:
        base = f"fmn_t{self.targets}" if self.targets else "fmn"
        return base if self.norm == "linf" else f"{base}_{self.norm}"

    @override
    def for_eot(self, samples: int) -> Attack:
        raise ConfigError("FMN has no EOT form (its radius follows single draws); use EOT(APGD(...)).")

    @override
    def minimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: SampleRNG) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.targets:
            return self._descend(model, x, y, None)
        with torch.no_grad():
            order = model(x).sort(dim=1, descending=True).indices
        others = order[order != y[:, None]].view(x.shape[0], -1)  # wrong classes, likeliest first
        best_adv, best_norm = x.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
        for t in range(min(self.targets, others.shape[1])):
            adv, norm = self._descend(model, x, y, others[:, t])
            better = norm < best_norm
            best_norm = torch.where(better, norm, best_norm)
            best_adv = torch.where(per_sample(better, x), adv, best_adv)
        return best_adv, best_norm

    def _descend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One FMN run down the margin to the nearest other class, or to ``target`` (per input)."""
        threat = self.threat
        n = x.shape[0]
        dev = x.device
        worst = threat.distance(torch.where(x > 0.5, torch.zeros_like(x), torch.ones_like(x)), x)
        delta = torch.zeros_like(x)
        epsilon = torch.full((n,), float("inf"), device=dev)
        best_norm = torch.full((n,), float("inf"), device=dev)
        best_adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        alpha_final = self.alpha_init / 100
        for i in range(self.steps):
            cosine = (1 + math.cos(math.pi * i / self.steps)) / 2
            alpha = alpha_final + (self.alpha_init - alpha_final) * cosine
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
            x_in = (x + delta).detach()
            # z_y - max other (< 0: misclassified), or z_y - z_target
            logits, margin, grad = value_and_grad(model, x_in, lambda out: -margin_loss(out, y) if target is None else
                                                  (out.gather(1, y[:, None]) - out.gather(1, target[:, None])).squeeze(1))
            with torch.no_grad():
                norm = threat.distance(x_in, x)
                adv = logits.argmax(1) != y
                better = adv & (norm < best_norm)
                best_norm = torch.where(better, norm, best_norm)
                best_adv = torch.where(per_sample(better, x), x_in, best_adv)
                found |= adv
                to_boundary = margin.abs() / threat.dual_norm(grad).clamp_min(1e-12)
                epsilon = torch.where(
                    adv, torch.minimum(epsilon * (1 - gamma), best_norm),
                    torch.where(found, epsilon * (1 + gamma), norm + to_boundary),
                )
                epsilon = torch.minimum(epsilon, worst)
                step = grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
                delta = delta - alpha * step
                if threat.norm == "linf":
                    delta = torch.max(torch.min(delta, per_sample(epsilon, x)), -per_sample(epsilon, x))
                else:
                    scale = (epsilon / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1)
                    delta = delta * per_sample(scale, x)
                delta = (x + delta).clamp(0, 1) - x
        with torch.no_grad():  # the last iterate
            x_last = x + delta
            adv = model(x_last).argmax(1) != y
            norm = threat.distance(x_last, x)
            better = adv & (norm < best_norm)
            best_norm = torch.where(better, norm, best_norm)
            best_adv = torch.where(per_sample(better, x), x_last, best_adv)
        return best_adv, best_norm
