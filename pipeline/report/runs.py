"""Reading a finished (or half-finished) run folder: its config, metrics and checkpoints.

Kept free of torch so the sweep table and `compare` stay quick.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from pipeline.config import load_yaml
from pipeline.errors import PipelineError
from pipeline.run_layout import BEST, CONFIG, LAST, METRICS_CSV


def find_run(run: str | os.PathLike, runs_dir: str | os.PathLike = "checkpoints") -> Path:
    """RUN as a name under runs_dir, or as a path to the run folder itself."""
    for candidate in (Path(runs_dir) / run, Path(run)):
        if candidate.is_dir() and any((candidate / f).is_file() for f in (METRICS_CSV, LAST, BEST)):
            return candidate
    raise PipelineError(f"{Path(runs_dir) / run}: no run folder (metrics.csv or checkpoints); "
                        "train it first or check --runs-dir")


def read_metrics(run_dir: str | os.PathLike, missing_ok: bool = False) -> list[dict[str, Any]]:
    """metrics.csv as one dict per epoch, numbers as floats (epoch as int, blanks as None)."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        if missing_ok:
            return []
        raise PipelineError(f"{path}: not found; the run has not finished an epoch")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for line, raw in enumerate(csv.DictReader(f), start=2):
            try:
                row = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
                row["epoch"] = int(row["epoch"])
            except (TypeError, ValueError, KeyError):
                raise PipelineError(f"{path}:{line}: not a metrics row ({dict(raw)})") from None
            rows.append(row)
    return rows


def score_metric(rows: list[dict[str, Any]]) -> str:
    """The column best.pt is chosen by: the EMA's accuracy when the run kept an EMA."""
    return "ema_val_acc" if any(r.get("ema_val_acc") is not None for r in rows) else "val_acc"


def best_row(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """(the epoch row with the highest score, the score's column); the earliest wins ties, as in training."""
    metric = score_metric(rows)
    scored = [r for r in rows if r.get(metric) is not None and not math.isnan(r[metric])]
    if not scored:
        return None, metric
    return max(scored, key=lambda r: (r[metric], -r["epoch"])), metric


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's config.yaml, {} if it has none (a run copied without it: the checkpoint's serves)."""
    path = Path(run_dir) / CONFIG
    return load_yaml(path) if path.is_file() else {}
