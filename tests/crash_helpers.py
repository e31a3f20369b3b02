"""Helpers the crash tests load into subprocesses."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L


class PauseMidEpoch(L.Callback):
    """At ``epoch``/``batch``, writes ``marker`` and sleeps, so the test can SIGKILL the run
    in the middle of an epoch (after the previous epoch's checkpoint was written)."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 3):
        self.marker, self.epoch, self.batch = marker, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            Path(self.marker).write_text(str(os.getpid()))
            for _ in range(1200):  # until SIGTERM (Lightning notes it; the batch then ends) or 120 s
                if trainer.received_sigterm:
                    break
                time.sleep(0.1)


def kill_during_write(path: str) -> None:
    """Save a checkpoint to ``path`` with AtomicCheckpointIO, SIGKILL-ing this process half-way
    through writing the bytes."""
    import builtins

    import torch

    from lit_defense.checkpoints import AtomicCheckpointIO

    real_open = builtins.open

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def write(self, data):
            data = bytes(data)
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWriter(f) if "w" in mode and str(file).endswith(tuple(f"-{os.getpid()}")) else f

    builtins.open = fake_open
    AtomicCheckpointIO().save_checkpoint({"weights": torch.full((1000,), 2.0)}, path)


class PoisonWeights(L.Callback):
    """At ``epoch``/``batch``, fills the first parameter with NaN: a run that diverges mid-training."""

    def __init__(self, epoch: int = 1, batch: int = 2):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            import torch

            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
