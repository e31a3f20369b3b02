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

Each check is one function ``check_<name>`` registered with its kind and threshold
(``diagnostics.registry``: ``CHECKS``); a new check is one function with one decorator.

Numbers are computed in float64 where logits may be huge (T=100 distillation, x1e4) or tiny, and
every number in the evidence is a finite float or ``None``, so reports never carry NaN or inf.
"""

from __future__ import annotations

import warnings
from typing import Any

from lit_defense.diagnostics.checklist import (
    ChecklistAttacks,
    check_attack_inadequate,
    outcome_checks,
)
from lit_defense.diagnostics.mechanism import (
    check_gradient_mismatch,
    check_inference_time_optimisation,
    check_probability_outputs,
    check_randomized_outputs,
    check_softmax_saturation,
    check_zero_gradients,
    looks_like_probabilities,
    model_checks,
)
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
from lit_defense.diagnostics.registry import CHECKS, CheckSpec, conclude, register_check
from lit_defense.diagnostics.thresholds import DEFAULT_THRESHOLDS, MaskingThresholds
from lit_defense.results import Check, MaskingVerdict, num, verdict

# The names the check functions had before each was named after the check it returns (one release).
_RENAMED = {
    "check_adaptive_vs_naive": "check_adaptive_beats_naive",
    "check_attack_adequacy": "check_attack_inadequate",
    "check_gradient_vs_finite_differences": "check_gradient_mismatch",
    "check_logit_saturation": "check_softmax_saturation",
    "check_monotone": "check_not_monotone_in_eps",
    "check_one_step_vs_iterative": "check_one_step_beats_iterative",
    "check_unbounded": "check_unbounded_attack_fails",
}


def __getattr__(name: str) -> Any:
    if name == "check_extra_found":  # one function for two checks, now one function each
        warnings.warn("lit_defense.diagnostics.check_extra_found is now two checks: "
                      "check_random_sampling_beats_attacks and check_black_box_beats_white_box; the old "
                      "name goes in the next release.", DeprecationWarning, stacklevel=2)
        from lit_defense.diagnostics.outcome import _extra_found
        return _extra_found
    if name in _RENAMED:
        warnings.warn(f"lit_defense.diagnostics.{name} is now {_RENAMED[name]} (named after the check it "
                      "returns); the old name goes in the next release.", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKS", "DEFAULT_THRESHOLDS", "Check", "CheckSpec", "ChecklistAttacks", "MaskingThresholds", "MaskingVerdict",
    "check_adaptive_beats_naive", "check_attack_inadequate", "check_black_box_beats_white_box",
    "check_gradient_mismatch", "check_incomplete_optimisation", "check_inference_time_optimisation",
    "check_not_monotone_in_eps", "check_one_step_beats_iterative", "check_probability_outputs",
    "check_random_sampling_beats_attacks", "check_randomized_outputs", "check_silent_success",
    "check_softmax_saturation", "check_unbounded_attack_fails", "check_zero_gradients", "conclude",
    "looks_like_probabilities", "model_checks", "num", "outcome_checks", "register_check", "verdict",
]
