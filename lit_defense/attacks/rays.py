"""RayS (Chen & Gu 2020): a decision-based L-inf attack that needs only the predicted label.

It searches over ray directions ``d in {-1, +1}^D`` for the one whose decision boundary is
nearest: ``r(d)`` is the smallest radius at which ``clip(x + r d)`` is misclassified (found by
bisection). Starting from ``d = +1``, it flips the signs of ever smaller blocks of coordinates
(the whole input, halves, quarters, ...) and keeps a flip when one query at the current best
radius shows the new ray crosses the boundary sooner. The L-inf distance of the point found is
the radius, so an input is fooled within ``eps`` as soon as its best radius drops to ``eps``.

Margins, gradients and scores are never read, so a model that returns only its decision (a
one-hot, a thresholded input, a flat margin) cannot hide from it: where Square and random sampling
follow a margin that is flat, RayS still walks the boundary.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import FixedBudgetAttack
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.threat import per_sample


@register_attack
class RayS(FixedBudgetAttack):
    """RayS (see module doc), L-inf.

    Args:
        queries: model evaluations per input (each bisection step counts one).
        tolerance: bisection stops when the radius is known to within this (relative to eps).
    """

    norms = ("linf",)
    uses_gradients = False

    def __init__(self, eps: float = 0.1, norm: str = "linf", queries: int = 1000, tolerance: float = 0.01,
                 seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if queries < 2 or not 0 < tolerance < 1:
            raise ConfigError(f"RayS needs queries >= 2 and 0 < tolerance < 1, got {queries}, {tolerance}.")
        self.queries = queries
        self.tolerance = tolerance

    @override
    def default_name(self) -> str:
        return "rays"

    @override
    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        n = x.shape[0]
        dev = x.device
        flat = x.flatten(1)
        dim = flat.shape[1]
        signs = torch.ones_like(flat)
        radius = torch.full((n,), float("inf"), device=dev)
        used = torch.zeros(n, dtype=torch.long, device=dev)
        tol = self.tolerance * max(self.eps, 1e-3)

        def fooled(idx: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            used[idx] += 1
            point = (flat[idx] + per_sample(r, d) * d).clamp(0, 1).view(-1, *x.shape[1:])
            return model(point).argmax(1) != y[idx]

        def bisect(idx: torch.Tensor, d: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
            """Smallest fooling radius in (0, hi] along d, to within tol (hi fools).

            One query at eps first, which ends the search for the rays that cross within the budget.
            """
            at_eps = fooled(idx, d, torch.full_like(hi, self.eps)) | (hi <= self.eps)
            lo = torch.where(at_eps, torch.zeros_like(hi), torch.full_like(hi, self.eps))
            hi = torch.where(at_eps, hi.clamp(max=self.eps), hi)
            if not (~at_eps).any():
                return hi
            steps = max(1, math.ceil(math.log2(max(float(hi.max()), tol) / tol)))
            for _ in range(steps):
                mid = (lo + hi) / 2
                hit = fooled(idx, d, mid)
                hi, lo = torch.where(hit, mid, hi), torch.where(hit, lo, mid)
            return hi

        level, block = 0, 0
        while True:
            active = ((radius > self.eps) & (used < self.queries)).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            size = math.ceil(dim / 2 ** level)
            start, end = block * size, min(dim, (block + 1) * size)
            attempt = signs[active].clone()
            if level > 0 or block > 0:
                attempt[:, start:end] *= -1
            # one query at the best radius so far (the whole box where none is known yet)
            probe = torch.where(torch.isinf(radius[active]), torch.ones_like(radius[active]), radius[active])
            hit = fooled(active, attempt, probe)
            if hit.any():
                idx, d, hi = active[hit], attempt[hit], probe[hit]
                r = bisect(idx, d, hi)
                better = r < radius[idx]
                radius[idx] = torch.where(better, r, radius[idx])
                signs[idx] = torch.where(per_sample(better, d), d, signs[idx])
            block += 1
            if end >= dim or block >= 2 ** level:
                level, block = level + 1, 0
                if size == 1:
                    level = 1  # every single coordinate tried: start over with halves
        best = torch.where(torch.isinf(radius), torch.zeros_like(radius), radius.clamp(max=self.eps))
        return (flat + per_sample(best, signs) * signs).clamp(0, 1).view_as(x)
