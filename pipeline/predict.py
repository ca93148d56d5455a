"""`python -m pipeline predict`: a trained run's val and test logits, with test-time augmentation.

Writes into the run folder (each file atomically, predict.json last, listing the others' sha256s):
    val_logits.npy   float32 (N_val, classes)   logits of the saved TTA level
    val_ids.npy      str     (N_val,)
    val_labels.npy   int64   (N_val,)
    test_logits.npy  float32 (N_test, classes)
    test_ids.npy     str     (N_test,)          in the sample submission's row order
    predict.json     checkpoint path + sha256, TTA levels and val accuracy of each, data root,
                     competition and split sha256, the output files' sha256s

Images go through exactly the training path (uint8 NHWC -> NCHW -> runtime.to_model_input with
the data's mean/std, channels_last as the run was trained); TTA views are made on the uint8
batch (see pipeline/tta.py). Every --tta level is scored on val; the most complete one is saved.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import click
import numpy as np
import torch

from pipeline import flips, tta
from pipeline.artifacts import atomic_save_npy, sha256_file, write_manifest
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import config_dict
from pipeline.data.dataset import PreparedData, lineage_changes, load_prepared
from pipeline.errors import PipelineError
from pipeline.run_layout import (BEST, LAST, MANIFEST, OUTPUTS, PREDICT_JSON, TEST_IDS, TEST_LOGITS, VAL_IDS,
                                 VAL_LABELS, VAL_LOGITS)
from pipeline.runtime import (
    PRECISIONS, autocast, check_precision, nhwc_to_nchw, normalizer, resolve_device, resolve_precision, to_model_input,
)

log = logging.getLogger(__name__)

# --checkpoint -> (file, weights); None = the weights best.pt was selected by (EMA when training kept one)
CHECKPOINTS = {"best": (BEST, None), "last": (LAST, "model"), "ema": (LAST, "ema")}


@dataclass
class PredictConfig:
    run: str = setting("", "Run folder name under --runs-dir.", required=True)
    runs_dir: str = setting("checkpoints", "Where runs live.")
    tta: list[str] = setting([], f"TTA level(s) to score: {', '.join(tta.TTA_LEVELS.names())}; a comma list, the "
                                 "most complete is saved (unset: flip where the data's meta.json says a mirror "
                                 "keeps the label, else none).", metavar="LEVEL[,LEVEL]", multiple=True)
    checkpoint: str = setting("best", "best: best.pt (EMA weights if training kept an EMA); last: last.pt; ema: "
                                      "last.pt's EMA weights.", choices=tuple(CHECKPOINTS))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    batch_size: int = setting(512, "Images per forward pass.")
    precision: str = setting("auto", "Autocast precision; auto: the one training's probe measured fastest, when "
                                     "predicting on the device it measured, else fp32 on CPU / bf16 or fp16 on "
                                     "CUDA.", choices=("auto", *PRECISIONS))
    data: Optional[str] = setting(None, "Prepared data folder (default: the one the run was trained on).")
    allow_changed_data: bool = setting(False, "Predict even if the data folder's arrays changed since training "
                                              "(it was rebuilt); otherwise that is refused.")


@dataclass
class LoadedRun:
    model: torch.nn.Module
    ckpt: dict[str, Any]
    path: Path
    weights: str


def load_run_model(run_dir: Path, which: str) -> LoadedRun:
    if which not in CHECKPOINTS:
        raise PipelineError(f"unknown --checkpoint '{which}'; choose from: {', '.join(CHECKPOINTS)}")
    filename, weights = CHECKPOINTS[which]
    path = run_dir / filename
    if not run_dir.is_dir():
        raise PipelineError(f"{run_dir}: no such run folder; train it first or check --runs-dir")
    ckpt = load_checkpoint(path)
    weights = weights or ckpt.get("best_weights") or "model"
    return LoadedRun(build_model(ckpt, weights), ckpt, path, weights)


def load_run_data(ckpt: dict[str, Any], path: Path, data_root: str | None,
                  allow_changed: bool = False) -> PreparedData:
    """The prepared data the checkpoint was trained on; a different split is refused (val would leak)."""
    trained_on = ckpt.get("data") or {}
    root = data_root or trained_on.get("root")
    if not root:
        raise PipelineError(f"{path}: the checkpoint does not record its data folder; pass --data")
    data = load_prepared(root, competition=trained_on.get("competition"))
    split_sha = sha256_file(Path(root) / "split.npz")
    if trained_on.get("split_sha256") and trained_on["split_sha256"] != split_sha:
        raise PipelineError(
            f"{Path(root) / 'split.npz'}: not the split {path} was trained with (sha256 differs); its val "
            "images may be training images. Predict with the run's own data folder or retrain")
    check_lineage(trained_on, data, path, allow_changed)
    return data


def check_lineage(trained_on: dict[str, Any], data: PreparedData, path: Path, allow_changed: bool) -> None:
    """Refuse (or, allowed, warn about) prepared arrays changed since training: a rebuilt data folder."""
    if trained_on.get("arrays_sha256"):
        changed = lineage_changes(trained_on["arrays_sha256"], data.lineage)
    else:  # a run from before arrays were recorded: meta.json is what it recorded
        meta = trained_on.get("meta_sha256")
        changed = ["meta.json"] if meta and meta != sha256_file(data.root / "meta.json") else []
    if not changed:
        return
    message = (f"{data.root}: {', '.join(changed)} changed since {path} was trained (the data folder was "
               "rebuilt)")
    if not allow_changed:
        raise PipelineError(f"{message}; retrain, or pass --allow-changed-data to predict on it anyway")
    log.warning("%s; predicting anyway (--allow-changed-data)", message)


def view_logits(
    model: torch.nn.Module,
    images_nhwc: np.ndarray,
    views: Sequence[tta.View],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    precision: str = "auto",
    batch_size: int = 512,
    channels_last: bool = False,
) -> dict[tta.View, torch.Tensor]:
    """float32 logits (N, classes) on the CPU for every view, in batches, in eval/inference mode."""
    if batch_size < 1:
        raise PipelineError(f"--batch-size must be >= 1, got {batch_size}")
    if len(images_nhwc) == 0:
        raise PipelineError("no images to predict")
    model.eval()
    scale, shift = normalizer(mean, std, device)
    chunks: dict[tta.View, list[torch.Tensor]] = {view: [] for view in views}
    with torch.inference_mode():
        for start in range(0, len(images_nhwc), batch_size):
            batch = nhwc_to_nchw(images_nhwc[start:start + batch_size]).to(device, non_blocking=True)
            for view in views:
                x = to_model_input(tta.apply_view(batch, view), scale, shift, channels_last)
                with autocast(device, precision):
                    out = model(x)
                chunks[view].append(out.float().cpu())
    return {view: torch.cat(parts) for view, parts in chunks.items()}


def accuracy(logits: torch.Tensor | np.ndarray, labels: np.ndarray) -> float:
    predicted = np.asarray(logits).argmax(1)
    return float((predicted == np.asarray(labels)).mean()) if len(labels) else float("nan")


def measured_precision(run_dir: Path, ckpt: dict[str, Any], device: torch.device) -> str:
    """"auto" for predict: the precision training's probe measured fastest, if it measured on this
    same device (the run's manifest says where); else "auto" (runtime's unmeasured fallback)."""
    from pipeline.machine import device_name

    try:
        probed = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8")).get("probe") or {}
    except (OSError, ValueError):
        return "auto"
    trained = (ckpt.get("config") or {}).get("precision", "auto")
    return trained if probed.get("device") == device_name(device) and trained in PRECISIONS else "auto"


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """Score every TTA level on val, save the most complete level's val/test logits; a summary dict."""
    started = time.time()
    run_dir = Path(cfg.runs_dir) / cfg.run
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)  # before the model and data are read
    loaded = load_run_model(run_dir, cfg.checkpoint)
    data = load_run_data(loaded.ckpt, loaded.path, cfg.data, cfg.allow_changed_data)
    cfg = dataclasses.replace(cfg, tta=_tta_levels(cfg, data))  # predict.json records what ran
    levels, saved = cfg.tta, tta.most_complete(cfg.tta)
    precision = resolve_precision(measured_precision(run_dir, loaded.ckpt, device)
                                  if cfg.precision == "auto" else cfg.precision, device)
    channels_last = bool((loaded.ckpt.get("config") or {}).get("channels_last", False))
    model = loaded.model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    infer = dict(mean=data.meta["mean"], std=data.meta["std"], device=device, precision=precision,
                 batch_size=cfg.batch_size, channels_last=channels_last)

    val_images, val_labels, val_ids = data.subset("val")
    test_images, _, test_ids = data.subset("test")
    for name, images in (("validation", val_images), ("test", test_images)):
        if len(images) == 0:
            raise PipelineError(f"{data.root}: no {name} images; predict needs both val and test")
    val_views = view_logits(model, val_images, tta.unique_views(levels), **infer)
    val_by_level = {level: tta.combine(val_views, level) for level in levels}
    val_accuracy = {level: accuracy(logits, val_labels) for level, logits in val_by_level.items()}
    test_logits = tta.combine(view_logits(model, test_images, tta.level_views(saved), **infer), saved)

    arrays = {
        VAL_LOGITS: val_by_level[saved].numpy().astype(np.float32),
        VAL_IDS: np.asarray(val_ids),
        VAL_LABELS: np.asarray(val_labels, dtype=np.int64),
        TEST_LOGITS: test_logits.numpy().astype(np.float32),
        TEST_IDS: np.asarray(test_ids),
    }
    for name, array in arrays.items():
        atomic_save_npy(run_dir / name, array)
    _write_record(run_dir, cfg, loaded, data, val_accuracy, started,
                  {"counts": {"val": len(val_ids), "test": len(test_ids)}, "device": str(device),
                   "precision": precision})
    return {"run_dir": run_dir, "checkpoint": loaded, "data": data, "levels": levels, "saved": saved,
            "val_accuracy": val_accuracy}


def _tta_levels(cfg: PredictConfig, data: PreparedData) -> list[str]:
    """The TTA levels asked for (mirrored views only where the data allows them), else the data's default."""
    levels = tta.parse_levels(cfg.tta) if cfg.tta else []
    if levels:
        flips.check_tta([level for level in levels if any(v.mirror for v in tta.level_views(level))], data.meta)
        return levels
    levels = flips.default_tta(data.meta)
    log.info("TTA %s: the default for %s (meta.json: flip_safe %s)", levels[0], data.root,
             str(flips.flip_safe(data.meta)).lower())
    return levels


def _write_record(run_dir: Path, cfg: PredictConfig, loaded: LoadedRun, data: PreparedData,
                  val_accuracy: dict[str, float], started: float, run_facts: dict[str, Any]) -> None:
    """predict.json, last: the checkpoint and data the logits are of, each level's val accuracy."""
    saved = tta.most_complete(cfg.tta)
    trained_on = loaded.ckpt.get("data") or {}
    write_manifest(
        run_dir, "predict",
        inputs=[loaded.path, data.root / "meta.json", data.root / "split.npz"],
        outputs=list(OUTPUTS),
        config=config_dict(cfg),
        metrics={"val_accuracy": val_accuracy},
        started=started,
        name=PREDICT_JSON,
        extra={
            "run": cfg.run,
            "checkpoint": {"which": cfg.checkpoint, "path": str(loaded.path), "weights": loaded.weights,
                           "epoch": loaded.ckpt.get("epoch"), "sha256": sha256_file(loaded.path)},
            "tta": saved,
            "tta_levels": cfg.tta,
            "tta_averaging": "weighted mean of view logits (pipeline/tta.py)",
            "val_accuracy": val_accuracy[saved],
            "data": {"root": str(data.root), "competition": data.meta.get("competition", trained_on.get("competition")),
                     "split_sha256": sha256_file(data.root / "split.npz"),
                     "meta_sha256": sha256_file(data.root / "meta.json"),
                     "arrays_sha256": data.lineage},
            **run_facts,
        },
    )


def summary_lines(result: dict[str, Any]) -> list[str]:
    loaded, data = result["checkpoint"], result["data"]
    lines = [f"{loaded.path} (epoch {loaded.ckpt.get('epoch')}, {loaded.weights} weights) on {data.root}: "
             f"{len(data.val_idx)} val, {len(data.test_ids)} test images"]
    width = max(len(level) for level in result["levels"])
    for level in result["levels"]:
        mark = "  <- saved" if level == result["saved"] else ""
        lines.append(f"val accuracy  {level:<{width}}  {result['val_accuracy'][level]:.4f}{mark}")
    best = max(result["levels"], key=lambda level: result["val_accuracy"][level])
    if result["val_accuracy"][best] > result["val_accuracy"][result["saved"]]:
        lines.append(f"note: TTA '{best}' scores higher on val than the saved '{result['saved']}'; "
                     f"consider --tta {best}")
    lines.append(f"wrote {', '.join(OUTPUTS)} and {PREDICT_JSON} to {result['run_dir']}")
    return lines


@click.command("predict")
@stage_options(PredictConfig)
def command(config_file: str | None, **flags: Any) -> None:
    """Write a run's val/test logits (with TTA) and print val accuracy per TTA level."""
    # --tta is repeatable as well as a comma list
    flags["tta"] = [level for given in flags["tta"] for level in given.split(",") if level.strip()] or None
    cfg = resolve_flags(PredictConfig, config_file, flags)
    result = run_predict(dataclasses.replace(cfg, tta=tta.parse_levels(cfg.tta) if cfg.tta else []))
    for line in summary_lines(result):
        click.echo(line)
