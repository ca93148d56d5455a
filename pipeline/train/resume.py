"""Resuming a run exactly: checkpoint contents, the resume check, RNG state, seeding."""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import clean_state_dict, load_checkpoint
from pipeline.config import config_dict
from pipeline.errors import PipelineError
from pipeline.hints import train_flag
from pipeline.train.config import RESUME_MAY_CHANGE, TrainConfig
from pipeline.train.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Epoch rows so far and the best one: what a checkpoint carries to a resumed run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = 0

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


def checkpoint_state(tr: Trainer, cfg: TrainConfig, model_kwargs: dict, data_info: dict,
                     progress: Progress, rng: list) -> dict[str, Any]:
    return {
        "arch": cfg.model,
        "model_kwargs": model_kwargs,
        "model": clean_state_dict(tr.module.state_dict()),
        "ema": tr.ema.state_dict() if tr.ema is not None else None,
        "best_weights": "ema" if tr.ema is not None else "model",  # which weights best.pt was picked by
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else None,
        "epoch": progress.epoch,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "metrics": list(progress.history),
        "config": config_dict(cfg),
        "data": data_info,
        "rng": rng,
    }


def resume_from(path: Path, tr: Trainer, cfg: TrainConfig, model_kwargs: dict, data_info: dict,
                rank: int = 0) -> Progress:
    ckpt = load_checkpoint(path)
    check_resumable(path, ckpt, cfg, model_kwargs, data_info)
    tr.module.load_state_dict(clean_state_dict(ckpt["model"]))
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    if tr.scaler.is_enabled() and ckpt.get("scaler"):
        tr.scaler.load_state_dict(ckpt["scaler"])
    if tr.ema is not None:
        tr.ema.load_state_dict(ckpt["ema"])
    states = ckpt.get("rng") or []
    if states:
        set_rng_state(states[rank] if rank < len(states) else states[0])
    log.info("resuming %s from epoch %d (best val %.4f at epoch %d)", path.parent.name, ckpt["epoch"],
             ckpt["best_metric"], ckpt["best_epoch"])
    return Progress(history=list(ckpt["metrics"]), best_metric=ckpt["best_metric"],
                     best_epoch=ckpt["best_epoch"])


def check_resumable(path: Path, ckpt: dict, cfg: TrainConfig, model_kwargs: dict, data_info: dict) -> None:
    """A checkpoint of another model, data split or experiment config cannot be continued."""
    if ckpt["arch"] != cfg.model or ckpt["model_kwargs"] != model_kwargs:
        raise PipelineError(
            f"{path}: checkpoint is of model '{ckpt['arch']}' {ckpt['model_kwargs']}, not '{cfg.model}' "
            f"{model_kwargs}; use another {train_flag('--run', 'NAME')} to start a new one")
    if ckpt.get("data", {}).get("split_sha256") != data_info["split_sha256"]:
        raise PipelineError(f"{path}: checkpoint was trained on another data split than "
                            f"{data_info['root']}/split.npz; use another {train_flag('--run', 'NAME')} to start a new one")
    old, new = ckpt.get("config", {}), config_dict(cfg)
    changed = sorted(k for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k])
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise PipelineError(f"{path}: the config differs from the checkpoint's ({diffs}); "
                            f"resume with the same settings or use another {train_flag('--run', 'NAME')}")
    if old.get("epochs") != cfg.epochs:
        log.warning("resuming with epochs %s instead of %s: the lr schedule is rebuilt for the new length",
                    cfg.epochs, old.get("epochs"))


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # fixed input sizes: autotuning pays off


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as plain lists/tensors (weights_only-safe)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
