from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import CONFIGS, SYNTHETIC

from lit_defense.cli import main
from lit_defense.data import VisionDataModule
from lit_defense.errors import ConfigError, DataFormatError, DataNotFoundError
from lit_defense.modules import Classifier, DistilledStudent
from lit_defense.modules.loading import module_from_checkpoint

TEACHER_CFG = CONFIGS / "fashion_mnist" / "distillation_teacher.yaml"
STUDENT_CFG = CONFIGS / "fashion_mnist" / "distilled.yaml"


def _dm(**kw):
    kw.setdefault("val_size", 256)
    return VisionDataModule("synthetic", synthetic_train_size=1024, synthetic_test_size=256, batch_size=64, **kw)


def _kw(dm):
    return dict(num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size, mean=dm.mean, std=dm.std)


def _trainer(epochs=2):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A T=1 and a T=100 teacher trained on synthetic data, saved as Lightning checkpoints."""
    out = {}
    for temperature in (1.0, 100.0):
        L.seed_everything(0)
        dm = _dm()
        model = Classifier(temperature=temperature, **_kw(dm))
        trainer = _trainer(epochs=3)
        trainer.fit(model, dm)
        path = tmp_path_factory.mktemp("teacher") / f"T{int(temperature)}.ckpt"
        trainer.save_checkpoint(path)
        out[temperature] = (path, dict(trainer.callback_metrics))
    return out


def test_student_trains_from_teacher_checkpoint_through_cli(teachers, in_tmp, caplog):
    caplog.set_level("INFO")
    main(["fit", "--config", str(STUDENT_CFG), *SYNTHETIC,
          f"--model.init_args.teacher_checkpoint={teachers[100.0][0]}",
          "--trainer.max_epochs=2", "--model.init_args.lr_scheduler.init_args.T_max=2",
          "--data.init_args.batch_size=32",  # T=100 soft labels need ~50 steps on this data
          "--trainer.logger.init_args.name=student", "--test_after_fit=true"])
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("test/acc"))
    assert float(line.split()[2]) > 0.8, line
    last = next((in_tmp / "runs" / "student").rglob("last.ckpt"))
    ckpt = torch.load(last, weights_only=True)
    assert not any("teacher" in k for k in ckpt["state_dict"]), "the teacher leaked into the student checkpoint"
    assert ckpt["hyper_parameters"]["_class_path"] == "lit_defense.modules.DistilledStudent"
    # the deployed student can be rebuilt without its teacher
    student = module_from_checkpoint(last)
    assert isinstance(student, DistilledStudent) and student.teacher is None and not student.training


def test_teacher_cli_config_trains_at_its_temperature(in_tmp):
    main(["fit", "--config", str(TEACHER_CFG), *SYNTHETIC, "--trainer.max_epochs=1",
          "--model.init_args.temperature=20", "--trainer.logger.init_args.name=t20"])
    ckpt = torch.load(next((in_tmp / "runs" / "t20").rglob("last.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["temperature"] == 20.0


def test_cache_gives_the_same_loss_as_recomputing(teachers):
    dm = _dm()
    dm.setup("fit")
    L.seed_everything(0)
    cached = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=100.0, **_kw(dm))
    trainer = _trainer(epochs=1)
    trainer.fit(cached, dm)
    assert bool(cached._cached.all()), "one epoch must fill the cache for every training sample"
    fresh = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=100.0,
                             cache_teacher=False, **_kw(dm))
    fresh.load_state_dict(cached.state_dict())
    x, y, idx = next(iter(dm.train_dataloader()))
    cached.train(), fresh.train()
    torch.manual_seed(1)
    loss_cached = cached.loss(cached(x), y, x, idx)
    torch.manual_seed(1)
    loss_fresh = fresh.loss(fresh(x), y, x, idx)
    assert torch.allclose(loss_cached, loss_fresh, rtol=1e-5, atol=1e-7)
    # and the cached labels are the teacher's softmax(z / T)
    with torch.no_grad():
        expected = (fresh.teacher(x) / 100.0).softmax(-1)
    assert torch.allclose(cached._cache[idx], expected, atol=1e-6)


def test_teacher_stays_frozen_and_in_eval_mode(teachers):
    dm = _dm()
    student = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=100.0, **_kw(dm))
    before = {k: v.clone() for k, v in student.teacher.state_dict().items()}
    _trainer(epochs=1).fit(student, dm)
    after = student.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not student.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in student.teacher.parameters())
    assert not any(p is q for p in student.teacher.parameters() for q in student.parameters())
    assert not any("teacher" in k for k in student.state_dict())


def test_high_temperature_student_saturates_softmax(teachers):
    """At T=100 the deployed logits are >> the T=1 model's and CE input gradients vanish."""
    dm = _dm()
    L.seed_everything(0)
    student = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=100.0, **_kw(dm))
    trainer = _trainer(epochs=3)
    trainer.fit(student, dm)
    hi = trainer.callback_metrics
    lo = teachers[1.0][1]
    assert hi["val/acc"] > 0.9
    assert hi["val/logit_scale"] > 10 * lo["val/logit_scale"], (hi["val/logit_scale"], lo["val/logit_scale"])
    assert hi["val/zero_grad_frac"] > 0.5
    assert lo["val/zero_grad_frac"] < 0.1


def test_augmented_data_refuse_the_cache(teachers):
    dm = _dm(augment=True)
    student = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=100.0, **_kw(dm))
    with pytest.raises(ConfigError, match="augmented"):
        _trainer(epochs=1).fit(student, dm)


def test_stale_cache_is_detected(teachers):
    dm = _dm()
    student = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=100.0, **_kw(dm))
    student._cache = torch.zeros(8, 10)
    student._cached = torch.zeros(8, dtype=torch.bool)
    idx = torch.arange(8)
    x = torch.rand(8, 1, 28, 28)
    student.train()
    student.soft_labels(x, idx)
    with pytest.raises(ConfigError, match="no longer match"):
        student.soft_labels(torch.rand(8, 1, 28, 28), idx, verify=True)


def test_plain_state_dict_teacher(teachers, tmp_path):
    teacher = module_from_checkpoint(teachers[100.0][0])
    path = tmp_path / "teacher_net.pt"
    torch.save(teacher.net.state_dict(), path)
    dm = _dm()
    student = DistilledStudent(teacher_checkpoint=str(path), temperature=100.0, **_kw(dm))
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(student.teacher(x), teacher(x))


def test_bad_teachers_are_clear_errors(teachers, tmp_path):
    dm = _dm()
    kw = _kw(dm)
    with pytest.raises(DataNotFoundError, match="teacher checkpoint not found"):
        DistilledStudent(teacher_checkpoint=str(tmp_path / "nope.ckpt"), **kw)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(teachers[100.0][0].read_bytes()[:5000])
    with pytest.raises(DataFormatError, match="truncated or not a PyTorch checkpoint"):
        DistilledStudent(teacher_checkpoint=str(truncated), **kw)
    with pytest.raises(ConfigError, match="10 classes but the student has 5"):
        DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), **{**kw, "num_classes": 5})
    with pytest.raises(ConfigError, match="in_chans=1 but the student's data have in_chans=3"):
        DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]),
                         **{**kw, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3})
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=0.0, **kw)
    wrong_arch = tmp_path / "cifar_net.pt"
    torch.save(Classifier(backbone="papernot_cifar", in_chans=1, image_size=28).net.state_dict(), wrong_arch)
    with pytest.raises(ConfigError, match="does not fit the model architecture"):
        DistilledStudent(teacher_checkpoint=str(wrong_arch), **kw)


def test_missing_teacher_is_one_line_in_cli(in_tmp, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(STUDENT_CFG), *SYNTHETIC, "--trainer.fast_dev_run=true"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "needs a teacher" in err and "teacher_checkpoint" in err


def test_hard_label_mixing_uses_t_squared(teachers):
    dm = _dm()
    s = DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), temperature=10.0,
                         hard_label_weight=0.25, cache_teacher=False, **_kw(dm))
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    logits = s(x)
    soft = s._teacher_soft_labels(x)
    soft_loss = -(soft * torch.log_softmax(logits / 10.0, -1)).sum(-1).mean()
    expected = 0.75 * 100.0 * soft_loss + 0.25 * torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(s.loss(logits, y, x, None), expected)
    with pytest.raises(ConfigError, match="hard_label_weight"):
        DistilledStudent(teacher_checkpoint=str(teachers[100.0][0]), hard_label_weight=2.0, **_kw(dm))
