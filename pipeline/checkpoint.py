"""Checkpoints of plain values only, so they load with torch.load(weights_only=True).

Keys: format_version, arch, model_kwargs (num_classes, in_chans, input_size, opts), model, ema,
optimizer, scheduler, scaler, epoch, best_metric, metrics, config, data, rng.
A later stage rebuilds the network from arch + model_kwargs without the training code.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.artifacts import atomic_torch_save
from pipeline.errors import PipelineError

FORMAT_VERSION = 1
_PREFIXES = ("_orig_mod.", "module.")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    state = {"format_version": FORMAT_VERSION, **state}
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{path}: not a loadable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise PipelineError(f"{path}: not a pipeline checkpoint (no 'arch'/'model' entries)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise PipelineError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this code")
    return ckpt


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes torch.compile (`_orig_mod.`) and DDP (`module.`) put on keys."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def build_model(ckpt: dict[str, Any], weights: str = "model") -> nn.Module:
    """Rebuild the network of a checkpoint and load `weights` ("model" or "ema") into it."""
    from pipeline.models import create_model

    kwargs = dict(ckpt["model_kwargs"])
    opts = kwargs.pop("opts", {}) or {}
    model = create_model(ckpt["arch"], **kwargs, **opts)
    state = ckpt.get(weights)
    if state is None:
        raise PipelineError(f"checkpoint has no '{weights}' weights (was EMA enabled in training?)")
    model.load_state_dict(clean_state_dict(state))
    return model
