"""Where the audit spends its attacks: not on inputs far from the boundary, gradient-free ones on a sample first.

``far_from_boundary``: the survivors the white-box attacks left with most of their clean logit
margin, which the gradient cascade skips (``--suite.far_margin``; ``far_threshold`` says where the
rule holds). ``black_box``: each gradient-free attack on a seeded sample of the survivors first,
as large as its check needs to see a rate at its threshold (``black_box_sample_size``), and on
the rest only when the sample finds something (``--suite.black_box_sample``; ``ModelProbe.black_box_sampled``
says when a failed model check puts them on all survivors at once). Both rules trust the margin
attacks through a saturated softmax (``ModelProbe.margins_trusted``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from lit_defense.attacks import Attack, RandomSampling
from lit_defense.results import PerSample, eps_key

if TYPE_CHECKING:
    from lit_defense.audit.context import AuditContext


def far_from_boundary(white: dict[str, Any], eps: Sequence[float], threshold: float, res: PerSample) -> dict[str, torch.Tensor]:
    """Per eps, the survivors far from the boundary (``--suite.far_margin``; 0: none is far).

    Far: the white-box attacks left them more than ``threshold`` of their clean logit margin.
    """
    out = {}
    for e in eps:
        key = eps_key(e)
        left, clean = white.get("margin_left", {}).get(key), white.get("clean_margin")
        if threshold <= 0 or left is None or clean is None:
            out[key] = torch.zeros_like(res.robust[key])
            continue
        ratio = left.float() / clean.float().clamp_min(1e-12)
        out[key] = res.robust[key] & torch.isfinite(ratio) & (ratio > threshold)
    return out


def black_box_sample_size(survivors: int, n: int, gap: float, alpha: float) -> int:
    """The fewest of ``survivors`` (of ``n`` inputs) that show a black-box rate at a check's threshold.

    A black-box check fails when the gradient-free attacks fool more than ``gap`` of all ``n``
    inputs, that is more than ``gap * n / survivors`` of the survivors. A sample of ``m`` survivors
    finds none of them with probability ``(1 - rate) ** m``: this is the smallest ``m`` for which
    that is at most ``alpha`` (all survivors when none is less).
    """
    if survivors == 0:
        return 0
    rate = gap * n / survivors
    if rate >= 1:
        return 1
    return min(survivors, math.ceil(math.log(alpha) / math.log1p(-rate)))


def _sample(res: PerSample, eps: Sequence[float], n: int, order: torch.Tensor, need: Callable[[int], int]
            ) -> torch.Tensor:
    """The shortest prefix of ``order`` that holds, at every eps, ``need(survivors)`` of the inputs still robust."""
    chosen = torch.zeros(n, dtype=torch.bool)
    for e in eps:
        m = res.robust[eps_key(e)]
        k = need(int(m.sum()))
        if k:
            hits = m[order].cumsum(0)
            chosen[order[:int((hits < k).sum()) + 1]] = True
    return chosen


def _union(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], keys: Sequence[str], n: int
           ) -> dict[str, torch.Tensor]:
    """Per eps key, fooled in either run (a key one run lacks: fooled by none there)."""
    none = torch.zeros(n, dtype=torch.bool)
    return {k: first.get(k, none) | second.get(k, none) for k in keys}


def black_box(ctx: AuditContext, attacks: Sequence[Attack], sampled: bool
              ) -> tuple[dict[float, torch.Tensor] | None, dict[str, Any]]:
    """The gradient-free attacks, each on a seeded sample of the survivors first (``sampled``); folds them into ``ctx.res``.

    Each attack's sample is the shortest prefix of one seeded order of the inputs that holds, at
    every eps, ``black_box_sample_size`` of the inputs still robust there, for its check's threshold
    (random sampling: ``random_gap``; the others: ``black_box_gap``). An attack goes on to the other
    survivors only when its sample yields an adversarial point. Returns, per eps, the inputs the
    attacks ran on when that stayed a sample for all of them (else ``None``), and each stage's info
    by stage name (``black_box_<attack>``, ``black_box_rest_<attack>``). A randomized model's
    expectations (``ctx.judge``) are folded in too.
    """
    n, eps, res, thresholds = ctx.n, ctx.eps, ctx.res, ctx.options.thresholds
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.options.seed))
    on: dict[float, torch.Tensor] = {e: torch.zeros(n, dtype=torch.bool) for e in eps}
    info: dict[str, Any] = {}
    partial = False  # some attack stayed on a strict sample of its survivors

    def run(stage: str, attack: Attack, alive: dict[str, torch.Tensor]) -> dict[str, Any]:
        runner = ctx.runner(stage)
        found = runner.cascade(ctx.model, ctx.x, ctx.y, [attack], eps, ctx.options.batch_size, alive, ctx.judge)
        info[stage] = runner.info
        return found

    for attack in attacks:
        alive = {eps_key(e): res.robust[eps_key(e)].clone() for e in eps}
        gap = thresholds.random_gap if isinstance(attack, RandomSampling) else thresholds.black_box_gap
        chosen = _sample(res, eps, n, order, lambda survivors, gap=gap: black_box_sample_size(
            survivors, n, gap, thresholds.alpha) if sampled else survivors)
        found = run(f"black_box_{attack.name}", attack, {k: m & chosen for k, m in alive.items()})
        fooled = found["fooled"].get(attack.name, {})
        judged = {part: dict(found.get(part, {}).get(attack.name, {})) for part in ("selected", "measured")}
        rest = {k: m & ~chosen for k, m in alive.items()}
        info[f"black_box_{attack.name}"]["survivors"] = int(torch.stack(list(alive.values())).any(0).sum())
        if any(bool(m.any()) for m in fooled.values()) and any(bool(m.any()) for m in rest.values()):
            found_rest = run(f"black_box_rest_{attack.name}", attack, rest)
            fooled = _union(fooled, found_rest["fooled"].get(attack.name, {}), list(alive), n)
            for part, values in judged.items():  # the rest's expectations where the sample had none
                for k, v in found_rest.get(part, {}).get(attack.name, {}).items():
                    values[k] = torch.where(torch.isfinite(values[k]), values[k], v) if k in values else v
            chosen = torch.ones(n, dtype=torch.bool)
        partial = partial or any(bool((m & ~chosen).any()) for m in alive.values())
        for e in eps:
            on[e] |= alive[eps_key(e)] & chosen
        res.fold({attack.name: fooled}, [attack.name], eps, {attack.name: judged["selected"]},
                 {attack.name: judged["measured"]})
    return (on if partial else None), info


__all__ = ["black_box", "black_box_sample_size", "far_from_boundary"]
