"""`python -m pipeline train`: one CLI flag per TrainConfig field, generated from the dataclass.

Precedence: TrainConfig defaults < --config YAML < flags given on the command line. Flags default
to None (= not given), so an unset flag never overrides the YAML file.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import click

from pipeline.cli_config import resolve_flags, stage_options
from pipeline.train.config import TrainConfig


@click.command("train")
@stage_options(TrainConfig, example=", e.g. configs/resnet20-paper.yaml")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable (e.g. --model-opt bn=true --model-opt dropout=0.3).")
def command(config_file: str | None, model_opt: tuple[str, ...], **flags: Any) -> None:
    """Train a model on a prepared data folder; checkpoints, metrics and curves go to OUT_DIR/RUN.

    Works unchanged under `torchrun --nproc_per_node=N -m pipeline train ...` (DDP).
    """
    from pipeline.models import parse_model_opts
    from pipeline.train.engine import run_training

    cfg = resolve_flags(TrainConfig, config_file, flags)
    if cfg.recipe == "auto":  # the recipe and its epochs, chosen from the leaderboard records for the budget
        from pipeline.train import recipe_auto

        cfg = recipe_auto.resolve(cfg, config_file, flags)
        click.echo(cfg.recipe_note)
    if model_opt:  # flags add to (and override) the YAML's model_opts rather than replacing them
        cfg = dataclasses.replace(cfg, model_opts={**cfg.model_opts, **parse_model_opts(model_opt)})
    summary = run_training(cfg)
    if summary.get("best_val_acc") is not None:
        click.echo(f"best val accuracy {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['epochs_run']} epochs, {summary['wall_seconds']:.0f}s) -> {summary['run_dir']}")
