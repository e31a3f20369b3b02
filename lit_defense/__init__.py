"""lit-defense.

Lightning templates for defensive distillation, gradient-masked models and adversarial evaluation
that sees through gradient masking.
"""

__version__ = "0.1.0"
