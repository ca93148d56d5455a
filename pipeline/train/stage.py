"""`python -m pipeline train`: one CLI flag per TrainConfig field, generated from the dataclass.

Precedence: TrainConfig defaults < --config YAML < flags given on the command line. Flags default
to None (= not given), so an unset flag never overrides the YAML file.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import click

from pipeline.config import resolve_config
from pipeline.errors import PipelineError
from pipeline.train.config import TrainConfig

def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def config_options(cls: type) -> Callable[[Callable], Callable]:
    """Decorate a click command with a --flag for every field of dataclass `cls` (dict fields excepted)."""
    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            hint = hints[f.name]
            base = _base_type(hint)
            if base is dict:
                continue  # dict fields get their own key=value flag (--model-opt)
            name = f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            text = f"{f.metadata.get('help', '')} [default: {_show(default)}]"
            if base is bool:
                fn = click.option(f"--{name}/--no-{name}", f.name, default=None, help=text)(fn)
            elif base is list:
                fn = click.option(f"--{name}", f.name, type=str, default=None, metavar="A,B", help=text)(fn)
            else:
                click_type = {int: int, float: float}.get(base, str)
                fn = click.option(f"--{name}", f.name, type=click_type, default=None, help=text)(fn)
        return fn

    return decorate


def parse_flag_lists(cls: type, flags: dict[str, Any]) -> dict[str, Any]:
    """'0.5,0.75' -> [0.5, 0.75] for list fields; drops flags that were not given."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in flags.items():
        if value is None:
            continue
        if _base_type(hints.get(key)) is list:
            try:
                value = [float(v) for v in str(value).replace(" ", "").split(",") if v]
            except ValueError:
                raise PipelineError(f"--{key.replace('_', '-')}: expected comma-separated numbers, got '{value}'") from None
        out[key] = value
    return out


@click.command("train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of TrainConfig keys (flags override it), e.g. configs/resnet20-paper.yaml.")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable (e.g. --model-opt bn=true --model-opt dropout=0.3).")
@config_options(TrainConfig)
def command(config_file: str | None, model_opt: tuple[str, ...], **flags: Any) -> None:
    """Train a model on a prepared data folder; checkpoints, metrics and curves go to OUT_DIR/RUN.

    Works unchanged under `torchrun --nproc_per_node=N -m pipeline train ...` (DDP).
    """
    from pipeline.models import parse_model_opts
    from pipeline.train.engine import run_training

    cfg = resolve_config(TrainConfig, config_file, parse_flag_lists(TrainConfig, flags))
    if model_opt:  # flags add to (and override) the YAML's model_opts rather than replacing them
        cfg = dataclasses.replace(cfg, model_opts={**cfg.model_opts, **parse_model_opts(model_opt)})
    summary = run_training(cfg)
    if summary.get("best_val_acc") is not None:
        click.echo(f"best val accuracy {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['epochs_run']} epochs, {summary['wall_seconds']:.0f}s) -> {summary['run_dir']}")
