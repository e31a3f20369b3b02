"""What the model checks found about a model, once (``ModelProbe``): it steers the rest of the plan.

The model checks of the gradient-masking checklist (``diagnostics.model_checks``) run first, on
rank 0, and their findings decide which attacks the model needs (BPDA around declared
non-differentiable modules, EOT for random outputs, gradient-free escalation when the gradients
are unusable) and where the audit may save work (``spending``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lit_defense.attacks import masked_modules
from lit_defense.diagnostics import MaskingThresholds
from lit_defense.results import Check

# mechanism checks that concern the cross-entropy alone: the margin-loss attacks do not see them
CE_ONLY = frozenset({"softmax_saturation", "zero_gradients"})


@dataclass(frozen=True)
class ModelProbe:
    """The model checks and what they mean for the plan.

    Args:
        checks: the model checks, as the checklist reports them.
        masked: the model declares submodules with ``differentiable = False`` (BPDA routes around them).
        randomized: the model's outputs are random (``randomized_outputs`` failed): EOT, and every
            point is judged in expectation (``lit_defense.judge``).
        margin_zero: the margin loss's own gradients are zero on too many inputs.
        num_classes: the width of the model's output.
    """

    checks: tuple[Check, ...]
    masked: bool
    randomized: bool
    margin_zero: bool
    num_classes: int

    @classmethod
    def of(cls, model: nn.Module, x: torch.Tensor, checks: Sequence[Check],
           thresholds: MaskingThresholds) -> ModelProbe:
        """The findings of ``checks`` on ``model`` (one forward pass for its number of classes)."""
        by_name = {c.name: c for c in checks}
        zero = by_name["zero_gradients"].evidence["margin"]["zero"] or 0.0
        with torch.inference_mode(False), torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        return cls(tuple(checks), masked=bool(masked_modules(model)),
                   randomized=not by_name["randomized_outputs"].passed,
                   margin_zero=zero > thresholds.zero_gradient_fraction, num_classes=num_classes)

    def check(self, name: str) -> Check:
        """The model check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    @property
    def broken(self) -> bool:
        """The gradients are unusable and no declared module lets BPDA repair them: gradient-free attacks lead.

        Zero margin gradients, gradients that disagree with finite differences, or optimisation
        inside the forward pass.
        """
        return not self.masked and (self.margin_zero or not self.check("gradient_mismatch").passed
                                    or not self.check("inference_time_optimisation").passed)

    @property
    def margins_trusted(self) -> bool:
        """Whether the margins the white-box attacks left can tell which survivors are far from the boundary.

        Those margins come from the margin-loss PGD. A saturated softmax and zero cross-entropy
        gradients (defensive distillation) leave that attack's gradients intact, so they keep the
        margins trusted, unless the margin loss's own gradients are zero too. Every other failed
        mechanism check, a module BPDA must route around and random outputs do not. The evidence:
        ``benchmarks/results/vs_autoattack_linf_0.1.json`` (the whole suite on every survivor).
        """
        if self.masked or self.randomized or self.margin_zero:
            return False
        return all(c.passed or c.name in CE_ONLY for c in self.checks if c.kind == "mechanism")

    def far_threshold(self, far_margin: float, norm: str) -> float:
        """The far rule's threshold (``--suite.far_margin``) for this model and norm (0: no survivor is skipped).

        The rule holds at L-inf only: at L2 it skipped inputs AutoAttack fooled
        (``benchmarks/results/vs_autoattack_l2_1.0.json``).
        """
        return far_margin if norm == "linf" and self.margins_trusted else 0.0

    def black_box_sampled(self, option: bool) -> bool:
        """Whether the gradient-free attacks start on a sample of the survivors (``--suite.black_box_sample``).

        Not when a model check failed (masked, randomized, unusable gradients): the gradient
        attacks' survivors are then suspect and the gradient-free attacks are a main line, on all
        of them. A saturated softmax and zero cross-entropy gradients alone leave the margin
        attacks intact (``margins_trusted``): there the gradient-free attacks are the check they
        are on any model.
        """
        if not option:
            return False
        if self.margins_trusted:
            return True
        return not (self.masked or self.randomized
                    or any(not c.passed for c in self.checks if c.kind == "mechanism"))


__all__ = ["CE_ONLY", "ModelProbe"]
