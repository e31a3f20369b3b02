"""``RobustAccuracy``: a torchmetrics ``Metric`` any LightningModule can hold, as the README shows."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torchmetrics import Metric

from lit_defense.attacks import FGSM, PGD
from lit_defense.data import VisionDataModule
from lit_defense.evaluation import evaluate_robustness, robustness_counts
from lit_defense.metrics import RobustAccuracy
from lit_defense.modules import Classifier


def attacks():
    # deterministic attacks: the same inputs give the same counts however they are batched
    return [FGSM(), PGD(steps=3, loss="margin", random_start=False)]


def test_counts_over_batches_equal_one_evaluation_of_all_inputs(trained):
    model, x, y = trained
    metric = RobustAccuracy(attacks(), eps=[0.05, 0.1])
    assert isinstance(metric, Metric)
    for xb, yb in zip(x[:96].split(40), y[:96].split(40), strict=True):
        metric.update(model, xb, yb)
    whole = evaluate_robustness(model, x[:96], y[:96], attacks(), [0.05, 0.1])
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == pytest.approx(whole.metrics())
    result = metric.result()
    assert result.num_samples == 96 and result.clean_accuracy == pytest.approx(whole.clean_accuracy)
    lo, hi = result.metrics(intervals=True)["adv/worst/eps=0.1/ci_low"], \
        result.metrics(intervals=True)["adv/worst/eps=0.1/ci_high"]
    assert lo <= result.worst(0.1) <= hi
    assert model.training is False and all(p.grad is None for p in model.parameters())
    metric.reset()
    assert int(metric.n) == 0 and int(metric.robust.sum()) == 0


def test_counts_from_elsewhere_add_and_a_wrong_shape_is_refused(trained):
    model, x, y = trained
    metric = RobustAccuracy(attacks(), eps=[0.1])
    counts, _ = robustness_counts(model, x[:32], y[:32], attacks(), [0.1])
    metric.add_counts(counts)
    metric.add_counts(counts)
    assert int(metric.n) == 64 and int(metric.clean) == 2 * int(counts.clean)
    other, _ = robustness_counts(model, x[:8], y[:8], attacks(), [0.05, 0.1])
    with pytest.raises(ValueError, match="attacks x eps"):
        metric.add_counts(other)


class _Module(Classifier):
    """The README's example: a LightningModule that holds a RobustAccuracy and logs it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.robust = RobustAccuracy(attacks(), eps=[0.1])

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        x, y, _ = batch
        self.robust.update(self, x, y)
        return out

    def on_validation_epoch_end(self):
        self.log_dict(self.robust.compute())
        self.robust.reset()


def test_a_lightning_module_holds_and_logs_it(tmp_path):
    L.seed_everything(0)
    dm = VisionDataModule("synthetic", val_size=64, synthetic_train_size=256, batch_size=32)
    model = _Module(mean=dm.mean, std=dm.std)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert {"adv/fgsm/eps=0.1/acc", "adv/pgd_margin/eps=0.1/acc", "adv/worst/eps=0.1/acc"} <= set(metrics)
    assert 0 <= float(metrics["adv/worst/eps=0.1/acc"]) <= float(metrics["adv/fgsm/eps=0.1/acc"]) <= 1
    assert torch.isfinite(torch.stack([metrics[k] for k in metrics if k.startswith("adv/")])).all()
