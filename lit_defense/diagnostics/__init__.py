"""The gradient-masking checklist (Athalye et al. 2018, Carlini et al. 2019), with evidence.

Every check returns a ``Check``: ``passed`` (no sign of masking), ``value`` (the one number that
decided it, logged as ``masking/<name>``), ``evidence`` (all numbers behind it) and ``summary``
(one sentence in plain words). ``verdict(checks)`` says whether gradient masking is suspected and
which checks triggered it.

Two families, a module each:
- **mechanism checks** (``diagnostics.mechanism``) need only the model and a batch (a few
  forward/backward passes): outputs that are probabilities, saturated softmax / logit scale,
  randomized outputs, exactly zero input gradients (for the cross-entropy *and* the margin loss:
  AutoAttack's check looks at DLR only and never sees the cross-entropy saturation that defensive
  distillation relies on), gradients that disagree with finite differences, and optimisation
  inside the forward pass. ``model_checks`` runs them; ``lit_defense_callbacks.GradientMaskingMonitor``
  runs them every epoch.
- **outcome checks** (``diagnostics.outcome``) compare attack results (``lit_defense.audit``
  computes them): one-step stronger than iterative, black-box or random sampling stronger than white-box, an unbounded
  attack that does not reach ~100% success, robust accuracy not monotone in eps, adaptive attacks
  much stronger than the naive one, and two checks of the evaluation itself (advisory: they say the
  numbers may be loose, not that gradients are masked): incomplete optimisation and silent success.

Numbers are computed in float64 where logits may be huge (T=100 distillation, x1e4) or tiny, and
every number in the evidence is a finite float or ``None``, so reports never carry NaN or inf.
"""

from __future__ import annotations

from lit_defense.diagnostics.checklist import ChecklistAttacks, outcome_checks
from lit_defense.diagnostics.mechanism import (
    check_gradient_vs_finite_differences,
    check_inference_time_optimisation,
    check_logit_saturation,
    check_probability_outputs,
    check_randomized_outputs,
    check_zero_gradients,
    looks_like_probabilities,
    model_checks,
)
from lit_defense.diagnostics.outcome import (
    check_adaptive_vs_naive,
    check_extra_found,
    check_incomplete_optimisation,
    check_monotone,
    check_one_step_vs_iterative,
    check_silent_success,
    check_unbounded,
)
from lit_defense.diagnostics.thresholds import DEFAULT_THRESHOLDS, MaskingThresholds
from lit_defense.results import Check, MaskingVerdict, num, verdict

__all__ = [
    "DEFAULT_THRESHOLDS", "Check", "ChecklistAttacks", "MaskingThresholds", "MaskingVerdict", "check_adaptive_vs_naive",
    "check_extra_found", "check_gradient_vs_finite_differences", "check_incomplete_optimisation",
    "check_inference_time_optimisation", "check_logit_saturation", "check_monotone",
    "check_one_step_vs_iterative", "check_probability_outputs", "check_randomized_outputs",
    "check_silent_success", "check_unbounded", "check_zero_gradients", "looks_like_probabilities",
    "model_checks", "num", "outcome_checks", "verdict",
]
