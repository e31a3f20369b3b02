"""Where the audit spends its attacks: not on inputs far from the boundary, gradient-free ones on a sample first.

``far_from_boundary``: the survivors the white-box attacks left with most of their clean logit
margin, which the gradient cascade skips (``--suite.far_margin``; ``far_threshold`` says where the
rule holds). ``black_box``: each gradient-free attack on a seeded sample of the survivors first,
as large as its check needs to see a rate at its threshold (``black_box_sample_size``), and on
the rest only when the sample finds something (``--suite.black_box_sample``; ``black_box_sampled``
says when a failed model check puts them on all survivors at once). Both rules trust the margin
attacks through a saturated softmax (``margins_trusted``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import Attack, RandomSampling
from lit_defense.audit.stage import Stage
from lit_defense.diagnostics import MaskingThresholds
from lit_defense.judge import Judge
from lit_defense.results import Check, PerSample, eps_key


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


# mechanism checks that concern the cross-entropy alone: the margin-loss attacks do not see them
CE_ONLY = frozenset({"softmax_saturation", "zero_gradients"})


def margins_trusted(checks: Sequence[Check], masked: bool, randomized: bool, margin_zero: bool) -> bool:
    """Whether the margins the white-box attacks left can tell which survivors are far from the boundary.

    Those margins come from the margin-loss PGD. A saturated softmax and zero cross-entropy
    gradients (defensive distillation) leave that attack's gradients intact, so they keep the
    margins trusted, unless the margin loss's own gradients are zero too (``margin_zero``). Every
    other failed mechanism check (probabilities, gradients that disagree with finite differences,
    autograd inside the forward pass), a module BPDA must route around and random outputs do not.
    Measured on the quick distilled student and T=100 teacher (1000 images, eps 0.05, 0.1, 0.2, the
    whole suite run on every survivor): the inputs the cascade, the gradient-free attacks and refine
    fooled after the white box had at most 0.37 and 0.21 of their clean margin left, and none of
    the 141 and 97 inputs that ``far_margin`` 0.5 would skip (all at eps 0.05) fell to any of them.
    """
    if masked or randomized or margin_zero:
        return False
    return all(c.passed or c.name in CE_ONLY for c in checks if c.kind == "mechanism")


def far_threshold(far_margin: float, norm: str, checks: Sequence[Check], masked: bool, randomized: bool,
                  margin_zero: bool) -> float:
    """The far rule's threshold for this model and threat model (0: no survivor is skipped).

    The rule is measured for L-inf only. At L2 it does not hold: on the quick adversarially trained
    model (200 images, eps 1.0) a threshold of 0.5 left its cascade 24 of the 127 white-box
    survivors, and AutoAttack fooled 8 of the others (7 with APGD-CE, APGD-T or FAB-T, 1 with Square).
    """
    if norm != "linf" or not margins_trusted(checks, masked, randomized, margin_zero):
        return 0.0
    return far_margin


def black_box_sampled(option: bool, checks: Sequence[Check], masked: bool, randomized: bool, margin_zero: bool) -> bool:
    """Whether the gradient-free attacks start on a sample of the survivors (``--suite.black_box_sample``).

    Not when a model check failed (masked, randomized, unusable gradients): the gradient attacks'
    survivors are then suspect and the gradient-free attacks are a main line, on all of them. A
    saturated softmax and zero cross-entropy gradients alone leave the margin attacks intact
    (``margins_trusted``): there the gradient-free attacks are the check they are on any model.
    Measured on the quick distilled student and T=100 teacher (1000 images, eps 0.05, 0.1, 0.2):
    random sampling and Square on all of the 393 and 364 survivors of the gradient attacks fooled
    none of them.
    """
    if not option:
        return False
    if margins_trusted(checks, masked, randomized, margin_zero):
        return True
    return not (masked or randomized or any(not c.passed for c in checks if c.kind == "mechanism"))


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


def black_box(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], eps: Sequence[float],
               batch_size: int, res: PerSample, sampled: bool, thresholds: MaskingThresholds, seed: int,
               stage: Callable[[str], Stage], judge: Judge | None = None
               ) -> tuple[dict[float, torch.Tensor] | None, dict[str, Any]]:
    """The gradient-free attacks, each on a seeded sample of the survivors first (``sampled``); folds them into ``res``.

    Each attack's sample is the shortest prefix of one seeded order of the inputs that holds, at
    every eps, ``black_box_sample_size`` of the inputs still robust there, for its check's threshold
    (random sampling: ``random_gap``; the others: ``black_box_gap``). An attack goes on to the other
    survivors only when its sample yields an adversarial point. Returns, per eps, the inputs the
    attacks ran on when that stayed a sample for all of them (else ``None``), and each stage's info
    by stage name (``black_box_<attack>``, ``black_box_rest_<attack>``). ``judge`` judges the
    points in expectation (a randomized model; its expectations are folded in too).
    """
    n = int(x.shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    on: dict[float, torch.Tensor] = {e: torch.zeros(n, dtype=torch.bool) for e in eps}
    info: dict[str, Any] = {}
    partial = False  # some attack stayed on a strict sample of its survivors
    for attack in attacks:
        alive = {eps_key(e): res.robust[eps_key(e)].clone() for e in eps}
        gap = thresholds.random_gap if isinstance(attack, RandomSampling) else thresholds.black_box_gap
        chosen = torch.zeros(n, dtype=torch.bool)
        for m in alive.values():
            need = black_box_sample_size(int(m.sum()), n, gap, thresholds.alpha) if sampled else int(m.sum())
            if need:
                hits = m[order].cumsum(0)
                chosen[order[:int((hits < need).sum()) + 1]] = True
        first = stage(f"black_box_{attack.name}")
        found = first.cascade(model, x, y, [attack], eps, batch_size, {k: m & chosen for k, m in alive.items()}, judge)
        fooled = found["fooled"].get(attack.name, {})
        judged = {part: dict(found.get(part, {}).get(attack.name, {})) for part in ("selected", "measured")}
        rest = {k: m & ~chosen for k, m in alive.items()}
        info[first.name] = {**first.info, "survivors": int(torch.stack(list(alive.values())).any(0).sum())}
        if any(bool(m.any()) for m in fooled.values()) and any(bool(m.any()) for m in rest.values()):
            more = stage(f"black_box_rest_{attack.name}")
            found_rest = more.cascade(model, x, y, [attack], eps, batch_size, rest, judge)
            extra = found_rest["fooled"].get(attack.name, {})
            fooled = {k: fooled.get(k, torch.zeros(n, dtype=torch.bool)) | extra.get(k, torch.zeros(n, dtype=torch.bool))
                      for k in alive}
            for part, values in judged.items():  # the rest's expectations where the sample had none
                for k, v in found_rest.get(part, {}).get(attack.name, {}).items():
                    values[k] = torch.where(torch.isfinite(values[k]), values[k], v) if k in values else v
            info[more.name] = more.info
            chosen = torch.ones(n, dtype=torch.bool)
        partial = partial or any(bool((m & ~chosen).any()) for m in alive.values())
        for e in eps:
            on[e] |= alive[eps_key(e)] & chosen
        res.fold({attack.name: fooled}, [attack.name], eps, {attack.name: judged["selected"]},
                 {attack.name: judged["measured"]})
    return (on if partial else None), info


__all__ = ["CE_ONLY", "black_box", "black_box_sample_size", "black_box_sampled", "far_from_boundary", "far_threshold",
           "margins_trusted"]
