"""Adversarial examples to show: one builder (``build_examples``) of one type (``results.Examples``).

The audit and the per-epoch evaluation both show, for the first few inputs and every eps, the
worst-case adversarial input: the output of the first attack (in the attacks' order) that fooled
the model there, or the clean input where none did. Both know, once their attacks ran, which
attack fooled which input first; ``build_examples`` runs that attack again on just those inputs
(with the same sample ids, so the same random numbers), which works the same whether the attacks
ran in one process or were sharded over many. ``lit_defense.plots.examples_figure`` draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from lit_defense.per_sample import eps_key
from lit_defense.results import Examples

if TYPE_CHECKING:
    from lit_defense.attacks.base import Attack


def build_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                   attacks: Sequence[Attack], fooled: Mapping[str, Mapping[str, torch.Tensor]],
                   clean: torch.Tensor, k: int, batch_size: int = 256, ids: torch.Tensor | None = None) -> Examples:
    """The worst-case adversarial inputs of the first ``k`` inputs, at every eps.

    ``fooled`` (attack name -> eps key -> per input, fooled) and ``clean`` (per input, classified
    correctly) are the outcome of ``attacks`` run in this order on ``(x, y)``; ``ids`` name the
    inputs' random numbers (default ``0..n-1``). For each eps, each attack runs again on the first
    ``k`` inputs it was the first to fool; inputs no attack fooled stay clean. The model is used as
    it is (its train/eval state is not changed).
    """
    k = min(k, x.shape[0])
    dev = x.device
    ids = torch.arange(x.shape[0], device=dev) if ids is None else ids.to(dev, torch.long)
    out = Examples(x[:k].clone(), y[:k].clone())
    with torch.inference_mode(False):
        for e in eps:
            key = eps_key(e)
            adv = x[:k].clone()
            taken = ~clean[:k].to(dev, torch.bool)
            for attack in attacks:
                mask = fooled.get(attack.name, {}).get(key)
                if mask is None:
                    continue
                mask = mask[:k].to(dev, torch.bool) & ~taken
                at = mask.nonzero().squeeze(1)
                if at.numel():
                    adv[at] = attack.attack_grid(model, x[at], y[at], [e], ids[at]).points[0]
                    taken |= mask
            out.adv[key] = adv
            with torch.no_grad():
                out.pred[key] = torch.cat([model(b).argmax(1) for b in adv.split(batch_size)]) if k else \
                    torch.zeros(0, dtype=torch.long, device=dev)
    return out


__all__ = ["Examples", "build_examples"]
