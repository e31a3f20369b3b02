"""The models an audit attacks: what names them (``ModelSpec``), loading, and the output check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_defense.checkpoints import is_lightning_checkpoint, load_checkpoint_file, load_weights
from lit_defense.diagnostics import looks_like_probabilities
from lit_defense.errors import ConfigError
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense.naming import resolve_class


@dataclass
class ModelSpec:
    """One model to audit.

    ``checkpoint`` (a lit-defense ``.ckpt``), or ``class_path`` + ``init_args`` of any ``nn.Module``
    (plus optional ``weights``: a state dict or a Lightning checkpoint, read with
    ``weights_only=True``). ``name`` defaults to the run's folder name.
    """

    name: str | None = None
    checkpoint: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] | None = None
    weights: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """A spec from one entry of the audit's YAML ``models`` list; unknown keys are refused."""
        known = {"name", "checkpoint", "class_path", "init_args", "weights"}
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
        return module_from_checkpoint(spec.checkpoint, "audited checkpoint")
    cls = resolve_class(spec.class_path, nn.Module, what="model class")
    try:
        model = cls(**(spec.init_args or {}))
    except TypeError as err:
        raise ConfigError(f"{spec.class_path}(**init_args) failed: {err}.") from None
    if spec.weights:
        state = load_checkpoint_file(spec.weights, "model weights")
        if is_lightning_checkpoint(state) or "state_dict" in state:
            state = state["state_dict"]
        load_weights(model, state, spec.weights, "model weights")
    return model.eval()


def check_model_outputs(model: nn.Module, x: torch.Tensor, num_classes: int, name: str,
                        allow_probabilities: bool = False) -> None:
    """One clear error when the model does not map images to (N, num_classes) logits."""
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



__all__ = ["ModelSpec", "check_model_outputs", "load_model"]
