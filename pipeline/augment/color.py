"""Per-sample colour jitter on batches of float images (N, C, H, W) holding the whole numbers of
uint8 images (lab.py keeps them so between steps), any device.

The four adjustments follow albumentations' ColorJitter (its torchvision-compatible functions):
brightness multiplies, contrast blends with the mean of the image's grey (0.299 R + 0.587 G +
0.114 B, OpenCV's weights), saturation blends with the grey image, hue rotates each pixel's HSV
hue by a fraction of a turn (albumentations shifts OpenCV's 0-180 hue by 180 * factor: the same
turn) in a closed form batched over pixels (not a YIQ rotation: that differs from HSV by ~3 levels
on average at 0.05 turns). Each step returns what albumentations' uint8 path does: clipped to
[0, 255], truncated (brightness, contrast: its lookup tables) or rounded (saturation, hue:
OpenCV). On 1-channel images saturation and hue are skipped, as albumentations skips them.
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
    # Python scalars, not a weights tensor: building one on a GPU every call would copy from the host.
    (wr, wg, wb), (r, g, b) = GREY_WEIGHTS, x.unbind(1)
    return (wr * r + wg * g + wb * b).unsqueeze(1)


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


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's HSV hue by shift (a fraction of a turn, per image), keeping S and V.

    Per pixel: h6 (hue in sixths of a turn) from the max, min and ordering of R, G, B; then the
    closed-form HSV->RGB c_n = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + h6') mod 6 with
    n = 5, 3, 1 for R, G, B (V = max, V S = max - min): elementwise ops only, no HSV tensor.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    top, bottom = x.amax(1), x.amin(1)
    span = top - bottom
    safe = span.clamp(min=1)  # whole numbers: a span is 0 (grey: any hue, span 0 anyway) or >= 1
    h6 = torch.where(top == r, (g - b) / safe, torch.where(top == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h6 = h6 + 6 * shift.view(-1, 1, 1)
    # n = 5, 3, 1 for R, G, B, in one broadcast add (arange: no host-to-device copy on a GPU)
    k = h6.unsqueeze(1) + (5 - 2 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)
    k = k - 6 * torch.floor(k / 6)  # mod 6 (torch.remainder is ~15x slower on CPU)
    out = top.unsqueeze(1) - span.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)
    return out.clamp_(0, 255).round_()


# In albumentations' index order: ColorJitter's `order` permutes these four.
ADJUSTMENTS = (brightness, contrast, saturation, hue)
