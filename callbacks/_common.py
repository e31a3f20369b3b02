"""What the callbacks share: when to run, and which validation dataset to draw from."""

from __future__ import annotations

import lightning as L
from torch.utils.data import Dataset


def due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether this validation epoch is due for an evaluation.

    Every ``every_n_epochs``-th validation epoch of ``fit`` and its last one, every
    ``trainer.validate``; never the sanity check.
    """
    if trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last or trainer.state.fn != "fit"


def validation_dataset(trainer: L.Trainer, who: str) -> Dataset:
    """The dataset behind the first validation dataloader (or the DataModule's ``val_set``)."""
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    dataset = getattr(loaders, "dataset", None)
    if dataset is None:
        dataset = getattr(trainer.datamodule, "val_set", None)
    if dataset is None:
        raise ValueError(f"{who} needs a validation dataset (a val_dataloader with .dataset).")
    return dataset
