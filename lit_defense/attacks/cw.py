"""Carlini & Wagner's L2 attack (2017), the attack that broke defensive distillation.

Minimises ``||delta||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)`` in tanh space with Adam, with
a per-sample binary search over ``c``; returns the smallest adversarial example found (the clean
input where none was found). Under an L2 threat model, examples larger than eps are projected
onto the eps ball by the base class.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import MinNormAttack, margin_loss
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.threat import per_sample


@register_attack
class CarliniWagnerL2(MinNormAttack):
    """Carlini & Wagner's L2 attack.

    A minimum-norm attack (``min_norms``); at a budget, its point where it lies within ``eps``.

    Args:
        steps: Adam iterations per binary-search step.
        binary_search_steps: searches over the constant c (per sample).
        initial_const: first c.
        lr: Adam learning rate in tanh space.
        confidence: kappa, the required logit margin.
    """

    norms = ("l2",)

    def __init__(self, eps: float = 1.5, norm: str = "l2", steps: int = 100, binary_search_steps: int = 5,
                 initial_const: float = 1.0, lr: float = 0.01, confidence: float = 0.0, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if steps < 1 or binary_search_steps < 1 or initial_const <= 0 or lr <= 0:
            raise ConfigError("CarliniWagnerL2 needs steps, binary_search_steps >= 1 and initial_const, lr > 0.")
        self.steps = steps
        self.binary_search_steps = binary_search_steps
        self.initial_const = initial_const
        self.lr = lr
        self.confidence = confidence

    @override
    def default_name(self) -> str:
        return "cw_l2"

    @override
    def minimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: SampleRNG) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((n,), self.initial_const, device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), float("inf"), device=x.device)
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        best = x.clone()
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                x_adv = (torch.tanh(w) + 1) / 2
                logits = model(x_adv)
                margin = -margin_loss(logits, y)  # z_y - max other: < 0 means misclassified
                l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                loss = (l2 + const * margin.clamp(min=-self.confidence)).sum()
                (grad,) = torch.autograd.grad(loss, w)
                w.grad = grad
                opt.step()
                with torch.no_grad():
                    success = margin < -self.confidence if self.confidence > 0 else logits.argmax(1) != y
                    better = success & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best = torch.where(per_sample(better, x), x_adv.detach(), best)
                    found |= success
            with torch.no_grad():
                upper = torch.where(found, torch.minimum(upper, const), upper)
                lower = torch.where(found, lower, torch.maximum(lower, const))
                const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return best, best_l2.sqrt()
