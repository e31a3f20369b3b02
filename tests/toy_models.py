"""Plain ``nn.Module``s that the audit loads by ``class_path`` (it has never seen them)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A small CNN mapping [0, 1] images to logits."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(8 * 16, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class SoftmaxNet(TinyNet):
    """Returns probabilities instead of logits."""

    def forward(self, x):
        return super().forward(x).softmax(1)


class FlatNet(TinyNet):
    """Returns the wrong shape: one score per image."""

    def forward(self, x):
        return super().forward(x).sum(1)


class EchoNet(nn.Module):
    """Returns the images themselves (not logits at all)."""

    def forward(self, x):
        return torch.as_tensor(x)
