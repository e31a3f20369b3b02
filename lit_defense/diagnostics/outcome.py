"""Outcome checks: what attack results say about the gradients (signatures, outcomes, advisories).

Each reads per-sample outcomes that ``lit_defense.audit`` computed (boolean masks over the same
inputs): one-step stronger than iterative, black-box or random sampling stronger than white-box, an
unbounded attack that does not reach ~100% success, robust accuracy not monotone in eps, adaptive
attacks much stronger than the naive one, and two checks of the evaluation itself (advisory:
incomplete optimisation and silent success). None runs an attack.

A randomized model's outcomes are expectations in [0, 1] (each input's accuracy over the model's
own randomness) instead of masks: the checks take them as they are, and two attacks are compared
by the paired rule on expectations (``stats.paired``: the expected discordant counts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lit_defense.diagnostics.registry import conclude, register_check
from lit_defense.diagnostics.thresholds import DEFAULT_THRESHOLDS, MaskingThresholds
from lit_defense.results import Check, num
from lit_defense.stats import (
    ALPHA,
    Decision,
    Paired,
    State,
    decide_proportion,
    expected_count,
    mcnemar_p,
    paired,
)

# -------------------------------------------------------------------------------- attack checks
# Every check below reads per-sample outcomes (boolean masks over the same n inputs). Two attacks
# on the same inputs are compared on their discordant inputs (``stats.Paired``: exact interval and
# McNemar's test); a single rate by its exact interval. A check fails only when its number is
# significantly past its threshold (one-sided ``alpha``), passes when its 95% interval is on the
# right side, and is inconclusive otherwise (``evidence["inputs_to_resolve"]``).
Masks = Mapping[float, torch.Tensor]
_SEVERITY = {"fail": 2, "inconclusive": 1, "pass": 0}  # which of several decisions a check reports


def _only(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per input, the first outcome without the second.

    ``first & ~second`` on boolean masks; on expectations (a randomized model), the part of the
    first's expected accuracy the second lacks.
    """
    if first.dtype == torch.bool and second.dtype == torch.bool:
        return first & ~second
    return (first.double() - second.double()).clamp(0, 1)


def _paired_worst(pairs: Mapping[Any, Paired], threshold: float, alpha: float
                  ) -> tuple[State, Any, Paired | None, Decision | None]:
    """The worst of several paired comparisons: a failure first, then the largest difference."""
    decided = {key: (p, p.decide(threshold, alpha=alpha)) for key, p in pairs.items()}
    if not decided:
        return "pass", None, None, None
    key = max(decided, key=lambda k: (_SEVERITY[decided[k][1].state], decided[k][0].difference))
    pair, decision = decided[key]
    return decision.state, key, pair, decision


def _decision_evidence(decision: Decision | None, pair: Paired | None) -> dict[str, Any]:
    out: dict[str, Any] = decision.evidence() if decision is not None else {}
    if pair is not None:
        out.update(pair.evidence())
    return out


@register_check("one_step_beats_iterative", "signature", "one_step_gap")
def check_one_step_beats_iterative(one_step: Masks, iterative: Masks,
                                   thresholds: MaskingThresholds = DEFAULT_THRESHOLDS,
                                   names: tuple[str, str] = ("fgsm", "pgd_ce"), samples_option: str = "--num_samples"
                                   ) -> Check:
    """Flags FGSM beating the iterative attack: a gradient that does not lead uphill.

    ``one_step``/``iterative``: eps -> per input, robust under that attack (same inputs).
    """
    pairs = {e: paired(iterative[e], one_step[e]) for e in one_step if e in iterative}
    state, eps, pair, decision = _paired_worst(pairs, thresholds.one_step_gap, thresholds.alpha)
    gap = pair.difference if pair else 0.0
    return conclude(
        "one_step_beats_iterative", state, num(gap),
        {"one_step": names[0], "iterative": names[1], "eps": eps,
         "gap_by_eps": {str(k): num(v.difference) for k, v in pairs.items()},
         **_decision_evidence(decision, pair), "samples_option": samples_option},
        fail=f"The one-step attack ({names[0]}) beats the iterative one ({names[1]}) by {gap:.1%} at "
             f"eps={eps:g}: the iterative attack follows misleading local gradients." if state == "fail" else "",
        unsure=f"The one-step attack ({names[0]}) beats the iterative one by {gap:.1%} at eps={eps:g}"
        if state == "inconclusive" else "", n=len(one_step[eps]) if eps is not None else 0, thresholds=thresholds,
        ok=f"The iterative attack is at least as strong as the one-step one (largest gap {gap:+.1%}).",
    )


@register_check("random_sampling_beats_attacks", "signature", "random_gap")
def check_random_sampling_beats_attacks(before: Masks, after: Masks, attacks: Sequence[str],
                                        thresholds: MaskingThresholds = DEFAULT_THRESHOLDS,
                                        attacked: Masks | None = None) -> Check:
    """Random sampling in the ball, run after every gradient attack, must find (almost) nothing more.

    See ``_extra_found`` (``before``/``after``: eps -> per input, robust before and after it).
    """
    return _extra_found("random_sampling_beats_attacks", "Random sampling in the ball", before, after,
                        thresholds.random_gap, attacks, thresholds.alpha, attacked)


@register_check("black_box_beats_white_box", "signature", "black_box_gap")
def check_black_box_beats_white_box(before: Masks, after: Masks, attacks: Sequence[str],
                                    thresholds: MaskingThresholds = DEFAULT_THRESHOLDS,
                                    attacked: Masks | None = None) -> Check:
    """Gradient-free attacks, run after every gradient attack, must find (almost) nothing more.

    See ``_extra_found`` (``before``/``after``: eps -> per input, robust before and after them).
    """
    return _extra_found("black_box_beats_white_box", "Gradient-free attacks", before, after,
                        thresholds.black_box_gap, attacks, thresholds.alpha, attacked)


def _extra_found(name: str, what: str, before: Masks, after: Masks, threshold: float, attacks: Sequence[str],
                 alpha: float = ALPHA, attacked: Masks | None = None) -> Check:
    """Attacks run after all white-box ones (on their survivors) must find (almost) nothing more.

    ``before``/``after``: eps -> per input, robust before and after these attacks. The inputs
    they fooled are their discordant inputs against the white-box attacks (which fooled none the
    later attacks missed, since the later ones only see survivors): a rate with an exact interval.

    ``attacked`` (eps -> per input): where these attacks ran on a seeded sample of the survivors
    only (``--suite.black_box_sample``), the inputs they ran on. The rate over all inputs is then
    the sample's rate times the survivors' share, and the decision is the exact test of the
    sample's rate against ``threshold`` divided by that share (a sample that covers every
    survivor is the plain test).
    """
    decided, scale = {}, {}
    for e in before:
        if e in after:
            k, n = expected_count(_only(before[e], after[e])), int(before[e].numel())
            scale[e] = 1.0
            if attacked is not None and e in attacked and before[e].dtype == torch.bool:
                survivors, on = int(before[e].sum()), int((before[e] & attacked[e]).sum())
                if 0 < on < survivors:  # a sample of the survivors: its rate, scaled
                    scale[e] = survivors / n
                    k, n = int((before[e] & ~after[e] & attacked[e]).sum()), on
            # survivors fewer than the threshold's share of all inputs: the rate cannot pass it (target 1)
            decided[e] = (k, n, decide_proportion(k, n, min(threshold / scale[e], 1.0), alpha=alpha))
    eps = max(decided, key=lambda e: (_SEVERITY[decided[e][2].state], decided[e][0])) if decided else None
    k, n, decision = decided[eps] if decided else (0, 0, None)
    sampled = decided and scale[eps] != 1.0
    state: State = decision.state if decision else "pass"
    gap = k / n * (scale[eps] if decided else 1.0) if n else 0.0
    return conclude(
        name, state, num(gap),
        {"attacks": list(attacks), "eps": eps,
         "extra_by_eps": {str(e): num(d[0] / d[1] * scale[e]) if d[1] else None for e, d in decided.items()},
         **(decision.evidence() if decision else {}), "discordant": [k, 0], "p_value": num(mcnemar_p(k, 0)),
         **({"sampled": n, "survivor_share": num(scale[eps])} if sampled else {}),
         "samples_option": "--suite.black_box_sample" if sampled else "--num_samples"},
        fail=f"{what} ({', '.join(attacks)}) fools {gap:.1%} of the inputs that every white-box attack "
             f"failed on (eps={eps:g}): the white-box gradients are misleading." if state == "fail" else "",
        unsure=f"{what} ({', '.join(attacks)}) fools {gap:.1%} of the inputs every white-box attack failed on "
               f"(eps={eps:g})" if state == "inconclusive" else "", n=n, thresholds=threshold,
        ok=f"{what} ({', '.join(attacks)}) finds little beyond the white-box attacks (at most {gap:.1%}"
           + (f"; on a seeded sample of {n} of the inputs they left robust" if sampled else "") + ").",
    )


@register_check("unbounded_attack_fails", "signature", "unbounded_success", samples_option="--check_samples")
def check_unbounded_attack_fails(attack: str, eps: float, fooled: torch.Tensor,
                                 thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """The naive attack with an unbounded budget (the whole pixel range) must fool ~every input.

    A budget that large can turn any image into any other. ``fooled``: per correctly classified
    input, whether the unbounded ``attack`` (at ``eps``) fooled it.
    """
    k, n = expected_count(fooled), int(fooled.numel())
    decision = decide_proportion(k, n, thresholds.unbounded_success, above=False, alpha=thresholds.alpha) \
        if n else None
    state: State = decision.state if decision else "pass"
    success = k / n if n else 1.0
    return conclude(
        "unbounded_attack_fails", state, num(success),
        {"attack": attack, "eps": eps, "success_rate": num(success), "samples": n,
         **(decision.evidence() if decision else {})},
        fail=f"An unbounded {attack} (eps={eps:g}) fools only {success:.1%} of inputs, not ~100%: "
             "its gradients lead nowhere.",
        unsure=f"An unbounded {attack} (eps={eps:g}) fools {success:.1%} of inputs", n=n, thresholds=thresholds,
        ok=f"An unbounded {attack} (eps={eps:g}) fools {success:.1%} of inputs.",
    )


@register_check("not_monotone_in_eps", "signature", "monotone_tolerance", word="tolerance")
def check_not_monotone_in_eps(curves: Mapping[str, Masks], clean: torch.Tensor,
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
    return conclude(
        "not_monotone_in_eps", state, num(rise),
        {"largest_rise": num(rise), "where": list(where) if where and rise > 0 else None,
         **_decision_evidence(decision, pair)},
        fail=f"Robust accuracy under {where[0]} rises by {rise:.1%} from eps={where[1]:g} to "
             f"eps={where[2]:g}: a larger budget can only help a working attack." if state == "fail" else "",
        unsure=f"Robust accuracy under {where[0]} rises by {rise:.1%} from eps={where[1]:g} to eps={where[2]:g}"
        if state == "inconclusive" else "", n=pair.n if pair else 0, thresholds=thresholds,
        ok="Robust accuracy falls monotonically with eps for every attack.",
    )


@register_check("adaptive_beats_naive", "outcome", "adaptive_gap")
def check_adaptive_beats_naive(naive: Masks, adaptive: Mapping[str, Masks],
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
    return conclude(
        "adaptive_beats_naive", state, num(gap),
        {"naive": naive_name, "adaptive": list(adaptive), "largest_gap": num(gap),
         "where": list(where) if where else None, **_decision_evidence(decision, pair)},
        fail=f"The adaptive attack {where[0]} lowers robust accuracy {gap:.1%} below the naive "
             f"{naive_name} at eps={where[1]:g}: the naive attack's robustness was apparent, not real."
        if state == "fail" else "",
        unsure=f"The adaptive attack {where[0]} lowers robust accuracy {gap:.1%} below the naive {naive_name} at "
               f"eps={where[1]:g}" if state == "inconclusive" else "", n=pair.n if pair else 0, thresholds=thresholds,
        ok=f"Adaptive attacks ({', '.join(adaptive) or 'none'}) are within {gap:.1%} of the naive {naive_name}.",
    )


@register_check("incomplete_optimisation", "advisory", "incomplete_gap", samples_option="--check_samples")
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
    return conclude(
        "incomplete_optimisation", decision.state, num(gap),
        {"attack": attack, "steps": steps, "accuracy": num(acc), "accuracy_2x_steps": num(acc2), "eps": eps,
         **_decision_evidence(decision, pair)},
        fail=f"Doubling {attack}'s steps ({steps} -> {longer_steps}) lowers accuracy by "
             f"{gap:.1%} more: the attack had not converged, so its numbers are upper bounds.",
        unsure=f"Doubling {attack}'s steps changes accuracy by {gap:+.1%}", n=pair.n, thresholds=thresholds,
        ok=f"Doubling {attack}'s steps changes accuracy by {gap:+.1%}: converged.",
    )


@register_check("silent_success", "advisory", "silent_success_fraction", samples_option="--check_samples")
def check_silent_success(attack: str, met: torch.Tensor, kept: torch.Tensor,
                         thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """How many adversarial points met along ``attack``'s path a last-iterate attack would lose.

    This project's PGD keeps the first one it meets; many tools return the last iterate. ``met`` /
    ``kept``: per input, fooled by the first-adversarial and by the last-iterate copy of the attack.
    """
    lost_count, n = expected_count(_only(met, kept)), int(met.numel())
    decision = decide_proportion(lost_count, n, thresholds.silent_success_fraction, alpha=thresholds.alpha) \
        if n else None
    state: State = decision.state if decision else "pass"
    lost = lost_count / n if n else 0.0
    return conclude(
        "silent_success", state, num(lost),
        {"attack": attack, "met_along_path": num(met.double().mean()) if met.numel() else None,
         "kept_at_last_iterate": num(kept.double().mean()) if kept.numel() else None, "lost": num(lost),
         **(decision.evidence() if decision else {})},
        fail=f"{lost:.1%} of inputs were adversarial somewhere along {attack}'s path but not at its "
             "last iterate: the loss surface is ragged; attacks that return the last iterate overstate "
             "robustness (lit-defense keeps the first adversarial point).",
        unsure=f"A last-iterate {attack} loses {lost:.1%} of the adversarial points met on its path",
        n=n, thresholds=thresholds,
        ok=f"A last-iterate {attack} loses {lost:.1%} of the adversarial points met on its path.",
    )


__all__ = [
    "Masks", "check_adaptive_beats_naive", "check_black_box_beats_white_box", "check_incomplete_optimisation",
    "check_not_monotone_in_eps", "check_one_step_beats_iterative", "check_random_sampling_beats_attacks",
    "check_silent_success", "check_unbounded_attack_fails",
]
