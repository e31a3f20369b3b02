"""Your own images on disk: ``ImageFolderDataModule`` and the CLI path from folders to an audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS

from lit_defense.cli import main
from lit_defense.data import fixed_subset, make_synthetic
from lit_defense.errors import LitDefenseError
from lit_defense.image_folder import ImageFolderDataModule

CLASSES = ["cat", "dog", "fox"]


def write_folder(root: Path, splits: dict[str, int], size: int = 48, seed: int = 0) -> Path:
    """3-channel PNGs from the synthetic generator, ``root/<split>/<class>/<i>.png``."""
    from PIL import Image

    for k, (split, n) in enumerate(splits.items()):
        images, labels = make_synthetic(n, len(CLASSES), 3, size, noise=0.15, seed=seed, split_seed=k)
        for i in range(n):
            folder = root / split / CLASSES[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"), {"train": 60, "test": 24})


def test_facts_are_known_before_any_image_is_read(folder, monkeypatch):
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("an image was read"))
    dm = ImageFolderDataModule(str(folder), image_size=32, in_chans=1, num_workers=0)
    assert dm.class_names == CLASSES and dm.num_classes == 3
    assert (dm.in_chans, dm.image_size, dm.mean, dm.std) == (1, 32, [0.5], [0.25])


def test_splits_channels_and_fixed_subsets(folder, monkeypatch):
    dm = ImageFolderDataModule(str(folder), image_size=32, in_chans=1, val_size=0.25, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45, 15, 24)
    again = ImageFolderDataModule(str(folder), image_size=32, in_chans=1, val_size=0.25, num_workers=0)
    again.setup("fit")
    assert again.val_set.samples == dm.val_set.samples  # the hold-out is seeded, not drawn per run
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32) and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert y.dtype == torch.long and index.max() < len(dm.train_set)
    # the audit's and the callbacks' subsets decode only the images they pick
    import PIL.Image

    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    xs, ys = fixed_subset(dm.test_set, 10, seed=0)
    assert xs.shape == (10, 1, 32, 32) and len(opened) == 10


def test_timm_model_supplies_size_and_statistics(folder):
    dm = ImageFolderDataModule(str(folder), timm_model="resnet18", num_workers=0)
    assert dm.image_size == 224 and dm.mean == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize("layout, needle", [
    ("no-train", "has no train/ sub-folder"),
    ("extra-class", "class folder(s) ['wolf'] that train/ does not"),
    ("no-size", "give --data.init_args.image_size"),
])
def test_bad_folders_are_one_clear_error(tmp_path, layout, needle):
    root = write_folder(tmp_path / "f", {"train": 12, "test": 6}, size=16)
    kwargs = {"image_size": 16, "num_workers": 0}
    if layout == "no-train":
        (root / "train").rename(root / "training")
    elif layout == "extra-class":
        (root / "test" / "wolf").mkdir()
    else:
        kwargs.pop("image_size")
    with pytest.raises(LitDefenseError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        dm = ImageFolderDataModule(str(root), **kwargs)
        dm.setup("fit")
        dm.setup("test")


def test_from_folders_to_a_distilled_and_audited_model_through_the_cli_only(folder, in_tmp):
    """fit a timm teacher at T=100, fit the student from it, audit both: every command exits 0.

    ``timm/test_resnet`` is timm's tiny test network (pretrained weights off: no download here);
    the recipes' pretrained ResNet-18 takes the same path on a connected machine.
    """
    common = [f"--data.init_args.root={folder}", "--data.init_args.image_size=16", "--data.init_args.num_workers=0",
              "--data.init_args.batch_size=16", "--model.init_args.backbone=timm/test_resnet",
              "--model.init_args.backbone_kwargs={pretrained: false}", "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    recipes = CONFIGS / "image_folder"
    assert main(["fit", "--config", str(recipes / "distillation_teacher.yaml"), *common]) == 0
    teacher = in_tmp / "runs" / "image_folder" / "distillation_teacher_T100" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["fit", "--config", str(recipes / "distilled.yaml"), *common,
                 f"--model.init_args.teacher_checkpoint={teacher}"]) == 0
    student = teacher.parents[3] / "distilled_T100" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["audit", "--config", str(CONFIGS / "audit" / "image_folder.yaml"),
                 "--checkpoints", str(teacher), str(student), f"--data.init_args.root={folder}",
                 "--data.init_args.image_size=16", "--data.init_args.num_workers=0", "--num_samples=12", "--eps=[0.0314]",
                 "--suite.steps=5", "--suite.square_queries=20", "--suite.random_samples=5", "--suite.apgd_steps=5",
                 "--suite.apgd_targets=2", "--suite.min_norm_steps=5", "--suite.rays_queries=20",
                 "--output_dir=audit", "--tensorboard=false"]) == 0
    report = json.loads((in_tmp / "audit" / "report.json").read_text())
    assert report["class_names"] == CLASSES
    assert [m["name"] for m in report["models"]] == ["distillation_teacher_T100", "distilled_T100"]
    assert "Classes: cat, dog, fox." in (in_tmp / "audit" / "report.md").read_text()
