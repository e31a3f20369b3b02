"""Random sampling in the threat model: the sanity baseline of Athalye et al. / Carlini et al.

Draws ``samples`` random points of the eps ball (half at its L-inf corners, half uniform; random
directions at the full radius for L2) and returns, per sample, the first misclassified one (else
the clean input). It uses no gradient, so if it finds adversarial points that a gradient attack
missed, that attack was misled by the model's gradients.
"""

from __future__ import annotations

import torch

from lit_defense.attacks.base import Attack, random_start
from lit_defense.errors import ConfigError
from lit_defense.threat import Norm, ThreatModel, per_sample


class RandomSampling(Attack):
    """Args:
        samples: random points tried per input (each costs one forward pass).
    """

    uses_gradients = False

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", samples: int = 100, seed: int = 0,
                 name: str | None = None):
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if samples < 1:
            raise ConfigError(f"RandomSampling needs samples >= 1, got {samples}.")
        self.samples = samples

    def default_name(self) -> str:
        return "random" if self.norm == "linf" else f"random_{self.norm}"

    def _draw(self, x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        if self.norm == "linf" and k % 2 == 0:  # a corner of the box: the largest perturbation
            signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
            return (x + self.eps * signs).clamp(0, 1)
        if self.norm == "l2":  # on the sphere, not inside it
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = direction / per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
            return ThreatModel("l2", self.eps).project(x + self.eps * direction, x)
        return random_start(x, self.threat, generator)

    def perturb(self, model, x, y, generator):
        out = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for k in range(self.samples):
                xr = self._draw(x, k, generator)
                hit = (model(xr).argmax(1) != y) & ~found
                out = torch.where(per_sample(hit, xr), xr, out)
                found |= hit
        return out
