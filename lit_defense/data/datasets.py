"""What the DataModule serves: the datasets' static facts, the in-memory image dataset, sampling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lit_defense.errors import DataFormatError

DatasetName = Literal["mnist", "fashion_mnist", "cifar10", "synthetic"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: what a model needs to know before any data is read."""

    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_name: str | None = None
    system_dirs: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()


def class_label(k: int, names: Sequence[str]) -> str:
    """The name of class ``k`` where ``names`` has it, else the number."""
    return names[k] if 0 <= k < len(names) else str(k)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        10, 1, 28, (0.1307,), (0.3081,), "MNIST",
        ("/usr/share/datasets/mnist", "/usr/share/datasets/MNIST"),
        tuple(str(i) for i in range(10)),
    ),
    "fashion_mnist": DatasetInfo(
        10, 1, 28, (0.2860,), (0.3530,), "FashionMNIST",
        ("/usr/share/datasets/fashion-mnist",),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": DatasetInfo(
        10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10", (),
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
    ),
}


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images in [0, 1], labels, sample indices


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 ``(N, C, H, W)``; yields ``(x in [0,1], y, index)``.

    Implements ``__getitems__`` so a DataLoader fetches a whole batch with one indexing op instead
    of collating ``batch_size`` single samples.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataFormatError(
                f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape[0] != images.shape[0]:
            raise DataFormatError(
                f"{images.shape[0]} images but {labels.shape[0]} labels: the image and label "
                "files do not belong together."
            )
        self.images = images.contiguous()
        self.labels = labels.long()
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def _batch(self, index: torch.Tensor) -> Batch:
        x = self.images[index].float().div_(255.0)
        if self.augment:
            x = random_crop_flip(x, flip=x.shape[1] == 3)
        return x, self.labels[index], index

    def __getitem__(self, i: int) -> Batch:
        x, y, idx = self._batch(torch.tensor([i]))
        return x[0], y[0], idx[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        return self._batch(torch.as_tensor(indices, dtype=torch.long))


def random_crop_flip(x: torch.Tensor, padding: int = 2, flip: bool = False) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels (zero padded), and horizontal flips."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,))
    dx = torch.randint(0, 2 * padding + 1, (n,))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * padding)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    if flip:
        mask = torch.rand(n) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A fresh random order every epoch, drawn from ``(seed, epoch)`` only.

    Lightning calls ``set_epoch`` before each epoch, so a run resumed from a checkpoint sees the
    same order in its later epochs as an uninterrupted run, whatever the global RNG did (under DDP
    Lightning's distributed sampler wraps it and shuffles per epoch itself).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (called by the training loop, as ``DistributedSampler`` is)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())


def collate_batch(batch: Batch | list[Batch]) -> Batch:
    """Collate for ``ImageTensorDataset.__getitems__``: the batch is already stacked."""
    if isinstance(batch, tuple) and len(batch) == 3 and isinstance(batch[0], torch.Tensor):
        return batch
    return torch.utils.data.default_collate(batch)
