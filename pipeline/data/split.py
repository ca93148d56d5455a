"""Seeded, stratified choices of rows: the --limit subset and the train/val split."""
from __future__ import annotations

import logging
import math

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def minimum_rows(classes: int, val_fraction: float) -> int:
    """The fewest rows a split can take: one per class, and at least one on each side of the split
    (scikit-learn puts ceil(n * val_fraction) rows in validation)."""
    n = max(classes, 1)
    if val_fraction <= 0:
        return n
    while math.ceil(n * val_fraction) < 1 or n - math.ceil(n * val_fraction) < 1:
        n += 1
    return n


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted int64, each class in proportion; the same seed gives the same split."""
    if val_fraction <= 0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, np.int64)
    return _split(labels, seed, "validation split", test_size=val_fraction)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly `size` rows with the class mix of `labels` (all rows if size >= len)."""
    if size >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return _split(labels, seed, "--limit subset", train_size=size)[0]


def _split(labels: np.ndarray, seed: int, what: str, **size) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels), dtype=np.int64)
    try:
        a, b = train_test_split(idx, stratify=labels, random_state=seed, **size)
    except ValueError as e:
        # A class too rare to appear on both sides: a plain seeded shuffle is the honest fallback.
        log.warning("%s not stratified (%s)", what, e)
        try:
            a, b = train_test_split(idx, random_state=seed, **size)
        except ValueError as e:  # callers check sizes first (stage.check_size); never a traceback
            raise PipelineError(f"{what}: cannot split {len(labels)} rows ({e})") from None
    return np.sort(a), np.sort(b)
