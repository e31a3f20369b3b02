"""Teacher soft-label cache: a DistilledStudent training epoch with and without ``cache_teacher``.

Both students train on the same data with the same teacher checkpoint, in one process, runs
alternating. With the cache, epoch 1 fills it (one teacher forward per sample, as without the
cache) and later epochs skip the teacher entirely; the script times those later epochs, the
steady state of a long distillation run, and prints the ratio.

    python benchmarks/distillation_cache.py                       # Fashion-MNIST (synthetic if absent)
    python benchmarks/distillation_cache.py --teacher runs/.../last.ckpt --samples 20000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from _data import benchmark_datamodule

from lit_defense.modules import Classifier, DistilledStudent


class _EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._t)


def run(dm, teacher: str, cache: bool, epochs: int, temperature: float) -> list[float]:
    L.seed_everything(0, verbose=False)
    student = DistilledStudent(
        teacher_checkpoint=teacher, temperature=temperature, cache_teacher=cache,
        num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size, mean=dm.mean, std=dm.std,
    )
    timer = _EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0,
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(student, train_dataloaders=dm.train_dataloader())
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist", "synthetic"])
    parser.add_argument("--teacher", default=None, help="teacher .ckpt (default: an untrained Papernot CNN; "
                        "the cost does not depend on the weights)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=None,
                        help="train on the first N training samples (full epochs over them; default: all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first fills the cache")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=100.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    dm = benchmark_datamodule(args.dataset, args.batch_size)
    if args.samples:  # full epochs over a fixed subset, so later epochs really hit the cache
        from lit_defense.data import ImageTensorDataset

        dm.train_set = ImageTensorDataset(dm.train_set.images[: args.samples], dm.train_set.labels[: args.samples])
    with tempfile.TemporaryDirectory() as tmp:
        teacher = args.teacher
        if teacher is None:
            teacher = str(Path(tmp) / "teacher.ckpt")
            model = Classifier(num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
                               mean=dm.mean, std=dm.std, temperature=args.temperature)
            torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, teacher)
        cached, fresh, fill = [], [], []
        for r in range(args.repeats):
            t_cache = run(dm, teacher, True, args.epochs, args.temperature)
            t_fresh = run(dm, teacher, False, args.epochs, args.temperature)
            fill.append(t_cache[0])
            cached += t_cache[1:]
            fresh += t_fresh[1:]
            print(f"run {r + 1}: cache epochs {[round(t, 2) for t in t_cache]} s   "
                  f"no-cache epochs {[round(t, 2) for t in t_fresh]} s")
    mc, mf = statistics.median(cached), statistics.median(fresh)
    n = len(dm.train_dataloader())
    print(f"\ndataset={dm.dataset} batches/epoch={n} batch={args.batch_size} T={args.temperature}")
    print(f"student epoch, teacher every step : {mf:7.2f} s (median)")
    print(f"student epoch, cached soft labels : {mc:7.2f} s (median; the cache-filling epoch took "
          f"{statistics.median(fill):.2f} s)")
    print(f"speed-up with the cache            : {mf / mc:.3f}x")


if __name__ == "__main__":
    main()
