"""``ImageFolderDataModule``: your own images on disk, streamed by DataLoader workers.

``root/train/<class>/*.png|jpg|...`` (required), ``root/val/<class>/...`` and ``root/test/<class>/...``
(optional: without ``val`` a seeded share of ``train`` is held out, without ``test`` the validation
images are the test images). Folders are listed with torchvision's ``find_classes`` and
``make_dataset``; each image is decoded by PIL and transformed by timm's ``create_transform``
(resize and centre crop; random resized crop and flips when ``augment``) in the worker that loads
it, so nothing is read whole into memory. Pixels leave as float32 in [0, 1] (``normalize=False``):
normalisation lives inside the model, which takes this DataModule's ``mean`` and ``std``.

It shares ``VisionDataModule``'s interface: batches ``(x, y, index)`` (``index`` is the position
in the split, which the distilled student's soft-label cache keys on), ``num_classes``,
``in_chans``, ``image_size``, ``mean``, ``std`` and ``class_names`` known before any image is read
(LightningCLI links them into the model), ``train_set``/``val_set``/``test_set`` for the callbacks'
and the audit's fixed subsets (which read only the images they pick), and a seeded per-epoch
shuffle that DDP shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from typing_extensions import override

from lit_defense.data import Batch, SplitDataModule
from lit_defense.errors import ConfigError, DataFormatError, DataNotFoundError

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class FolderDataset(Dataset):
    """``(x in [0, 1], y, index)`` for a list of ``(path, label)``, one image decoded per item."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], torch.Tensor],
                 mode: str) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Batch:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                x = self.transform(img.convert(self.mode))
        except (OSError, UnidentifiedImageError) as err:
            raise DataFormatError(f"cannot read image {path}: {err}; remove or replace the file.") from None
        return x, torch.tensor(label), torch.tensor(i)


class ImageFolderDataModule(SplitDataModule):
    """Image folders on disk (``root/{train,val,test}/<class>/*``), any size and channel count.

    Args:
        root: the folder holding ``train/`` (and optionally ``val/`` and ``test/``), one
            sub-folder per class; the class names are the sub-folder names, sorted.
        image_size: side of the square images the model sees (resized, centre-cropped). ``None``:
            the input size of ``timm_model``'s pretrained configuration.
        in_chans: channels the model sees: 1 (grayscale), 3 (RGB) or 4 (RGBA); images are
            converted on load.
        mean, std: per-channel statistics for the model's normalisation layer. ``None``: those of
            ``timm_model``'s pretrained configuration, else 0.5 and 0.25 per channel.
        timm_model: a timm model name (``resnet18``) whose pretrained data configuration supplies
            the defaults above (``timm.data.resolve_data_config``), as fine-tuning it expects.
        val_size: without ``root/val``, the share (``float``) or number (``int``) of training
            images held out for validation, drawn with ``seed``.
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes that decode and transform the images.
        augment: random resized crops and horizontal flips on the training split (timm's training
            transform, without colour jitter).
        seed: seed of the validation hold-out and of the per-epoch shuffle.
    """

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        in_chans: int = 3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        timm_model: str | None = None,
        val_size: int | float = 0.1,
        batch_size: int = 64,
        num_workers: int = 2,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if in_chans not in _MODES:
            raise ConfigError(f"in_chans must be 1, 3 or 4 (grayscale, RGB, RGBA), got {in_chans}.")
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}.")
        if (mean is None) != (std is None) or (mean is not None and (len(mean) != in_chans or len(std) != in_chans)):
            raise ConfigError(f"give both mean and std with {in_chans} value(s) each, or neither.")
        self.root = Path(root)
        self.batch_size, self.num_workers, self.augment, self.seed = batch_size, num_workers, augment, seed
        self.val_size = val_size
        self._in_chans = in_chans
        pretrained = self._timm_config(timm_model, in_chans) if timm_model else {}
        size = image_size or pretrained.get("image_size")
        if not size or size < 8:
            raise ConfigError(
                "give --data.init_args.image_size (>= 8), or --data.init_args.timm_model to take the "
                "pretrained model's input size."
            )
        self._image_size = int(size)
        self._mean = list(mean) if mean is not None else pretrained.get("mean", [0.5] * in_chans)
        self._std = list(std) if std is not None else pretrained.get("std", [0.25] * in_chans)
        # the resolved values, so that the logged hparams agree with the model's (Lightning merges both)
        self.save_hyperparameters(dict(
            root=str(root), image_size=self._image_size, in_chans=in_chans, mean=self._mean, std=self._std,
            timm_model=timm_model, val_size=val_size, batch_size=batch_size, num_workers=num_workers,
            augment=augment, seed=seed))
        self._classes: list[str] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @staticmethod
    def _timm_config(name: str, in_chans: int) -> dict[str, Any]:
        import timm
        from timm.data import resolve_data_config

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r} (--data.init_args.timm_model).")
        pretrained = timm.get_pretrained_cfg(name)  # the configuration only: no network is built
        cfg = resolve_data_config({}, pretrained_cfg=pretrained.to_dict() if pretrained is not None else None)
        mean, std = list(cfg["mean"]), list(cfg["std"])
        if in_chans != len(mean):  # grayscale input to an RGB model: the channels' average
            mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
        return {"image_size": int(cfg["input_size"][-1]), "mean": mean, "std": std}

    # ---------------------------------------------------------------- facts, before any image is read
    def _split_dir(self, split: str) -> Path | None:
        path = self.root / split
        return path if path.is_dir() else None

    @property
    def class_names(self) -> list[str]:
        """The class sub-folders of ``root/train``, sorted."""
        if self._classes is None:
            from torchvision.datasets.folder import find_classes

            train = self._split_dir("train")
            if train is None:
                raise DataNotFoundError(
                    f"image folder {self.root} has no train/ sub-folder; lay it out as "
                    "root/train/<class>/*.png (and optionally root/val/, root/test/)."
                )
            try:
                self._classes = find_classes(str(train))[0]
            except FileNotFoundError as err:
                raise DataNotFoundError(f"{train}: {err}; put each class's images in its own sub-folder.") from None
            if len(self._classes) < 2:
                raise DataFormatError(f"{train} holds {len(self._classes)} class folder(s); a classifier needs >= 2.")
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        """Channels the model sees."""
        return self._in_chans

    @property
    def image_size(self) -> int:
        """Side of the square images the model sees."""
        return self._image_size

    @property
    def mean(self) -> list[float]:
        """Per-channel mean for the model's normalisation layer."""
        return self._mean

    @property
    def std(self) -> list[float]:
        """Per-channel standard deviation for the model's normalisation layer."""
        return self._std

    # --------------------------------------------------------------------------------- splits
    def _samples(self, folder: Path) -> list[tuple[str, int]]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        classes = self.class_names
        present = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DataFormatError(f"{folder} has class folder(s) {unknown} that train/ does not; use the same classes.")
        mapping = {c: i for i, c in enumerate(classes)}
        try:
            return make_dataset(str(folder), {c: mapping[c] for c in present}, extensions=IMG_EXTENSIONS,
                                allow_empty=True)
        except FileNotFoundError as err:
            raise DataNotFoundError(f"{folder}: {err}") from None

    def _transform(self, training: bool) -> Callable[[Any], torch.Tensor]:
        from timm.data import create_transform
        from torchvision.transforms import v2

        resize_crop = create_transform(
            (self.in_chans, self.image_size, self.image_size), is_training=training, scale=(0.5, 1.0),
            color_jitter=0.0, crop_pct=1.0, normalize=False,
        )  # without normalisation timm yields uint8 tensors: scale them to [0, 1] floats
        return v2.Compose([resize_crop, v2.ToDtype(torch.float32, scale=True)])

    def _dataset(self, samples: list[tuple[str, int]], training: bool) -> FolderDataset:
        return FolderDataset(samples, self._transform(training and self.augment), _MODES[self.in_chans])

    @override
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self._samples(self._split_dir("train"))
            if not train:
                raise DataNotFoundError(f"{self.root / 'train'} holds no images (png, jpg, ...).")
            val_dir = self._split_dir("val")
            if val_dir is not None:
                val = self._samples(val_dir)
            else:
                n_val = round(self.val_size * len(train)) if isinstance(self.val_size, float) else self.val_size
                if not 0 < n_val < len(train):
                    raise ConfigError(
                        f"val_size={self.val_size} of {len(train)} training images leaves no training or no "
                        "validation data; change --data.init_args.val_size or add a val/ folder."
                    )
                perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
                val = [train[i] for i in sorted(perm[:n_val])]
                train = [train[i] for i in sorted(perm[n_val:])]
            self.train_set = self._dataset(train, training=True)
            self.val_set = self._dataset(val, training=False)
        if stage in (None, "test", "predict") and self.test_set is None:
            test_dir = self._split_dir("test")
            if test_dir is None:
                self.setup("validate")
                self.test_set = self.val_set
            else:
                self.test_set = self._dataset(self._samples(test_dir), training=False)


__all__ = ["FolderDataset", "ImageFolderDataModule"]
