"""``AdversarialEvaluation``: robust accuracy every validation epoch, logged to TensorBoard.

Thin by design: it picks a fixed, seeded subset of the validation set, shards it across
processes, attacks it into a ``lit_defense.metrics.RobustAccuracy`` (a torchmetrics ``Metric``) and
logs. All attack logic lives in ``lit_defense``.

Logged: ``adv/<attack>/eps=<eps>/acc`` and ``adv/worst/eps=<eps>/acc`` (cascade semantics: see
``lit_defense.evaluation``), plus, on a TensorBoard logger, the examples per eps (clean with
their class / worst-case adversarial with the prediction, red when wrong / perturbation amplified
to the full range; ``lit_defense.plots.draw_examples``) and a robust-accuracy-vs-eps figure.
Under DDP each rank attacks its own shard and the metric's integer counts are summed over ranks, so
the numbers equal a single-process run on the same subset.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lit_defense.attacks import Attack
from lit_defense.audit.suite import epoch_attacks
from lit_defense.evaluation import RobustnessResult, check_attacks
from lit_defense.metrics import RobustAccuracy
from lit_defense.results import Examples, eps_key

from ._common import ValidationShard, due


class AdversarialEvaluation(L.Callback):
    """Adversarial evaluation at the end of every ``every_n_epochs``-th validation epoch.

    Args:
        attacks: attacks run in order (default ``lit_defense.audit.suite.epoch_attacks()``: FGSM,
            APGD-5 CE, APGD-10 margin). Their ``eps`` is
            replaced by each value of ``eps``; all must share one norm.
        eps: the budgets evaluated (default: 0.1, the usual Fashion-MNIST/MNIST budget; each
            extra value costs as much again; the audit evaluates full grids).
        num_samples: size of the fixed, seeded validation subset (all of it if smaller).
        every_n_epochs: evaluate every this many epochs (the last epoch is always evaluated).
        log_images: log an image grid and a robust-accuracy-vs-eps figure (TensorBoard logger).
        batch_size: attack batch size.
        cascade: run each attack only on the points earlier attacks did not fool.
        seed: seed of the subset choice.
        num_images: samples in the image grid.
    """

    def __init__(
        self,
        attacks: Sequence[Attack] | None = None,
        eps: Sequence[float] = (0.1,),
        num_samples: int = 500,
        every_n_epochs: int = 1,
        log_images: bool = True,
        batch_size: int = 250,
        cascade: bool = True,
        seed: int = 0,
        num_images: int = 8,
    ) -> None:
        super().__init__()
        self.attacks = list(attacks) if attacks is not None else epoch_attacks()
        self.eps = [float(e) for e in eps]
        self.norm = check_attacks(self.attacks, self.eps)
        if num_samples < 1 or every_n_epochs < 1 or batch_size < 1:
            raise ValueError("num_samples, every_n_epochs and batch_size must be >= 1.")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.log_images = log_images
        self.batch_size = batch_size
        self.cascade = cascade
        self.seed = seed
        self.num_images = num_images
        self._shard = ValidationShard("AdversarialEvaluation", num_samples, seed)
        self._robust: RobustAccuracy | None = None
        self.last_result = None

    def _metric(self, device: torch.device) -> RobustAccuracy:
        """The ``RobustAccuracy`` that holds this callback's counts, on the model's device."""
        if self._robust is None:
            self._robust = RobustAccuracy(self.attacks, self.eps, cascade=self.cascade, batch_size=self.batch_size)
        return self._robust.to(device)

    # ------------------------------------------------------------------------------- logging
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not due(trainer, self.every_n_epochs):
            return
        start = time.perf_counter()
        x, y = self._shard(trainer)
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        keep = self.num_images if (self.log_images and trainer.is_global_zero) else 0
        metric = self._metric(pl_module.device)
        metric.reset()
        metric.update(pl_module, x, y, keep_examples=keep)
        result = metric.result(time.perf_counter() - start)  # counts summed over every rank
        examples = metric.examples
        self.last_result = result
        with warnings.catch_warnings():
            # the counts are already summed over ranks: Lightning's "use sync_dist" hint does not apply
            warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
            # every accuracy with its exact 95% interval: .../acc, .../ci_low, .../ci_high
            for name, value in result.metrics(intervals=True).items():
                pl_module.log(name, value, sync_dist=False, rank_zero_only=False)
            pl_module.log("adv/seconds", result.seconds, sync_dist=False)
        if keep:
            self._log_visuals(trainer, result, examples)

    # ------------------------------------------------------------------------------- visuals
    def _log_visuals(self, trainer: L.Trainer, result: RobustnessResult, examples: Examples | None) -> None:
        loggers = [lg for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_figure")]
        if not loggers:
            return
        from lit_defense.plots import draw_examples, robust_accuracy_figure

        step, experiment, names = trainer.global_step, loggers[0].experiment, _class_names(trainer)
        try:
            for e in result.eps if examples is not None else ():
                fig = draw_examples([("model", examples, e)], names, perturbation=True)
                experiment.add_figure(f"adv/examples/eps={eps_key(e)}", fig, step, close=True)
            fig = robust_accuracy_figure({"model": result}, title=f"robust accuracy ({result.norm})")
            experiment.add_figure("adv/robust_accuracy_vs_eps", fig, step, close=True)
        except Exception as err:  # a plotting problem must never stop training
            rank_zero_warn(f"AdversarialEvaluation could not draw its figures: {err}")


def _class_names(trainer: L.Trainer) -> list[str]:
    return [str(c) for c in getattr(trainer.datamodule, "class_names", None) or ()]


__all__ = ["AdversarialEvaluation"]
