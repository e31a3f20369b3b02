"""Safe checkpoint files: reading, writing, and the checkpoint callback.

Every checkpoint and state dict is read with ``torch.load(..., weights_only=True)``: tensors,
numbers, strings and containers only, so nothing in a file can execute code. Rebuilding a
LightningModule from a checkpoint is ``lit_defense.modules.loading.module_from_checkpoint`` (it
needs the modules, which sit above this file).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from lit_defense.errors import ConfigError, DataFormatError, DataNotFoundError


def load_checkpoint_file(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one clear error per failure."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path}. Check the path (runs/<name>/version_*/checkpoints/).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFormatError(
            f"refused to load {what} {path}: it holds Python objects beyond tensors and plain "
            f"containers, which could execute code when unpickled (weights_only=True): {first}. "
            "Re-save it as a plain state dict (torch.save(model.state_dict(), path))."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise DataFormatError(
            f"cannot read {what} {path}: the file is truncated or not a PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{what} {path} holds a {type(obj).__name__}, not a checkpoint or state dict.")
    return obj


def is_lightning_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded file is a Lightning checkpoint (weights and hyper-parameters)."""
    return "state_dict" in ckpt and "hyper_parameters" in ckpt


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], path: str | Path, what: str,
                 strict: bool = True) -> None:
    """Load a state dict into ``model`` with a clear error naming the mismatch."""
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else lines[0] if lines else ""
        raise ConfigError(
            f"{what} {path} does not fit the model architecture "
            f"({type(model).__name__}): {detail[:500]}. Use the backbone, class count and input "
            "channels the checkpoint was trained with."
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically.

    Serialised in memory, written to a temporary file in the target's own folder, flushed to disk
    (fsync) and renamed over the target (``os.replace``).

    A crash (even SIGKILL) while saving leaves the previous checkpoint intact; at worst a stray
    ``.<name>.tmp-<pid>`` file remains. (Lightning's default stages the file in the system temp
    folder and moves it, which is a copy, not a rename, when that folder is on another file
    system.) Remote paths (``s3://``...) use Lightning's default.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        target = str(path)
        if "://" in target and not target.startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options.")
        target = Path(target.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        try:  # make the rename itself durable
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every save point.

    Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint is saved at the same step,
    so after an epoch that does not improve the monitored metric, ``last.ckpt`` is stale and a
    crashed run resumed with ``--ckpt_path last`` would silently go back several epochs. Here the
    last checkpoint always holds the latest epoch.
    """

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        # _should_skip_saving_checkpoint is also True when this step was saved already
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
