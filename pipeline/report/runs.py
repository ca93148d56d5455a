"""Reading a finished (or half-finished) run folder: its config, metrics and checkpoints.

Kept free of torch so the sweep table and `compare` stay quick.
"""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

SNAPSHOT = re.compile(r"^epoch_(\d+)\.pt$")


def find_run(run: str | os.PathLike, runs_dir: str | os.PathLike = "checkpoints") -> Path:
    """RUN as a name under runs_dir, or as a path to the run folder itself."""
    for candidate in (Path(runs_dir) / run, Path(run)):
        if candidate.is_dir() and any((candidate / f).is_file() for f in ("metrics.csv", "last.pt", "best.pt")):
            return candidate
    raise PipelineError(f"{Path(runs_dir) / run}: no run folder (metrics.csv or checkpoints); "
                        "train it first or check --runs-dir")


def read_metrics(run_dir: str | os.PathLike, missing_ok: bool = False) -> list[dict[str, Any]]:
    """metrics.csv as one dict per epoch, numbers as floats (epoch as int, blanks as None)."""
    path = Path(run_dir) / "metrics.csv"
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
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, path) of the epoch_<N>.pt files `train --save-every K` keeps, oldest first."""
    found = []
    for path in Path(run_dir).glob("epoch_*.pt"):
        match = SNAPSHOT.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)
