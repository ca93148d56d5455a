"""Everything a report section may need from one run, each piece loaded on first use only."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifacts import load_npy, read_json, sha256_file
from pipeline.errors import PipelineError
from pipeline.report import runs
from pipeline.run_layout import BEST, PREDICT_JSON, VAL_IDS, VAL_LOGITS

log = logging.getLogger(__name__)


@dataclass
class ValPredictions:
    logits: np.ndarray  # float32 (N_val, classes), in the data's val order
    labels: np.ndarray  # int64 (N_val,)
    source: str  # where the logits came from, for the page

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else float("nan")


class RunContext:
    def __init__(self, run_dir: Path, device: torch.device, tsne_points: int = 1000, batch_size: int = 256):
        self.run_dir = Path(run_dir)
        self.name = self.run_dir.name
        self.device = device
        self.tsne_points = tsne_points
        self.batch_size = batch_size

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        return runs.read_config(self.run_dir) or dict(self.best.ckpt.get("config") or {})

    @functools.cached_property
    def metrics(self) -> list[dict[str, Any]]:
        return runs.read_metrics(self.run_dir)

    @functools.cached_property
    def best(self):
        """best.pt's model (EMA weights if best.pt was chosen by them), as predict loads it."""
        from pipeline.predict import load_run_model

        return load_run_model(self.run_dir, "best")

    @functools.cached_property
    def data(self):
        from pipeline.predict import load_run_data

        return load_run_data(self.best.ckpt, self.best.path, None)

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @functools.cached_property
    def val(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels, ids = self.data.subset("val")
        if len(images) == 0:
            raise PipelineError(f"{self.data.root / 'split.npz'}: the validation split is empty")
        return images, labels, ids

    @property
    def channels_last(self) -> bool:
        return bool(self.config.get("channels_last", False))

    def forward(self, model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
        """float32 logits of uint8 NHWC images, through exactly predict's input path (fp32)."""
        from pipeline.predict import view_logits
        from pipeline.tta import View

        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        logits = view_logits(
            model, images, [View()], mean=self.data.meta["mean"], std=self.data.meta["std"],
            device=self.device, precision="fp32", batch_size=self.batch_size, channels_last=self.channels_last,
        )
        return logits[View()].numpy()

    @functools.cached_property
    def val_predictions(self) -> ValPredictions:
        images, labels, ids = self.val
        reused = self._predicted_val_logits(ids)
        if reused is not None:
            return ValPredictions(reused[0], labels, reused[1])
        logits = self.forward(self.best.model, images)
        epoch = self.best.ckpt.get("epoch")
        return ValPredictions(logits, labels, f"best.pt (epoch {epoch}, {self.best.weights} weights), no TTA")

    def _predicted_val_logits(self, ids: np.ndarray) -> tuple[np.ndarray, str] | None:
        """predict's val_logits.npy, if they are of the current best.pt and cover exactly these ids."""
        info_path = self.run_dir / PREDICT_JSON
        if not (info_path.is_file() and (self.run_dir / VAL_LOGITS).is_file()):
            return None
        info = read_json(info_path)
        checkpoint = info.get("checkpoint") or {}
        best = self.run_dir / BEST
        if Path(checkpoint.get("path", "")).name != BEST or checkpoint.get("sha256") != sha256_file(best):
            log.info("%s: val logits are not of the current best.pt; computing them again", info_path)
            return None
        logits = load_npy(self.run_dir / VAL_LOGITS)
        saved_ids = load_npy(self.run_dir / VAL_IDS)
        if len(saved_ids) != len(ids) or set(saved_ids.tolist()) != set(ids.tolist()):
            log.info("%s: val ids differ from the data's split; computing the logits again", info_path)
            return None
        position = {key: i for i, key in enumerate(saved_ids.tolist())}
        order = np.array([position[key] for key in ids.tolist()])
        source = f"predict's val_logits.npy (best.pt epoch {checkpoint.get('epoch')}, TTA {info.get('tta')})"
        return logits[order].astype(np.float32), source
