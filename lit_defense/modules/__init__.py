"""LightningModules of lit-defense, one concept a file."""

from lit_defense.modules.adversarial import AdversarialTraining
from lit_defense.modules.classifier import Classifier
from lit_defense.modules.distillation import DistilledStudent
from lit_defense.modules.masked import MaskedClassifier
from lit_defense.modules.robust_distillation import RobustDistilledStudent

__all__ = ["AdversarialTraining", "Classifier", "DistilledStudent", "MaskedClassifier", "RobustDistilledStudent"]
