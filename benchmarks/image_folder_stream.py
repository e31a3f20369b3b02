"""Does streaming an image folder keep the training step fed? Lightning's profiler says.

    python benchmarks/image_folder_stream.py --images 1536 --workers 2

Writes a folder of 64x64 RGB PNGs (``root/train/<class>/*.png``, from the synthetic generator) and
fine-tunes a timm ResNet-18 (no pretrained weights needed) on it through
``ImageFolderDataModule`` and ``Trainer.fit`` with ``profiler="simple"``. Per batch, after the
first ``--warmup`` batches (worker start-up), the time the loop waits for the next batch
(``train_dataloader_next``) is compared with the time of the training step (``run_training_batch``).
Prints both and their ratio; the bar is a data wait of at most 10% of the step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import lightning as L
import torch

from lit_defense.data import make_synthetic
from lit_defense.image_folder import ImageFolderDataModule
from lit_defense.modules import Classifier


def write_pngs(root: Path, n: int, size: int, classes: int) -> None:
    from PIL import Image

    images, labels = make_synthetic(n, classes, 3, size, noise=0.2, seed=0, split_seed=0)
    for i in range(n):
        folder = root / "train" / f"class_{int(labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pngs(root, args.images, args.size, classes=10)
        dm = ImageFolderDataModule(str(root), image_size=args.size, timm_model="resnet18", val_size=0.1,
                                   batch_size=args.batch_size, num_workers=args.workers, augment=args.augment)
        model = Classifier(backbone="timm/resnet18", num_classes=dm.num_classes, in_chans=3, image_size=args.size,
                           mean=dm.mean, std=dm.std, log_gradient_stats=False)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=args.batches, limit_val_batches=0, accelerator="cpu",
                            profiler="simple", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, dm)
        durations = trainer.profiler.recorded_durations
        wait = next(v for k, v in durations.items() if k.endswith("train_dataloader_next"))[args.warmup:]
        step = durations["run_training_batch"][args.warmup:]
        ratio = sum(wait) / sum(step)
        print(f"{args.images} {args.size}x{args.size} RGB PNGs, batch {args.batch_size}, {args.workers} workers, "
              f"augment={args.augment}, torch threads={torch.get_num_threads()}, timm resnet18")
        print(f"per batch (median of {len(step)} after {args.warmup} warm-up): data wait "
              f"{statistics.median(wait) * 1e3:.1f} ms, training step {statistics.median(step) * 1e3:.1f} ms")
        print(f"data wait / step time: {ratio:.3f} (total {sum(wait):.2f} s / {sum(step):.2f} s; bar <= 0.10)")


if __name__ == "__main__":
    main()
