"""How a point is judged: on one pass for a deterministic model, in expectation for a randomized one.

A deployed randomized defence answers every query with a fresh draw of its randomness, and the
attacker cannot choose the draw. So an input's robustness at a point is the model's *expected*
accuracy there, over its own randomness, and never the outcome of one lucky or unlucky draw.

``Judge(draws=K)`` estimates it from ``K`` passes. ``judge`` returns two independent estimates of
every point: the *selected* one decides (which attack's point is the worst, whether an input is
still attacked), the *measured* one, from fresh draws, is what is reported. A minimum over many
attacks' noisy estimates is biased low (it selects for luck); the measured estimate at the point
the selection chose is not, since its draws took no part in choosing. A deterministic model needs
one pass (``Judge()``): both estimates are then the same 0/1 outcome.

``Judge.plan`` chooses ``K`` from the statistics of the model itself: a pilot of ``pilot`` draws
on clean inputs splits the variance of one draw per input, ``B + W``, into the inputs' spread
``B`` (the variance of their expected accuracies) and the draws' noise ``W`` (the mean of
``p (1 - p)``). With ``K`` draws the noise left is ``W / K``; ``K`` is the fewest draws that bring
it to at most ``inflation`` of one draw's variance, ``K = ceil(W / (inflation (B + W)))``, within
``[low, high]``: a model whose inputs are all but certain needs few draws, one that is a coin on
every input needs ``1 / inflation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lit_defense.errors import ConfigError


@dataclass(frozen=True)
class Judge:
    """Judges points with ``draws`` passes of the model (see module doc)."""

    draws: int = 1

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ConfigError(f"a judge needs draws >= 1, got {self.draws}.")

    @property
    def randomized(self) -> bool:
        """Whether points are judged in expectation (more than one pass each)."""
        return self.draws > 1

    def rates(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
              draws: int | None = None) -> torch.Tensor:
        """Per input: the fraction of ``draws`` (default ``self.draws``) passes that classify it correctly."""
        k = self.draws if draws is None else draws
        if x.shape[0] == 0:
            return torch.zeros(0, device=x.device)
        with torch.inference_mode(False), torch.no_grad():
            right = torch.zeros(x.shape[0], device=x.device)
            for _ in range(k):
                right += torch.cat([model(xb).argmax(1) == yb for xb, yb in zip(x.split(batch_size),
                                                                                y.split(batch_size), strict=True)])
        return right / k

    def judge(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(selected, measured)``: two independent estimates of each point's expected accuracy."""
        selected = self.rates(model, x, y, batch_size)
        return selected, self.rates(model, x, y, batch_size)

    @classmethod
    def plan(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor, randomized: bool, batch_size: int = 500,
             pilot: int = 32, inflation: float = 0.1, low: int = 4, high: int = 64) -> Judge:
        """The judge for ``model`` (see module doc): one pass if it is deterministic, else a pilot's choice."""
        if not randomized:
            return cls(1)
        r = cls(pilot).rates(model, x, y, batch_size).double().cpu()
        within = float((r * (1 - r)).mean()) * pilot / (pilot - 1)  # a draw's variance, averaged over inputs
        between = max(float(r.var()) - within / pilot, 0.0) if r.numel() > 1 else 0.0  # the inputs' own spread
        if within <= 0:
            return cls(low)
        need = math.ceil(within / (inflation * (between + within)))
        return cls(min(max(need, low), high))


__all__ = ["Judge"]
