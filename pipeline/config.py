"""One config object per stage: dataclass defaults < YAML file < CLI flags, saved as plain values."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.artifacts import atomic_write_text
from pipeline.errors import PipelineError
from pipeline.registry import Registry, did_you_mean

C = TypeVar("C")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise PipelineError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def resolve_config(
    cls: type[C],
    config_file: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> C:
    """Build `cls` from its defaults, then the YAML file, then the non-None CLI overrides."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if config_file:
        sources.append((str(config_file), load_yaml(config_file)))
    if overrides:
        sources.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for origin, data in sources:
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise PipelineError(
                    f"{origin}: unknown config key '{key}'; known keys: {', '.join(sorted(fields))}"
                )
            values[key] = _coerce(cls, fields[key], value, origin)
    cfg = cls(**values)
    check_fields(cfg)
    return cfg


def field_choices(f: dataclasses.Field) -> tuple[list[str], Registry | None] | None:
    """The values a field declared with `choices=` accepts: (names, the registry they come from or
    None), or None for a free field. A callable is called now, so a registry's names are current."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    if callable(choices) and not isinstance(choices, Registry):
        choices = choices()
    registry = choices if isinstance(choices, Registry) else None
    return [*f.metadata.get("also", ()), *(registry.names() if registry else choices)], registry


def check_fields(cfg: Any) -> None:
    """What the fields declare about their values (required=, choices=, minimum=), checked in one
    place, one line per bad value: every stage runs this before it reads any data."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("required") and value in (None, "", []):
            raise PipelineError(f"'{f.name}' is required ({f.metadata.get('help', '').rstrip('.')}): give it on the "
                                "command line or in --config")
        if value is None:
            continue
        minimum = f.metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise PipelineError(f"--{f.name.replace('_', '-')} must be at least {minimum}, got {value}")
        found = field_choices(f)
        if found is None:
            continue
        names, registry = found
        for item in value if isinstance(value, list) else [value]:
            if item in names:
                continue
            if registry is not None:
                registry.get(item)  # the registry's own one-line error (with its guesses)
            raise PipelineError(f"unknown {f.name.replace('_', ' ')} '{item}'{did_you_mean(item, names)}; "
                                f"choose from: {', '.join(names)}")


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))


def safe_url(storage: str) -> str:
    """A database URL without its password, fit for a saved config or a message."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a parseable URL: keep only the scheme
        return storage.split("://", 1)[0] + "://..." if "://" in storage else storage


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list", tuple: "a list", dict: "a mapping"}


def unwrap_optional(hint: Any) -> Any:
    """Optional[X] and X | None -> X; any other hint unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _coerce(cls: type, field: dataclasses.Field, value: Any, origin: str) -> Any:
    """A YAML or CLI value as the field's type, or one line naming the file, key, type and value."""
    hint = typing.get_type_hints(cls).get(field.name)
    inner = unwrap_optional(hint)
    if inner is not hint and value is None:
        return None
    base = typing.get_origin(inner) or inner
    try:
        return _as_type(base, value)
    except (TypeError, ValueError):
        expected = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
        raise PipelineError(f"{origin}: config key '{field.name}' expects {expected}, got {value!r}") from None


def _as_type(base: Any, value: Any) -> Any:
    if isinstance(value, bool) and base is not bool:
        raise TypeError  # YAML's yes/no/true are not numbers or strings here
    if base is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        raise TypeError
    if base is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)) and not isinstance(value, float):
            return int(value)
        raise TypeError  # 1.5 for an integer key is a mistake, not something to round
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise TypeError
    if base is str:
        if isinstance(value, (str, int, float)):
            return str(value)
        raise TypeError
    if base in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value) if base is list else tuple(value)
        raise TypeError
    if base is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeError
    return value
