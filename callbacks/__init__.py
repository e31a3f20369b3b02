"""Lightning callbacks of lit-defense: thin, they schedule, shard and log; the logic lives in
``lit_defense``."""

from callbacks.adversarial_evaluation import AdversarialEvaluation

__all__ = ["AdversarialEvaluation"]
