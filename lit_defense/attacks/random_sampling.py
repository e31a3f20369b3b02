"""Random sampling in the threat model: the sanity baseline of Athalye et al. / Carlini et al.

Draws ``samples`` random points of the eps ball (half at its L-inf corners, half uniform; random
directions at the full radius for L2) and returns, per sample, the first misclassified one (else
the clean input). It uses no gradient, so if it finds adversarial points that a gradient attack
missed, that attack was misled by the model's gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import FixedBudgetAttack
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.judge import Judge
from lit_defense.rng import SampleRNG
from lit_defense.threat import Norm, per_sample
from lit_defense.width import per_input, width_for


@register_attack
class RandomSampling(FixedBudgetAttack):
    """Uniform random points in the eps-ball, keeping the first that fools the model.

    Args:
        samples: random points tried per input (each costs one forward pass).
        draws: passes per point, for a randomized model (the audit sets it): each point is judged
            by the fraction of draws that classify it correctly, and the lowest is kept (the clean
            input when none is lower), never a point one lucky draw misclassified.
    """

    uses_gradients = False

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", samples: int = 100, draws: int = 1, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if samples < 1 or draws < 1:
            raise ConfigError(f"RandomSampling needs samples >= 1 and draws >= 1, got {samples}, {draws}.")
        self.samples = samples
        self.draws = draws

    @override
    def default_name(self) -> str:
        return "random" if self.norm == "linf" else f"random_{self.norm}"

    def _draw(self, x: torch.Tensor, k: int, generator: SampleRNG) -> torch.Tensor:
        # L-inf: half at the corners of the box (the largest perturbations); L2: on the sphere
        on_surface = self.norm == "l2" or k % 2 == 0
        return self.threat.random_point(x, generator, "surface" if on_surface else "ball")

    @override
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        out = x.clone()
        n = x.shape[0]
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        best = None
        with torch.no_grad():
            # the samples side by side, as many as one call carries (``lit_defense.width``); each is
            # drawn as it was one at a time, so the points do not depend on the width
            for group in width_for(x.device).groups(n, x[0].numel(), self.samples):
                points = torch.cat([self._draw(x, k, generator) for k in group])
                ys = y.repeat(len(group))
                if self.draws > 1:  # the lowest rate over the samples, the clean input's as the floor
                    best = self._rate(model, x, y) if best is None else best
                    rates = per_input(self._rate(model, points, ys), len(group))
                    low, k = rates.min(0)
                    point = per_input(points, len(group))[k, torch.arange(n, device=x.device)]
                    out = torch.where(per_sample(low < best, point), point, out)
                    best = torch.minimum(low, best)
                    continue
                hit = per_input(model(points).argmax(1) != ys, len(group))
                first = hit.float().argmax(0)  # each input's first misclassified sample in this group
                point = per_input(points, len(group))[first, torch.arange(n, device=x.device)]
                new = hit.any(0) & ~found
                out = torch.where(per_sample(new, point), point, out)
                found |= new
        return out

    def _rate(self, model: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The fraction of ``draws`` passes that classify ``z`` correctly (the audit's own estimator)."""
        return Judge(self.draws).rates(model, z, y, batch_size=z.shape[0])
