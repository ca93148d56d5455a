"""`python -m pipeline info`: per-layer output shapes, parameters and MACs of a model.

Counting rule (hand-checkable): a conv costs k_h * k_w * (C_in / groups) * C_out * H_out * W_out
multiply-accumulates, a linear layer in * out per output vector; bias, BatchNorm, pooling,
activations and parameter-free shortcuts cost nothing. Only conv and linear modules cost MACs:
functional ops (a ViT's attention products q @ k and attn @ v) are not modules and are left out.
Counts come from forward hooks on leaf modules during one forward pass of a single image (eval
mode, no grad); a module's parameters are counted once, the first time it runs, so shared or
re-used modules are not double counted.
Parameters of modules that never run (or that live on a non-leaf module, like a ViT's
cls_token) get a row of their own, so the parameter total always equals the model's.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import click
import torch
from torch import nn

from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.errors import PipelineError

# Leaf modules that only pass their input through: no row in the table.
_SKIPPED = (nn.Identity,)


def summarize(model: nn.Module, input_size: Sequence[int]) -> dict[str, Any]:
    """Per-layer rows {name, type, output_shape, params, macs} in call order and totals.

    Returns {"input_size": [C, H, W], "rows": [...], "totals": {params, trainable_params, macs}}.

    input_size is (C, H, W); MACs are per image. The model's train/eval mode is restored afterwards.
    """
    input_size = tuple(int(v) for v in input_size)
    counted: set[int] = set()  # ids of the parameters already in a row (shared ones count once)
    rows = _called_layer_rows(model, input_size, counted) + _uncalled_parameter_rows(model, counted)
    params = sum(p.numel() for p in model.parameters())
    assert params == sum(r["params"] for r in rows), "every parameter is in exactly one row"
    return {
        "input_size": list(input_size),
        "rows": rows,
        "totals": {
            "params": params,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "macs": sum(r["macs"] for r in rows),
        },
    }


def _called_layer_rows(model: nn.Module, input_size: tuple[int, ...], counted: set[int]) -> list[dict[str, Any]]:
    """A row per leaf layer, in call order, from hooks on one forward pass of a zero image."""
    rows: list[dict[str, Any]] = []

    def own_new_params(module: nn.Module) -> int:
        fresh = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            out = _first_tensor(output)
            rows.append({
                "name": name,
                "type": type(module).__name__,
                "output_shape": list(out.shape[1:]) if out is not None else None,
                "params": own_new_params(module),
                "macs": _macs(module, inputs, out),
            })
        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if not any(True for _ in module.children()) and not isinstance(module, _SKIPPED)
    ]
    was_training = model.training
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device))
    except (RuntimeError, AssertionError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"model does not run on input {_shape_str(input_size)}: {message}") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return rows


def _uncalled_parameter_rows(model: nn.Module, counted: set[int]) -> list[dict[str, Any]]:
    """Rows for parameters no called layer owns (a module that never ran, parameters of a container)."""
    rows = []
    for name, module in model.named_modules():
        fresh = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for _, p in fresh)
        if fresh:
            is_leaf = name and not any(True for _ in module.children())  # a module that never ran
            label = name if is_leaf else ", ".join(f"{name}.{n}" if name else n for n, _ in fresh)
            rows.append({"name": label,
                         "type": type(module).__name__, "output_shape": None,
                         "params": sum(p.numel() for _, p in fresh), "macs": 0})
    return rows


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def _macs(module: nn.Module, inputs, out: torch.Tensor | None) -> int:
    if out is None:
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        # weight is (C_out, C_in/groups, k...) or, transposed, (C_in, C_out/groups, k...):
        # every weight is used once per output position (per input position when transposed).
        positions = inputs[0].shape[2:] if module.transposed else out.shape[2:]
        return module.weight.numel() * math.prod(positions)
    if isinstance(module, nn.Linear):
        vectors = out.numel() // out.shape[0] // module.out_features  # > 1 for token inputs (ViT)
        return module.in_features * module.out_features * vectors
    return 0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A padded markdown table; numbers align right, ints get thousands separators, floats 4 digits.

    Floats: 1,216 (>= 1000, rounded), 31.8, 0.9313; pre-format a column as strings to choose otherwise.
    """
    def fmt(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return "" if value is None else str(value)
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) or r[i] is None
                           for r in rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells] + [3]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                             for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(headers), rule] + [line(c) for c in cells])


def summary_markdown(summary: dict[str, Any]) -> str:
    """The per-layer table of `summarize` with a total row."""
    rows = [
        [r["name"], r["type"], _shape_str(r["output_shape"]) if r["output_shape"] else "-",
         r["params"], r["macs"]]
        for r in summary["rows"]
    ]
    totals = summary["totals"]
    rows.append(["**total**", "", "", totals["params"], totals["macs"]])
    return markdown_table(["layer", "type", "output shape", "params", "MACs"], rows)


def zoo_summary(input_size: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> list[dict[str, Any]]:
    """Params and MACs of every registered model with its default options (timm models excluded)."""
    from pipeline.models import create_model, list_models, model_options

    entries = []
    for name in sorted((n for n in list_models() if n != "timm"), key=natural_key):
        model = create_model(name, num_classes=num_classes, in_chans=input_size[0], input_size=input_size)
        totals = summarize(model, input_size)["totals"]
        entries.append({"model": name, "options": model_options(name),
                        "params": totals["params"], "macs": totals["macs"]})
    return entries


def zoo_markdown(entries: list[dict[str, Any]]) -> str:
    rows = [
        [e["model"], ", ".join(f"{k}={v}" for k, v in e["options"].items()) or "-", e["params"], e["macs"]]
        for e in entries
    ]
    return markdown_table(["model", "options (defaults)", "params", "MACs"], rows)


def parse_input_size(text: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not match or 0 in (sizes := tuple(int(g) for g in match.groups())):
        raise PipelineError(f"--input '{text}': expected CxHxW with positive sizes, e.g. 3x32x32")
    return sizes


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass
class InfoConfig:
    model: Optional[str] = setting(None, "Model name, e.g. resnet20 or timm:resnet18.", short="-m")
    input: str = setting("3x32x32", "Input size CxHxW.")
    model_opts: list[str] = setting([], "Model option (repeatable), e.g. --model-opt shortcut=B.", flag="--model-opt",
                                    multiple=True, metavar="KEY=VALUE")
    classes: int = setting(10, "Number of classes.", minimum=1)
    json: bool = setting(False, "Print JSON instead of a table.")
    zoo: bool = setting(False, "One row per registered model (default options) instead.")


@click.command("info")
@stage_options(InfoConfig)
def command(config_file: str | None, **flags: Any) -> None:
    """Per-layer output shapes, parameters and MACs (multiply-accumulates per image) of a model."""
    from pipeline.models import create_model, parse_model_opts

    # info writes no file, so there is no resolved config to save: it prints only what it shows
    cfg = resolve_flags(InfoConfig, config_file, flags)
    model_name, model_opts, num_classes, as_json = cfg.model, cfg.model_opts, cfg.classes, cfg.json
    input_size = parse_input_size(cfg.input)
    if cfg.zoo:
        if model_name or model_opts:
            raise click.UsageError("--zoo lists every model; drop --model/--model-opt")
        entries = zoo_summary(input_size, num_classes)
        click.echo(json.dumps(entries, indent=2) if as_json else zoo_markdown(entries))
        return
    if not model_name:
        raise click.UsageError("give --model NAME (or --zoo for every model)")
    opts = parse_model_opts(model_opts)
    model = create_model(model_name, num_classes=num_classes, in_chans=input_size[0],
                         input_size=input_size, **opts)
    summary = summarize(model, input_size)
    if as_json:
        click.echo(json.dumps({"model": model_name, "opts": opts, "num_classes": num_classes, **summary},
                              indent=2))
        return
    totals = summary["totals"]
    opt_text = f" ({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else ""
    click.echo(f"{model_name}{opt_text} on {_shape_str(input_size)}, {num_classes} classes\n")
    click.echo(summary_markdown(summary))
    click.echo(f"\n{totals['params']:,} params ({totals['trainable_params']:,} trainable), "
               f"{totals['macs']:,} MACs ({totals['macs'] / 1e6:,.2f} M) per image")
