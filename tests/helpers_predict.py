"""Fixtures for the predict / ensemble / submission / submit tests, built in tmp_path in the real formats.

make_data writes a prepared folder by the contract in pipeline/data/dataset.py (arrays, split.npz,
meta.json, sample_submission.csv, optionally withheld/answers.csv); make_run a run folder with
best.pt/last.pt holding the documented checkpoint keys; write_predictions_of a run's predict
outputs from hand-made logits, for the ensemble maths.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.artifacts import atomic_save_npy, sha256_file, write_manifest
from pipeline.checkpoint import save_checkpoint
from pipeline.models import create_model
from pipeline.run_layout import OUTPUTS, PREDICT_JSON

CLASSES = ["cat", "dog", "frog"]


def sample_ids(n_test: int) -> list[str]:
    """Test ids in a deliberately unsorted order (as strings sort: '10' < '2'), so order bugs show."""
    return [str(i) for i in np.random.default_rng(7).permutation(np.arange(1, n_test + 1))]


def make_data(
    root: Path,
    *,
    label_form: str = "name",
    n_train: int = 30,
    n_val: int = 12,
    n_test: int = 11,
    size: int = 16,
    chans: int = 3,
    classes: Sequence[str] = CLASSES,
    competition: str = "tiny",
    answers: bool = False,
    kaggle_slug: str | None = None,
) -> Path:
    rng = np.random.default_rng(0)
    n = n_train + n_val
    labels = np.arange(n, dtype=np.int64) % len(classes)
    images = rng.integers(0, 256, size=(n, size, size, chans), dtype=np.uint8)
    test_ids = sample_ids(n_test)
    test_images = rng.integers(0, 256, size=(n_test, size, size, chans), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "train_images.npy", images)
    np.save(root / "train_labels.npy", labels)
    np.save(root / "train_ids.npy", np.array([f"tr{i}" for i in range(n)]))
    np.save(root / "test_images.npy", test_images)
    np.save(root / "test_ids.npy", np.array(test_ids))
    perm = rng.permutation(n)
    np.savez(root / "split.npz", train_idx=np.sort(perm[n_val:]), val_idx=np.sort(perm[:n_val]))
    id_col, label_col = ("id", "label") if label_form == "name" else ("ID", "Labels")
    first = classes[0] if label_form == "name" else "0"
    (root / "sample_submission.csv").write_text(
        f"{id_col},{label_col}\n" + "".join(f"{i},{first}\n" for i in test_ids))
    meta: dict[str, Any] = {
        "competition": competition,
        "classes": list(classes),
        "image_shape": [size, size, chans],
        "mean": [0.5] * chans,
        "std": [0.25] * chans,
        "split": {"file": "split.npz", "seed": 0, "val_fraction": n_val / n},
        "submission": {"file": "sample_submission.csv", "id_column": id_col, "label_column": label_col,
                       "label_form": label_form},
        "withheld": None,
        "source": {"kaggle": kaggle_slug} if kaggle_slug else {"format": "test"},
    }
    if answers:
        truth = rng.integers(0, len(classes), n_test)
        names = [str(classes[t]) if label_form == "name" else str(t) for t in truth]
        (root / "withheld").mkdir()
        (root / "withheld" / "answers.csv").write_text(
            f"{id_col},{label_col}\n" + "".join(f"{i},{name}\n" for i, name in zip(test_ids, names)))
        meta["withheld"] = "withheld/answers.csv"
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def make_run(
    runs_dir: Path, run: str, data_root: Path, *, seed: int = 0, ema: bool = False, arch: str = "simplenn"
) -> Path:
    """A run folder whose best.pt/last.pt hold a (randomly initialised, seeded) simplenn."""
    meta = json.loads((data_root / "meta.json").read_text())
    h, w, c = meta["image_shape"]
    kwargs = {"num_classes": len(meta["classes"]), "in_chans": c, "input_size": [c, h, w], "opts": {}}
    torch.manual_seed(seed)
    model = create_model(arch, kwargs["num_classes"], c, (c, h, w))
    torch.manual_seed(seed + 1000)
    ema_model = create_model(arch, kwargs["num_classes"], c, (c, h, w)) if ema else None
    state = {
        "arch": arch,
        "model_kwargs": kwargs,
        "model": model.state_dict(),
        "ema": ema_model.state_dict() if ema_model is not None else None,
        "best_weights": "ema" if ema else "model",
        "optimizer": {}, "scheduler": {}, "scaler": None,
        "epoch": 3, "best_metric": 0.5, "metrics": [],
        "config": {"model": arch, "channels_last": False},
        "data": {"root": str(data_root), "competition": meta["competition"],
                 "meta_sha256": sha256_file(data_root / "meta.json"),
                 "split_sha256": sha256_file(data_root / "split.npz")},
        "rng": [],
    }
    folder = runs_dir / run
    save_checkpoint(folder / "best.pt", state)
    save_checkpoint(folder / "last.pt", {**state, "epoch": 5})
    return folder


def write_predictions_of(
    runs_dir: Path,
    run: str,
    data_root: Path,
    val_logits: np.ndarray,
    test_logits: np.ndarray,
    *,
    val_ids: Sequence[str] | None = None,
    val_labels: Sequence[int] | None = None,
    test_ids: Sequence[str] | None = None,
) -> Path:
    """A run folder holding predict's outputs for hand-made logits (ids/labels from the data folder)."""
    folder = runs_dir / run
    split = np.load(data_root / "split.npz")
    train_ids = np.load(data_root / "train_ids.npy")
    train_labels = np.load(data_root / "train_labels.npy")
    arrays = {
        "val_logits.npy": np.asarray(val_logits, np.float32),
        "val_ids.npy": np.asarray(val_ids if val_ids is not None else train_ids[split["val_idx"]]),
        "val_labels.npy": np.asarray(val_labels if val_labels is not None else train_labels[split["val_idx"]],
                                     np.int64),
        "test_logits.npy": np.asarray(test_logits, np.float32),
        "test_ids.npy": np.asarray(test_ids if test_ids is not None else np.load(data_root / "test_ids.npy")),
    }
    for name, array in arrays.items():
        atomic_save_npy(folder / name, array)
    meta = json.loads((data_root / "meta.json").read_text())
    write_manifest(folder, "predict", outputs=list(OUTPUTS), name=PREDICT_JSON, extra={
        "run": run, "tta": "none",
        "data": {"root": str(data_root), "competition": meta["competition"],
                 "split_sha256": sha256_file(data_root / "split.npz")},
    })
    return folder


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`python -m pipeline ARGS` in-process through pipeline.cli.main: (exit code, stdout, stderr)."""
    from pipeline.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PYTHON = sys.executable
