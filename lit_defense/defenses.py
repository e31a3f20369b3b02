"""Input defenses: preprocessing layers placed in front of a backbone (``MaskedClassifier``).

Most of them are the gradient-masking defenses Athalye et al. (2018) broke. Each declares:
- ``differentiable``: ``False`` when autograd's gradient through it is zero, absent or useless
  (shattered gradients). BPDA then replaces its backward pass with ``bpda_surrogate`` (a smooth
  approximation where one is known), or with the identity.
- ``randomized``: ``True`` when two forward passes on the same input differ (stochastic
  gradients); EOT averages over them.
- ``out_chans(in_chans)``: the channels the backbone sees.

Inputs and outputs are [0, 1] pixels, ``(N, C, H, W)``.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lit_defense.errors import ConfigError
from lit_defense.init_args import RecordsInitArgs
from lit_defense.naming import class_path, resolve_class


class InputDefense(RecordsInitArgs, nn.Module):
    """Base class: a [0, 1] -> [0, 1] image transformation with declared gradient properties.

    Its constructor arguments are recorded (``init_args``): they rebuild it from a checkpoint.
    """

    differentiable: bool = True
    randomized: bool = False

    def out_chans(self, in_chans: int) -> int:
        """Channels of the defense's output for ``in_chans`` input channels."""
        return in_chans


class BitDepthReduction(InputDefense):
    """Feature squeezing (Xu et al. 2018): quantise each pixel to ``bits`` bits.

    ``round`` has zero gradient almost everywhere: the naive gradient is exactly zero.
    """

    differentiable = False

    def __init__(self, bits: int = 1) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ConfigError(f"bits must lie in [1, 8], got {bits}.")
        self.bits = bits
        self.levels = 2**bits - 1

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels

    @override
    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class JPEGCompression(InputDefense):
    """JPEG compression at ``quality`` (Guo et al. 2018; Das et al. 2017), via PIL.

    Computed outside autograd: the naive gradient is absent (attacks see zero).
    """

    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ConfigError(f"JPEG quality must lie in [1, 100], got {quality}.")
        self.quality = quality

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        with torch.no_grad():
            arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
            out = []
            for img in arr:
                mode = "L" if img.shape[2] == 1 else "RGB"
                pil = Image.fromarray(img[:, :, 0] if mode == "L" else img, mode=mode)
                buf = io.BytesIO()
                pil.save(buf, format="JPEG", quality=self.quality)
                dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode))
                out.append(dec if dec.ndim == 3 else dec[:, :, None])
            y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
        return y

    @override
    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class ThermometerEncoding(InputDefense):
    """Thermometer encoding (Buckman et al. 2018).

    Each pixel becomes ``levels`` binary channels, ``tau_k(x) = 1[x >= k / levels]``; the
    backbone sees ``in_chans * levels`` channels.

    The step function has zero gradient; ``bpda_surrogate`` is its differentiable relaxation
    ``clip(levels * x - k, 0, 1)`` (Athalye et al.'s attack on it).
    """

    differentiable = False

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        if levels < 2:
            raise ConfigError(f"levels must be >= 2, got {levels}.")
        self.levels = levels
        self.register_buffer("thresholds", torch.arange(levels, dtype=torch.float32) / levels, persistent=False)

    @override
    def out_chans(self, in_chans: int) -> int:
        return in_chans * self.levels

    def _expand(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        n, c, h, w = x.shape
        return x.unsqueeze(2), self.thresholds.view(1, 1, -1, 1, 1).to(x.dtype), (n, c * self.levels, h, w)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xe, t, shape = self._expand(x)
        return (xe >= t).to(x.dtype).reshape(shape)

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable stand-in for BPDA: the thermometer code relaxed to a linear ramp."""
        xe, t, shape = self._expand(x)
        return (self.levels * (xe - t)).clamp(0, 1).reshape(shape)

    @override
    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class RandomResizePad(InputDefense):
    """Randomisation (Xie et al. 2018): random resizing and padding.

    Resize to a random size in ``[min_scale * S, S]``, then pad at a random position back to
    ``S x S`` with zeros. A fresh, independent draw for every image on every forward pass.

    Each image gets its own size and position, so the accuracy of a batch is an average over many
    draws rather than one shared draw (with a draw per batch, one small size lowers every image at
    once: 74% vs 83% clean accuracy of the same model on two passes over 300 images). The resize is
    the bilinear resampling ``F.interpolate(..., align_corners=False)`` computes, written as one
    ``grid_sample`` with a per-image affine grid, so a batch costs one call.
    """

    randomized = True

    def __init__(self, min_scale: float = 0.8) -> None:
        super().__init__()
        if not 0 < min_scale <= 1:
            raise ConfigError(f"min_scale must lie in (0, 1], got {min_scale}.")
        self.min_scale = min_scale

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        lo_h, lo_w = max(1, round(self.min_scale * h)), max(1, round(self.min_scale * w))
        dev = x.device
        size_h = torch.randint(lo_h, h + 1, (n,), device=dev)
        # one scale for both axes (square images keep their aspect ratio)
        size_w = (size_h * w + h // 2) // h if h != w else size_h
        size_w = size_w.clamp(lo_w, w)
        top = (torch.rand(n, device=dev) * (h - size_h + 1)).floor().long()
        left = (torch.rand(n, device=dev) * (w - size_w + 1)).floor().long()
        return self.place(x, size_h, size_w, top, left)

    @staticmethod
    def place(x: torch.Tensor, size_h: torch.Tensor, size_w: torch.Tensor, top: torch.Tensor,
              left: torch.Tensor) -> torch.Tensor:
        """Resize and pad each image on a zero canvas of the input's size.

        Image i is resized to ``size_h[i] x size_w[i]`` and put at ``(top[i], left[i])``.
        """
        n, _, h, w = x.shape
        sh, sw = size_h.to(x.dtype), size_w.to(x.dtype)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        # output pixel i lies at resized pixel j = i - left; its source coordinate, normalised
        # as grid_sample wants (align_corners=False), is (w / size) * u + (w - 2 left - size) / size
        theta[:, 0, 0] = w / sw
        theta[:, 0, 2] = (w - 2 * left.to(x.dtype) - sw) / sw
        theta[:, 1, 1] = h / sh
        theta[:, 1, 2] = (h - 2 * top.to(x.dtype) - sh) / sh
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        inside_r = (rows[None] >= top[:, None]) & (rows[None] < (top + size_h)[:, None])
        inside_c = (cols[None] >= left[:, None]) & (cols[None] < (left + size_w)[:, None])
        inside = (inside_r[:, :, None] & inside_c[:, None, :]).unsqueeze(1)
        return out * inside.to(x.dtype)

    @override
    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}"


class GaussianNoise(InputDefense):
    """Additive Gaussian noise of standard deviation ``sigma`` on every forward pass, clipped.

    Small noise mostly masks (stochastic gradients that EOT averages away); large noise also buys
    some real robustness, as randomized smoothing does.
    """

    randomized = True

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {sigma}.")
        self.sigma = sigma

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)

    @override
    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class MedianSmoothing(InputDefense):
    """Spatial median filter over ``kernel_size x kernel_size`` windows (Xu et al. 2018).

    Computed outside autograd, as deployed (a SciPy/OpenCV filter in front of the network): the
    naive gradient is absent. ``bpda_surrogate`` is the same median written in differentiable
    torch ops, whose gradient (to the median pixel of each window) is exact almost everywhere: BPDA
    through it recovers the true gradient.
    """

    differentiable = False

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and >= 1, got {kernel_size}.")
        self.kernel_size = kernel_size

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable stand-in for BPDA: the same median, taken with torch ops."""
        k, p = self.kernel_size, self.kernel_size // 2
        n, c, h, w = x.shape
        patches = F.unfold(F.pad(x, (p, p, p, p), mode="reflect"), k)  # (n, c*k*k, h*w)
        return patches.view(n, c, k * k, h * w).median(dim=2).values.view(n, c, h, w)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.bpda_surrogate(x.detach())

    @override
    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


DEFENSES = {
    "bit_depth": BitDepthReduction,
    "jpeg": JPEGCompression,
    "thermometer": ThermometerEncoding,
    "random_resize_pad": RandomResizePad,
    "gaussian_noise": GaussianNoise,
    "median": MedianSmoothing,
}


def defense_spec(defense: InputDefense) -> dict:
    """``{"class_path", "init_args"}`` of a defense: plain data, safe in a checkpoint."""
    return {"class_path": class_path(defense), "init_args": defense.init_args}


def build_defense(spec: InputDefense | dict | str) -> InputDefense:
    """An ``InputDefense`` from an instance, a short name (``jpeg``) or a ``class_path`` dict.

    A class path is honoured exactly (``my_pkg.BitDepthReduction`` is the user's class, never
    ours); while a checkpoint is rebuilt, it imports no module the user has not imported
    (``lit_defense.naming``).
    """
    if isinstance(spec, InputDefense):
        return spec
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ConfigError(f"a defense is an InputDefense, a name or a class_path dict; got {spec!r}.")
    short = {**DEFENSES, **{cls.__name__: cls for cls in DEFENSES.values()}}
    cls = resolve_class(spec["class_path"], InputDefense, what="defense", short_names=short)
    try:
        return cls(**spec.get("init_args", {}))
    except TypeError as err:
        raise ConfigError(f"defense {spec['class_path']!r} rejected its init_args: {err}") from None
