from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from lit_defense.data import VisionDataModule
from lit_defense.modules import Classifier
from lit_defense_callbacks import GradientMaskingMonitor


class SaturatedClassifier(Classifier):
    """Trains normally, deploys (eval mode) with logits x1e4: the softmax saturates, as after
    defensive distillation (train at T, deploy at T=1)."""

    def forward(self, x):
        logits = super().forward(x)
        return logits if self.training else logits * 1e4


def _fit(model_cls, tmp_path, **trainer_kwargs):
    L.seed_everything(0)
    dm = VisionDataModule("synthetic", val_size=128, synthetic_train_size=512, batch_size=64)
    model = model_cls(mean=dm.mean, std=dm.std)
    monitor = GradientMaskingMonitor(num_samples=64)
    trainer = L.Trainer(accelerator="cpu", callbacks=[monitor], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        **trainer_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, dm)
    return trainer, monitor, model, dm, [str(w.message) for w in caught if "GradientMaskingMonitor" in str(w.message)]


def test_monitor_logs_checks_and_stays_quiet_on_an_honest_model(tmp_path):
    trainer, monitor, *_, warned = _fit(Classifier, tmp_path, max_epochs=1, limit_train_batches=6)
    metrics = trainer.callback_metrics
    for key in ("masking/zero_gradients", "masking/softmax_saturation", "masking/gradient_mismatch",
                "masking/randomized_outputs", "masking/one_step_beats_iterative", "masking/suspected"):
        assert key in metrics, key
    assert float(metrics["masking/suspected"]) == 0.0
    assert not monitor.last_verdict.suspected and not warned


def test_monitor_flags_saturated_softmax_and_warns_once(tmp_path):
    trainer, monitor, model, dm, warned = _fit(SaturatedClassifier, tmp_path, max_epochs=2, limit_train_batches=4)
    metrics = trainer.callback_metrics
    assert float(metrics["masking/suspected"]) == 1.0
    assert float(metrics["masking/softmax_saturation"]) > 0.5
    assert {"softmax_saturation", "zero_gradients"} <= set(monitor.last_verdict.triggered)
    assert len(warned) == 1 and "lit-defense audit" in warned[0]
    # also under trainer.validate (inference mode), leaving no parameter gradients behind
    trainer.validate(model, dm, verbose=False)
    assert float(trainer.callback_metrics["masking/suspected"]) == 1.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_monitor_rejects_impossible_settings():
    with pytest.raises(ValueError, match="eps"):
        GradientMaskingMonitor(eps=2.0)
    with pytest.raises(ValueError, match="num_samples"):
        GradientMaskingMonitor(num_samples=1)
