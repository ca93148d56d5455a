"""A run's metrics on disk: metrics.csv, metrics.jsonl and curves.png, rewritten atomically each epoch.

The history (one dict per epoch) also lives in every checkpoint, so after --resume the files are
rewritten from the checkpoint's history: rows of epochs after the resumed one disappear and no
row is ever duplicated.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from pipeline.artifacts import atomic_write_bytes, atomic_write_text
from pipeline.run_layout import CURVES, METRICS_CSV, METRICS_JSONL

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "img_per_s")
EMA_COLUMNS = ("ema_val_loss", "ema_val_acc")


def columns(history: Sequence[dict[str, Any]]) -> list[str]:
    cols = list(COLUMNS)
    if any("ema_val_acc" in row for row in history):
        cols += EMA_COLUMNS
    return cols


def write_metrics(run_dir: str | Path, history: Sequence[dict[str, Any]], plot: bool = True) -> None:
    run_dir = Path(run_dir)
    cols = columns(history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())
    atomic_write_text(run_dir / METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in history))
    if plot and history:
        atomic_write_bytes(run_dir / CURVES, plot_curves(history))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """curves.png's PNG bytes (drawn by pipeline/plots.py, imported here only when a run draws:
    matplotlib would slow every import of the engine)."""
    from pipeline import plots

    return plots.training_curves(history, quick=True)
