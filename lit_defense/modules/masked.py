"""``MaskedClassifier``: an input defense in front of the backbone, trained end to end.

``forward(x) = backbone(normalize(defense(x)))`` on [0, 1] pixels. Most input defenses look
robust to naive gradient attacks only because they mask gradients (shattered: bit-depth
reduction, JPEG, thermometer encoding, median smoothing; stochastic: random resize-and-pad,
Gaussian noise); BPDA and EOT attacks see through them (Athalye et al. 2018).
"""

from __future__ import annotations

from typing import Any

from lit_defense.defenses import InputDefense, build_defense, defense_spec
from lit_defense.modules.classifier import Classifier


class MaskedClassifier(Classifier):
    """A Classifier whose forward pass is ``backbone(defense(x))``.

    Args:
        defense: the input defense (YAML: ``class_path: lit_defense.defenses.JPEGCompression``).
            Normalisation is applied after it when it keeps the channel count; a defense that
            changes it (thermometer encoding) feeds the backbone directly.
        **kwargs: every ``Classifier`` argument.
    """

    def __init__(self, defense: InputDefense | dict | str = "bit_depth", **kwargs: Any) -> None:
        super().__init__(**kwargs)  # ``defense`` reaches ``configure_models`` through the hparams

    def configure_models(self) -> None:
        """Build the defense from ``hparams.defense``, then the network behind it."""
        defense = build_defense(self.hparams.defense)
        self.hparams["defense"] = defense_spec(defense)  # plain data in the checkpoint
        self.net = self.build_net(defense)

    @property
    def defense(self) -> InputDefense:
        """The input defense in front of the backbone."""
        return self.net.defense
