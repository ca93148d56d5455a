"""Per-sample geometric transforms on batches of float images (N, C, H, W), any device."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.augment.fast import gather_crops, pad_images


def padded_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by `pad`, then crop back to H x W at per-image offsets (top, left) in [0, 2 pad]."""
    sources = pad_images(x, pad).unsqueeze(0)  # one copy: fast.gather_crops picks windows of it
    copy = torch.zeros_like(top)
    return gather_crops(sources, copy, torch.arange(len(x), device=x.device), top, left, x.shape[-2:])


def rotate_translate(x: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by `degrees` (counter-clockwise as displayed, as
    albumentations' Affine) and translate it by shift (N, 2) = (x, y) pixels; bilinear, zero fill.

    albumentations maps a source pixel p to c + t + R (p - c) (c the centre (W/2 - 0.5, H/2 - 0.5),
    R = [[cos, sin], [-sin, cos]]); the grid needs the inverse, p = c + R^T (q - c - t), written in
    affine_grid's coordinates (align_corners=False: -1 and 1 are the outer pixel edges, 0 is c).
    """
    height, width = x.shape[-2:]
    angle = degrees * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # R^T in normalised coordinates: S^-1 R^T S with S = diag(W/2, H/2)
    theta = torch.stack([
        torch.stack([cos, -sin * (height / width)], -1),
        torch.stack([sin * (width / height), cos], -1),
    ], 1)  # (N, 2, 2)
    t = torch.stack([shift[:, 0] * (2.0 / width), shift[:, 1] * (2.0 / height)], -1).to(x.dtype)
    offset = -(theta @ t.unsqueeze(-1))  # (N, 2, 1)
    grid = F.affine_grid(torch.cat([theta, offset], -1), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
