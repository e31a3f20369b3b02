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


class DecisionOnly(nn.Module):
    """Returns only its decision, a scaled one-hot of ``model``'s prediction: no gradient and a
    margin that is flat wherever the decision does not change."""

    def __init__(self, model: nn.Module, scale: float = 10.0):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x):
        with torch.no_grad():
            logits = self.model(x)
        return torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float() * self.scale


class ScaledTinyNet(TinyNet):
    """``TinyNet`` with its logits multiplied by ``scale``: the same decisions, a saturated softmax."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, scale: float = 100.0):
        super().__init__(num_classes, in_chans)
        self.scale = scale

    def forward(self, x):
        return super().forward(x) * self.scale


class FailsOnOneRank(TinyNet):
    """``TinyNet`` that raises while it is attacked (gradients on) in the process whose rank is
    ``$TOY_FAIL_RANK``; unset, it never raises (the model "fixed")."""

    def forward(self, x):
        import os

        import torch.distributed as dist

        rank = os.environ.get("TOY_FAIL_RANK")
        if rank is not None and torch.is_grad_enabled() and dist.is_initialized() and dist.get_rank() == int(rank):
            raise RuntimeError("toy model: this input cannot be evaluated")
        return super().forward(x)


def train_tiny_net(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> TinyNet:
    """A ``TinyNet`` trained with Adam (lr 3e-3, batches of 64) on ``(x, y)``: a few seconds on CPU."""
    torch.manual_seed(seed)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    return net


class HandNormalizedTinyNet(TinyNet):
    """``TinyNet`` for inputs in 0-255 normalized by mean 127 and std 64, with [0, 1] pixels mapped
    there by hand: the wrapper a user writes when the audit cannot say it."""

    def forward(self, x):
        return super().forward((x * 255.0 - 127.0) / 64.0)
