"""``AdversarialTraining``: PGD adversarial training (Madry et al. 2018), the honest baseline.

Each training batch is replaced by PGD adversarial examples crafted against the current model
(with the project's own ``PGD``), optionally with the TRADES loss (Zhang et al. 2019). Its
robustness is real: adaptive attacks (margin losses, BPDA, EOT) should not lower it much below
plain PGD, unlike the masked models'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

from lit_defense.attacks import PGD, Attack
from lit_defense.errors import ConfigError
from lit_defense.modules.classifier import Classifier
from lit_defense.threat import Norm


def craft_in_eval_mode(module: torch.nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``attack(module, x, y)`` with the module in eval mode (dropout off), its mode restored after.

    The attack takes gradients w.r.t. the input only, so the parameters' gradients come from the
    training loss alone.
    """
    was_training = module.training
    module.eval()
    try:
        return attack(module, x, y)
    finally:
        module.train(was_training)


def kl_to(probs: torch.Tensor, temperature: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-sample loss ``KL(probs || softmax(logits / T))`` (an attack's loss: TRADES, RSLAD)."""

    def kl(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] != probs.shape[0]:
            raise ConfigError(
                f"the attack called its loss on {logits.shape[0]} rows of a batch of {probs.shape[0]}: a KL "
                "to per-input labels needs the whole batch at every step. Use one restart, no targets and "
                "keep_first_adversarial: false (PGD, APGD)."
            )
        return F.kl_div(F.log_softmax(logits / temperature, -1), probs, reduction="none").sum(-1)

    return kl


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
        attack = self.attack
        if clean_probs is not None:  # TRADES: the same PGD, maximising KL(f(x) || f(x_adv))
            attack = self.attack.replace(loss=kl_to(clean_probs, self.temperature))
        return craft_in_eval_mode(self, attack, x, y)

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
