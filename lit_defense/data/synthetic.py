"""The ``synthetic`` dataset: deterministic class-dependent images of any size, for tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_synthetic(
    num_samples: int,
    num_classes: int = 10,
    in_chans: int = 1,
    image_size: int = 28,
    noise: float = 0.2,
    seed: int = 0,
    split_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic class-dependent images (uint8): a smooth random template per class plus noise.

    The templates depend on ``seed`` only; ``split_seed`` draws the samples, so train and test
    share classes but not samples.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(10_000 + split_seed)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    x = templates[labels] + noise * torch.randn(num_samples, in_chans, image_size, image_size, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels
