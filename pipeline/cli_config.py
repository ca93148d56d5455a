"""Every stage's CLI generated from its config dataclass: one flag per field, plus --config FILE.

A field declared with `setting(default, help, choices=...)` becomes `--field-name` with that help
text, its choices and its default shown, so flags, YAML keys, defaults and the values a flag accepts
cannot drift apart. Choices come from the registry that builds them where there is one (a Registry,
or a function returning one, so a new entry is listed and accepted at once). Flags default to None
(= not given): precedence is dataclass defaults < --config YAML < flags given. Values are type- and
choice-checked by `pipeline.config.resolve_config`, which names the key and the value in one line.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Iterable

import click

from pipeline.config import field_choices, resolve_config, unwrap_optional
from pipeline.errors import PipelineError
from pipeline.registry import Registry

Choices = Iterable[str] | Registry | Callable[[], Iterable[str] | Registry]


def setting(default: Any, help: str, *, choices: Choices | None = None, also: Iterable[str] = (),
            minimum: float | None = None, required: bool = False, metavar: str | None = None,
            short: str | None = None, flag: str | None = None, multiple: bool = False, hidden: bool = False,
            **extra: Any) -> Any:
    """A config field with its CLI help. Optionally: the values it accepts (`choices`, plus `also`
    values beside a registry's names, e.g. "auto"), its `minimum`, whether it is `required` (from
    the command line or the --config file: the flag itself stays optional), a short alias, another `flag`
    name, a repeatable flag (`multiple`, for a list), a hidden flag, and `extra` metadata that a
    stage reads off its own fields (TrainConfig's `resumable`)."""
    metadata = {"help": help, "choices": choices, "also": tuple(also), "minimum": minimum, "required": required,
                "metavar": metavar, "short": short, "flag": flag, "multiple": multiple, "hidden": hidden, **extra}
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
    return "none" if value is None or value == "" else str(value)


def _help(f: dataclasses.Field, choices: list[str] | None) -> str:
    """The field's help, then the values it accepts and its default, generated from the field."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    shown = f"choices: {', '.join(choices)}; " if choices else ""
    return f"{f.metadata.get('help', '')} [{shown}default: {_show(default)}]"


def _option(f: dataclasses.Field, hint: Any) -> Callable[[Callable], Callable]:
    """The click option of one field (default None = not given, so YAML values survive)."""
    base, meta = _base_type(hint), f.metadata
    found = field_choices(f)
    choices, registry = found if found else (None, None)
    name = meta.get("flag") or f"--{f.name.replace('_', '-')}"
    flags = [name, *([meta["short"]] if meta.get("short") else [])]
    common = dict(default=None, help=_help(f, choices), hidden=bool(meta.get("hidden")))
    if base is bool:
        return click.option(f"{name}/--no-{name[2:]}", f.name, **common)
    if base is list and meta.get("multiple"):
        return click.option(*flags, f.name, multiple=True, metavar=meta.get("metavar"), **common)
    if base is list:
        return click.option(*flags, f.name, type=str, metavar=meta.get("metavar") or "A,B", **common)
    if choices and registry is None:
        click_type = click.Choice(choices)
    elif base is int and meta.get("minimum") is not None:
        click_type = click.IntRange(min=meta["minimum"])
    else:  # a registry's names are checked by the registry: one line with its guesses, not click's usage
        click_type = {int: int, float: float}.get(base, str)
    return click.option(*flags, f.name, type=click_type, metavar=meta.get("metavar") or (choices and "NAME"),
                        **common)


def config_options(cls: type, skip: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Decorate a click command with a --flag for every field of dataclass `cls` except `skip`
    (positional arguments) and dict fields (those get their own key=value flag)."""
    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name not in skip and _base_type(hints[f.name]) is not dict:
                fn = _option(f, hints[f.name])(fn)
        return fn

    return decorate


def parse_flag_lists(cls: type, flags: dict[str, Any]) -> dict[str, Any]:
    """'0.5,0.75' -> [0.5, 0.75] (or strings for list[str] fields); drops flags that were not given."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in flags.items():
        if value is None or value == ():  # () = a repeatable flag not given
            continue
        if isinstance(value, tuple):
            value = list(value)
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


def config_file_option(cls: type, example: str = "") -> Callable[[Callable], Callable]:
    """--config FILE: every stage's YAML of its config keys, under the flags given."""
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                        help=f"YAML file of {cls.__name__} keys (flags given override it){example}.")


def stage_options(cls: type, argument: str | None = None, example: str = "",
                  **argument_kwargs: Any) -> Callable[[Callable], Callable]:
    """Every stage's command line from its config dataclass: an optional positional `argument` (a
    field of `cls`), --config FILE, then a flag per other field. The command receives
    `config_file` and the rest as **flags, for resolve_flags."""
    def decorate(fn: Callable) -> Callable:
        fn = config_options(cls, skip=(argument,) if argument else ())(fn)
        fn = config_file_option(cls, example)(fn)
        return click.argument(argument, **argument_kwargs)(fn) if argument else fn

    return decorate


def resolve_flags(cls: type, config_file: str | None, flags: dict[str, Any]) -> Any:
    """The stage's config: `cls` defaults < the --config YAML < the flags (and argument) given."""
    return resolve_config(cls, config_file, parse_flag_lists(cls, flags))
