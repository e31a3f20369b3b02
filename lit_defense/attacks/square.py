"""Square attack (Andriushchenko et al. 2020), L-inf: gradient-free random search.

Uses no gradient at all, so masked gradients (shattered, stochastic, vanishing) cannot stop it:
if it beats a white-box attack, the white-box attack was fooled by the model's gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import FixedBudgetAttack, margin_loss
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG

# Halving schedule of the square size (fractions of 10,000 queries, as in the paper's code).
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _p_at(p_init: float, it: int, n_queries: int) -> float:
    it = int(it / n_queries * 10000)
    p = p_init
    for boundary in _SCHEDULE:
        if it > boundary:
            p /= 2
    return p


class Square(FixedBudgetAttack):
    """Square Attack (Andriushchenko et al. 2020): score-based random search, L-inf.

    Args:
        n_queries: model evaluations per sample (the first is the stripe initialisation).
        p_init: initial fraction of pixels changed per query (0.8 for MNIST-like data in the paper).
        early_stop_every: every this many queries, stop searching for the inputs already fooled.
    """

    norms = ("linf",)
    uses_gradients = False

    def __init__(self, eps: float = 0.1, norm: str = "linf", n_queries: int = 1000, p_init: float = 0.8,
                 early_stop_every: int = 10, seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if n_queries < 1 or not 0 < p_init <= 1:
            raise ConfigError(f"Square needs n_queries >= 1 and 0 < p_init <= 1, got {n_queries}, {p_init}.")
        self.n_queries = n_queries
        self.p_init = p_init
        self.early_stop_every = max(1, early_stop_every)

    @override
    def default_name(self) -> str:
        return "square"

    @override
    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        n, c, h, w = x.shape
        dev, eps = x.device, self.eps

        delta = eps * generator.signs((n, c, 1, w), x.dtype).expand(n, c, h, w)
        out = (x + delta).clamp(0, 1)
        best = margin_loss(model(out), y)  # maximise: > 0 means misclassified
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        act = torch.arange(n, device=dev)  # samples still searched
        xa, ya, xb, ba = x, y, out.clone(), best.clone()
        for it in range(self.n_queries - 1):
            if it % self.early_stop_every == 0:
                # write back, then drop the fooled samples (one host sync every few queries)
                out[act], best[act] = xb, ba
                keep = (ba <= 0).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                if keep.numel() < act.numel():
                    act, xa, ya, xb, ba = act[keep], xa[keep], ya[keep], xb[keep], ba[keep]
            m = act.numel()
            s = max(1, min(h - 1, round(math.sqrt(_p_at(self.p_init, it, self.n_queries) * h * w))))
            rng = generator[act]  # each sample's own windows and signs, whatever else is still searched
            top = rng.randint(0, h - s + 1, (m,)).view(m, 1, 1, 1)
            left = rng.randint(0, w - s + 1, (m,)).view(m, 1, 1, 1)
            window = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
            new_delta = torch.where(window, eps * rng.signs((m, c, 1, 1), x.dtype), xb - xa)
            candidate = (xa + new_delta).clamp(0, 1)
            loss = margin_loss(model(candidate), ya)
            accept = loss > ba
            ba = torch.where(accept, loss, ba)
            xb = torch.where(accept.view(m, 1, 1, 1), candidate, xb)
        out[act], best[act] = xb, ba
        return out
