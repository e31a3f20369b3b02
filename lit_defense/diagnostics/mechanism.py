"""Mechanism checks: the model's gradients themselves are unusable.

Each needs only the model and a batch (a few forward/backward passes): outputs that are
probabilities, a saturated softmax, randomized outputs, exactly zero input gradients (for the
cross-entropy *and* the margin loss), gradients that disagree with finite differences, and
optimisation inside the forward pass. ``model_checks`` runs them all.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lit_defense.attacks.base import ce_loss, margin_loss
from lit_defense.diagnostics.registry import conclude, register_check
from lit_defense.diagnostics.thresholds import (
    DEFAULT_THRESHOLDS,
    SATURATION_GAP,
    VANISHING_GRADIENT,
    MaskingThresholds,
)
from lit_defense.gradients import input_gradient
from lit_defense.results import Check, num
from lit_defense.stats import decide_proportion, worst_state


# ------------------------------------------------------------------------------------- helpers
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return torch.cat([model(xb) for xb in x.detach().clone().split(batch_size)])


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
    with torch.inference_mode(False), torch.enable_grad():
        xi = x.detach().clone().requires_grad_(True)
        return input_gradient(loss_fn(model(xi), y.detach().clone()).sum(), xi)


def looks_like_probabilities(logits: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether the outputs lie in [0, 1] and sum to 1 per row (softmax outputs, not logits)."""
    out = logits.detach().double()
    return bool(out.numel()) and bool(
        (out.min() >= -1e-6) & (out.max() <= 1 + 1e-6) & ((out.sum(1) - 1).abs().max() <= atol)
    )


# --------------------------------------------------------------------------------- model checks
@register_check("probability_outputs", "mechanism", samples_option=None)
def check_probability_outputs(logits: torch.Tensor) -> Check:
    """Flags a model that returns probabilities: a margin or CE loss on them saturates."""
    probs = looks_like_probabilities(logits)
    sums = logits.detach().double().sum(1)
    return conclude(
        "probability_outputs", "fail" if probs else "pass", float(probs),
        {"min_output": num(logits.min()), "max_output": num(logits.max()),
         "mean_row_sum": num(sums.mean()), "looks_like_probabilities": probs},
        fail="The model returns probabilities, not logits: the cross-entropy of probabilities has "
             "tiny, flat gradients, so gradient attacks on it are weak; attack the logits.",
        ok="The model returns logits (not rows of probabilities).",
    )


@register_check("softmax_saturation", "mechanism", "saturated_fraction")
def check_softmax_saturation(logits: torch.Tensor, thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Flags logits whose top-two gap saturates softmax (defensive distillation's ~T-fold logits)."""
    z = logits.detach().double()
    top = z.topk(2, dim=1).values if z.shape[1] > 1 else torch.cat([z, z], 1)
    gap = top[:, 0] - top[:, 1]
    saturated = gap > SATURATION_GAP
    frac = saturated.double().mean()
    decision = decide_proportion(int(saturated.sum()), int(saturated.numel()), thresholds.saturated_fraction,
                                 alpha=thresholds.alpha)
    return conclude(
        "softmax_saturation", decision.state, num(frac),
        {"saturated_fraction": num(frac), "median_top2_gap": num(gap.median()),
         "mean_max_logit": num(top[:, 0].mean()), "logit_std": num(z.std()) if z.numel() > 1 else None,
         "gap_threshold": SATURATION_GAP, **decision.evidence()},
        fail=f"The softmax is saturated on {frac:.1%} of inputs (top-2 logit gap > {SATURATION_GAP:g}, "
             f"median gap {gap.median():.3g}, mean max logit {top[:, 0].mean():.3g}): cross-entropy "
             "gradients underflow to zero, the signature of defensive distillation; use a margin loss.",
        unsure=f"The softmax is saturated on {frac:.1%} of inputs", n=decision.n, thresholds=thresholds,
        ok=f"Softmax not saturated ({frac:.1%} of inputs with top-2 logit gap > {SATURATION_GAP:g}).",
    )


@register_check("randomized_outputs", "mechanism", "randomized_tolerance", samples_option=None)
def check_randomized_outputs(model: nn.Module, x: torch.Tensor, repeats: int = 4,
                             thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Flags a model whose outputs differ between passes on the same input (EOT needed)."""
    outs = [_logits(model, x).double() for _ in range(max(repeats, 2))]
    scale = outs[0].abs().max().clamp_min(1e-12)
    rel = max(float((o - outs[0]).abs().max() / scale) for o in outs[1:])
    preds = torch.stack([o.argmax(1) for o in outs])
    disagree = (preds != preds[0]).any(0).double().mean()
    return conclude(
        "randomized_outputs", "fail" if rel > thresholds.randomized_tolerance else "pass", num(rel),
        {"max_relative_logit_change": num(rel), "prediction_disagreement": num(disagree), "repeats": len(outs)},
        fail=f"Repeated forward passes disagree (relative logit change {rel:.3g}; predictions differ on "
             f"{disagree:.1%} of inputs): gradients are stochastic, use EOT.",
        ok="The model is deterministic (repeated forward passes agree).",
    )


@register_check("zero_gradients", "mechanism", "zero_gradient_fraction")
def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         thresholds: MaskingThresholds = DEFAULT_THRESHOLDS,
                         logits: torch.Tensor | None = None) -> Check:
    """Fraction of correctly classified inputs whose input gradient is exactly zero.

    For the cross-entropy and for the margin loss (the fraction below 1e-12, "vanishing", is
    evidence).
    """
    if logits is None:
        logits = _logits(model, x)
    correct = logits.argmax(1) == y
    xs, ys = (x[correct], y[correct]) if correct.any() else (x, y)
    fractions, decisions = {}, {}
    for name, loss_fn in (("ce", ce_loss), ("margin", margin_loss)):
        g = _grad(model, xs, ys, loss_fn).flatten(1).abs().amax(1).double()
        fractions[name] = {
            "zero": num((g == 0).double().mean()),
            "vanishing": num((g <= VANISHING_GRADIENT).double().mean()),
            "median_max_abs": num(g.median()),
        }
        # the decision uses exact zeros: a sign (L-inf) or normalised (L2) step is full-size on any
        # non-zero gradient, however small, so only an exactly zero gradient stops the attack
        decisions[name] = decide_proportion(int((g == 0).sum()), int(g.numel()), thresholds.zero_gradient_fraction,
                                            alpha=thresholds.alpha)
    state = worst_state([d.state for d in decisions.values()])
    worst = max(fractions["ce"]["zero"] or 0.0, fractions["margin"]["zero"] or 0.0)
    which = [k for k in ("ce", "margin") if decisions[k].state == state]
    return conclude(
        "zero_gradients", state, num(worst),
        {"samples": int(xs.shape[0]), "ce": fractions["ce"], "margin": fractions["margin"],
         "vanishing_below": VANISHING_GRADIENT, **decisions[which[0] if which else "ce"].evidence()},
        fail=f"Input gradients are exactly zero for {worst:.1%} of correctly classified inputs "
             f"(loss: {', '.join(which)}): gradient attacks on that loss do not move.",
        unsure=f"Input gradients are exactly zero for {worst:.1%} of correctly classified inputs",
        n=int(xs.shape[0]), thresholds=thresholds,
        ok=f"Input gradients are non-zero (exactly zero on {worst:.1%} of inputs, CE and margin).",
    )


@register_check("gradient_mismatch", "mechanism", "gradient_correlation", samples_option=None)
def check_gradient_mismatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: int = 4,
                            h: float = 1e-3, seed: int = 0,
                            thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Autograd's directional derivative of the margin loss vs a central finite difference.

    Along random sign directions. Shattered (non-differentiable preprocessing) or fake (custom backward)
    gradients disagree with what the forward pass does. The model's own randomness is held fixed
    across the passes (common random numbers), so a randomized but differentiable model passes.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = x.detach().clone().clamp(h, 1 - h)
    rng_devices = [x.device] if x.device.type == "cuda" else []
    auto, finite = [], []

    def forward_loss(inp: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            if not grad:
                with torch.no_grad():
                    return margin_loss(model(inp), y).double(), None
            with torch.enable_grad():
                xi = inp.detach().clone().requires_grad_(True)
                loss = margin_loss(model(xi), y)
                return loss.double(), input_gradient(loss.sum(), xi)

    with torch.inference_mode(False):
        y = y.detach().clone()
        _, g = forward_loss(x, grad=True)
        for _ in range(directions):
            u = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x.device, x.dtype)
            plus, _ = forward_loss(x + h * u, grad=False)
            minus, _ = forward_loss(x - h * u, grad=False)
            finite.append((plus - minus) / (2 * h))
            auto.append((g * u).flatten(1).sum(1).double())
    a, b = torch.cat(auto), torch.cat(finite)
    informative = (a.abs() + b.abs()) > 0
    a, b = a[informative], b[informative]
    if a.numel() < 2:
        corr = 1.0  # the loss is flat everywhere we looked: nothing to disagree about
    elif a.std() == 0 or b.std() == 0:
        corr = 0.0 if (a.abs().max() > 0) != (b.abs().max() > 0) or a.std() != b.std() else 1.0
    else:
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    rel = ((a - b).abs() / torch.maximum(a.abs(), b.abs()).clamp_min(1e-30)).median() if a.numel() else torch.tensor(0.0)
    corr = corr if math.isfinite(corr) else 0.0
    return conclude(
        "gradient_mismatch", "pass" if corr >= thresholds.gradient_correlation else "fail", num(corr),
        {"correlation": num(corr), "median_relative_error": num(rel), "pairs": int(a.numel()),
         "step": h, "directions": directions, "loss": "margin"},
        fail=f"Autograd gradients disagree with finite differences of the forward pass (correlation "
             f"{corr:.2f}, median relative error {float(rel):.2f}): the gradients are shattered or fake; "
             "use BPDA or a gradient-free attack.",
        ok=f"Autograd gradients match finite differences (correlation {corr:.2f}).",
    )


@contextlib.contextmanager
def _autograd_call_counter() -> Iterator[list[str]]:
    calls: list[str] = []
    originals = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)

    def grad(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        calls.append("torch.autograd.grad")
        return originals[0](*args, **kwargs)

    def backward(*args: Any, **kwargs: Any) -> None:
        calls.append("torch.autograd.backward")
        return originals[1](*args, **kwargs)

    def tensor_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        calls.append("Tensor.backward")
        return originals[2](self, *args, **kwargs)

    torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward = grad, backward, tensor_backward
    try:
        yield calls
    finally:
        torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward = originals


@register_check("inference_time_optimisation", "mechanism", samples_option=None)
def check_inference_time_optimisation(model: nn.Module, x: torch.Tensor) -> Check:
    """Does the forward pass itself run autograd (an inner optimisation, e.g. a purifier)?

    Its gradient is then not the gradient of what the model computes: attack it with BPDA.
    """
    with torch.inference_mode(False), torch.no_grad(), _autograd_call_counter() as calls:
        out = model(x[:8].detach().clone())
    grad_inside = bool(getattr(out, "requires_grad", False))
    return conclude(
        "inference_time_optimisation", "fail" if calls or grad_inside else "pass", float(len(calls) + grad_inside),
        {"autograd_calls": len(calls), "calls": sorted(set(calls)), "enables_grad_in_no_grad": grad_inside},
        fail=f"The forward pass runs its own optimisation ({len(calls)} autograd calls"
             f"{', and re-enables gradients under no_grad' if grad_inside else ''}): its gradient is not "
             "that of the function it computes; attack it with BPDA.",
        ok="The forward pass does not call autograd.",
    )


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 thresholds: MaskingThresholds = DEFAULT_THRESHOLDS, fd_samples: int = 200,
                 seed: int = 0) -> list[Check]:
    """The checks that need only the model and a batch (cheap: a few passes)."""
    logits = _logits(model, x)
    return [
        check_probability_outputs(logits),
        check_softmax_saturation(logits, thresholds),
        check_randomized_outputs(model, x[:fd_samples], thresholds=thresholds),
        check_zero_gradients(model, x, y, thresholds, logits=logits),
        check_gradient_mismatch(model, x[:fd_samples], y[:fd_samples], seed=seed, thresholds=thresholds),
        check_inference_time_optimisation(model, x),
    ]


__all__ = [
    "check_gradient_mismatch", "check_inference_time_optimisation", "check_softmax_saturation",
    "check_probability_outputs", "check_randomized_outputs", "check_zero_gradients", "looks_like_probabilities",
    "model_checks",
]
