"""Backbones: the networks behind every LightningModule, built by name from a registry.

``create_backbone(name, num_classes=..., in_chans=..., image_size=..., **kwargs)`` builds:
- ``papernot_mnist``: the MNIST network of Papernot et al. 2016 (defensive distillation):
  conv32-conv32-pool-conv64-conv64-pool-fc200-fc200;
- ``papernot_cifar``: their CIFAR-10 network: conv64x2-pool-conv128x2-pool-fc256x2;
- ``timm/<model>`` (e.g. ``timm/resnet18``): any timm model via ``timm.create_model``; with
  ``small_input=True`` (the default for images up to 64 pixels) a ResNet-style stem is adapted to
  small images (3x3 stride-1 first conv, no max-pool), as is usual for CIFAR-10.

- a class path (``my_pkg.nets.TinyNet``): the user's own ``nn.Module`` class or factory.

A user adds a backbone with ``@register_backbone("name")`` on a function or ``nn.Module`` class
taking ``num_classes``, ``in_chans`` and ``image_size``, or names it by class path.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_defense.errors import ConfigError
from lit_defense.naming import resolve_class

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a backbone factory under ``name`` (decorator)."""

    def wrap(fn: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    """The registered backbone names, and the ``timm/<name>`` form."""
    return sorted(_REGISTRY) + ["timm/<any timm model name>"]


def create_backbone(name: str, num_classes: int, in_chans: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``, ``timm/<model>``, or a class path.

    A class path (``my_pkg.nets.TinyNet``: an ``nn.Module`` subclass or a factory returning one)
    is honoured exactly (``lit_defense.naming``); it receives those of ``num_classes``,
    ``in_chans`` and ``image_size`` its signature takes, plus ``kwargs``.
    """
    if name.startswith("timm/"):
        return timm_backbone(name[len("timm/"):], num_classes=num_classes, in_chans=in_chans,
                             image_size=image_size, **kwargs)
    sizes = {"num_classes": num_classes, "in_chans": in_chans, "image_size": image_size}
    if name in _REGISTRY:
        factory = _REGISTRY[name]
    elif "." in name:
        factory = resolve_class(name, None, what="backbone")
        if isinstance(factory, type) and not issubclass(factory, nn.Module):
            raise ConfigError(f"backbone {name!r} is not an nn.Module subclass.")
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            sizes = {k: v for k, v in sizes.items() if k in params}
    else:
        raise ConfigError(
            f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}, or a class path "
            "like 'my_pkg.nets.TinyNet'."
        )
    try:
        net = factory(**sizes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"backbone {name!r} rejected its arguments {sorted(kwargs)}: {err}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"backbone {name!r} returned a {type(net).__name__}, not an nn.Module.")
    return net


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, inside the model, so attacks work on [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ConfigError(f"mean has {len(mean)} channels but std has {len(std)}.")
        if any(s <= 0 for s in std):
            raise ConfigError(f"std must be positive, got {list(std)}.")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @override
    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _conv_out(size: int, n_convs_per_block: int, n_blocks: int) -> int:
    """Spatial size after ``n_blocks`` x (``n_convs_per_block`` valid 3x3 convs + 2x2 max-pool)."""
    for _ in range(n_blocks):
        size = (size - 2 * n_convs_per_block) // 2
    return size


class _PapernotNet(nn.Module):
    """Two blocks of two valid 3x3 convs + max-pool, then two ReLU fully connected layers."""

    def __init__(self, widths: tuple[int, int], fc: int, num_classes: int, in_chans: int,
                 image_size: int, dropout: float) -> None:
        super().__init__()
        out = _conv_out(image_size, 2, 2)
        if out < 1:
            raise ConfigError(
                f"image_size={image_size} is too small for this network (needs at least 20 pixels)."
            )
        c1, c2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * out * out, fc), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True),
            nn.Linear(fc, num_classes),
        )
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _scaled(widths: tuple[int, int], fc: int, width: float) -> tuple[tuple[int, int], int]:
    """Every layer's width times ``width`` (a robust-distillation student: ``width: 0.5``)."""
    if not width > 0:
        raise ConfigError(f"width must be > 0 (1.0: the paper's network, 0.5: half as wide), got {width}.")
    c1, c2 = (max(1, round(c * width)) for c in widths)
    return (c1, c2), max(1, round(fc * width))


@register_backbone("papernot_mnist")
class PapernotMNIST(_PapernotNet):
    """Papernot et al. 2016 MNIST net: conv32-conv32-pool-conv64-conv64-pool-fc200-fc200.

    ``width`` scales every layer (0.5: conv16-conv16-pool-conv32-conv32-pool-fc100-fc100, about a
    quarter of the parameters).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout: float = 0.5,
                 width: float = 1.0) -> None:
        super().__init__(*_scaled((32, 64), 200, width), num_classes, in_chans, image_size, dropout)


@register_backbone("papernot_cifar")
class PapernotCIFAR(_PapernotNet):
    """Papernot et al. 2016 CIFAR-10 net: conv64-conv64-pool-conv128-conv128-pool-fc256-fc256 (``width`` scales it)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 32, dropout: float = 0.5,
                 width: float = 1.0) -> None:
        super().__init__(*_scaled((64, 128), 256, width), num_classes, in_chans, image_size, dropout)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (``HF_HUB_OFFLINE``, or no connection), else None.

    One TCP connection with a short timeout: offline, the hub's client would otherwise retry its
    requests for about a minute before it looks in the local cache.
    """
    import socket
    import urllib.request
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    # behind a proxy (HTTPS_PROXY, ALL_PROXY) the hub is reached through it: test the proxy instead
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or host, via.port or 8080
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached: {err}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """The Hugging Face client in offline mode for the block (the local cache only, no retries)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def timm_backbone(name: str, num_classes: int, in_chans: int, image_size: int,
                  pretrained: bool = False, small_input: bool | None = None, **kwargs: Any) -> nn.Module:
    """A timm model with the given classes and input channels.

    ``small_input`` (default: ``image_size <= 64``) replaces a ResNet-style stem (``conv1`` +
    ``maxpool``) with a 3x3 stride-1 convolution and no pooling, the usual CIFAR adaptation.
    ``pretrained=True`` takes the weights from the local Hugging Face cache, or downloads them when
    the hub can be reached; offline (``HF_HUB_OFFLINE``, or no connection within 3 s) an uncached
    model is one clear error at once.
    """
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"unknown timm model {name!r}; list them with `python -c \"import timm; "
            f"print(timm.list_models('{name.split('_')[0]}*'))\"`."
        )
    unreachable = _hub_unreachable() if pretrained else None
    try:
        with _hub_offline(unreachable is not None):
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                      **kwargs)
    except TypeError as err:
        unknown = [k for k in kwargs if f"'{k}'" in str(err)] or sorted(kwargs)
        raise ConfigError(
            f"backbone 'timm/{name}' does not take the keyword(s) {unknown} ({str(err).splitlines()[0]}); "
            "remove them from --model.init_args.backbone_kwargs."
        ) from None
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        why = unreachable or f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        raise ConfigError(
            f"pretrained weights of timm model {name!r} are not in the local Hugging Face cache and could "
            f"not be downloaded ({why}); on a connected "
            "machine they download on first use (into ~/.cache/huggingface), or copy that cache folder "
            "here, or train from scratch with pretrained: false."
        ) from None
    if small_input is None:
        small_input = image_size <= 64
    if small_input and isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool"):
        old = model.conv1
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model
