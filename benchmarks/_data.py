"""Data for the benchmarks: the named dataset, or synthetic data of benchmark size when it is
asked for or the real one is not on this machine (the benchmarks never download)."""

from __future__ import annotations

from lit_defense.data import VisionDataModule
from lit_defense.errors import DataNotFoundError

SYNTHETIC = dict(val_size=1000, synthetic_train_size=20000, synthetic_test_size=2000)


def benchmark_datamodule(name: str = "fashion_mnist", batch_size: int = 128,
                         stages: tuple[str, ...] = ("fit",)) -> VisionDataModule:
    """A set-up ``VisionDataModule`` for ``stages``; falls back to synthetic data, saying why."""
    if name != "synthetic":
        try:
            dm = VisionDataModule(name, batch_size=batch_size, download=False)
            for stage in stages:
                dm.setup(stage)
            return dm
        except DataNotFoundError as err:
            print(f"{err}\nfalling back to synthetic data")
    dm = VisionDataModule("synthetic", batch_size=batch_size, **SYNTHETIC)
    for stage in stages:
        dm.setup(stage)
    return dm
