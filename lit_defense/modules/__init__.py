"""LightningModules of lit-defense, one concept a file."""

from lit_defense.modules.classifier import Classifier
from lit_defense.modules.distillation import DistilledStudent

__all__ = ["Classifier", "DistilledStudent"]
