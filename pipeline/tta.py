"""Test-time augmentation levels (airbench's none / mirror / mirror+translate) over a registry.

A level is a tuple of views; a view is a horizontal mirror (along the width axis) and/or a
translation by (dy, dx) pixels. Views act on uint8 NCHW batches *before* normalisation, and a
translation fills the uncovered border with zeros, exactly like the training crop
(pipeline/augment/fast.py zero-pads the uint8 images), so a shifted view is an image the model
could have seen in training.

A level's prediction is the plain mean of its views' **logits** (as airbench does): logits
average without saturating and the result is still a logit, so the ensemble stage can choose
between probability and logit averaging itself.

    none        1 view:  identity
    flip        2 views: {identity, mirror}
    flip+shift  6 views: {identity, mirror} x {no shift, shift (+2, +2), shift (-2, -2)}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from pipeline.errors import PipelineError
from pipeline.registry import Registry

TTA_LEVELS = Registry("TTA level")
register_tta = TTA_LEVELS.register

SHIFT = 2  # pixels, as in airbench's translate TTA (a 2 px shift of a 32 px image)


@dataclass(frozen=True)
class View:
    mirror: bool = False
    shift: tuple[int, int] = (0, 0)  # (dy, dx): content moves down by dy and right by dx

    def __str__(self) -> str:
        parts = (["mirror"] if self.mirror else []) + ([f"shift{self.shift}"] if any(self.shift) else [])
        return "+".join(parts) or "identity"


@register_tta("none")
def _none() -> tuple[View, ...]:
    return (View(),)


@register_tta("flip")
def _flip() -> tuple[View, ...]:
    return (View(), View(mirror=True))


@register_tta("flip+shift")
def _flip_shift() -> tuple[View, ...]:
    shifts = ((0, 0), (SHIFT, SHIFT), (-SHIFT, -SHIFT))
    return tuple(View(mirror, shift) for mirror in (False, True) for shift in shifts)


def level_views(name: str) -> tuple[View, ...]:
    return TTA_LEVELS.get(name)()


def parse_levels(values: Iterable[str]) -> list[str]:
    """Repeated and/or comma-separated --tta values -> known level names, in order, no repeats."""
    levels: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            TTA_LEVELS.get(name)  # unknown name -> PipelineError listing the levels
            if name not in levels:
                levels.append(name)
    if not levels:
        raise PipelineError(f"no TTA level given; choose from: {', '.join(TTA_LEVELS.names())}")
    return levels


def most_complete(levels: Sequence[str]) -> str:
    """The level with the most views (the last one given among equals): the one predict saves."""
    best = levels[0]
    for name in levels[1:]:
        if len(level_views(name)) >= len(level_views(best)):
            best = name
    return best


def unique_views(levels: Sequence[str]) -> list[View]:
    """Every view the levels need, each once (levels share views, so each is computed once)."""
    views: list[View] = []
    for name in levels:
        views.extend(v for v in level_views(name) if v not in views)
    return views


def apply_view(images: torch.Tensor, view: View) -> torch.Tensor:
    """The view of a (N, C, H, W) batch: mirror along W, then translate with zero fill."""
    if view.mirror:
        images = images.flip(-1)
    dy, dx = view.shift
    if dy or dx:
        images = translate(images, dy, dx)
    return images


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., i, j] = images[..., i - dy, j - dx], zero where that falls outside the image."""
    height, width = images.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        raise PipelineError(f"TTA shift ({dy}, {dx}) is as large as the {height}x{width} image")
    out = torch.zeros_like(images)
    out[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def combine(view_logits: dict[View, torch.Tensor], level: str) -> torch.Tensor:
    """A level's logits: the mean of its views' logits."""
    return torch.stack([view_logits[v] for v in level_views(level)]).mean(0)
