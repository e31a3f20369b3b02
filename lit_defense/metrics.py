"""``RobustAccuracy``: robust accuracy per attack and eps as a ``torchmetrics.Metric``.

Any LightningModule can hold one, attack its batches and log it; its states are integer counts
(clean, robust per attack and eps, worst case per eps, inputs) that torchmetrics sums over
processes (``dist_reduce_fx="sum"``), so under DDP the numbers equal a single-process run on the
union of the shards. ``lit_defense_callbacks.AdversarialEvaluation`` uses it every epoch.

Example, in a LightningModule::

    from lit_defense.attacks import APGD, FGSM
    from lit_defense.metrics import RobustAccuracy

    def __init__(self):
        ...
        self.robust = RobustAccuracy([FGSM(), APGD(steps=10, loss="margin")], eps=[0.1])

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.robust.update(self, x, y)  # attacks the model on this batch (gradients enabled inside)

    def on_validation_epoch_end(self):
        self.log_dict(self.robust.compute())  # {"adv/apgd_margin/eps=0.1/acc": ..., "adv/worst/...": ...}
        self.robust.reset()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from typing_extensions import override

from lit_defense.attacks.base import Attack
from lit_defense.evaluation import (
    RobustnessCounts,
    RobustnessResult,
    check_attacks,
    robustness_counts,
)
from lit_defense.results import Examples


class RobustAccuracy(Metric):
    """Robust accuracy of a model under ``attacks`` at every ``eps``, and the worst case per eps.

    ``update(model, x, y)`` attacks ``model`` on the batch (``lit_defense.evaluation.robustness_counts``:
    the attacks keep the model's train/eval state and leave no gradient on its parameters) and adds
    the counts; ``compute()`` returns ``{"<prefix>/<attack>/eps=<eps>/acc": accuracy}`` for every
    attack and ``worst``, over every input seen (all processes); ``result()`` the same as a
    ``RobustnessResult``, whose ``metrics(intervals=True)`` adds exact 95% intervals.

    Args:
        attacks: the attacks, run in order; each is copied at every eps. All share one norm.
        eps: the budgets.
        cascade: run each attack only on the inputs earlier attacks did not fool (the worst case
            is the same either way; per-attack numbers are then cumulative).
        batch_size: attack batch size (a batch larger than it is attacked in chunks).
        prefix: the first part of the metric names.
        kwargs: ``torchmetrics.Metric`` arguments (``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    n: torch.Tensor
    clean: torch.Tensor
    robust: torch.Tensor
    worst: torch.Tensor

    def __init__(self, attacks: Sequence[Attack], eps: Sequence[float], cascade: bool = True,
                 batch_size: int = 256, prefix: str = "adv", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attacks = list(attacks)
        self.eps = [float(e) for e in eps]
        self.norm = check_attacks(self.attacks, self.eps)
        self.cascade, self.batch_size, self.prefix = cascade, batch_size, prefix
        self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("clean", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("robust", torch.zeros(len(self.attacks), len(self.eps), dtype=torch.long),
                       dist_reduce_fx="sum")
        self.add_state("worst", torch.zeros(len(self.eps), dtype=torch.long), dist_reduce_fx="sum")
        self.examples: Examples | None = None
        self._result: RobustnessResult | None = None

    @override
    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, keep_examples: int = 0) -> None:
        """Attack ``model`` on ``(x, y)`` and add the counts.

        ``keep_examples=k`` keeps the worst-case adversarial inputs of the first ``k`` samples in
        ``self.examples`` (see ``robustness_counts``).
        """
        counts, examples = robustness_counts(model, x, y, self.attacks, self.eps, self.batch_size, self.cascade,
                                             keep_examples=keep_examples)
        if keep_examples:
            self.examples = examples.examples
        self.add_counts(counts)

    def add_counts(self, counts: RobustnessCounts) -> None:
        """Add counts computed elsewhere (``robustness_counts`` with the same attacks and eps)."""
        if tuple(counts.robust.shape) != (len(self.attacks), len(self.eps)):
            raise ValueError(f"counts for {tuple(counts.robust.shape)} attacks x eps, this metric holds "
                             f"{len(self.attacks)} x {len(self.eps)}.")
        self.n += counts.n.to(self.n)
        self.clean += counts.clean.to(self.clean)
        self.robust += counts.robust.to(self.robust)
        self.worst += counts.worst.to(self.worst)

    @override
    def compute(self) -> dict[str, torch.Tensor]:
        """``{"<prefix>/<attack>/eps=<eps>/acc": accuracy}`` for every attack and ``worst``.

        torchmetrics has summed the counts over processes before this runs.
        """
        counts = RobustnessCounts(n=self.n.clone(), clean=self.clean.clone(), robust=self.robust.clone(),
                                  worst=self.worst.clone())
        self._result = counts.to_result(self.attacks, self.eps, self.norm, self.cascade)
        return {name: torch.tensor(value) for name, value in self._result.metrics(self.prefix).items()}

    def result(self, seconds: float = 0.0) -> RobustnessResult:
        """What ``compute`` summarises, as a ``RobustnessResult`` (counts over all processes).

        Its ``metrics(intervals=True)`` adds each accuracy's exact 95% interval.
        """
        self.compute()
        return dataclasses.replace(self._result, seconds=seconds)

__all__ = ["RobustAccuracy"]
