from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_defense.data import VisionDataModule
from lit_defense.errors import ConfigError
from lit_defense.modules import Classifier


def _dm(**kw):
    return VisionDataModule("synthetic", val_size=256, synthetic_train_size=1024, batch_size=64, **kw)


def _trainer(tmp_path, epochs, **kw):
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw,
    )


def test_forward_is_deployment_logits_and_loss_uses_temperature():
    torch.manual_seed(0)
    m = Classifier(temperature=10.0, mean=[0.5], std=[0.25])
    m.eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    logits = m(x)
    assert torch.allclose(logits, m.net(x))
    assert torch.allclose(m.loss(logits, y, x, None), F.cross_entropy(logits / 10.0, y))
    assert not torch.allclose(m.loss(logits, y, x, None), F.cross_entropy(logits, y))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_temperature_must_be_positive(bad):
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Classifier(temperature=bad)


def test_mean_std_channel_mismatch():
    with pytest.raises(ConfigError, match="in_chans"):
        Classifier(in_chans=3, mean=[0.5], std=[0.5])


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_tiny_fit_really_learns_with_defaults(tmp_path, temperature):
    """The default optimizer must learn at T=1 and at T=100 (SGD lr=0.05 does not at T=100)."""
    L.seed_everything(0)
    dm = _dm()
    model = Classifier(num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
                       mean=dm.mean, std=dm.std, temperature=temperature)
    trainer = _trainer(tmp_path, epochs=3)
    trainer.fit(model, dm)
    val_acc = trainer.callback_metrics["val/acc"].item()
    assert val_acc > 0.9, f"T={temperature}: val/acc {val_acc:.3f} after 3 epochs"
    assert trainer.callback_metrics["train/loss_epoch"] < 2.0
    test_acc = trainer.test(model, dm, verbose=False)[0]["test/acc"]
    assert test_acc > 0.9


def test_checkpoint_holds_only_safe_types(tmp_path):
    L.seed_everything(0)
    dm = _dm()
    model = Classifier(mean=dm.mean, std=dm.std, temperature=5.0,
                       lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True, map_location="cpu")  # raises on any pickled object
    assert ckpt["hyper_parameters"]["temperature"] == 5.0
    assert "optimizer" not in ckpt["hyper_parameters"]
    restored = Classifier(**ckpt["hyper_parameters"])
    restored.load_state_dict(ckpt["state_dict"])
    x = torch.rand(4, 1, 28, 28)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))


def test_predict_step_returns_probabilities():
    m = Classifier().eval()
    out = m.predict_step((torch.rand(5, 1, 28, 28), torch.zeros(5, dtype=torch.long)), 0)
    assert out["probs"].shape == (5, 10)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(5))
    assert torch.equal(out["preds"], out["logits"].argmax(-1))


def test_head_learning_rate_scales_with_temperature():
    for temperature, scaled in ((1.0, False), (100.0, True)):
        m = Classifier(temperature=temperature, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
        opt = m.configure_optimizers()
        lrs = sorted(g["lr"] for g in opt.param_groups)
        assert lrs == ([1e-3, 1e-3 * temperature] if scaled else [1e-3])
        n_params = sum(len(g["params"]) for g in opt.param_groups)
        assert n_params == len(list(m.parameters()))
    head = Classifier(temperature=100.0).head_parameters()
    assert [p.shape for p in head] == [(10, 200), (10,)]
    off = Classifier(temperature=100.0, head_lr_temperature_scaling=False,
                     optimizer=lambda p: torch.optim.Adam(p, lr=1e-3)).configure_optimizers()
    assert [g["lr"] for g in off.param_groups] == [1e-3]
    with_sched = Classifier(temperature=10.0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
                            lr_scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5))
    sched = with_sched.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sorted(sched.base_lrs) == [1e-3, 1e-2]
