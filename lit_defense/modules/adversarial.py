"""``AdversarialTraining``: PGD adversarial training (Madry et al. 2018), the honest baseline.

Each training batch is replaced by PGD adversarial examples crafted against the current model
(with the project's own ``PGD``), optionally with the TRADES loss (Zhang et al. 2019). Its
robustness is real: adaptive attacks (margin losses, BPDA, EOT) should not lower it much below
plain PGD, unlike the masked models'.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

from lit_defense.attacks import PGD
from lit_defense.errors import ConfigError
from lit_defense.modules.classifier import Classifier
from lit_defense.threat import Norm


class AdversarialTraining(Classifier):
    """PGD adversarial training (Madry et al. 2018) or TRADES: the honest baseline.

    The examples are crafted with the model in eval mode (dropout off), then the model returns to
    train mode; the attack takes gradients w.r.t. the input only, so the parameters' gradients
    come from the training loss alone.

    Args:
        attack_eps: training budget (Fashion-MNIST: 0.1).
        attack_norm: ``linf`` or ``l2``.
        attack_steps: PGD steps per batch.
        attack_step_size: PGD step size (``None``: 2.5 * eps / steps).
        trades_beta: ``None`` for Madry's loss (CE on adversarial examples); a number for TRADES:
            ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``, with x_adv maximising the KL term.
        **kwargs: every ``Classifier`` argument.
    """

    def __init__(self, attack_eps: float = 0.1, attack_norm: Norm = "linf", attack_steps: int = 7,
                 attack_step_size: float | None = None, trades_beta: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if trades_beta is not None and trades_beta < 0:
            raise ConfigError(f"trades_beta must be >= 0, got {trades_beta}.")
        self.attack = PGD(eps=attack_eps, norm=attack_norm, steps=attack_steps, step_size=attack_step_size,
                          loss="ce", keep_first_adversarial=False)
        self.trades_beta = trades_beta

    def _craft(self, x: torch.Tensor, y: torch.Tensor, clean_probs: torch.Tensor | None) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            attack = self.attack
            if clean_probs is not None:  # TRADES: the same PGD, maximising KL(f(x) || f(x_adv))

                def kl(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
                    return F.kl_div(F.log_softmax(logits / self.temperature, -1), clean_probs,
                                    reduction="none").sum(-1)

                attack = self.attack.replace(loss=kl)
            return attack(self, x, y)
        finally:
            self.train(was_training)

    @override
    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        if self.trades_beta is None:
            x_adv = self._craft(x, y, None)
            return F.cross_entropy(self(x_adv) / self.temperature, y)
        clean = F.cross_entropy(logits / self.temperature, y)
        probs = F.softmax(logits.detach() / self.temperature, -1)
        x_adv = self._craft(x, y, probs)
        robust = F.kl_div(F.log_softmax(self(x_adv) / self.temperature, -1), probs, reduction="batchmean")
        return clean + self.trades_beta * robust
