"""The checklist's room for attack results: the attacks its checks need, and the outcome checks.

``ChecklistAttacks`` are the attacks behind the evaluation checks; the audit runs them as units of
its plan like every other attack (sharded, recorded, gathered). ``outcome_checks`` turns the
per-sample results (``PerSample``) into the outcome checks. Nothing here runs an attack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_defense.attacks.base import Attack
from lit_defense.diagnostics.outcome import (
    check_adaptive_beats_naive,
    check_black_box_beats_white_box,
    check_incomplete_optimisation,
    check_not_monotone_in_eps,
    check_one_step_beats_iterative,
    check_random_sampling_beats_attacks,
    check_silent_success,
    check_unbounded_attack_fails,
)
from lit_defense.diagnostics.registry import conclude, register_check
from lit_defense.diagnostics.thresholds import DEFAULT_THRESHOLDS, MaskingThresholds
from lit_defense.results import Check, PerSample
from lit_defense.roles import AttackRoles
from lit_defense.stats import decide_proportion
from lit_defense.threat import check_eps


@dataclass
class ChecklistAttacks:
    """The attacks behind the checklist's evaluation checks (run as units like every other attack).

    ``unbounded``: the naive attack with the whole pixel range as budget (no random start: at that
    eps a random start is noise that fools by itself); ``probe``/``longer``: a margin PGD and the
    same at twice the steps (incomplete optimisation); ``first``/``last``: the probe keeping the
    first adversarial point met vs returning its last iterate (silent success).
    """

    unbounded: Attack
    probe: Attack
    longer: Attack
    first: Attack
    last: Attack

    @classmethod
    def build(cls, naive: Attack, probe: Attack, input_numel: int) -> ChecklistAttacks:
        """The checklist's attacks around the audit's naive attack and a margin-PGD probe."""
        big = 1.0 if naive.norm == "linf" else math.sqrt(input_numel)
        unbounded = naive.with_eps(check_eps(naive.norm, big))
        if "random_start" in unbounded.init_args:
            unbounded = unbounded.replace(random_start=False)
        step = probe.init_args.get("step_size")
        return cls(
            unbounded=unbounded.replace(name=f"unbounded_{naive.name}"),
            probe=probe.replace(name=probe.name),
            longer=probe.replace(steps=probe.steps * 2, step_size=None if step is None else step / 2,
                                 name=f"{probe.name}_2x_steps"),
            first=probe.replace(keep_first_adversarial=True, early_stop_every=0, name=f"{probe.name}_first"),
            last=probe.replace(keep_first_adversarial=False, early_stop_every=0, name=f"{probe.name}_last"),
        )

    def at_probe_eps(self) -> list[Attack]:
        """The four attacks that run at the probe's eps."""
        return [self.probe, self.longer, self.first, self.last]

    def checks(self, clean: torch.Tensor, fooled: dict[str, torch.Tensor], thresholds: MaskingThresholds,
               correct: torch.Tensor | None = None) -> list[Check]:
        """The three checks from per-sample results (``fooled``: attack name -> mask).

        A randomized model's results are expectations: ``clean`` the expected accuracy at the clean
        points, ``fooled`` the expected accuracy each attack took away from it, ``correct`` the
        inputs some draw classified correctly (the unbounded attack's success is the share of their
        expected accuracy it took).
        """
        if clean.dtype == torch.bool:
            robust = {name: clean & ~mask for name, mask in fooled.items()}
            unbounded = fooled[self.unbounded.name][clean]
        else:
            robust = {name: (clean - mask).clamp(0, 1) for name, mask in fooled.items()}
            on = correct.bool() if correct is not None else clean > 0
            unbounded = (fooled[self.unbounded.name][on] / clean[on].clamp_min(1e-12)).clamp(0, 1)
        return [
            check_unbounded_attack_fails(self.unbounded.name, self.unbounded.eps, unbounded, thresholds),
            check_incomplete_optimisation(self.probe.name, self.probe.steps, self.longer.steps, self.probe.eps,
                                          robust[self.probe.name], robust[self.longer.name], thresholds),
            check_silent_success(self.probe.name, fooled[self.first.name], fooled[self.last.name], thresholds),
        ]


def outcome_checks(res: PerSample, eps: Sequence[float], roles: AttackRoles[str], random: Sequence[str],
                   thresholds: MaskingThresholds, black_box_on: Mapping[float, torch.Tensor] | None = None
                   ) -> list[Check]:
    """The outcome checks of an audit, from its per-sample results alone.

    ``roles`` holds the attack names per role (``AttackRoles``), ``random`` the black-box attacks that sample the ball at random. ``res`` must
    have folded the attacks in the plan's order: white box, cascade, black box (then refine).
    ``black_box_on`` (eps -> per input): the inputs the black-box attacks ran on, where that was a
    seeded sample of the survivors (``--suite.black_box_sample``).
    """
    one_step, naive, adaptive = roles.one_step, roles.naive, list(roles.adaptive)
    # per input, robust (a deterministic model) or the expected accuracy (a randomized one: every
    # comparison is then between expectations on the same inputs, ``stats.paired``)
    own = {a: {e: res.expected_to(a, e) for e in eps} for a in (one_step, naive, *adaptive)}  # each alone
    checks = [
        check_one_step_beats_iterative(own[one_step], own[naive], thresholds, (one_step, naive)),
        check_adaptive_beats_naive(own[naive], {a: own[a] for a in adaptive}, thresholds, naive),
        check_not_monotone_in_eps({**own, "worst": {e: res.expected_to(None, e) for e in eps}}, res.expected_clean(),
                                  thresholds),
    ]
    last_gradient = (list(roles.cascade) or roles.white_box)[-1]
    gradient_robust = {e: res.expected_after(last_gradient, e) for e in eps}
    others = [a for a in roles.black_box if a not in random]
    if random:
        checks.append(check_random_sampling_beats_attacks(
            gradient_robust, {e: res.expected_after(random[-1], e) for e in eps}, list(random), thresholds,
            black_box_on))
    if others:
        base = {e: res.expected_after(random[-1], e) for e in eps} if random else gradient_robust
        checks.append(check_black_box_beats_white_box(
            base, {e: res.expected_after(others[-1], e) for e in eps}, others, thresholds, black_box_on))
    return checks


@register_check("attack_inadequate", "signature", "adequacy_rate", samples_option="--suite.adequacy_samples")
def check_attack_inadequate(adequacy: Mapping[str, Any], thresholds: MaskingThresholds = DEFAULT_THRESHOLDS) -> Check:
    """``attack_inadequate``: the attacks fail the binarization test (``lit_defense.adequacy``).

    ``adequacy``: the report's entry (``valid`` tasks, ``passed`` of them). Fails when the pass rate
    is significantly below ``thresholds.adequacy_rate`` (exact one-sided test), is inconclusive
    when below it but not significantly, passes otherwise; not applicable (a pass that says so)
    when no task was valid: no robust input, or none that made a valid task.
    """
    valid, passed, eps = int(adequacy.get("valid", 0)), int(adequacy.get("passed", 0)), adequacy.get("eps")
    if valid == 0:
        why = "no input was robust" if not adequacy.get("samples") else \
            f"none of the {adequacy['samples']} tested inputs made a valid task ({adequacy.get('dropped', {})})"
        na = f"Not applicable: {why}, so the positive control (binarization test) could not run."
        return conclude("attack_inadequate", "pass", None, {**adequacy, "applicable": False}, fail=na, ok=na)
    decision = decide_proportion(passed, valid, thresholds.adequacy_rate, above=False, alpha=thresholds.alpha)
    rate = passed / valid
    return conclude(
        "attack_inadequate", decision.state, rate, {**adequacy, "applicable": True, **decision.evidence()},
        fail=f"The attacks found the adversarial example that surely exists in only {passed} of {valid} "
             f"binarization tests at eps={eps:g} ({rate:.0%}, below {thresholds.adequacy_rate:.0%}): they are too "
             "weak for this model and its worst case overstates robustness.",
        unsure=f"The attacks passed {passed} of {valid} binarization tests at eps={eps:g} ({rate:.0%})",
        n=valid, counted="tests", thresholds=thresholds,
        ok=f"The attacks passed {passed} of {valid} binarization tests at eps={eps:g} (positive control).",
    )


__all__ = ["check_attack_inadequate", "ChecklistAttacks", "outcome_checks"]
