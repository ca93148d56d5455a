"""The ECE 590 lab policy, batched: albu.lab_policy's transforms in plain torch ops, any device.

Per image, as albumentations' A.RandomOrder(n=5) then A.Erasing: the five transforms in the
image's own random order, each applied with its probability and its own random parameters:
  vflip .10, hflip .15 (0 with hflip=False), zero-pad 4 + random crop back .15,
  affine (rotate U(-45, 45) about the centre, translate int(U(-.15, .15) * side) px; bilinear,
  zero fill) .20, colour jitter (brightness, contrast, saturation U(.9, 1.1), hue U(-.05, .05)
  turns, in a per-image random order; see color.py) .15; then erasing .10.
Erasing follows albumentations 2.0.8's A.Erasing (scale (0.02, 0.33), ratio (0.3, 3.3), fill 0),
which is not torchvision's rule: the area is uniform on [scale_lo * HW, the largest area every
allowed ratio fits], the ratio uniform (not log-uniform) on the range that fits that area, the
sides rounded; it always fits, so no retries and no skipped erase.
Images stay float between steps, holding the integers a uint8 image would (see color.py).

All random numbers are drawn up front (`draw`) for a whole epoch; the call then touches only
tensors. Only the order of the transforms an image applies matters, so images are stepped through
by rank among their applied transforms (most apply 0-2 of the 5): on CPU the images of each
(rank, transform) are indexed out and transformed together; on accelerators every transform runs
on the whole batch at each rank and torch.where keeps the right images, so nothing waits on the
host (run_in_order; LabPolicy(sync_free=...) chooses); the per-batch ops build no tensors from
Python lists (each would be a host-to-device copy on a GPU).
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.augment import color, geometry
from pipeline.augment.fast import outside_boxes
from pipeline.errors import PipelineError

ORDERED = ("vflip", "hflip", "crop", "affine", "jitter")  # shuffled per image
PROBABILITIES = {"vflip": 0.10, "hflip": 0.15, "crop": 0.15, "affine": 0.20, "jitter": 0.15, "erase": 0.10}
ROTATE, TRANSLATE = 45.0, 0.15
BRIGHTNESS = CONTRAST = SATURATION = 0.1
HUE = 0.05
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


Step = tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None  # fn(x, *per-image params)


def ranks(applied: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """(N, T): where step t falls among the steps image i applies (those with applied[i, t]), given
    each step's place in the image's order; an image's unapplied steps do not hold the others back."""
    before = position.unsqueeze(1) < position.unsqueeze(2)  # [i, t, j]: j comes before t
    return (before & applied.unsqueeze(1)).sum(2)


def run_in_order(x: torch.Tensor, applied: torch.Tensor, rank: torch.Tensor, steps: list[Step], *,
                 sync_free: bool) -> torch.Tensor:
    """Apply step t to each image i with applied[i, t], in increasing rank[i, t], each image with its
    own params. sync_free (accelerators): every step on the whole batch at every rank, kept by
    torch.where. Otherwise (CPU): one sort groups the images by (rank, step), each group indexed out."""
    count = len(steps)
    if sync_free:
        for level in range(count):
            for t, step in enumerate(steps):
                if step is not None:
                    fn, params = step
                    keep = (applied[:, t] & (rank[:, t] == level)).view(-1, 1, 1, 1)
                    x = torch.where(keep, fn(x, *params), x)
        return x
    sample, t = applied.nonzero(as_tuple=True)
    key = rank[sample, t] * count + t
    key, by_key = key.sort(stable=True)
    groups = sample[by_key].split(torch.bincount(key, minlength=count * count).tolist())
    for k, index in enumerate(groups):
        if len(index) and steps[k % count] is not None:
            fn, params = steps[k % count]
            apply_to_rows(x, index, fn, params)
    return x


def apply_to_rows(x: torch.Tensor, index: torch.Tensor, fn: Callable[..., torch.Tensor],
                  params: tuple[torch.Tensor, ...]) -> None:
    """x[index] = fn(x[index], *(p[index] for p in params)), in place, with the dim-0 kernels
    (index_select / index_copy_: faster on CPU than x[index] indexing)."""
    x.index_copy_(0, index, fn(x.index_select(0, index), *(p.index_select(0, index) for p in params)))


def erase_boxes(height: int, width: int, count: int, u: Callable[..., torch.Tensor], device: torch.device) -> dict:
    """A.Erasing's box per image (albumentations 2.0.8 get_params_dependent_on_data, batched)."""
    area = height * width
    r_lo, r_hi = ERASE_RATIO
    lo = area * ERASE_SCALE[0]
    hi = min(area * ERASE_SCALE[1], r_lo * height * height, width * width / r_hi)
    if hi < lo:  # no box fits (albumentations erases nothing)
        zeros = torch.zeros(count, dtype=torch.long, device=device)
        return {"erase_top": zeros, "erase_left": zeros, "erase_h": zeros, "erase_w": zeros}
    a = lo + (hi - lo) * u(count)
    ratio_lo = torch.clamp(a / (height * height), min=r_lo)
    ratio_hi = torch.clamp(width * width / a, max=r_hi)
    ratio = ratio_lo + (ratio_hi - ratio_lo) * u(count)
    h = torch.round(torch.sqrt(a / ratio)).long()  # round half to even, as Python's round
    w = torch.round(torch.sqrt(a * ratio)).long()
    top = (u(count) * (height - h + 1)).long()  # randint(0, H - h), inclusive
    left = (u(count) * (width - w + 1)).long()
    return {"erase_top": top, "erase_left": left, "erase_h": h, "erase_w": w}


class LabPolicy:
    """Batched lab policy for (height, width) images; `p` overrides probabilities (tests force them)."""

    def __init__(self, height: int, width: int, *, pad: int = 4, hflip: bool = True,
                 p: dict[str, float] | None = None, sync_free: bool | None = None):
        unknown = set(p or {}) - set(PROBABILITIES)
        if unknown:
            raise PipelineError(f"unknown lab transform(s) {sorted(unknown)}; "
                                f"choose from: {', '.join(PROBABILITIES)}")
        if any(not 0 <= value <= 1 for value in (p or {}).values()):
            raise PipelineError(f"lab transform probabilities must be in [0, 1], got {p}")
        if pad < 0:
            raise PipelineError(f"crop padding must be >= 0, got {pad}")
        self.height, self.width, self.pad = height, width, pad
        self.p = {**PROBABILITIES, **(p or {}), **({} if hflip else {"hflip": 0.0})}  # hflip=False wins
        self.sync_free = sync_free

    def draw(self, count: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """Every per-image random number for `count` images, in a fixed sequence from `generator`."""
        def u(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        def symmetric(limit: float, *shape: int) -> torch.Tensor:
            return (2 * u(*shape) - 1) * limit

        names = (*ORDERED, "erase")
        applies = u(count, len(names)) < torch.tensor([self.p[n] for n in names], device=device)
        position = u(count, len(ORDERED)).argsort(1)  # [i, t]: transform t's place in image i's order
        draws = {
            "position": position,
            "applied": applies[:, :len(ORDERED)],
            "rank": ranks(applies[:, :len(ORDERED)], position),
            "do_erase": applies[:, -1],
            "crop_top": torch.randint(2 * self.pad + 1, (count,), generator=generator, device=device),
            "crop_left": torch.randint(2 * self.pad + 1, (count,), generator=generator, device=device),
            "angle": symmetric(ROTATE, count),
            # int() of the fraction times the side, as albumentations: truncation toward zero
            "shift": torch.trunc(symmetric(TRANSLATE, count, 2)
                                 * torch.tensor([self.width, self.height], device=device)),
            "jitter": 1 + symmetric(1.0, count, 3) * torch.tensor([BRIGHTNESS, CONTRAST, SATURATION],
                                                                   device=device),
            "hue": symmetric(HUE, count),
            "jitter_rank": u(count, len(color.ADJUSTMENTS)).argsort(1),  # [i, a]: adjustment a's place
        }
        draws.update(erase_boxes(self.height, self.width, count, u, device))
        return draws

    def __call__(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, H, W); draws: this batch's slice of `draw`'s output."""
        # Every step leaves whole numbers in [0, 255] (each rounds or floors, and clamps), so the
        # cast is exact: no round or clamp pass over the batch here.
        return self.augment_float(images, draws).to(torch.uint8)

    def augment_float(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy before the cast back to uint8: float images holding whole numbers in [0, 255]."""
        sync_free = images.device.type != "cpu" if self.sync_free is None else self.sync_free
        x = images.float()
        steps = {
            "vflip": (lambda x: x.flip(-2), ()),
            "hflip": (lambda x: x.flip(-1), ()),
            "crop": (lambda x, top, left: geometry.padded_crop(x, top, left, self.pad),
                     (draws["crop_top"], draws["crop_left"])),
            "affine": (lambda x, angle, shift: geometry.rotate_translate(x, angle, shift).round_(),
                       (draws["angle"], draws["shift"])),
            "jitter": (lambda x, *params: jitter(x, *params, sync_free=sync_free),
                       (draws["jitter"], draws["hue"], draws["jitter_rank"])),
        }
        active = [steps[name] if self.p[name] > 0 else None for name in ORDERED]
        x = run_in_order(x, draws["applied"], draws["rank"], active, sync_free=sync_free)
        return self.erase(x, draws, sync_free=sync_free)

    def erase(self, x: torch.Tensor, draws: dict[str, torch.Tensor], *, sync_free: bool) -> torch.Tensor:
        """Zero each erasing image's box. sync_free: one mask multiply over the batch (a box of size
        0 erases nothing); on CPU only the ~10% of images that erase are indexed out and masked."""
        erase = draws["do_erase"]
        box = (draws["erase_top"], draws["erase_left"], draws["erase_h"], draws["erase_w"])
        if sync_free:
            top, left, h, w = box
            return x * outside_boxes((self.height, self.width), top, left, h * erase, w * erase)
        index = erase.nonzero().squeeze(1)
        if len(index):
            apply_to_rows(x, index, lambda rows, *b: rows * outside_boxes((self.height, self.width), *b), box)
        return x


def jitter(x: torch.Tensor, factors: torch.Tensor, hue: torch.Tensor, rank: torch.Tensor, *,
           sync_free: bool) -> torch.Tensor:
    """Colour jitter: all four adjustments, in each image's own order (rank[i, a]: adjustment a's place)."""
    params = (factors[:, 0], factors[:, 1], factors[:, 2], hue)
    steps = [(adjust, (param,)) for adjust, param in zip(color.ADJUSTMENTS, params)]
    return run_in_order(x, torch.ones_like(rank, dtype=torch.bool), rank, steps, sync_free=sync_free)
