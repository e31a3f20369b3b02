"""Jacobian-based saliency map attack (Papernot et al. 2016), the attack of the distillation paper.

A targeted L0 attack: at each iteration it picks the pair of input features whose increase most
raises the target class and lowers the others (the saliency map on the Jacobian of the softmax
output, "JSMA-F", or of the logits with ``use_logits=True``, "JSMA-Z" as Carlini & Wagner used
against distillation), and sets both to the maximum. The budget ``eps`` (norm ``l0``) is the
fraction of features that may change (the paper's gamma = 14.5%). ``run`` also returns the success
rate and mean L0 distortion the paper reports.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import FixedBudgetAttack
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG


@register_attack
class JSMA(FixedBudgetAttack):
    """Jacobian-based saliency map attack (Papernot et al. 2016), an L0 attack.

    Args:
        eps: maximum fraction of features changed (gamma).
        theta: change applied to each chosen feature (+1: set to the maximum).
        use_logits: saliency on logits (JSMA-Z) instead of softmax probabilities (JSMA-F).
        target: ``next`` (the most likely wrong class on the clean input) or ``random``.
        max_pairs_per_chunk: memory bound of the pairwise saliency search (samples x features^2).
    """

    norms = ("l0",)

    def __init__(self, eps: float = 0.145, norm: str = "l0", theta: float = 1.0, use_logits: bool = False,
                 target: Literal["next", "random"] = "next", max_pairs_per_chunk: int = 20_000_000,
                 seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if theta == 0:
            raise ConfigError("JSMA theta must be non-zero.")
        self.theta = theta
        self.use_logits = use_logits
        self.target = target
        self.max_pairs_per_chunk = max_pairs_per_chunk

    @override
    def default_name(self) -> str:
        return "jsma_z" if self.use_logits else "jsma"

    def pick_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     generator: SampleRNG) -> torch.Tensor:
        """The class each input is pushed towards: the most likely wrong one, or a random one."""
        with torch.no_grad():
            logits = model(x)
        if self.target == "next":
            return logits.scatter(1, y[:, None], float("-inf")).argmax(1)
        k = logits.shape[1]
        shift = generator.randint(1, k, tuple(y.shape))
        return (y + shift) % k

    @override
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        targets = self.pick_targets(model, x, y, generator)
        d = x[0].numel()
        chunk = max(1, self.max_pairs_per_chunk // (d * d))
        return torch.cat([self._attack(model, xc, tc) for xc, tc in zip(x.split(chunk), targets.split(chunk), strict=True)])

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``x_adv`` and the paper's statistics: targeted success rate and mean L0 distortion."""
        x_adv = self(model, x, y)
        with torch.no_grad():
            targets = self.pick_targets(model, x, y, SampleRNG.for_batch(self.seed, x.shape[0], x.device))
            success = model(x_adv).argmax(1) == targets
            l0 = (x_adv != x).flatten(1).float().mean(1)
        return x_adv, {
            "success_rate": success.float().mean().item(),
            "mean_l0_success": l0[success].mean().item() if success.any() else float("nan"),
            "mean_l0": l0.mean().item(),
        }

    def _attack(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[0], x[0].numel()
        shape = x.shape
        max_iters = math.floor(self.eps * d / 2)
        xa = x.flatten(1).clone()
        increase = self.theta > 0
        domain = (xa < 1) if increase else (xa > 0)
        eye = torch.eye(d, dtype=torch.bool, device=x.device)
        for _ in range(max_iters):
            xin = xa.view(shape).detach().requires_grad_(True)
            out = model(xin)
            out = out if self.use_logits else out.float().softmax(-1)
            done = out.argmax(1) == target
            t_out = out.gather(1, target[:, None]).sum()
            (alpha,) = torch.autograd.grad(t_out, xin, retain_graph=True)
            (total,) = torch.autograd.grad(out.sum(), xin)
            alpha = alpha.flatten(1)
            beta = total.flatten(1) - alpha
            a2 = alpha[:, :, None] + alpha[:, None, :]
            b2 = beta[:, :, None] + beta[:, None, :]
            valid = domain[:, :, None] & domain[:, None, :] & ~eye
            valid &= (a2 > 0) & (b2 < 0) if increase else (a2 < 0) & (b2 > 0)
            score = torch.where(valid, a2 * b2.abs(), torch.zeros((), device=x.device)).flatten(1)
            best, flat = score.max(1)
            p, q = flat // d, flat % d
            active = (best > 0) & ~done & (domain.sum(1) >= 2)
            rows = torch.arange(n, device=x.device)
            for feat in (p, q):
                new = (xa[rows, feat] + self.theta).clamp(0, 1)
                xa[rows, feat] = torch.where(active, new, xa[rows, feat])
                domain[rows, feat] = domain[rows, feat] & ~active
        return xa.view(shape)
