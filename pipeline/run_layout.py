"""A run folder's layout, OUT_DIR/RUN/, in one place (torch-free, so readers stay light).

train writes TRAIN_FILES (+ epoch_<N>.pt snapshots with --save-every) and LOG_FILES; predict adds
PREDICT_JSON and PREDICT_OUTPUTS; report adds REPORT_HTML. A retrain with --replace writes into
staging_dir(run) and swaps it in through retired_dir(run) (see pipeline/train/run_folder.py).
"""
from __future__ import annotations

from pathlib import Path

LOG_FILES = ("metrics.csv", "metrics.jsonl", "curves.png")
TRAIN_FILES = ("best.pt", "last.pt", "config.yaml", "manifest.json", *LOG_FILES)
PREDICT_JSON = "predict.json"
PREDICT_OUTPUTS = ("val_logits.npy", "val_ids.npy", "val_labels.npy", "test_logits.npy", "test_ids.npy")
OUTPUTS = PREDICT_OUTPUTS  # the name predict and ensemble use
REPORT_HTML = "report.html"


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch}.pt"


def staging_dir(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.staging")


def retired_dir(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.retired")
