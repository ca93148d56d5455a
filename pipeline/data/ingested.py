"""What every data source hands the data stage: labelled train images, a test set, a submission format."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.errors import PipelineError

LABEL_FORMS = ("name", "index")


@dataclass(frozen=True)
class SubmissionFormat:
    id_column: str = "id"
    label_column: str = "label"
    label_form: str = "name"  # "name": class names; "index": integer class indices

    def __post_init__(self) -> None:
        if self.label_form not in LABEL_FORMS:
            raise ValueError(f"label_form must be one of {LABEL_FORMS}, got {self.label_form!r}")

    def label_text(self, classes: list[str], index: int) -> str:
        return classes[index] if self.label_form == "name" else str(index)

    def csv_text(self, ids: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([self.id_column, self.label_column])
        writer.writerows((i, self.label_text(classes, int(y))) for i, y in zip(ids.tolist(), labels))
        return buf.getvalue()


# Kaggle's own CIFAR-10 format, and the course competitions' one (integer labels).
KAGGLE_FORMAT = SubmissionFormat("id", "label", "name")
COURSE_FORMAT = SubmissionFormat("ID", "Labels", "index")


@dataclass
class ImageSet:
    """Ids (and labels, if known) up front; pixels on demand, so --limit decodes only what it keeps.

    For a test set, `labels` is the withheld answer key (None when the source has none).
    """

    ids: np.ndarray  # str (N,)
    labels: np.ndarray | None  # int64 (N,) class indices
    # (indices, like=HWC or None, dest=.npy path or None, workers=N) -> NHWC uint8, stored at dest if given
    load: Callable[..., np.ndarray]
    where: str  # what to name in errors about this set

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=str)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if len(self.labels) != len(self.ids):
                raise PipelineError(f"{self.where}: {len(self.ids)} ids but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_arrays(cls, images: np.ndarray, ids: Any, labels: Any, where: str) -> "ImageSet":
        if len(images) != len(ids):
            raise PipelineError(f"{where}: {len(images)} images but {len(ids)} ids")

        def load(idx: np.ndarray, like=None, dest=None, workers: int = 1) -> np.ndarray:
            kept = images[idx]
            if dest is not None:
                np.save(dest, kept, allow_pickle=False)
            return kept

        return cls(ids=ids, labels=labels, load=load, where=where)


@dataclass
class Ingested:
    classes: list[str]
    train: ImageSet
    test: ImageSet
    submission: SubmissionFormat = KAGGLE_FORMAT
    sample_submission: bytes | None = None  # the competition's own file, byte for byte
    details: dict[str, Any] = field(default_factory=dict)  # recorded in meta.json["source"]


def numbered_ids(n: int) -> np.ndarray:
    """Kaggle-style ids 1..n."""
    return np.array([str(i) for i in range(1, n + 1)], dtype=str)
