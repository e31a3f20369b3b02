"""``GradientMaskingMonitor``: the cheap gradient-masking checks every validation epoch.

Thin by design: it takes a fixed, seeded validation subset, shards it across processes, calls
``lit_defense.diagnostics`` and logs ``masking/<check>`` (the number that decides each check) plus
``masking/suspected`` (0/1) and ``masking/inconclusive`` (0/1: a check could not be decided on
the subset; a larger ``num_samples`` decides it). When masking first appears it warns once, naming the checks and what
to do. The expensive attack-based checks live in ``lit-defense audit``.

Under DDP each rank checks its shard; the logged values are means over ranks (``sync_dist``), and
``masking/suspected`` is 1 when any rank's shard triggers a check.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lit_defense.diagnostics import MaskingThresholds, model_checks, verdict
from lit_defense.evaluation import cheap_attack_check
from lit_defense.threat import check_eps

from ._common import ValidationShard, due


class GradientMaskingMonitor(L.Callback):
    """Runs the gradient-masking checklist's cheap checks on a fixed validation subset.

    Args:
        num_samples: size of the fixed, seeded validation subset.
        eps: budget of the one-step vs iterative check (FGSM vs PGD-10, CE loss).
        norm: ``linf`` or ``l2``.
        every_n_epochs: check every this many epochs (the last epoch is always checked).
        thresholds: when each check fails (``lit_defense.diagnostics.MaskingThresholds``).
        attack_check: also run the one-step vs iterative check (a few gradient passes).
        seed: seed of the subset.
    """

    def __init__(self, num_samples: int = 256, eps: float = 0.1, norm: str = "linf", every_n_epochs: int = 1,
                 thresholds: MaskingThresholds | None = None, attack_check: bool = True, seed: int = 0) -> None:
        super().__init__()
        if num_samples < 2 or every_n_epochs < 1:
            raise ValueError("GradientMaskingMonitor needs num_samples >= 2 and every_n_epochs >= 1.")
        self.eps = check_eps(norm, eps)
        self.norm = norm
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.thresholds = thresholds or MaskingThresholds()
        self.attack_check = attack_check
        self.seed = seed
        self._shard = ValidationShard("GradientMaskingMonitor", num_samples, seed)
        self._warned = False
        self.last_verdict = None

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not due(trainer, self.every_n_epochs):
            return
        x, y = self._shard(trainer)
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        with torch.inference_mode(False):
            checks = model_checks(pl_module, x, y, self.thresholds, fd_samples=min(64, x.shape[0]), seed=self.seed)
            if self.attack_check:
                checks.append(cheap_attack_check(pl_module, x, y, self.eps, self.norm, thresholds=self.thresholds))
        result = verdict(checks)
        self.last_verdict = result
        for check in checks:
            if check.value is not None:
                pl_module.log(f"masking/{check.name}", float(check.value), sync_dist=True)
        suspected = torch.tensor(float(result.suspected), device=pl_module.device)
        pl_module.log("masking/suspected", suspected, sync_dist=True, reduce_fx="max")
        undecided = torch.tensor(float(result.state == "inconclusive"), device=pl_module.device)
        pl_module.log("masking/inconclusive", undecided, sync_dist=True, reduce_fx="max")
        if result.suspected and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"GradientMaskingMonitor (epoch {trainer.current_epoch}): {result.explain()} Robust accuracy "
                "from naive attacks on this model is not to be trusted; run `lit-defense audit` on its checkpoint."
            )


__all__ = ["GradientMaskingMonitor"]
