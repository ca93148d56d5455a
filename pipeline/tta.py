"""Test-time augmentation levels over a registry: a level is a weighted set of views.

A view is a horizontal mirror (along the width axis) and/or a translation by (dy, dx) pixels whose
uncovered border is filled with zeros or by reflection. Views act on uint8 NCHW batches *before*
normalisation. A level's prediction is the weighted mean of its views' **logits** (as airbench
does): logits average without saturating and the result is still a logit, so the ensemble stage
can choose between probability and logit averaging itself.

    none        1 view:  identity
    flip        2 views: identity, mirror; equal weights
    flip+shift  6 views: {identity, mirror} x {no shift, (+2, +2), (-2, -2)} with zero fill (the
                standard policy's training crop pads with zeros), equal weights
    airbench    6 views, the paper's mirror+translate level (Jordan 2024, tta_level=2): identity and
                mirror weighted 1/4 each; {identity, mirror} x {(+1, +1), (-1, -1)} translated by one
                pixel with reflect fill (its training translate reflects too), weighted 1/8 each
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from pipeline.augment.fast import pad_images
from pipeline.errors import PipelineError
from pipeline.registry import Registry

TTA_LEVELS = Registry("TTA level")
register_tta = TTA_LEVELS.register

SHIFT = 2  # pixels of the flip+shift level: the standard crop's typical offset


@dataclass(frozen=True)
class View:
    mirror: bool = False
    shift: tuple[int, int] = (0, 0)  # (dy, dx): content moves down by dy and right by dx
    fill: str = "zero"  # what enters at the border when shifted: zero or reflect

    def __str__(self) -> str:
        shift = [f"shift{self.shift}" + ("reflect" if self.fill == "reflect" else "")] if any(self.shift) else []
        return "+".join((["mirror"] if self.mirror else []) + shift) or "identity"


def _equal(*views: View) -> tuple[tuple[View, float], ...]:
    return tuple((view, 1.0 / len(views)) for view in views)


@register_tta("none")
def _none() -> tuple[tuple[View, float], ...]:
    return _equal(View())


@register_tta("flip")
def _flip() -> tuple[tuple[View, float], ...]:
    return _equal(View(), View(mirror=True))


@register_tta("flip+shift")
def _flip_shift() -> tuple[tuple[View, float], ...]:
    shifts = ((0, 0), (SHIFT, SHIFT), (-SHIFT, -SHIFT))
    return _equal(*(View(mirror, shift) for mirror in (False, True) for shift in shifts))


@register_tta("airbench")
def _airbench() -> tuple[tuple[View, float], ...]:
    # The paper mirrors a translated image; mirroring first and then shifting by (dy, -dx) is the
    # same image, which keeps one View form (mirror, then translate).
    translated = [View(False, (1, 1), "reflect"), View(True, (1, -1), "reflect"),
                  View(False, (-1, -1), "reflect"), View(True, (-1, 1), "reflect")]
    return ((View(), 0.25), (View(mirror=True), 0.25), *((view, 0.125) for view in translated))


def level_views(name: str) -> tuple[View, ...]:
    return tuple(view for view, _ in TTA_LEVELS.get(name)())


def level_weights(name: str) -> tuple[float, ...]:
    return tuple(weight for _, weight in TTA_LEVELS.get(name)())


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
    """The view of a (N, C, H, W) batch: mirror along W, then translate (zero or reflect fill)."""
    if view.mirror:
        images = images.flip(-1)
    dy, dx = view.shift
    if dy or dx:
        images = translate(images, dy, dx, view.fill)
    return images


def translate(images: torch.Tensor, dy: int, dx: int, fill: str = "zero") -> torch.Tensor:
    """out[..., i, j] = images[..., i - dy, j - dx]; outside the image zero, or the reflection
    (edge not repeated) with fill="reflect"."""
    height, width = images.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        raise PipelineError(f"TTA shift ({dy}, {dx}) is as large as the {height}x{width} image")
    if fill == "reflect":
        pad = max(abs(dy), abs(dx))
        padded = pad_images(images, pad, "reflect")
        return padded[..., pad - dy:pad - dy + height, pad - dx:pad - dx + width]
    out = torch.zeros_like(images)
    out[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def combine(view_logits: dict[View, torch.Tensor], level: str) -> torch.Tensor:
    """A level's logits: the weighted mean of its views' logits."""
    return sum(weight * view_logits[view] for view, weight in TTA_LEVELS.get(level)())
