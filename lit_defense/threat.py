"""The threat model: a norm and a budget, shared by attacks, evaluation, callbacks and reports.

Pixels live in [0, 1]. ``linf`` and ``l2`` budgets bound ``||x_adv - x||``; ``l0`` (the norm of
JSMA) bounds the *fraction* of input features that may change, as in Papernot et al. 2016.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from lit_defense.errors import ConfigError

if TYPE_CHECKING:
    from lit_defense.rng import SampleRNG

Norm = Literal["linf", "l2", "l0"]
NORMS = ("linf", "l2", "l0")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``(N,)`` so it broadcasts over a batch like ``like`` ``(N, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def check_eps(norm: str, eps: float) -> float:
    """Validate a budget for a norm on [0, 1] pixels; returns it as a float."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}.")
    eps = float(eps)
    if not eps >= 0:  # also catches NaN
        raise ConfigError(f"eps={eps} is impossible: a perturbation budget must be >= 0.")
    if norm in ("linf", "l0") and eps > 1:
        what = "pixels live in [0, 1]" if norm == "linf" else "it is a fraction of the input features"
        raise ConfigError(
            f"eps={eps} is impossible for {norm}: {what}, so eps must lie in [0, 1] "
            "(e.g. 0.1 for Fashion-MNIST, 8/255 for CIFAR-10)."
        )
    return eps


@dataclass(frozen=True)
class ThreatModel:
    """``norm`` in ``linf``/``l2``/``l0`` and budget ``eps`` (see module doc)."""

    norm: Norm = "linf"
    eps: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_eps(self.norm, self.eps))

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample distance under this norm (l0: fraction of changed features)."""
        delta = (x_adv - x).flatten(1)
        if self.norm == "linf":
            return delta.abs().amax(1)
        if self.norm == "l2":
            return delta.norm(p=2, dim=1)
        return (delta != 0).float().mean(1)

    def within(self, distance: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
        """Per-sample: is a perturbation of this size inside the budget (up to float rounding)?"""
        return distance <= self.eps * (1 + rtol) + 1e-7

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
        """Per-sample: is ``x_adv`` inside the budget and inside [0, 1]?"""
        inside = self.within(self.distance(x_adv, x), rtol)
        in_box = (x_adv.flatten(1).amin(1) >= 0) & (x_adv.flatten(1).amax(1) <= 1)
        return inside & in_box

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The nearest point (linf: exact; l2: radial) inside the budget and inside [0, 1].

        ``l0`` cannot be projected cheaply: samples over budget fall back to the clean input.
        """
        if self.norm == "linf":
            return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)
        if self.norm == "l2":
            delta = x_adv - x
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = per_sample((self.eps / norms).clamp(max=1.0), x)
            return (x + delta * factor).clamp_(0, 1)
        over = self.distance(x_adv, x) > self.eps + 1e-7
        return torch.where(per_sample(over, x), x, x_adv.clamp(0, 1))

    # The norm-specific operations of the attacks: one place for the L-inf / L2 branches.
    def random_point(self, x: torch.Tensor, generator: SampleRNG, where: str = "ball") -> torch.Tensor:
        """A random point around ``x`` inside [0, 1].

        ``where="ball"`` draws uniformly in the L-inf box, or a random direction at a random radius
        in the L2 ball; ``"surface"`` draws on the boundary (a random corner of the L-inf box, a
        point of the L2 sphere).
        """
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"random points are drawn in linf or l2 balls, not {self.norm}.")
        if self.norm == "linf":
            if where == "surface":
                signs = generator.signs(tuple(x.shape), x.dtype)
                return (x + self.eps * signs).clamp(0, 1)
            noise = generator.rand(tuple(x.shape), x.dtype) * 2 - 1
            return (x + self.eps * noise).clamp(0, 1)
        direction = generator.randn(tuple(x.shape), x.dtype)
        direction = direction / per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        if where == "surface":
            return self.project(x + self.eps * direction, x)
        radius = per_sample(generator.rand((x.shape[0],), x.dtype), x)
        return (x + self.eps * radius * direction).clamp(0, 1)

    def steepest(self, grad: torch.Tensor) -> torch.Tensor:
        """Unit steepest-ascent direction for this norm: sign for L-inf, normalised gradient for L2."""
        if self.norm == "linf":
            return grad.sign()
        if self.norm == "l2":
            return grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        raise ConfigError(f"no steepest step for {self.norm}.")

    def dual_norm(self, grad: torch.Tensor) -> torch.Tensor:
        """Per-sample dual norm of a gradient (L1 for L-inf, L2 for L2).

        The first-order distance to a boundary is ``|loss| / dual_norm(grad)``.
        """
        flat = grad.flatten(1)
        return flat.abs().sum(1) if self.norm == "linf" else flat.norm(dim=1)
