"""Attacks on [0, 1] pixels: ``attack(model, x, y) -> x_adv``. See ``base.py`` for the contract."""

from lit_defense.attacks.apgd import APGD
from lit_defense.attacks.base import (
    Attack,
    FixedBudgetAttack,
    GradientAttack,
    GridResult,
    MinNormAttack,
    ce_loss,
    dlr_loss,
    margin_loss,
)
from lit_defense.attacks.cw import CarliniWagnerL2
from lit_defense.attacks.fmn import FMN
from lit_defense.attacks.gradient import FGSM, PGD
from lit_defense.attacks.jsma import JSMA
from lit_defense.attacks.random_sampling import RandomSampling
from lit_defense.attacks.rays import RayS
from lit_defense.attacks.registry import (
    ATTACKS,
    attack_class,
    create_attack,
    list_attacks,
    register_attack,
)
from lit_defense.attacks.square import Square
from lit_defense.attacks.wrappers import BPDA, EOT, bpda_hooks, masked_modules

__all__ = [
    "APGD", "ATTACKS", "Attack", "BPDA", "CarliniWagnerL2", "EOT", "FGSM", "FMN", "FixedBudgetAttack", "GradientAttack", "GridResult", "JSMA",
    "MinNormAttack", "PGD", "RandomSampling", "RayS", "Square",
    "attack_class", "bpda_hooks", "ce_loss", "create_attack", "dlr_loss", "list_attacks", "margin_loss",
    "masked_modules", "register_attack",
]

