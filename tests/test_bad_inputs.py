"""The bad-input table of the README, through the CLI: one line on stderr, exit code 2, and the
files already written (a previous run's checkpoint and log) untouched."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch
from conftest import CONFIGS, SYNTHETIC, make_idx_dataset

from lit_defense.cli import main
from lit_defense.modules import Classifier

TEACHER = CONFIGS / "fashion_mnist" / "teacher.yaml"
STUDENT = CONFIGS / "fashion_mnist" / "distilled.yaml"
SMOKE = [*SYNTHETIC, "--trainer.fast_dev_run=true"]


def _lightning_ckpt(path, **kwargs):
    """A lit-defense checkpoint of an untrained Classifier, normalised like the synthetic data."""
    from lit_defense.data import VisionDataModule

    dm = VisionDataModule("synthetic")
    model = Classifier(mean=dm.mean, std=dm.std, **kwargs)
    hp = {**dict(model.hparams), "_class_path": "lit_defense.modules.Classifier"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp, "pytorch-lightning_version": "2.6.6",
                "lit_defense_class": "lit_defense.modules.Classifier"}, path)
    return path


def _case_files(tmp):
    good = _lightning_ckpt(tmp / "teacher.ckpt")
    (tmp / "truncated.ckpt").write_bytes(good.read_bytes()[:4000])
    _lightning_ckpt(tmp / "five_classes.ckpt", num_classes=5)
    _lightning_ckpt(tmp / "size32.ckpt", image_size=32)
    torch.save(Classifier(backbone="papernot_cifar", in_chans=1, image_size=28).net.state_dict(), tmp / "cifar.pt")
    make_idx_dataset(tmp / "idx_bad")
    bad = tmp / "idx_bad" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 12))  # wrong type code
    make_idx_dataset(tmp / "idx_short")
    short = tmp / "idx_short" / "t10k-images-idx3-ubyte.gz"
    short.write_bytes(gzip.compress(gzip.decompress(short.read_bytes())[:-100]))
    text = TEACHER.read_text()
    (tmp / "syntax.yaml").write_text(text.replace("max_epochs: 10", "max_epochs: [10"))
    # mistakes in a shared part a recipe names: a copy of the recipes with that part changed
    for folder, part, old, new in (
        ("attack", "callbacks/masked_bpda.yaml", "lit_defense.attacks.BPDA", "lit_defense.attacks.Nope"),
        ("eps_big", "callbacks/adversarial_evaluation.yaml", "eps: [0.1]", "eps: [1.5]"),
        ("eps_neg", "callbacks/adversarial_evaluation.yaml", "eps: [0.1]", "eps: [-0.1]"),
    ):
        shutil.copytree(CONFIGS, tmp / folder)
        part_text = (tmp / folder / part).read_text()
        assert old in part_text
        (tmp / folder / part).write_text(part_text.replace(old, new))


CASES = {
    "unknown_dataset": (["fit", "--config", str(TEACHER), "--data.init_args.dataset=imagenet"], "imagenet"),
    "unknown_backbone": (["fit", "--config", str(TEACHER), "--model.init_args.backbone=lenet9"],
                         "unknown backbone 'lenet9'"),
    "unknown_attack": (["fit", "--config", "attack/fashion_mnist/masked_bit_depth.yaml"], "Nope"),
    "eps_above_1": (["fit", "--config", "eps_big/fashion_mnist/teacher.yaml"], "eps=1.5 is impossible for linf"),
    "eps_negative": (["fit", "--config", "eps_neg/fashion_mnist/teacher.yaml"], "eps=-0.1 is impossible"),
    "yaml_syntax": (["fit", "--config", "syntax.yaml"], "YAML syntax error at line"),
    "teacher_missing": (["fit", "--config", str(STUDENT), "--model.init_args.teacher_checkpoint=nope.ckpt"],
                        "teacher checkpoint not found"),
    "teacher_truncated": (["fit", "--config", str(STUDENT), "--model.init_args.teacher_checkpoint=truncated.ckpt"],
                          "truncated or not a PyTorch checkpoint"),
    "teacher_architecture": (["fit", "--config", str(STUDENT), "--model.init_args.teacher_checkpoint=cifar.pt"],
                             "does not fit the model architecture"),
    "teacher_class_count": (["fit", "--config", str(STUDENT), "--model.init_args.teacher_checkpoint=five_classes.ckpt"],
                            "5 classes but the student has 10"),
    "image_size_mismatch": (["fit", "--config", str(STUDENT), "--model.init_args.teacher_checkpoint=size32.ckpt"],
                            "image_size=32"),
    "idx_corrupted": (["fit", "--config", str(TEACHER), "--data.init_args.dataset=fashion_mnist",
                       "--data.init_args.data_dir=idx_bad", "--data.init_args.download=false"], "train-images-idx3-ubyte.gz"),
    "idx_truncated": (["test", "--config", str(TEACHER), "--data.init_args.dataset=fashion_mnist",
                       "--data.init_args.data_dir=idx_short", "--data.init_args.download=false"], "truncated"),
    "audit_probabilities": (["audit", '--models=[{"class_path": "toy_models.SoftmaxNet"}]',
                             "--data.class_path=lit_defense.data.VisionDataModule",
                             "--data.init_args.dataset=synthetic"], "returns probabilities"),
    "audit_wrong_shape": (["audit", '--models=[{"class_path": "toy_models.FlatNet"}]',
                           "--data.class_path=lit_defense.data.VisionDataModule",
                           "--data.init_args.dataset=synthetic"], "needs logits of shape"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_keeps_what_was_written(case, in_tmp, capsys):
    _case_files(in_tmp)
    kept = in_tmp / "runs" / "earlier" / "version_0"
    kept.mkdir(parents=True)
    (kept / "last.ckpt").write_bytes(b"an earlier checkpoint")
    (kept / "events.out.tfevents.1").write_bytes(b"an earlier log")
    args, needle = CASES[case]
    extra = [] if args[0] == "audit" else [a for a in SMOKE if not (args[0] == "test" and "fast_dev_run" in a)]
    if "--data.init_args.dataset=fashion_mnist" in args:
        extra = [a for a in extra if "synthetic" not in a]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*args, *extra] if args[0] != "audit" else args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lit-defense: error:"), err
    assert needle in lines[0], lines[0]
    assert (kept / "last.ckpt").read_bytes() == b"an earlier checkpoint"
    assert (kept / "events.out.tfevents.1").read_bytes() == b"an earlier log"
