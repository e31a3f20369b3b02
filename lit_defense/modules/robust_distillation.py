"""``RobustDistilledStudent``: adversarially robust distillation (ARD and RSLAD).

Defensive distillation only *looks* robust (its logits saturate softmax). Robust distillation is
distillation that keeps real robustness: a robust (adversarially trained) teacher's soft labels
teach a student, often a smaller one, on adversarial examples of the student itself.

- ARD (Goldblum et al., AAAI 2020): ``x_adv`` maximises the student's own cross-entropy on the
  true labels; the loss is ``a * T^2 * KL(t(x)_T || s(x_adv)_T) + (1 - a) * CE(s(x), y)``.
- RSLAD (Zi et al., ICCV 2021): the teacher's soft labels replace the hard labels everywhere:
  ``x_adv`` maximises ``KL(t(x) || s(x_adv))`` and the loss is
  ``a * KL(t(x) || s(x_adv)) + (1 - a) * KL(t(x) || s(x))``.

``t(x)_T = softmax(teacher(x) / T)`` is the teacher's soft label of the *clean* input in both
methods, so the soft-label cache of ``DistilledStudent`` serves them (the teacher runs once per
training sample, not once per batch). The teacher must itself be robust: from a non-robust teacher
these methods lose to plain adversarial training (Goldblum et al. 2020; Zi et al. 2021), and the
student warns when its teacher's own robustness is far below its clean accuracy.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_defense.attacks import PGD, Attack, create_attack
from lit_defense.errors import ConfigError
from lit_defense.modules.adversarial import craft_in_eval_mode, kl_to
from lit_defense.modules.distillation import DistilledStudent
from lit_defense.threat import Norm

Method = Literal["ard", "rslad"]
#: the papers' weights of the adversarial term (ARD: alpha = 1 in its CIFAR-10 runs; RSLAD: 5/6)
DEFAULT_ADVERSARIAL_WEIGHT: dict[str, float] = {"ard": 1.0, "rslad": 5.0 / 6.0}
#: a teacher whose robust accuracy is below this share of its clean accuracy is "not robust"
NOT_ROBUST_SHARE = 0.5


class RobustDistilledStudent(DistilledStudent):
    """A student distilled from a robust teacher on its own adversarial examples (ARD or RSLAD).

    Args:
        method: ``rslad`` (the teacher's soft labels in the attack and in both loss terms) or
            ``ard`` (the student's cross-entropy in the attack, the true labels in the clean term).
        teacher_checkpoint: the robust teacher (an ``AdversarialTraining`` checkpoint, or any
            lit-defense ``.ckpt`` or state dict, as for ``DistilledStudent``).
        adversarial_weight: ``a``, the weight of the adversarial term; ``None``: the paper's
            (ARD 1.0, RSLAD 5/6).
        attack_eps, attack_norm, attack_steps, attack_step_size: the inner PGD (Fashion-MNIST:
            L-inf 0.1; CIFAR-10: 8/255, 10 steps).
        attack: any attack of ``lit_defense.attacks`` instead of that PGD (its eps and norm are
            its own). It returns its last iterate, the maximum of the loss, as training wants
            (``keep_first_adversarial`` is turned off). Under RSLAD its loss is replaced by the KL
            to the teacher's soft labels, so it must take a ``loss`` and call it on the whole
            batch at every step (one restart, no targets).
        teacher_check_samples: before training, the teacher is attacked (PGD-10 on the margin
            loss, the student's eps) on this many training images; when its robust accuracy is
            below half its clean accuracy the run warns that the teacher is not robust. 0 skips it.
        head_lr_temperature_scaling: off by default: a robust teacher is trained at T=1, so the
            student's logits need not grow T-fold as a defensively distilled student's must.
        **kwargs: every ``DistilledStudent`` argument (``temperature`` T: ARD's paper used 30 on
            CIFAR-10, RSLAD 1; ``cache_teacher``, ``backbone``, ``backbone_kwargs``, ...). The
            student's backbone may be smaller than the teacher's.
    """

    def __init__(
        self,
        method: Method = "rslad",
        teacher_checkpoint: str | None = None,
        adversarial_weight: float | None = None,
        attack_eps: float = 0.1,
        attack_norm: Norm = "linf",
        attack_steps: int = 10,
        attack_step_size: float | None = None,
        attack: Attack | dict | None = None,
        teacher_check_samples: int = 256,
        head_lr_temperature_scaling: bool = False,
        **kwargs: Any,
    ) -> None:
        if method not in DEFAULT_ADVERSARIAL_WEIGHT:
            raise ConfigError(f"method must be one of {sorted(DEFAULT_ADVERSARIAL_WEIGHT)}, got {method!r}.")
        weight = DEFAULT_ADVERSARIAL_WEIGHT[method] if adversarial_weight is None else adversarial_weight
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"adversarial_weight must lie in [0, 1], got {adversarial_weight}.")
        if teacher_check_samples < 0:
            raise ConfigError(f"teacher_check_samples must be >= 0 (0 skips the check), got {teacher_check_samples}.")
        if kwargs.get("hard_label_weight"):
            raise ConfigError("hard_label_weight is defensive distillation's; robust distillation weighs its "
                              "terms with adversarial_weight.")
        super().__init__(teacher_checkpoint=teacher_checkpoint,
                         head_lr_temperature_scaling=head_lr_temperature_scaling, **kwargs)
        self.method = method
        self.adversarial_weight = float(weight)
        self.teacher_check_samples = teacher_check_samples
        if attack is None:
            attack = PGD(eps=attack_eps, norm=attack_norm, steps=attack_steps, step_size=attack_step_size,
                         loss="ce", keep_first_adversarial=False)
        else:
            attack = create_attack(attack)
            if attack.init_args.get("keep_first_adversarial"):  # training wants the loss's maximum
                attack = attack.replace(keep_first_adversarial=False)
            # plain data in the checkpoint (loadable with weights_only=True), not the object
            self.hparams["attack"] = {"class_path": f"lit_defense.attacks.{type(attack).__name__}",
                                      "init_args": attack.init_args}
        if method == "rslad" and "loss" not in attack.init_args:
            raise ConfigError(f"RSLAD's attack maximises the KL to the teacher's soft labels, but "
                              f"{type(attack).__name__} takes no loss; use PGD or APGD.")
        self.attack = attack

    # ------------------------------------------------------------------------ the teacher check
    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.teacher_check_samples and not getattr(self, "_teacher_checked", False):
            self._teacher_checked = True
            self._check_teacher_is_robust()

    def teacher_robustness(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """The teacher's clean and robust accuracy on ``(x, y)`` (PGD-10 on the margin loss)."""
        teacher = self.teacher
        attack = PGD(eps=self.attack.eps, norm=self.attack.norm, steps=10, loss="margin")
        with torch.no_grad():
            clean = teacher(x).argmax(1) == y
        x_adv = attack(teacher, x, y)
        with torch.no_grad():
            robust = clean & (teacher(x_adv).argmax(1) == y)
        return float(clean.float().mean()), float(robust.float().mean())

    def _check_teacher_is_robust(self) -> None:
        dataset = self.trainer.train_dataloader.dataset
        n = min(self.teacher_check_samples, len(dataset))
        items = [dataset[i] for i in range(n)]
        x = torch.stack([item[0] for item in items]).to(self.device)
        y = torch.as_tensor([int(item[1]) for item in items], device=self.device)
        clean, robust = self.teacher_robustness(x, y)
        eps = self.attack.eps
        if robust < NOT_ROBUST_SHARE * clean:
            rank_zero_warn(
                f"the teacher is not robust: PGD-10 (margin) at eps={eps:g} leaves {robust:.0%} of {n} training "
                f"images, against {clean:.0%} clean. From a non-robust teacher, ARD and RSLAD lose to plain "
                "adversarial training (Goldblum et al. 2020; Zi et al. 2021): distil an adversarially trained "
                "teacher (configs/fashion_mnist/adv_train.yaml)."
            )
        else:
            rank_zero_info(f"RobustDistilledStudent: the teacher keeps {robust:.0%} of {n} training images at "
                           f"eps={eps:g} ({clean:.0%} clean)")

    # ------------------------------------------------------------------------------------- loss
    def craft(self, x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """The student's adversarial examples: ARD on its cross-entropy, RSLAD on the KL to ``soft``."""
        attack = self.attack
        if self.method == "rslad":
            attack = attack.replace(loss=kl_to(soft, self.temperature))
        return craft_in_eval_mode(self, attack, x, y)

    @override
    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        soft = self.soft_labels(x, index, verify=self._verify_batch)
        x_adv = self.craft(x, y, soft)
        temp, a = self.temperature, self.adversarial_weight
        adversarial = F.kl_div(F.log_softmax(self(x_adv) / temp, -1), soft, reduction="batchmean")
        if self.method == "ard":
            return a * temp**2 * adversarial + (1.0 - a) * F.cross_entropy(logits, y)
        clean = F.kl_div(F.log_softmax(logits / temp, -1), soft, reduction="batchmean")
        return a * adversarial + (1.0 - a) * clean


__all__ = ["RobustDistilledStudent"]
