"""``MaskedClassifier``: an input defense in front of the backbone, trained end to end.

``forward(x) = backbone(normalize(defense(x)))`` on [0, 1] pixels. Most input defenses look
robust to naive gradient attacks only because they mask gradients (shattered: bit-depth
reduction, JPEG, thermometer encoding, median smoothing; stochastic: random resize-and-pad,
Gaussian noise); BPDA and EOT attacks see through them (Athalye et al. 2018).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from lit_defense.backbones import Normalize
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

    def __init__(self, defense: InputDefense | dict | str = "bit_depth", **kwargs: Any):
        # build_net() runs inside Classifier.__init__ and needs the defense already.
        object.__setattr__(self, "_pending_defense", build_defense(defense))
        super().__init__(**kwargs)
        self.hparams["defense"] = defense_spec(self.net.defense)  # plain data in the checkpoint

    @property
    def defense(self) -> InputDefense:
        return self.net.defense

    def backbone_in_chans(self) -> int:
        return self._pending_defense.out_chans(self.hparams.in_chans)

    def build_net(self) -> nn.Module:
        hp = self.hparams
        defense = self._pending_defense
        keeps_chans = defense.out_chans(hp.in_chans) == hp.in_chans
        normalize = Normalize(hp.mean, hp.std) if hp.mean is not None and keeps_chans else nn.Identity()
        return nn.Sequential(OrderedDict(defense=defense, normalize=normalize, backbone=self.build_backbone()))
