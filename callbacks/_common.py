"""What the callbacks share: when to run, and which validation inputs each process attacks."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import Dataset

from lit_defense.audit.sharding import shard
from lit_defense.data import fixed_subset


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


class ValidationShard:
    """This process's share of a fixed, seeded validation subset, drawn once.

    The subset is ``lit_defense.data.fixed_subset`` of the validation dataset; the share is the
    audit's shard rule (``lit_defense.audit.sharding.shard``).
    """

    def __init__(self, who: str, num_samples: int, seed: int) -> None:
        self.who, self.num_samples, self.seed = who, num_samples, seed
        self._subset: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of this process (normal, non-inference tensors on the CPU)."""
        if self._subset is None:
            self._subset = fixed_subset(validation_dataset(trainer, self.who), self.num_samples, self.seed)
        x, y = self._subset
        return shard(x, trainer.global_rank, trainer.world_size), shard(y, trainer.global_rank, trainer.world_size)
