"""Lightning callbacks of lit-defense.

Thin, they schedule, shard and log; the logic lives in ``lit_defense``.
"""

from .adversarial_evaluation import AdversarialEvaluation
from .gradient_masking import GradientMaskingMonitor

__all__ = ["AdversarialEvaluation", "GradientMaskingMonitor"]
