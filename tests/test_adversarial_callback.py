from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import CONFIGS, SYNTHETIC

from lit_defense.attacks import FGSM, PGD
from lit_defense.cli import main
from lit_defense.data import VisionDataModule
from lit_defense.modules import Classifier
from lit_defense_callbacks import AdversarialEvaluation


def _setup(**cb_kwargs):
    L.seed_everything(0)
    dm = VisionDataModule("synthetic", val_size=256, synthetic_train_size=768, batch_size=64)
    model = Classifier(mean=dm.mean, std=dm.std)
    cb = AdversarialEvaluation(**{"attacks": [FGSM(), PGD(steps=3, loss="margin")], "eps": [0.05, 0.1],
                                  "num_samples": 64, **cb_kwargs})
    return dm, model, cb


EXPECTED = {
    "adv/fgsm/eps=0.05/acc", "adv/fgsm/eps=0.1/acc", "adv/pgd_margin/eps=0.05/acc",
    "adv/pgd_margin/eps=0.1/acc", "adv/worst/eps=0.05/acc", "adv/worst/eps=0.1/acc",
}


def test_callback_logs_expected_keys_in_fast_dev_run(tmp_path):
    dm, model, cb = _setup()
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert EXPECTED <= set(trainer.callback_metrics)
    worst = trainer.callback_metrics["adv/worst/eps=0.1/acc"]
    assert worst <= trainer.callback_metrics["adv/fgsm/eps=0.1/acc"]
    # every accuracy with its exact 95% interval (Clopper-Pearson on the attacked subset)
    for name in [*EXPECTED, "adv/clean/acc"]:
        if name.endswith("/acc"):
            low, high = (float(trainer.callback_metrics[name[:-3] + b]) for b in ("ci_low", "ci_high"))
            assert low <= float(trainer.callback_metrics[name]) <= high, name
    from lit_defense.stats import clopper_pearson

    n = cb.last_result.num_samples
    k = round(float(worst) * n)
    assert float(trainer.callback_metrics["adv/worst/eps=0.1/ci_low"]) == pytest.approx(clopper_pearson(k, n)[0])


def test_callback_under_validate_inference_mode_with_tensorboard(tmp_path):
    dm, model, cb = _setup()
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    seen = []

    class Probe(L.Callback):
        def on_validation_epoch_end(self, trainer, module):
            seen.append(torch.is_inference_mode_enabled())

    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, accelerator="cpu", callbacks=[Probe(), cb], logger=logger,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, dm)
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("adv/")}
    trainer.validate(model, dm, verbose=False)
    assert seen[-1] is True  # Trainer.validate's default: the hook runs under torch.inference_mode
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("adv/")}
    assert EXPECTED <= set(val_metrics)
    # same weights, same fixed subset, deterministic FGSM: same number
    assert val_metrics["adv/fgsm/eps=0.1/acc"] == fit_metrics["adv/fgsm/eps=0.1/acc"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logger.log_dir))
    acc.Reload()
    assert {"adv/worst/eps=0.1/acc", "adv/worst/eps=0.1/ci_low", "adv/worst/eps=0.1/ci_high"} <= set(acc.Tags()["scalars"])
    assert {"adv/examples/eps=0.05", "adv/examples/eps=0.1"} <= set(acc.Tags()["images"])
    assert "adv/robust_accuracy_vs_eps" in acc.Tags()["images"]


def test_callback_leaves_model_state_and_grads_alone(tmp_path):
    dm, model, cb = _setup()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", callbacks=[cb], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, dm)
    model.zero_grad(set_to_none=True)
    model.eval()
    trainer.validate(model, dm, verbose=False)
    assert all(p.grad is None for p in model.parameters())


def test_every_n_epochs_skips_epochs(tmp_path):
    dm, model, cb = _setup(every_n_epochs=2)
    calls = []
    original = cb.on_validation_epoch_end

    def spy(trainer, module):
        before = cb.last_result
        original(trainer, module)
        calls.append(cb.last_result is not before)

    cb.on_validation_epoch_end = spy
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, accelerator="cpu", callbacks=[cb], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert calls == [False, True, True]  # epoch 2, and the last epoch


def test_shipped_configs_run_the_callback(in_tmp):
    main(["fit", "--config", str(CONFIGS / "fashion_mnist" / "teacher.yaml"), *SYNTHETIC,
          "--trainer.fast_dev_run=true"])
    # the config's callback ran: its subset was built and a result exists
    # (fast_dev_run suppresses the logger, so check through a second, logged run)
    main(["fit", "--config", str(CONFIGS / "fashion_mnist" / "teacher.yaml"), *SYNTHETIC,
          "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.logger.init_args.name=cb"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = next((in_tmp / "runs" / "cb").glob("version_*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    from lit_defense.audit.suite import epoch_attacks

    for attack in epoch_attacks():  # the recipe's callback part runs the default cascade
        assert f"adv/{attack.name}/eps=0.1/acc" in tags, (attack.name, tags)
