"""Training's side of the run folder (layout: pipeline/run_layout.py): checks before a run starts,
a fresh folder, and how a retrained run takes an old one's place.

Retraining an existing run with --replace writes into its staging folder and swaps it in only once
training has completed, so an interrupted or failed retrain leaves the earlier run whole.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from pipeline.config import config_dict, load_yaml
from pipeline.data.dataset import PreparedData
from pipeline.errors import PipelineError
from pipeline.hints import train_flag
from pipeline.run_layout import CHECKPOINTS, CONFIG, LAST, TRAIN_FILES, retired_dir, snapshots, staging_dir
from pipeline.train.config import RESUME_MAY_CHANGE, TrainConfig

def checkpoints_held(run_dir: Path) -> list[str]:
    return [name for name in CHECKPOINTS if (run_dir / name).exists()]


def extension_of(run_dir: Path, cfg: TrainConfig) -> TrainConfig:
    """--replace --extend on a run that differs only by fewer epochs: resume it instead of retraining."""
    if not (cfg.replace and cfg.extend and (run_dir / LAST).is_file() and (run_dir / CONFIG).is_file()):
        return cfg
    old, new = load_yaml(run_dir / CONFIG), config_dict(cfg)
    same = all(old.get(k) == v for k, v in new.items() if k not in RESUME_MAY_CHANGE)
    if same and float(old.get("epochs") or 0) < cfg.epochs:
        return dataclasses.replace(cfg, replace=False, resume=True)
    return cfg


def writing_dir(run_dir: Path, cfg: TrainConfig) -> Path:
    """Where this run's files go while it trains: the run folder itself, or, when --replace retrains a
    run that exists, its staging folder."""
    if cfg.replace and not cfg.resume and checkpoints_held(run_dir):
        return staging_dir(run_dir)
    return run_dir


def prepare_writing_dir(run_dir: Path, target: Path, overwrite: bool) -> None:
    """Create the folder training writes into (main process only)."""
    if target != run_dir:
        shutil.rmtree(target, ignore_errors=True)  # what a killed earlier retrain left
        target.mkdir(parents=True)
    else:
        fresh_run_dir(run_dir, overwrite)


def swap_in(staging: Path, run_dir: Path) -> None:
    """Put the completed staging folder in run_dir's place. Two renames: recover_swap() finishes or
    undoes a swap that a kill interrupted between them, so a run folder is never lost."""
    retired = retired_dir(run_dir)
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(run_dir, retired)
    os.replace(staging, run_dir)
    shutil.rmtree(retired, ignore_errors=True)


def recover_swap(run_dir: Path) -> None:
    retired = retired_dir(run_dir)
    if retired.is_dir():
        if run_dir.exists():
            shutil.rmtree(retired, ignore_errors=True)  # the swap had completed
        else:
            os.replace(retired, run_dir)  # killed between the renames: the earlier run comes back


def check_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    if cfg.resume:
        if not (run_dir / LAST).is_file():
            raise PipelineError(f"{run_dir / LAST}: not found, nothing to resume; drop "
                                f"{train_flag('--resume')} to start the run")
        return
    recover_swap(run_dir)
    held = checkpoints_held(run_dir)
    if held and not (cfg.overwrite or cfg.replace):
        raise PipelineError(f"{run_dir}: already holds {', '.join(held)}; pass {train_flag('--resume')} to continue "
                            f"that run, {train_flag('--overwrite')} to start it afresh, or {train_flag('--run', 'NAME')} "
                            "for a new one")


def fresh_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder; with --overwrite, first remove the earlier run's files (only those)."""
    if overwrite:
        for path in [run_dir / name for name in TRAIN_FILES] + [path for _, path in snapshots(run_dir)]:
            path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def resolve_run_name(cfg: TrainConfig, data: PreparedData) -> TrainConfig:
    """Fill competition (from meta.json) and the run name, so the saved config is complete."""
    competition = cfg.competition or data.meta.get("competition") or Path(cfg.data).name
    run = cfg.run or f"{competition}-{cfg.model}"
    run = run.replace(":", "-").replace("/", "-")
    if run in ("", ".", ".."):
        raise PipelineError(f"--run '{cfg.run}' is not a usable folder name")
    return dataclasses.replace(cfg, competition=competition, run=run)
