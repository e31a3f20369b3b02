"""The gradient-masking checklist (Athalye et al. 2018, Carlini et al. 2019), with evidence.

Every check returns a ``Check``: ``passed`` (no sign of masking), ``value`` (the one number that
decided it, logged as ``masking/<name>``), ``evidence`` (all numbers behind it) and ``summary``
(one sentence in plain words). ``verdict(checks)`` says whether gradient masking is suspected and
which checks triggered it.

Two families:
- **model checks** need only the model and a batch (a few forward/backward passes): outputs that
  are probabilities, saturated softmax / logit scale, randomized outputs, exactly zero input
  gradients (for the cross-entropy *and* the margin loss: AutoAttack's check looks at DLR only and
  never sees the cross-entropy saturation that defensive distillation relies on), gradients that
  disagree with finite differences, and optimisation inside the forward pass. ``model_checks``
  runs them; ``lit_defense_callbacks.GradientMaskingMonitor`` runs them every epoch.
- **attack checks** compare attack results (``lit_defense.audit`` computes them): one-step
  stronger than iterative, black-box or random sampling stronger than white-box, an unbounded
  attack that does not reach ~100% success, robust accuracy not monotone in eps, adaptive attacks
  much stronger than the naive one, and two checks of the evaluation itself (advisory: they say the
  numbers may be loose, not that gradients are masked): incomplete optimisation and silent success.

Numbers are computed in float64 where logits may be huge (T=100 distillation, x1e4) or tiny, and
every number in the evidence is a finite float or ``None``, so reports never carry NaN or inf.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_defense.attacks.base import ce_loss, margin_loss
from lit_defense.gradients import input_gradient
from lit_defense.results import Check, MaskingVerdict, num, verdict
from lit_defense.stats import (
    ALPHA,
    Decision,
    Paired,
    State,
    decide_proportion,
    mcnemar_p,
    paired,
    worst_state,
)

# A float32 softmax whose top-2 logit gap exceeds this has cross-entropy gradients below
# exp(-40) ~ 4e-18: an attack following them makes no progress (the distillation signature).
SATURATION_GAP = 40.0
# An input gradient whose largest entry is below this is "vanishing" (underflow territory).
VANISHING_GRADIENT = 1e-12


@dataclass
class MaskingThresholds:
    """When a check fails. Accuracy gaps are fractions of the evaluated samples.

    Args:
        one_step_gap: FGSM below PGD (same loss) by more than this.
        black_box_gap: black-box attacks fool more than this fraction of the points that every
            white-box attack failed on.
        random_gap: random sampling in the ball fools more than this fraction of them.
        unbounded_success: an unbounded attack fools fewer than this fraction of the points.
        monotone_tolerance: robust accuracy rises with eps by more than this.
        adaptive_gap: an adaptive attack (margin, BPDA, EOT) beats the naive CE-PGD by more.
        zero_gradient_fraction: more than this fraction of (correct) samples have exactly zero
            input gradients, for the cross-entropy or the margin loss.
        saturated_fraction: more than this fraction of samples have a saturated softmax.
        gradient_correlation: correlation between autograd directional derivatives and finite
            differences below this.
        randomized_tolerance: repeated forward passes differ by more than this (relative).
        incomplete_gap: doubling the attack's steps lowers accuracy by more than this.
        silent_success_fraction: a last-iterate attack loses more than this fraction of the
            adversarial points met along its path.
        alpha: one-sided significance a check needs to fail: its number must be past the
            threshold at this level (exact interval or McNemar's paired test); where the 95%
            interval straddles the threshold the check is inconclusive.
    """

    one_step_gap: float = 0.03
    black_box_gap: float = 0.03
    random_gap: float = 0.01
    unbounded_success: float = 0.95
    monotone_tolerance: float = 0.03
    adaptive_gap: float = 0.10
    zero_gradient_fraction: float = 0.10
    saturated_fraction: float = 0.25
    gradient_correlation: float = 0.8
    randomized_tolerance: float = 1e-4
    incomplete_gap: float = 0.02
    silent_success_fraction: float = 0.01
    alpha: float = ALPHA


DEFAULT_THRESHOLDS = MaskingThresholds()


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
def check_probability_outputs(logits: torch.Tensor) -> Check:
    """Flags a model that returns probabilities: a margin or CE loss on them saturates."""
    probs = looks_like_probabilities(logits)
    sums = logits.detach().double().sum(1)
    return Check(
        "probability_outputs", not probs, float(probs),
        "The model returns probabilities, not logits: the cross-entropy of probabilities has "
        "tiny, flat gradients, so gradient attacks on it are weak; attack the logits."
        if probs else "The model returns logits (not rows of probabilities).",
        {"min_output": num(logits.min()), "max_output": num(logits.max()),
         "mean_row_sum": num(sums.mean()), "looks_like_probabilities": probs},
    )


def check_logit_saturation(logits: torch.Tensor, thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Flags logits whose top-two gap saturates softmax (defensive distillation's ~T-fold logits)."""
    z = logits.detach().double()
    top = z.topk(2, dim=1).values if z.shape[1] > 1 else torch.cat([z, z], 1)
    gap = top[:, 0] - top[:, 1]
    saturated = gap > SATURATION_GAP
    frac = saturated.double().mean()
    decision = decide_proportion(int(saturated.sum()), int(saturated.numel()), thresholds.saturated_fraction,
                                 alpha=thresholds.alpha)
    state = decision.state
    return Check(
        "softmax_saturation", state == "pass", num(frac),
        f"The softmax is saturated on {frac:.1%} of inputs (top-2 logit gap > {SATURATION_GAP:g}, "
        f"median gap {gap.median():.3g}, mean max logit {top[:, 0].mean():.3g}): cross-entropy "
        "gradients underflow to zero, the signature of defensive distillation; use a margin loss."
        if state == "fail" else
        f"The softmax is saturated on {frac:.1%} of inputs, which {decision.n} inputs cannot tell from the "
        f"{thresholds.saturated_fraction:.0%} threshold." if state == "inconclusive" else
        f"Softmax not saturated ({frac:.1%} of inputs with top-2 logit gap > {SATURATION_GAP:g}).",
        {"saturated_fraction": num(frac), "median_top2_gap": num(gap.median()),
         "mean_max_logit": num(top[:, 0].mean()), "logit_std": num(z.std()) if z.numel() > 1 else None,
         "gap_threshold": SATURATION_GAP, **decision.evidence(), "samples_option": "--num_samples"},
        state=state,
    )


def check_randomized_outputs(model: nn.Module, x: torch.Tensor, repeats: int = 4,
                             thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Flags a model whose outputs differ between passes on the same input (EOT needed)."""
    outs = [_logits(model, x).double() for _ in range(max(repeats, 2))]
    scale = outs[0].abs().max().clamp_min(1e-12)
    rel = max(float((o - outs[0]).abs().max() / scale) for o in outs[1:])
    preds = torch.stack([o.argmax(1) for o in outs])
    disagree = (preds != preds[0]).any(0).double().mean()
    passed = not (rel > thresholds.randomized_tolerance)
    return Check(
        "randomized_outputs", passed, num(rel),
        f"Repeated forward passes disagree (relative logit change {rel:.3g}; predictions differ on "
        f"{disagree:.1%} of inputs): gradients are stochastic, use EOT." if not passed else
        "The model is deterministic (repeated forward passes agree).",
        {"max_relative_logit_change": num(rel), "prediction_disagreement": num(disagree), "repeats": len(outs)},
    )


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
    return Check(
        "zero_gradients", state == "pass", num(worst),
        f"Input gradients are exactly zero for {worst:.1%} of correctly classified inputs "
        f"(loss: {', '.join(which)}): gradient attacks on that loss do not move."
        if state == "fail" else
        f"Input gradients are exactly zero for {worst:.1%} of correctly classified inputs, which "
        f"{int(xs.shape[0])} inputs cannot tell from the {thresholds.zero_gradient_fraction:.0%} threshold."
        if state == "inconclusive" else
        f"Input gradients are non-zero (exactly zero on {worst:.1%} of inputs, CE and margin).",
        {"samples": int(xs.shape[0]), "ce": fractions["ce"], "margin": fractions["margin"],
         "vanishing_below": VANISHING_GRADIENT, **decisions[which[0] if which else "ce"].evidence(),
         "samples_option": "--num_samples"},
        state=state,
    )


def check_gradient_vs_finite_differences(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                         directions: int = 4, h: float = 1e-3, seed: int = 0,
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
    passed = corr >= thresholds.gradient_correlation
    return Check(
        "gradient_mismatch", passed, num(corr),
        f"Autograd gradients disagree with finite differences of the forward pass (correlation "
        f"{corr:.2f}, median relative error {float(rel):.2f}): the gradients are shattered or fake; "
        "use BPDA or a gradient-free attack." if not passed else
        f"Autograd gradients match finite differences (correlation {corr:.2f}).",
        {"correlation": num(corr), "median_relative_error": num(rel), "pairs": int(a.numel()),
         "step": h, "directions": directions, "loss": "margin"},
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


def check_inference_time_optimisation(model: nn.Module, x: torch.Tensor) -> Check:
    """Does the forward pass itself run autograd (an inner optimisation, e.g. a purifier)?

    Its gradient is then not the gradient of what the model computes: attack it with BPDA.
    """
    with torch.inference_mode(False), torch.no_grad(), _autograd_call_counter() as calls:
        out = model(x[:8].detach().clone())
    grad_inside = bool(getattr(out, "requires_grad", False))
    passed = not calls and not grad_inside
    return Check(
        "inference_time_optimisation", passed, float(len(calls) + grad_inside),
        f"The forward pass runs its own optimisation ({len(calls)} autograd calls"
        f"{', and re-enables gradients under no_grad' if grad_inside else ''}): its gradient is not "
        "that of the function it computes; attack it with BPDA." if not passed else
        "The forward pass does not call autograd.",
        {"autograd_calls": len(calls), "calls": sorted(set(calls)), "enables_grad_in_no_grad": grad_inside},
    )


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 thresholds: MaskingThresholds = DEFAULT_THRESHOLDS, fd_samples: int = 200,
                 seed: int = 0) -> list[Check]:
    """The checks that need only the model and a batch (cheap: a few passes)."""
    logits = _logits(model, x)
    return [
        check_probability_outputs(logits),
        check_logit_saturation(logits, thresholds),
        check_randomized_outputs(model, x[:fd_samples], thresholds=thresholds),
        check_zero_gradients(model, x, y, thresholds, logits=logits),
        check_gradient_vs_finite_differences(model, x[:fd_samples], y[:fd_samples], seed=seed,
                                             thresholds=thresholds),
        check_inference_time_optimisation(model, x),
    ]


# -------------------------------------------------------------------------------- attack checks
# Every check below reads per-sample outcomes (boolean masks over the same n inputs). Two attacks
# on the same inputs are compared on their discordant inputs (``stats.Paired``: exact interval and
# McNemar's test); a single rate by its exact interval. A check fails only when its number is
# significantly past its threshold (one-sided ``alpha``), passes when its 95% interval is on the
# right side, and is inconclusive otherwise (``evidence["inputs_to_resolve"]``).
Masks = Mapping[float, torch.Tensor]
_SEVERITY = {"fail": 2, "inconclusive": 1, "pass": 0}  # which of several decisions a check reports


def _paired_worst(pairs: Mapping[Any, Paired], threshold: float, alpha: float
                  ) -> tuple[State, Any, Paired | None, Decision | None]:
    """The worst of several paired comparisons: a failure first, then the largest difference."""
    decided = {key: (p, p.decide(threshold, alpha=alpha)) for key, p in pairs.items()}
    if not decided:
        return "pass", None, None, None
    key = max(decided, key=lambda k: (_SEVERITY[decided[k][1].state], decided[k][0].difference))
    pair, decision = decided[key]
    return decision.state, key, pair, decision


def _decision_evidence(decision: Decision | None, pair: Paired | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = decision.evidence() if decision is not None else {}
    if pair is not None:
        out.update(pair.evidence())
    out["samples_option"] = option
    return out


def check_one_step_vs_iterative(one_step: Masks, iterative: Masks, thresholds: MaskingThresholds = DEFAULT_THRESHOLDS,
                                names: tuple[str, str] = ("fgsm", "pgd_ce"), samples_option: str = "--num_samples"
                                ) -> Check:
    """Flags FGSM beating the iterative attack: a gradient that does not lead uphill.

    ``one_step``/``iterative``: eps -> per input, robust under that attack (same inputs).
    """
    pairs = {e: paired(iterative[e], one_step[e]) for e in one_step if e in iterative}
    state, eps, pair, decision = _paired_worst(pairs, thresholds.one_step_gap, thresholds.alpha)
    gap = pair.difference if pair else 0.0
    return Check(
        "one_step_beats_iterative", state == "pass", num(gap),
        f"The one-step attack ({names[0]}) beats the iterative one ({names[1]}) by {gap:.1%} at "
        f"eps={eps:g}: the iterative attack follows misleading local gradients." if state == "fail" else
        f"The one-step attack ({names[0]}) beats the iterative one by {gap:.1%} at eps={eps:g}, which "
        f"{len(one_step[eps])} inputs cannot tell from the {thresholds.one_step_gap:.0%} threshold."
        if state == "inconclusive" else
        f"The iterative attack is at least as strong as the one-step one (largest gap {gap:+.1%}).",
        {"one_step": names[0], "iterative": names[1], "eps": eps,
         "gap_by_eps": {str(k): num(v.difference) for k, v in pairs.items()},
         **_decision_evidence(decision, pair, samples_option)},
        state=state, kind="signature",
    )


def check_extra_found(name: str, what: str, before: Masks, after: Masks, threshold: float, attacks: Sequence[str],
                      alpha: float = ALPHA) -> Check:
    """Attacks run after all white-box ones (on their survivors) must find (almost) nothing more.

    ``before``/``after``: eps -> per input, robust before and after these attacks. The inputs
    they fooled are their discordant inputs against the white-box attacks (which fooled none the
    later attacks missed, since the later ones only see survivors): a rate with an exact interval.
    """
    decided = {}
    for e in before:
        if e in after:
            k, n = int((before[e] & ~after[e]).sum()), int(before[e].numel())
            decided[e] = (k, n, decide_proportion(k, n, threshold, alpha=alpha))
    eps = max(decided, key=lambda e: (_SEVERITY[decided[e][2].state], decided[e][0])) if decided else None
    k, n, decision = decided[eps] if decided else (0, 0, None)
    state: State = decision.state if decision else "pass"
    gap = k / n if n else 0.0
    return Check(
        name, state == "pass", num(gap),
        f"{what} ({', '.join(attacks)}) fools {gap:.1%} of the inputs that every white-box attack "
        f"failed on (eps={eps:g}): the white-box gradients are misleading." if state == "fail" else
        f"{what} ({', '.join(attacks)}) fools {gap:.1%} of the inputs every white-box attack failed on "
        f"(eps={eps:g}), which {n} inputs cannot tell from the {threshold:.0%} threshold."
        if state == "inconclusive" else
        f"{what} ({', '.join(attacks)}) finds little beyond the white-box attacks (at most {gap:.1%}).",
        {"attacks": list(attacks), "eps": eps,
         "extra_by_eps": {str(e): num(d[0] / d[1]) if d[1] else None for e, d in decided.items()},
         **(decision.evidence() if decision else {}), "discordant": [k, 0], "p_value": num(mcnemar_p(k, 0)),
         "samples_option": "--num_samples"},
        state=state, kind="signature",
    )


def check_unbounded(attack: str, eps: float, fooled: torch.Tensor,
                    thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """The naive attack with an unbounded budget (the whole pixel range) must fool ~every input.

    A budget that large can turn any image into any other. ``fooled``: per correctly classified
    input, whether the unbounded ``attack`` (at ``eps``) fooled it.
    """
    k, n = int(fooled.sum()), int(fooled.numel())
    decision = decide_proportion(k, n, thresholds.unbounded_success, above=False, alpha=thresholds.alpha) \
        if n else None
    state: State = decision.state if decision else "pass"
    success = k / n if n else 1.0
    return Check(
        "unbounded_attack_fails", state == "pass", num(success),
        f"An unbounded {attack} (eps={eps:g}) fools only {success:.1%} of inputs, not ~100%: "
        "its gradients lead nowhere." if state == "fail" else
        f"An unbounded {attack} (eps={eps:g}) fools {success:.1%} of inputs, which {n} inputs cannot tell "
        f"from the {thresholds.unbounded_success:.0%} threshold." if state == "inconclusive" else
        f"An unbounded {attack} (eps={eps:g}) fools {success:.1%} of inputs.",
        {"attack": attack, "eps": eps, "success_rate": num(success), "samples": n,
         **(decision.evidence() if decision else {}), "samples_option": "--check_samples"},
        state=state, kind="signature",
    )


def check_monotone(curves: Mapping[str, Masks], clean: torch.Tensor,
                   thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Flags robust accuracy that rises with eps: a larger budget must never help the model.

    ``curves``: attack -> eps -> per input, robust; ``clean``: per input, correctly classified
    (eps 0). Each rise is a paired comparison of the same inputs at two eps.
    """
    pairs = {}
    for name, curve in curves.items():
        points = [(0.0, clean), *sorted(curve.items(), key=lambda kv: kv[0])]
        for (e0, m0), (e1, m1) in zip(points, points[1:], strict=False):
            pairs[(name, e0, e1)] = paired(m1, m0)
    state, where, pair, decision = _paired_worst(pairs, thresholds.monotone_tolerance, thresholds.alpha)
    rise = max(pair.difference, 0.0) if pair else 0.0
    return Check(
        "not_monotone_in_eps", state == "pass", num(rise),
        f"Robust accuracy under {where[0]} rises by {rise:.1%} from eps={where[1]:g} to "
        f"eps={where[2]:g}: a larger budget can only help a working attack." if state == "fail" else
        f"Robust accuracy under {where[0]} rises by {rise:.1%} from eps={where[1]:g} to eps={where[2]:g}, "
        f"which {pair.n} inputs cannot tell from the {thresholds.monotone_tolerance:.0%} tolerance."
        if state == "inconclusive" else
        "Robust accuracy falls monotonically with eps for every attack.",
        {"largest_rise": num(rise), "where": list(where) if where and rise > 0 else None,
         **_decision_evidence(decision, pair, "--num_samples")},
        state=state, kind="signature",
    )


def check_adaptive_vs_naive(naive: Masks, adaptive: Mapping[str, Masks],
                            thresholds: MaskingThresholds = DEFAULT_THRESHOLDS, naive_name: str = "pgd_ce") -> Check:
    """An adaptive attack (margin, BPDA, EOT) that beats the naive one by more than the threshold.

    ``naive``: eps -> per input, robust under the naive attack; ``adaptive``: attack -> the same.
    An *outcome* check: on its own it says the naive attack is weak; it corroborates masking only
    where a mechanism check shows the gradients themselves are unusable.
    """
    pairs = {(name, e): paired(naive[e], mask) for name, curve in adaptive.items()
             for e, mask in curve.items() if e in naive}
    state, where, pair, decision = _paired_worst(pairs, thresholds.adaptive_gap, thresholds.alpha)
    gap = max(pair.difference, 0.0) if pair else 0.0
    return Check(
        "adaptive_beats_naive", state == "pass", num(gap),
        f"The adaptive attack {where[0]} lowers robust accuracy {gap:.1%} below the naive "
        f"{naive_name} at eps={where[1]:g}: the naive attack's robustness was apparent, not real."
        if state == "fail" else
        f"The adaptive attack {where[0]} lowers robust accuracy {gap:.1%} below the naive {naive_name} at "
        f"eps={where[1]:g}, which {pair.n} inputs cannot tell from the {thresholds.adaptive_gap:.0%} threshold."
        if state == "inconclusive" else
        f"Adaptive attacks ({', '.join(adaptive) or 'none'}) are within {gap:.1%} of the naive {naive_name}.",
        {"naive": naive_name, "adaptive": list(adaptive), "largest_gap": num(gap),
         "where": list(where) if where else None, **_decision_evidence(decision, pair, "--num_samples")},
        state=state, kind="outcome",
    )


def check_incomplete_optimisation(attack: str, steps: int, longer_steps: int, eps: float, robust: torch.Tensor,
                                  robust_longer: torch.Tensor,
                                  thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """Doubling the steps of ``attack`` (a PGD) must not lower robust accuracy much further.

    ``robust`` / ``robust_longer``: per input, robust under the attack and under its 2x-steps copy.
    """
    pair = paired(robust, robust_longer)
    decision = pair.decide(thresholds.incomplete_gap, alpha=thresholds.alpha)
    gap = pair.difference
    acc = robust.double().mean() if robust.numel() else torch.tensor(0.0)
    acc2 = robust_longer.double().mean() if robust_longer.numel() else torch.tensor(0.0)
    return Check(
        "incomplete_optimisation", decision.state == "pass", num(gap),
        f"Doubling {attack}'s steps ({steps} -> {longer_steps}) lowers accuracy by "
        f"{gap:.1%} more: the attack had not converged, so its numbers are upper bounds."
        if decision.state == "fail" else f"Doubling {attack}'s steps changes accuracy by {gap:+.1%}"
        + (f", which {pair.n} inputs cannot tell from the {thresholds.incomplete_gap:.0%} threshold."
           if decision.state == "inconclusive" else ": converged."),
        {"attack": attack, "steps": steps, "accuracy": num(acc), "accuracy_2x_steps": num(acc2), "eps": eps,
         **_decision_evidence(decision, pair, "--check_samples")},
        state=decision.state, kind="advisory",
    )


def check_silent_success(attack: str, met: torch.Tensor, kept: torch.Tensor,
                         thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """How many adversarial points met along ``attack``'s path a last-iterate attack would lose.

    This project's PGD keeps the first one it meets; many tools return the last iterate. ``met`` /
    ``kept``: per input, fooled by the first-adversarial and by the last-iterate copy of the attack.
    """
    lost_count, n = int((met & ~kept).sum()), int(met.numel())
    decision = decide_proportion(lost_count, n, thresholds.silent_success_fraction, alpha=thresholds.alpha) \
        if n else None
    state: State = decision.state if decision else "pass"
    lost = lost_count / n if n else 0.0
    return Check(
        "silent_success", state == "pass", num(lost),
        f"{lost:.1%} of inputs were adversarial somewhere along {attack}'s path but not at its "
        "last iterate: the loss surface is ragged; attacks that return the last iterate overstate "
        "robustness (lit-defense keeps the first adversarial point)." if state == "fail" else
        f"A last-iterate {attack} loses {lost:.1%} of the adversarial points met on its path"
        + (f", which {n} inputs cannot tell from the {thresholds.silent_success_fraction:.0%} threshold."
           if state == "inconclusive" else "."),
        {"attack": attack, "met_along_path": num(met.double().mean()) if met.numel() else None,
         "kept_at_last_iterate": num(kept.double().mean()) if kept.numel() else None, "lost": num(lost),
         **(decision.evidence() if decision else {}), "samples_option": "--check_samples"},
        state=state, kind="advisory",
    )


__all__ = [
    "Check", "MaskingThresholds", "MaskingVerdict", "check_adaptive_vs_naive",
    "check_extra_found", "check_gradient_vs_finite_differences", "check_incomplete_optimisation",
    "check_inference_time_optimisation", "check_logit_saturation", "check_monotone",
    "check_one_step_vs_iterative", "check_probability_outputs", "check_randomized_outputs",
    "check_silent_success", "check_unbounded", "check_zero_gradients", "looks_like_probabilities",
    "model_checks", "num", "verdict",
]
