"""Fixtures for the train-stage tests: a tiny prepared data folder and a tiny registered model.

The folder follows the contract in pipeline/data/dataset.py exactly (arrays, split.npz, meta.json,
sample_submission.csv), written directly so these tests do not depend on any data source.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from pipeline.models import MODELS, register_model
from pipeline.train.config import TrainConfig

TINY_MODEL = "tiny_test_net"


class TinyNet(nn.Module):
    """conv(3x3, 8) -> BN -> ReLU -> 2x2 avg pool -> dropout -> linear: 5 parameter tensors."""

    def __init__(self, num_classes: int, in_chans: int, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * 2 * 2, num_classes)

    def forward(self, x):
        x = self.pool(self.bn(self.conv(x)).relu())
        return self.fc(self.drop(x.flatten(1)))


if TINY_MODEL not in MODELS:  # the module may be imported under two names (pytest, subprocess)
    @register_model(TINY_MODEL)
    def tiny_test_net(*, num_classes, in_chans, input_size, dropout: float = 0.0):
        return TinyNet(num_classes, in_chans, dropout)


def make_prepared(
    root: Path,
    *,
    n_train: int = 48,
    n_val: int = 16,
    n_test: int = 8,
    size: int = 8,
    chans: int = 3,
    classes: int = 4,
    competition: str = "tiny",
    seed: int = 0,
    unique_labels: bool = False,
) -> Path:
    """Write a learnable toy competition: class k brightens quadrant k % 4 (plus noise).

    unique_labels: label i for train sample i (classes = n_train + n_val), so the labels a loader
    yields identify exactly which samples it consumed.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    if unique_labels:
        classes = n
        labels = np.arange(n, dtype=np.int64)
    else:
        labels = np.arange(n, dtype=np.int64) % classes
        rng.shuffle(labels)
    all_labels = np.concatenate([labels, rng.integers(0, classes, n_test)])
    images = rng.integers(0, 60, size=(len(all_labels), size, size, chans), dtype=np.uint8)
    half = size // 2
    for i, label in enumerate(all_labels):
        q = int(label) % 4
        r, c = (q // 2) * half, (q % 2) * half
        images[i, r:r + half, c:c + half, :] += 150
    train_images, test_images = images[:n], images[n:]
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "train_images.npy", train_images)
    np.save(root / "train_labels.npy", labels)
    np.save(root / "train_ids.npy", np.array([f"tr{i}" for i in range(n)]))
    np.save(root / "test_images.npy", test_images)
    np.save(root / "test_ids.npy", np.array([f"te{i}" for i in range(n_test)]))
    order = rng.permutation(n)
    np.savez(root / "split.npz", train_idx=np.sort(order[:n_train]), val_idx=np.sort(order[n_train:]))
    (root / "sample_submission.csv").write_text("id,label\n" + "".join(f"te{i},0\n" for i in range(n_test)))
    pixels = train_images.reshape(-1, chans) / 255.0
    meta = {
        "competition": competition,
        "classes": [f"c{k}" for k in range(classes)],
        "image_shape": [size, size, chans],
        "counts": {"train": n, "test": n_test},
        "mean": pixels.mean(0).tolist(),
        "std": pixels.std(0).tolist(),
        "split": {"seed": seed, "val_fraction": n_val / n},
        "submission": {"file": "sample_submission.csv", "id_column": "id", "label_column": "label",
                       "label_form": "index"},
        "source": "tests.helpers_train",
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def tiny_config(data: Path, out_dir: Path, **overrides) -> TrainConfig:
    """A fast, fully deterministic CPU config on the tiny model."""
    base = dict(
        data=str(data), model=TINY_MODEL, out_dir=str(out_dir), run="t", epochs=3, batch_size=16,
        eval_batch_size=16, lr=0.05, weight_decay=5e-4, schedule="onecycle", augment="standard",
        precision="fp32", channels_last=False, workers=0, device="cpu", log_every=2,
    )
    base.update(overrides)
    return TrainConfig(**base)


class WrappedLoader:
    """A train loader that passes set_epoch and len through to `inner` and remembers the epoch;
    subclasses change what __iter__ yields (slow it down, interrupt it, record it)."""

    def __init__(self, inner):
        self.inner, self.epoch = inner, None

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)
