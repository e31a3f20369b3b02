"""LightningModules of lit-defense, one concept a file."""

from lit_defense.modules.classifier import Classifier

__all__ = ["Classifier"]
