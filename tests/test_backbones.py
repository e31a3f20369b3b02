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


# a node without a network: every connection and name lookup fails at once, as on an offline node
_OFFLINE_NODE = """
import socket, sys, time
def refuse(*args, **kwargs):
    raise OSError(101, "Network is unreachable")
socket.create_connection = refuse
socket.getaddrinfo = refuse
from lit_defense.backbones import timm_backbone
from lit_defense.errors import ConfigError
start = time.perf_counter()
try:
    timm_backbone("resnet18", 10, 3, 32, pretrained=True)
except ConfigError as err:
    print(f"{time.perf_counter() - start:.2f}")
    print(err)
    sys.exit(0)
sys.exit("no ConfigError")
"""


def test_pretrained_weights_on_an_offline_node_fail_at_once(tmp_path):
    """Without HF_HUB_OFFLINE the hub's client retries for about a minute (55 s measured here)
    before it looks in the cache: an unreachable hub must be one clear error in well under 5 s."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    res = subprocess.run([sys.executable, "-c", _OFFLINE_NODE], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    seconds, message = res.stdout.strip().splitlines()
    assert float(seconds) < 5.0, seconds
    assert "pretrained weights of timm model 'resnet18'" in message and "cannot be reached" in message, message
    assert "pretrained: false" in message


def test_the_hub_is_offline_only_inside_the_block():
    from huggingface_hub import constants

    from lit_defense.backbones import _hub_offline

    before = constants.HF_HUB_OFFLINE
    with _hub_offline(True):
        assert constants.HF_HUB_OFFLINE
    assert constants.HF_HUB_OFFLINE == before
    with pytest.raises(RuntimeError), _hub_offline(True):
        raise RuntimeError("an error inside the block")
    assert constants.HF_HUB_OFFLINE == before


def test_behind_a_proxy_the_proxy_is_what_must_be_reachable(monkeypatch):
    import socket

    from lit_defense.backbones import _hub_unreachable

    tried = []

    def connect(address, timeout=None):
        tried.append(address)
        raise OSError(111, "Connection refused")

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", connect)
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert "proxy.example cannot be reached" in _hub_unreachable()
    assert tried == [("proxy.example", 3128)]
