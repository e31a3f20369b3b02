"""Training throughput: lit-defense's Classifier through ``Trainer.fit`` vs a plain PyTorch loop.

Same network (Papernot et al.'s MNIST CNN), same DataLoader (VisionDataModule's training split),
same batch size, same optimizer (Adam) and loss (cross-entropy at temperature T), same threads.
Runs alternate (Lightning, plain, Lightning, plain, ...) so both see the same machine load; the
steady-state samples/s of each run is measured after ``--warmup`` steps, and the medians are
compared. Lightning's run includes everything the shipped recipe does per step: torchmetrics
accuracy, ``self.log`` of train/loss and train/acc, and a TensorBoard logger.

    python benchmarks/train_throughput.py                     # Fashion-MNIST (synthetic if absent)
    python benchmarks/train_throughput.py --dataset synthetic --steps 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from _data import benchmark_datamodule

from lit_defense.data import VisionDataModule
from lit_defense.modules import Classifier


class _StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = None
        self.samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None:
            self.samples += batch[0].shape[0]
            self.end = time.perf_counter()


def _model(dm: VisionDataModule, temperature: float) -> Classifier:
    return Classifier(num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
                      mean=dm.mean, std=dm.std, temperature=temperature)


def lightning_run(dm, steps, warmup, temperature, seed) -> float:
    L.seed_everything(seed, verbose=False)
    model = _model(dm, temperature)
    timer = _StepTimer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=steps + warmup, limit_val_batches=0, accelerator="cpu", devices=1,
            logger=L.pytorch.loggers.TensorBoardLogger(tmp, name="bench"), enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
            num_sanity_val_steps=0,
        )
        trainer.fit(model, train_dataloaders=dm.train_dataloader())
    return timer.samples / (timer.end - timer.start)


def plain_run(dm, steps, warmup, temperature, seed) -> float:
    L.seed_everything(seed, verbose=False)
    model = _model(dm, temperature).net
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step, samples, start = 0, 0, None
    while step < steps + warmup:
        for x, y, _ in dm.train_dataloader():
            if step == warmup:
                start = time.perf_counter()
            loss = F.cross_entropy(model(x) / temperature, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if start is not None:
                samples += x.shape[0]
            step += 1
            if step == steps + warmup:
                break
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist", "synthetic"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    dm = benchmark_datamodule(args.dataset, args.batch_size)

    light, plain = [], []
    for r in range(args.repeats):
        light.append(lightning_run(dm, args.steps, args.warmup, args.temperature, seed=r))
        plain.append(plain_run(dm, args.steps, args.warmup, args.temperature, seed=r))
        print(f"run {r + 1}: lightning {light[-1]:8.1f} samples/s   plain {plain[-1]:8.1f} samples/s")
    ml, mp = statistics.median(light), statistics.median(plain)
    print(f"\ndataset={dm.dataset} batch={args.batch_size} steps={args.steps} threads={args.threads}")
    print(f"lit-defense Classifier + Trainer.fit : {ml:8.1f} samples/s (median of {args.repeats})")
    print(f"plain PyTorch loop                   : {mp:8.1f} samples/s (median of {args.repeats})")
    print(f"ratio lightning / plain              : {ml / mp:.3f}x")


if __name__ == "__main__":
    main()
