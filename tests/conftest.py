from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# CLI overrides that turn any shipped MNIST-like recipe into a seconds-long synthetic run.
SYNTHETIC = [
    "--data.init_args.dataset=synthetic",
    "--data.init_args.val_size=256",
    "--data.init_args.synthetic_train_size=1024",
    "--data.init_args.synthetic_test_size=256",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so runs/ and data/ are created there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8) in the IDX format used by MNIST and Fashion-MNIST."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_idx_dataset(folder: Path, n_train: int = 60, n_test: int = 20, compress: bool = True, seed: int = 0):
    """A tiny hand-made MNIST-format dataset: images whose mean brightness encodes the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (labels[:, None, None] * 25 + rng.integers(0, 5, (n, 28, 28))).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress)
        out[split] = (images, labels)
    return out


class ScaledLogits(torch.nn.Module):
    """``model(x) * scale``: the same decisions with saturated softmax (a distillation stand-in)."""

    def __init__(self, model: torch.nn.Module, scale: float):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x):
        return self.model(x) * self.scale


@pytest.fixture(scope="session")
def trained():
    """A Papernot CNN trained on synthetic data (eval mode) and 128 held-out samples."""
    import lightning as L

    from lit_defense.data import VisionDataModule
    from lit_defense.modules import Classifier

    L.seed_everything(0)
    dm = VisionDataModule("synthetic", val_size=256, synthetic_train_size=1024, synthetic_test_size=128,
                          batch_size=64, synthetic_noise=0.3)
    model = Classifier(mean=dm.mean, std=dm.std)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    dm.setup("test")
    x = dm.test_set.images.float() / 255
    y = dm.test_set.labels
    model.eval()
    return model, x, y


def assert_not_significantly_more_robust(audit, reference, eps_key, margin):
    """``audit``'s worst case at ``eps_key`` is not significantly more than ``margin`` above ``reference``'s.

    Both audited the same inputs: a paired comparison of their per-sample robustness (exact
    interval and McNemar's test, ``lit_defense.stats``), so the assertion holds on every numeric
    path unless the gap is really past ``margin``.
    """
    from lit_defense.stats import paired

    pair = paired(audit.per_sample.robust[eps_key], reference.per_sample.robust[eps_key])
    decision = pair.decide(margin)
    assert decision.state != "fail", (eps_key, audit.worst_case[eps_key], reference.worst_case[eps_key],
                                      decision.evidence(), pair.evidence())
