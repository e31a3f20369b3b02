"""When a check of the gradient-masking checklist fails: ``MaskingThresholds`` and the constants."""

from __future__ import annotations

from dataclasses import dataclass

from lit_defense.stats import ALPHA

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
        adequacy_rate: the attacks solve fewer than this fraction of the binarization test's valid
            tasks (``lit_defense.adequacy``; run when ``--suite.adequacy_samples`` > 0): they miss
            adversarial examples that exist (Zimmermann et al. 2022 treat well below 95% as failing).
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
    adequacy_rate: float = 0.95
    alpha: float = ALPHA


DEFAULT_THRESHOLDS = MaskingThresholds()


__all__ = ["DEFAULT_THRESHOLDS", "SATURATION_GAP", "VANISHING_GRADIENT", "MaskingThresholds"]
