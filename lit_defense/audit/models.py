"""The models an audit attacks: what names them (``ModelSpec``), loading, and the output check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_defense.checkpoints import is_lightning_checkpoint, load_checkpoint_file, load_weights
from lit_defense.diagnostics import looks_like_probabilities
from lit_defense.errors import ConfigError
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense.naming import resolve_class


@dataclass
class ModelSpec:
    """One model to audit.

    ``checkpoint`` (a lit-defense ``.ckpt``), or ``class_path`` + ``init_args`` of any ``nn.Module``
    (or of a factory returning one, e.g. ``torchvision.models.resnet18``) (plus optional ``weights``: a state dict or a Lightning checkpoint, read with
    ``weights_only=True``). ``name`` defaults to the run's folder name.

    A model that expects other inputs than [0, 1] pixels (most torchvision and timm models take
    inputs normalized by a mean and std) says so, as foolbox's models do:
    ``bounds: [lo, hi]``, the range its pixels come in (e.g. ``[0, 255]``), and
    ``preprocessing: {mean: [...], std: [...]}`` (per channel, in the units of ``bounds``), applied
    after. Both run inside the audited model (``Preprocessed``): the attacks still move [0, 1]
    pixels, so eps stays in pixel units.
    """

    name: str | None = None
    checkpoint: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] | None = None
    weights: str | None = None
    preprocessing: dict[str, Any] | None = None
    bounds: list[float] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """A spec from one entry of the audit's YAML ``models`` list; unknown keys are refused."""
        known = {"name", "checkpoint", "class_path", "init_args", "weights", "preprocessing", "bounds"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model keys {unknown}; a model takes {sorted(known)}.")
        return cls(**data)


    def display_name(self) -> str:
        """The name in the report: ``name``, else the checkpoint's run folder, else the class."""
        if self.name:
            return self.name
        if self.checkpoint:
            parts = [p for p in Path(self.checkpoint).with_suffix("").parts
                     if p != "checkpoints" and not p.startswith("version_")]
            return parts[-2] if len(parts) >= 2 else parts[-1]
        return (self.class_path or "model").rsplit(".", 1)[-1]


class Preprocessed(nn.Module):
    """``model(((lo + x * (hi - lo)) - mean) / std)``: [0, 1] pixels into what ``model`` expects.

    The audit's attacks move ``x`` in [0, 1], so eps is in pixel units whatever the model's own
    input range (``bounds``) and normalization (``mean``, ``std``, per channel or one number).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | float = 0.0, std: Sequence[float] | float = 1.0,
                 bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        from lit_defense.backbones import Normalize

        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise ConfigError(f"bounds must be [low, high] with low < high (the range the model's pixels come in, "
                              f"e.g. [0, 255]), got {list(bounds)}.")
        means, stds = ([float(v) for v in torch.as_tensor(v, dtype=torch.float32).flatten()] for v in (mean, std))
        if len(means) != len(stds) and 1 in (len(means), len(stds)):  # one number for every channel
            means, stds = means * (len(stds) // len(means)), stds * (len(means) // len(stds))
        self.model = model
        self.normalize = Normalize(means, stds)  # the backbones' own layer: its checks, its (x - mean) / std
        self.low, self.high = float(bounds[0]), float(bounds[1])

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.normalize.mean.shape[1]
        if channels not in (1, x.shape[1]):
            raise ConfigError(f"preprocessing has {channels} channels but the images have {x.shape[1]}.")
        return self.model(self.normalize(self.low + x * (self.high - self.low)))

    @override
    def extra_repr(self) -> str:
        return f"bounds=[{self.low:g}, {self.high:g}]"


def _preprocessed(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """``model`` behind its spec's ``bounds`` and ``preprocessing`` (itself when it has neither)."""
    if spec.preprocessing is None and spec.bounds is None:
        return model
    pre = dict(spec.preprocessing or {})
    unknown = sorted(set(pre) - {"mean", "std"})
    if unknown:
        raise ConfigError(f"model {spec.display_name()!r}: unknown preprocessing keys {unknown}; "
                          "give {mean: [...], std: [...]} (per channel, in the units of `bounds`).")
    return Preprocessed(model, pre.get("mean", 0.0), pre.get("std", 1.0), spec.bounds or (0.0, 1.0)).eval()

def load_model(spec: ModelSpec) -> nn.Module:
    """The model a spec names, in eval mode (see ``ModelSpec``)."""
    if bool(spec.checkpoint) == bool(spec.class_path):
        raise ConfigError(
            f"model {spec.display_name()!r}: give exactly one of `checkpoint` (a lit-defense .ckpt) "
            "or `class_path` (+ `init_args`, `weights`) of an nn.Module."
        )
    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise ConfigError(f"checkpoint {spec.checkpoint} does not exist; check the path.")
        return _preprocessed(module_from_checkpoint(spec.checkpoint, "audited checkpoint"), spec)
    # an nn.Module class, or a factory that returns one (torchvision.models.resnet18, timm.create_model)
    cls = resolve_class(spec.class_path, None, what="model class")
    if isinstance(cls, type) and not issubclass(cls, nn.Module):
        raise ConfigError(f"model class {spec.class_path!r} is not a subclass of torch.nn.Module.")
    try:
        model = cls(**(spec.init_args or {}))
    except TypeError as err:
        raise ConfigError(f"{spec.class_path}(**init_args) failed: {err}.") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec.class_path}(**init_args) returned a {type(model).__name__}, not a torch.nn.Module.")
    if spec.weights:
        state = load_checkpoint_file(spec.weights, "model weights")
        if is_lightning_checkpoint(state) or "state_dict" in state:
            state = state["state_dict"]
        load_weights(model, state, spec.weights, "model weights")
    return _preprocessed(model.eval(), spec)


def check_model_outputs(model: nn.Module, x: torch.Tensor, num_classes: int, name: str,
                        allow_probabilities: bool = False, y: torch.Tensor | None = None) -> None:
    """One clear error when the model does not map images to (N, num_classes) logits.

    Or, given the labels ``y``, when it predicts one class for every image where the labels hold
    several: the sign of a model that expects another input range or normalization.
    """
    try:
        with torch.no_grad():
            out = model(x[:64])
    except Exception as err:
        raise ConfigError(
            f"model {name!r} fails on a batch of shape {tuple(x[:64].shape)} in [0, 1]: "
            f"{type(err).__name__}: {err}"
        ) from None
    expected = (min(64, x.shape[0]), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name!r} returns {shape} for {expected[0]} images; the audit needs logits of "
            f"shape (N, {num_classes}). Wrap the model so that its forward returns the logits tensor."
        )
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise ConfigError(f"model {name!r} returns non-finite or non-float outputs; it needs float logits.")
    if not allow_probabilities and looks_like_probabilities(out):
        raise ConfigError(
            f"model {name!r} returns probabilities (rows in [0, 1] summing to 1), not logits: "
            "attacks on probabilities are weak and the audit would overstate robustness. Return the "
            "logits (drop the final softmax), or pass --allow_probabilities true to audit it as it is."
        )
    labels = y[:64] if y is not None else None
    if labels is not None and num_classes > 1 and labels.unique().numel() > 1 and out.argmax(1).unique().numel() == 1:
        _refuse_another_input_range(model, x[:64], labels, out, name, num_classes)


def _refuse_another_input_range(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, name: str,
                                num_classes: int) -> None:
    """A model that predicts one class for every image: refused when it expected another input range.

    It is, when the same images in the usual other ranges (0-255 pixels; standardized per channel,
    as a mean/std normalization does) make it predict several classes and agree with the labels
    clearly better (by 25 points, and twice chance). An undertrained model predicts one class on
    any of them and is audited as it is.
    """
    flat = x.transpose(0, 1).flatten(1)
    mean, std = flat.mean(1).view(1, -1, 1, 1), flat.std(1).clamp_min(1e-6).view(1, -1, 1, 1)
    tries = {"`bounds: [0, 255]`": x * 255,
             "`preprocessing: {mean: [...], std: [...]}` (e.g. ImageNet's)": (x - mean) / std}
    one_class = (out.argmax(1) == y).float().mean().item()
    for fix, inputs in tries.items():
        with torch.no_grad():
            pred = model(inputs).argmax(1)
        acc = (pred == y).float().mean().item()
        if pred.unique().numel() > 1 and acc >= max(one_class + 0.25, 2 / num_classes):
            raise ConfigError(
                f"model {name!r} predicts class {int(out[0].argmax())} for all {x.shape[0]} of the first images "
                f"(right on {one_class:.0%}), whose labels hold {y.unique().numel()} classes; on the same images "
                f"{'as 0-255 pixels' if 'bounds' in fix else 'standardized per channel'} it is right on {acc:.0%}: "
                f"it expects inputs other than [0, 1] pixels. Give its model entry {fix}; the audit then feeds it "
                "that from [0, 1] pixels (eps stays in pixel units)."
            )



__all__ = ["ModelSpec", "Preprocessed", "check_model_outputs", "load_model"]
