"""A run folder's layout, OUT_DIR/RUN/, in one place (torch-free, so readers stay light): every
name of a file in it is spelled here and only here.

train writes TRAIN_FILES (+ epoch_<N>.pt snapshots with --save-every) and LOG_FILES; predict adds
PREDICT_JSON and PREDICT_OUTPUTS; report adds REPORT_HTML and the REPORT_DIR of its figures. A
retrain with --replace writes into staging_dir(run) and swaps it in through retired_dir(run) (see
pipeline/train/run_folder.py). MANIFEST is also the name of every other stage's manifest.
"""
from __future__ import annotations

import re
from pathlib import Path

BEST = "best.pt"  # the best epoch's checkpoint (by val accuracy, the EMA's when kept)
LAST = "last.pt"  # the latest epoch's checkpoint: what --resume continues from
CHECKPOINTS = (LAST, BEST)
CONFIG = "config.yaml"  # the resolved TrainConfig
MANIFEST = "manifest.json"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
CURVES = "curves.png"
LOG_FILES = (METRICS_CSV, METRICS_JSONL, CURVES)
TRAIN_FILES = (BEST, LAST, CONFIG, MANIFEST, *LOG_FILES)

PREDICT_JSON = "predict.json"
VAL_LOGITS = "val_logits.npy"
VAL_IDS = "val_ids.npy"
VAL_LABELS = "val_labels.npy"
TEST_LOGITS = "test_logits.npy"
TEST_IDS = "test_ids.npy"
PREDICT_OUTPUTS = (VAL_LOGITS, VAL_IDS, VAL_LABELS, TEST_LOGITS, TEST_IDS)
OUTPUTS = PREDICT_OUTPUTS  # the name predict and ensemble use

REPORT_HTML = "report.html"
REPORT_DIR = "report"  # the report's figures and its own manifest

_SNAPSHOT = re.compile(r"^epoch_(\d+)\.pt$")


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch}.pt"


def snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the epoch_<N>.pt files `train --save-every K` keeps, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = ((_SNAPSHOT.match(path.name), path) for path in run_dir.iterdir())
    return sorted((int(match.group(1)), path) for match, path in found if match)


def staging_dir(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.staging")


def retired_dir(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.retired")
