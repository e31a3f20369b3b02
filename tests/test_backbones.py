from __future__ import annotations

import pytest
import torch

from lit_defense.backbones import (
    Normalize,
    PapernotCIFAR,
    PapernotMNIST,
    create_backbone,
    list_backbones,
)
from lit_defense.errors import ConfigError


def test_papernot_mnist_architecture():
    net = PapernotMNIST()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert [f.out_features for f in fcs] == [200, 200, 10]
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_papernot_cifar_architecture():
    net = PapernotCIFAR()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128]
    assert [f.out_features for f in fcs] == [256, 256, 10]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("in_chans, size", [(1, 28), (3, 32)])
def test_timm_backbone_shapes(in_chans, size):
    net = create_backbone("timm/resnet18", num_classes=7, in_chans=in_chans, image_size=size)
    assert net.conv1.in_channels == in_chans
    assert net.conv1.stride == (1, 1)  # stem adapted to small images
    net.eval()
    assert net(torch.rand(2, in_chans, size, size)).shape == (2, 7)


def test_timm_backbone_keeps_stem_for_large_images():
    net = create_backbone("timm/resnet18", num_classes=3, in_chans=3, image_size=224)
    assert net.conv1.stride == (2, 2)


def test_unknown_backbones_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'lenet9'.*papernot_mnist"):
        create_backbone("lenet9", num_classes=10, in_chans=1, image_size=28)
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_nope'"):
        create_backbone("timm/resnet_nope", num_classes=10, in_chans=1, image_size=28)
    with pytest.raises(ConfigError, match="too small"):
        create_backbone("papernot_mnist", num_classes=10, in_chans=1, image_size=12)
    assert "papernot_cifar" in list_backbones()


def test_normalize_is_per_channel():
    norm = Normalize([0.5, 0.0, 1.0], [0.5, 2.0, 1.0])
    x = torch.ones(1, 3, 2, 2)
    out = norm(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ConfigError):
        Normalize([0.5], [0.0])
