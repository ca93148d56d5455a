"""Per-sample colour jitter on batches of float images in [0, 255] (N, C, H, W), any device.

The four adjustments follow albumentations' ColorJitter (its torchvision-compatible functions):
brightness multiplies, contrast blends with the mean of the image's grey (0.299 R + 0.587 G +
0.114 B, OpenCV's weights), saturation blends with the grey image, hue rotates the hue of a
batched RGB<->HSV conversion by a fraction of a turn (albumentations shifts OpenCV's 0-180 hue by
180 * factor: the same turn). Each step returns what albumentations' uint8 path does: clipped to
[0, 255], truncated (brightness, contrast: its lookup tables) or rounded (saturation, hue: OpenCV). On
1-channel images saturation and hue are skipped, as albumentations skips them on greyscale.
"""
from __future__ import annotations

import torch

GREY_WEIGHTS = (0.299, 0.587, 0.114)


def _factor(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): the luma of RGB images, or the image itself when it has one channel."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _factor(factor)).clamp_(0, 255).floor_()


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grey(x).mean((1, 2, 3), keepdim=True)
    f = _factor(factor)
    return (x * f + mean * (1 - f)).clamp_(0, 255).floor_()


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    f = _factor(factor)
    return (x * f + grey(x) * (1 - f)).clamp_(0, 255).round_()


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn), per pixel."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    span = maxc - minc
    grey_pixel = span == 0
    s = span / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    span = torch.where(grey_pixel, torch.ones_like(span), span)  # hue 0 there, not 0/0
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey_pixel, torch.zeros_like(h), h)
    return torch.stack([torch.remainder(h / 6.0, 1.0), s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of rgb_to_hsv."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long().remainder(6).unsqueeze(1)  # (N, 1, H, W)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Each sector's (r, g, b) as a choice among (v, p, q, t): one gather, no per-sector masks.
    choices = torch.stack([v, p, q, t], 1)  # (N, 4, H, W)
    table = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], device=x.device)
    pick = table[sector.squeeze(1)].permute(0, 3, 1, 2)  # (N, 3, H, W) indices into choices
    return choices.gather(1, pick)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by shift (fraction of a turn, per image)."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x / 255.0)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return (hsv_to_rgb(hsv) * 255.0).clamp_(0, 255).round_()


# In albumentations' index order: ColorJitter's `order` permutes these four.
ADJUSTMENTS = (brightness, contrast, saturation, hue)
