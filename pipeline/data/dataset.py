"""Reading a prepared `data/<competition>/` folder: the contract every later stage relies on.

Layout written by `python -m pipeline data`:
    raw/                  inputs exactly as fetched (never modified)
    train_images.npy      uint8 (N, H, W, C)
    train_labels.npy      int64 (N,) class indices into meta["classes"]
    train_ids.npy         str   (N,)   ids as in the competition's files
    test_images.npy       uint8 (M, H, W, C)
    test_ids.npy          str   (M,)   in the sample submission's row order
    split.npz             train_idx, val_idx: int64 indices into the train arrays (stratified, seeded)
    sample_submission.csv the competition's own (or a generated one for sources without it)
    meta.json             classes, image_shape [H, W, C], counts, mean/std (0..1 scale, per channel),
                          split {seed, val_fraction}, submission {file, id_column, label_column,
                          label_form: "name" | "index"}, source, sha256 of raw inputs and outputs
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import load_npy, read_json
from pipeline.errors import PipelineError

ARRAYS = ("train_images", "train_labels", "train_ids", "test_images", "test_ids")


@dataclass
class PreparedData:
    root: Path
    meta: dict[str, Any]
    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: np.ndarray
    test_images: np.ndarray
    test_ids: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def in_chans(self) -> int:
        return int(self.meta["image_shape"][2])

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W), what a model is built for."""
        h, w, c = self.meta["image_shape"]
        return int(c), int(h), int(w)

    def subset(self, name: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(images, labels or None, ids) of "train" (the split's train part), "val", "all" or "test"."""
        if name == "test":
            return self.test_images, None, self.test_ids
        idx = {"train": self.train_idx, "val": self.val_idx}.get(name)
        if name == "all":
            return self.train_images, self.train_labels, self.train_ids
        if idx is None:
            raise PipelineError(f"unknown subset '{name}'; choose from: train, val, all, test")
        return self.train_images[idx], self.train_labels[idx], self.train_ids[idx]

    @property
    def lineage(self) -> dict[str, str]:
        """sha256 of the arrays and split (see lineage()): what runs record and ensembles compare."""
        return lineage(self.meta)

    @property
    def sample_submission(self) -> Path:
        return self.root / self.meta["submission"]["file"]


# What a run's logits depend on: the arrays and the split (val rows are train rows picked by it).
LINEAGE_FILES = (*(f"{name}.npy" for name in ARRAYS), "split.npz")


def lineage(meta: dict[str, Any]) -> dict[str, str]:
    """sha256 of each prepared array and the split, as the data stage recorded them in meta.json
    (recorded, not recomputed: the folder is swapped in whole, so meta.json and arrays agree)."""
    recorded = {Path(entry["path"]).name: entry.get("sha256") for entry in meta.get("outputs", [])}
    return {name: recorded[name] for name in LINEAGE_FILES if recorded.get(name)}


def lineage_changes(then: dict[str, str], now: dict[str, str]) -> list[str]:
    """The files whose sha256 differs between two lineages (only files both record)."""
    return [name for name in LINEAGE_FILES if name in then and name in now and then[name] != now[name]]


def load_prepared(root: str | os.PathLike, competition: str | None = None) -> PreparedData:
    """Load a prepared data folder; a missing piece or another competition is a one-line error."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise PipelineError(f"{meta_path}: not found; run `python -m pipeline data` first")
    meta = read_json(meta_path)
    if competition is not None and meta.get("competition") != competition:
        raise PipelineError(
            f"{meta_path}: data is for competition '{meta.get('competition')}', not '{competition}'"
        )
    arrays = {name: load_npy(root / f"{name}.npy") for name in ARRAYS}
    split_path = root / "split.npz"
    if not split_path.is_file():
        raise PipelineError(f"{split_path}: not found; rerun the data stage")
    with np.load(split_path, allow_pickle=False) as split:
        train_idx, val_idx = split["train_idx"], split["val_idx"]
    n = len(arrays["train_labels"])
    if len(arrays["train_images"]) != n or len(arrays["train_ids"]) != n:
        raise PipelineError(f"{root}: train images, labels and ids differ in length")
    return PreparedData(root=root, meta=meta, train_idx=train_idx, val_idx=val_idx, **arrays)
