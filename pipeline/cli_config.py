"""Every stage's CLI generated from its config dataclass: one flag per field, plus --config FILE.

A field declared with `setting(default, help, choices=...)` becomes `--field-name` with that help
text and its default shown, so flags, YAML keys and defaults cannot drift apart. Flags default to
None (= not given): precedence is dataclass defaults < --config YAML < flags given. Values are
type-checked by `pipeline.config.resolve_config`, which names the key and the value in one line.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Iterable

import click

from pipeline.config import unwrap_optional
from pipeline.errors import PipelineError


def setting(default: Any, help: str, *, choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
            metavar: str | None = None, short: str | None = None, **extra: Any) -> Any:
    """A config field with its CLI help (optionally: the values its flag accepts, a short alias, and
    `extra` metadata that a stage reads off its own fields, e.g. TrainConfig's `resumable`)."""
    metadata = {"help": help, "choices": choices, "metavar": metavar, "short": short, **extra}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(hint: Any) -> Any:
    hint = unwrap_optional(hint)
    return typing.get_origin(hint) or hint


def _item_type(hint: Any) -> type:
    """list[str] -> str; a bare `list` holds numbers (betas, milestones, weights)."""
    items = typing.get_args(unwrap_optional(hint))
    return items[0] if items else float


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def config_options(cls: type, skip: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Decorate a click command with a --flag for every field of dataclass `cls` except `skip`
    (positional arguments) and dict fields (those get their own key=value flag)."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skipped:
                continue
            hint = hints[f.name]
            base = _base_type(hint)
            if base is dict:
                continue
            name = f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            text = f"{f.metadata.get('help', '')} [default: {_show(default)}]"
            choices = f.metadata.get("choices")
            if callable(choices):
                choices = choices()
            metavar = f.metadata.get("metavar")
            if base is bool:
                fn = click.option(f"--{name}/--no-{name}", f.name, default=None, help=text)(fn)
            elif base is list:
                fn = click.option(f"--{name}", f.name, type=str, default=None, metavar=metavar or "A,B",
                                  help=text)(fn)
            else:
                click_type = click.Choice(list(choices)) if choices else {int: int, float: float}.get(base, str)
                flags = [f"--{name}", *([f.metadata["short"]] if f.metadata.get("short") else [])]
                fn = click.option(*flags, f.name, type=click_type, default=None, metavar=metavar, help=text)(fn)
        return fn

    return decorate


def parse_flag_lists(cls: type, flags: dict[str, Any]) -> dict[str, Any]:
    """'0.5,0.75' -> [0.5, 0.75] (or strings for list[str] fields); drops flags that were not given."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in flags.items():
        if value is None:
            continue
        hint = hints.get(key)
        if _base_type(hint) is list and isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
            if _item_type(hint) is not str:
                try:
                    items = [float(v) for v in items]
                except ValueError:
                    raise PipelineError(
                        f"--{key.replace('_', '-')}: expected comma-separated numbers, got '{value}'") from None
            value = items
        out[key] = value
    return out


def config_file_option(cls: type) -> Callable[[Callable], Callable]:
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                        help=f"YAML file of {cls.__name__} keys (flags given override it).")
