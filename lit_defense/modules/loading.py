"""Rebuild a lit-defense LightningModule from its checkpoint, safely.

The checkpoint is read with ``weights_only=True`` (``lit_defense.checkpoints``) and the module is
rebuilt from its hyper-parameters; the class named in it is resolved only among ``lit_defense``
modules and classes already imported by the user's own code, and must be a ``Classifier``: a
checkpoint never makes us import arbitrary code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lit_defense.checkpoints import is_lightning_checkpoint, load_checkpoint_file, load_weights
from lit_defense.errors import DataFormatError
from lit_defense.lightning_private import given_hyperparameters
from lit_defense.modules.classifier import Classifier
from lit_defense.naming import resolve_class, restricted_imports

# Hyper-parameters that configure training only, dropped when a model is rebuilt for inference.
_TRAINING_ONLY = ("optimizer", "lr_scheduler", "_instantiator", "compile")


def resolve_module_class(class_path: str | None) -> type[Classifier]:
    """The LightningModule class named in a checkpoint (``Classifier`` when none is named).

    Resolved without importing foreign code (``lit_defense.naming``).
    """
    if not class_path:
        return Classifier
    with restricted_imports():
        return resolve_class(class_path, Classifier, what="checkpoint class")


@contextlib.contextmanager
def own_hyperparameters() -> Iterator[None]:
    """Build a LightningModule with its *own* hyper-parameters inside another one's ``__init__``.

    LightningCLI instantiates the model inside a context that hands *its* hyper-parameters to
    every ``save_hyperparameters()`` call; a teacher or surrogate built while the student is being
    instantiated would otherwise take the student's (class count, image size...) and be built with
    the wrong architecture.
    """
    given = given_hyperparameters()
    if given is None:  # a Lightning without the mechanism has nothing to undo
        yield
        return
    token = given.set(None)
    try:
        yield
    finally:
        given.reset(token)


def module_from_checkpoint(path: str | Path, what: str = "checkpoint", strict: bool = True,
                           ckpt: dict[str, Any] | None = None) -> Classifier:
    """Rebuild a lit-defense LightningModule from a ``.ckpt`` file, weights loaded, in eval mode.

    Training-only settings (optimizer, scheduler, a student's teacher) are not restored. Pass
    ``ckpt`` when the file was already read with ``load_checkpoint_file`` (``path`` then only
    names it in errors).
    """
    if ckpt is None:
        ckpt = load_checkpoint_file(path, what)
    if not is_lightning_checkpoint(ckpt):
        raise DataFormatError(
            f"{what} {path} is not a lit-defense/Lightning checkpoint (no 'hyper_parameters'); "
            "for a plain state dict give the backbone configuration as well."
        )
    hparams = dict(ckpt["hyper_parameters"])
    cls = resolve_module_class(hparams.pop("_class_path", None) or ckpt.get("lit_defense_class"))
    for key in _TRAINING_ONLY:
        hparams.pop(key, None)
    hparams = cls.inference_hparams(hparams)
    try:
        with own_hyperparameters(), restricted_imports():  # names inside (defense, backbone) follow the rule
            model = cls(**hparams)
    except TypeError as err:
        raise DataFormatError(f"{what} {path}: its hyper-parameters do not fit {cls.__name__}: {err}") from None
    load_weights(model, ckpt["state_dict"], path, what, strict=strict)
    return model.eval()


__all__ = ["module_from_checkpoint", "own_hyperparameters", "resolve_module_class"]
