"""`timm:<name>`: any timm architecture, built for this data's classes and channels (no weights).

Pretrained weights are never downloaded (the pipeline must run offline and reproducibly), so
`pretrained` is refused as an option. Models with a fixed input size (ViTs and friends) are built
for the data's H x W unless `img_size` is given.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.catalog import register_model
from pipeline.registry import did_you_mean


@register_model("timm")
def timm_builder(timm_name: str, *, num_classes: int, in_chans: int, input_size=None,
                 **opts: Any) -> nn.Module:
    import timm  # heavy import, only paid by those who use timm models
    from timm.models import get_pretrained_cfg

    if not timm.is_model(timm_name):
        hint = did_you_mean(f"timm:{timm_name}", (f"timm:{n}" for n in timm.list_models()))
        raise PipelineError(f"unknown timm model 'timm:{timm_name}'{hint}; all names: "
                            "python -c 'import timm; print(timm.list_models())'")
    if "pretrained" in opts or "pretrained_cfg_overlay" in opts:
        raise PipelineError(f"timm:{timm_name}: pretrained weights are not supported (no downloads)")
    cfg = get_pretrained_cfg(timm_name)
    if input_size is not None and "img_size" not in opts and cfg is not None and cfg.fixed_input_size:
        opts["img_size"] = tuple(int(v) for v in input_size[1:])
    try:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, **opts)
    except TypeError as e:
        # timm forwards unknown kwargs to the model's __init__, which rejects them with a TypeError
        listed = ", ".join(f"{k}={v!r}" for k, v in opts.items())
        raise PipelineError(f"timm:{timm_name}: invalid option(s) {listed} ({e})") from None
