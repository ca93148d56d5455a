"""Model zoo: `create_model(name, num_classes, in_chans, input_size, **opts)` over a registry.

Builders are registered with `@register_model` in the modules imported below; each takes
num_classes, in_chans and input_size=(C, H, W) (from the data's meta.json) plus its own options.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.catalog import MODELS, register_model  # noqa: F401 (re-exported)

# Registration happens on import; keep this list in sync with the files in this folder.
from pipeline.models import simple, resnet, vgg, airbench, timm_models  # noqa: E402,F401


def list_models() -> list[str]:
    return MODELS.names()


def model_options(name: str) -> dict[str, Any]:
    """The options a model accepts, with their defaults."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("num_classes", "in_chans", "input_size") and p.kind == p.KEYWORD_ONLY
    }


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    input_size: tuple[int, int, int] | None = None,
    **opts: Any,
) -> nn.Module:
    builder = _builder(name)
    if name.startswith("timm:"):
        return builder(name.split(":", 1)[1], num_classes=num_classes, in_chans=in_chans,
                       input_size=input_size, **opts)
    known = model_options(name)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        listed = ", ".join(f"{k}={v}" for k, v in known.items()) or "none"
        raise PipelineError(f"model '{name}' has no option {', '.join(unknown)}; options: {listed}")
    input_size = input_size or (in_chans, 32, 32)
    return builder(num_classes=num_classes, in_chans=in_chans, input_size=tuple(input_size), **opts)


def _builder(name: str):
    if name.startswith("timm:"):
        return MODELS.get("timm")
    if name == "timm":
        raise PipelineError("name a timm model as 'timm:<name>', e.g. timm:resnet18")
    if name not in MODELS and _timm_has(name):
        raise PipelineError(f"unknown model '{name}'; timm has it: use 'timm:{name}'")
    return MODELS.get(name)


def _timm_has(name: str) -> bool:
    """Whether timm knows `name` (imported only on this error path: it costs a second)."""
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(name))


def parse_model_opts(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`key=value` strings from --model-opt into typed values (YAML scalars: 1, 0.5, true, relu)."""
    import yaml

    opts: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise PipelineError(f"--model-opt '{pair}': expected key=value")
        key, value = pair.split("=", 1)
        opts[key.strip()] = yaml.safe_load(value)
    return opts
