"""One LightningDataModule for every model of the project: ``VisionDataModule``.

Pixels leave this module as float32 in [0, 1], shape ``(N, C, H, W)``; normalisation lives inside
the model (``lit_defense.backbones.Normalize``). Batches are ``(x, y, index)`` where ``index`` is
the position of each sample in its split's underlying dataset (the distilled student uses it to
cache the teacher's soft labels).

Datasets:
- ``mnist`` and ``fashion_mnist`` are read directly from IDX files (``.gz`` or not) found in
  ``data_dir`` (or, with no ``data_dir``, in ``./data`` and the Debian package locations such as
  ``/usr/share/datasets/fashion-mnist``); ``download=True`` fetches them through torchvision when
  they are not found.
- ``cifar10`` uses torchvision's CIFAR-10 reader (``cifar-10-batches-py``).
- ``synthetic`` is a deterministic, class-dependent image set of any size, for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lit_defense.data.datasets import (
    DATASETS,
    Batch,
    DatasetInfo,
    DatasetName,
    EpochShuffleSampler,
    ImageTensorDataset,
    class_label,
    collate_batch,
    random_crop_flip,
)
from lit_defense.data.idx import IDX_FILES, _find_file, read_idx
from lit_defense.data.synthetic import make_synthetic
from lit_defense.errors import ConfigError, DataFormatError, DataNotFoundError


class SplitDataModule(L.LightningDataModule):
    """The dataloaders of a DataModule that holds ``train_set``, ``val_set`` and ``test_set``.

    Training batches come in a seeded order, fresh every epoch (``EpochShuffleSampler``; under DDP
    Lightning shards it); the other splits in their own order. Subclasses set ``batch_size``,
    ``num_workers`` and ``seed``, and ``collate_fn`` when their dataset batches itself.
    """

    batch_size: int
    num_workers: int
    seed: int
    collate_fn: Callable[[Any], Batch] | None = None
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            # the loader's own generator seeds its workers: creating an iterator never draws from
            # the global RNG, so a sanity check or a resume does not shift training randomness
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=type(self).collate_fn,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class VisionDataModule(SplitDataModule):
    """Image classification data shared by every model of the project.

    Args:
        dataset: ``mnist``, ``fashion_mnist``, ``cifar10`` or ``synthetic``.
        data_dir: folder holding the dataset files. ``None`` searches ``./data`` and the system
            locations of the Debian dataset packages; downloads go to ``./data``.
        download: fetch the dataset through torchvision when it is not found locally.
        batch_size: samples per batch, for every split.
        num_workers: DataLoader worker processes. The data are held in memory and batches are
            gathered with one indexing operation, so ``0`` is usually fastest on a few CPU cores.
        val_size: validation samples taken from the training set, a count (``int``) or a
            fraction in (0, 1) (``float``). The split is seeded by ``seed``, not by the run.
        augment: random translations (and horizontal flips for 3-channel images) on the
            training split.
        seed: seed of the train/validation split (and of the synthetic data).
        synthetic_num_classes, synthetic_in_chans, synthetic_image_size, synthetic_train_size,
        synthetic_test_size, synthetic_noise: shape of the ``synthetic`` dataset.
    """

    collate_fn = staticmethod(collate_batch)  # ImageTensorDataset batches itself (__getitems__)

    def __init__(
        self,
        dataset: DatasetName = "fashion_mnist",
        data_dir: str | None = None,
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        augment: bool = False,
        seed: int = 0,
        synthetic_num_classes: int = 10,
        synthetic_in_chans: int = 1,
        synthetic_image_size: int = 28,
        synthetic_train_size: int = 2048,
        synthetic_test_size: int = 512,
        synthetic_noise: float = 0.2,
    ) -> None:
        super().__init__()
        if dataset not in (*DATASETS, "synthetic"):
            raise ConfigError(
                f"unknown dataset {dataset!r}; choose one of: {', '.join([*DATASETS, 'synthetic'])}."
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}.")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise ConfigError(
                f"val_size={val_size}: a float is a fraction of the training set and must lie in "
                "[0, 1); give an int for a number of samples."
            )
        if isinstance(val_size, int) and val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {val_size}.")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.augment = augment
        self.seed = seed
        if dataset == "synthetic":
            for name, value in (
                ("synthetic_num_classes", synthetic_num_classes),
                ("synthetic_in_chans", synthetic_in_chans),
                ("synthetic_image_size", synthetic_image_size),
                ("synthetic_train_size", synthetic_train_size),
                ("synthetic_test_size", synthetic_test_size),
            ):
                if value < 1:
                    raise ConfigError(f"{name} must be >= 1, got {value}.")
            self.info = DatasetInfo(
                synthetic_num_classes, synthetic_in_chans, synthetic_image_size,
                (0.5,) * synthetic_in_chans, (0.25,) * synthetic_in_chans,
                class_names=tuple(str(i) for i in range(synthetic_num_classes)),
            )
        else:
            self.info = DATASETS[dataset]
        self._synthetic = dict(
            train_size=synthetic_train_size, test_size=synthetic_test_size, noise=synthetic_noise
        )
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # Facts a model needs, available before any data is read (for LightningCLI link_arguments).
    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return self.info.num_classes

    @property
    def in_chans(self) -> int:
        """Number of image channels."""
        return self.info.in_chans

    @property
    def image_size(self) -> int:
        """Image height and width in pixels."""
        return self.info.image_size

    @property
    def mean(self) -> list[float]:
        """Per-channel mean of the training images (normalisation inside the model)."""
        return list(self.info.mean)

    @property
    def std(self) -> list[float]:
        """Per-channel standard deviation of the training images."""
        return list(self.info.std)

    @property
    def class_names(self) -> list[str]:
        """The classes' names, in label order."""
        return list(self.info.class_names)

    # ---------------------------------------------------------------------------------------
    def _download_root(self) -> Path:
        return Path(self.data_dir) if self.data_dir else Path("data")

    def _search_dirs(self) -> list[Path]:
        """The folders searched for the dataset's files, in order.

        The root, its dataset and torchvision sub-folders, then (with no ``data_dir`` given) the
        system locations of the Debian dataset packages.
        """
        root, tv = self._download_root(), self.info.torchvision_name
        dirs = [root, root / self.dataset] + ([root / tv / "raw", root / tv] if tv else [])
        if not self.data_dir:
            dirs += [Path(d) for d in self.info.system_dirs]
        return dirs

    def _idx_paths(self) -> dict[str, tuple[Path, Path]] | None:
        dirs = self._search_dirs()
        found = {}
        for split, (img, lbl) in IDX_FILES.items():
            pi, pl = _find_file(img, dirs), _find_file(lbl, dirs)
            if pi is None or pl is None:
                return None
            found[split] = (pi, pl)
        return found

    def _cifar_present(self) -> bool:
        return (self._download_root() / "cifar-10-batches-py").is_dir()

    def _not_found(self, reason: str = "") -> DataNotFoundError:
        where = ", ".join(str(d) for d in self._search_dirs())
        how = (
            "On Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (files go to "
            "/usr/share/datasets/fashion-mnist, found automatically); "
            if self.dataset == "fashion_mnist" else ""
        )
        return DataNotFoundError(
            f"dataset {self.dataset!r} not found (looked in: {where}){reason}. {how}or run once "
            f"with --data.init_args.download=true on a machine with internet access; or point "
            f"--data.init_args.data_dir at a folder that holds the files."
        )

    def prepare_data(self) -> None:
        """Download the dataset through torchvision when it is missing and ``download`` is set."""
        if self.dataset == "synthetic":
            return
        present = self._cifar_present() if self.dataset == "cifar10" else self._idx_paths() is not None
        if present:
            return
        if not self.download:
            raise self._not_found(" and download=False")
        import torchvision

        cls = getattr(torchvision.datasets, self.info.torchvision_name)
        root = self._download_root()
        try:
            for train in (True, False):
                cls(root=str(root), train=train, download=True)
        except Exception as err:  # network errors come in many types (URLError, RuntimeError, ...)
            raise self._not_found(f"; downloading into {root} failed ({type(err).__name__}: {err})") from None

    def _load_split(self, split: str) -> ImageTensorDataset:
        if self.dataset == "synthetic":
            size = self._synthetic["train_size" if split == "train" else "test_size"]
            images, labels = make_synthetic(
                size, self.num_classes, self.in_chans, self.image_size,
                noise=self._synthetic["noise"], seed=self.seed, split_seed=0 if split == "train" else 1,
            )
            return ImageTensorDataset(images, labels)
        if self.dataset == "cifar10":
            if not self._cifar_present():
                raise self._not_found()
            import torchvision

            ds = torchvision.datasets.CIFAR10(str(self._download_root()), train=split == "train", download=False)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
            return ImageTensorDataset(images, torch.as_tensor(ds.targets))
        paths = self._idx_paths()
        if paths is None:
            raise self._not_found()
        img_path, lbl_path = paths[split]
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.dtype != torch.uint8 or labels.dtype != torch.uint8:
            raise DataFormatError(
                f"{img_path} / {lbl_path}: images and labels must be unsigned bytes (IDX type 0x08), got "
                f"{images.dtype} and {labels.dtype}; the files are corrupted or not MNIST-format data."
            )
        if images.ndim != 3 or labels.ndim != 1:
            raise DataFormatError(
                f"{img_path} / {lbl_path}: expected images (N, H, W) and labels (N,), got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}."
            )
        if int(labels.max()) >= self.num_classes or int(labels.min()) < 0:
            raise DataFormatError(f"{lbl_path} holds labels outside [0, {self.num_classes}).")
        return ImageTensorDataset(images, labels)

    def _val_count(self, n: int) -> int:
        count = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if count >= n:
            raise ConfigError(
                f"val_size={self.val_size} leaves no training data ({n} training samples); "
                "lower --data.init_args.val_size."
            )
        return count

    @override
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            full = self._load_split("train")
            n_val = self._val_count(len(full))
            perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed))
            val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
            self.train_set = ImageTensorDataset(full.images[train_idx], full.labels[train_idx], self.augment)
            self.val_set = ImageTensorDataset(full.images[val_idx], full.labels[val_idx])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._load_split("test")


def fixed_subset_indices(size: int, num_samples: int, seed: int) -> list[int]:
    """The dataset positions of ``fixed_subset``: ``num_samples`` of ``range(size)``, seeded, sorted."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=g)[:num_samples].sort().values.tolist()


def fixed_subset(dataset: Dataset, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed, seeded subset that the callbacks and the audit attack.

    ``num_samples`` items of ``dataset`` (all when smaller), in index order, as normal
    (non-inference) float images and long labels; ``fixed_subset_indices`` gives their positions.
    """
    order = fixed_subset_indices(len(dataset), num_samples, seed)
    with torch.inference_mode(False):
        if hasattr(dataset, "__getitems__"):
            batch = dataset.__getitems__(order)
            x, y = batch[0], batch[1]
        else:
            items = [dataset[i] for i in order]
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
        return x.detach().clone().float(), y.detach().clone().long()


__all__ = [
    "DATASETS", "IDX_FILES", "Batch", "DatasetInfo", "DatasetName", "EpochShuffleSampler", "ImageTensorDataset",
    "SplitDataModule", "VisionDataModule", "class_label", "collate_batch", "fixed_subset", "fixed_subset_indices",
    "make_synthetic", "random_crop_flip", "read_idx",
]
