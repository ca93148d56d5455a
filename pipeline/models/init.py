"""Weight initialisations that any model can opt into (train config keys dirac_init, whiten_init).

dirac_init_: each conv starts as an identity on its first in_channels filters (the rest keep their
    random init), an implicit residual connection for plain conv stacks (airbench).
whiten_init_: a first conv with 2*C*k*k filters of size k x k becomes a whitening transform of
    the training images' k x k patches: the eigenvectors of the (uncentered) patch covariance,
    each scaled by 1/sqrt(eigenvalue + eps), followed by their negatives, so that after a GELU both
    signs of every whitened direction survive (airbench's +/- eigenvector pairs).
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import PipelineError


@torch.no_grad()
def dirac_init_(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """Identity-initialise every ungrouped odd-kernel Conv2d of `module` except `skip`; returns how many."""
    count = 0
    for conv in module.modules():
        if not isinstance(conv, nn.Conv2d) or conv in skip or conv.groups != 1:
            continue
        if any(k % 2 == 0 for k in conv.kernel_size):
            continue  # an even kernel has no centre tap to put the identity on
        weight = conv.weight
        nn.init.dirac_(weight[: weight.shape[1]])
        count += 1
    return count


def first_conv(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise PipelineError(f"{type(model).__name__} has no Conv2d layer to initialise as a whitening layer")


def image_patches(images: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Every k x k patch of (N, C, H, W) float images as rows of a (P, C*kh*kw) matrix."""
    kh, kw = kernel
    chans = images.shape[1]
    windows = images.unfold(2, kh, 1).unfold(3, kw, 1)  # N, C, H', W', kh, kw
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, chans * kh * kw)


@torch.no_grad()
def whitening_filters(images: torch.Tensor, kernel: tuple[int, int], eps: float = 5e-4) -> torch.Tensor:
    """(2*C*kh*kw, C, kh, kw) filters: patch-covariance eigenvectors / sqrt(eigenvalue + eps),
    largest eigenvalue first, then the same filters negated."""
    patches = image_patches(images.float(), kernel).double()  # float64: tiny eigenvalues matter
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None])
    filters = filters.reshape(-1, images.shape[1], *kernel)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def whiten_init_(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set `conv`'s weights to whitening_filters of `images` (normalised float NCHW) and freeze them."""
    chans, kernel = conv.in_channels, tuple(conv.kernel_size)
    needed = 2 * chans * kernel[0] * kernel[1]
    if conv.out_channels != needed or conv.groups != 1 or images.shape[1] != chans:
        raise PipelineError(
            f"whitening init needs a first conv with 2*C*k*k = {needed} filters for {chans}-channel "
            f"{kernel[0]}x{kernel[1]} patches; this model's has {conv.out_channels} (groups={conv.groups})")
    filters = whitening_filters(images.to(conv.weight.device), kernel, eps)
    conv.weight.copy_(filters)
    conv.weight.requires_grad_(False)
