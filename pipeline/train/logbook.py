"""A run's metrics on disk: metrics.csv, metrics.jsonl and curves.png, rewritten atomically each epoch.

The history (one dict per epoch) also lives in every checkpoint, so after --resume the files are
rewritten from the checkpoint's history: rows of epochs after the resumed one disappear and no
row is ever duplicated.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from pipeline.artifacts import atomic_write_bytes, atomic_write_text
from pipeline.run_layout import LOG_FILES

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "img_per_s")
EMA_COLUMNS = ("ema_val_loss", "ema_val_acc")
FILES = LOG_FILES


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
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    if plot and history:
        atomic_write_bytes(run_dir / "curves.png", plot_curves(history))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """Loss and accuracy against epoch, train vs val (and EMA val), as PNG bytes."""
    out = io.BytesIO()
    curves_figure(history).savefig(out, format="png")
    return out.getvalue()


def curves_figure(history: Sequence[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global figure state to leak

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), dpi=80)
    # Fixed margins: tight_layout would draw the figure twice, doubling the cost every epoch.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.95, wspace=0.22)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "acc")):
        for split, style in (("train", "-"), ("val", "-"), ("ema_val", "--")):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None and not math.isnan(v) for v in values):
                ax.plot(epochs, values, style, marker="o", markersize=3, label=split.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss (log scale)")
        if metric == "loss":
            ax.set_yscale("log")  # an early spike (val loss in the thousands) would flatten the rest
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
