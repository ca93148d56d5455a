"""Where and how tensors run: device choice, autocast precision, and uint8 batches -> model input.

Shared by train, predict and bench so all three feed the model exactly the same way.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch

from pipeline.errors import PipelineError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device '{name}' asked for, but CUDA is not available on this machine")
    return device


def fallback_precision(device: torch.device) -> str:
    """What "auto" means when nothing was measured (--no-probe, a run too short to probe, predict
    without a trained precision): the choice that is never catastrophic. On CPUs bf16 is fast only
    where the hardware computes in it and is emulated, many times slower, elsewhere, so fp32 there;
    on CUDA the half type the GPU has. The probe (pipeline/train/probe.py) measures instead."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def fallback_channels_last(device: torch.device) -> bool:
    """Unmeasured memory format: channels_last (what cuDNN/oneDNN convolutions prefer)."""
    return True


def fallback_compile(device: torch.device) -> bool:
    """Unmeasured compile: off (a compile costs tens of seconds before it can pay off)."""
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> fallback_precision(device) (the probe settles "auto" for training by measurement
    before this is reached); other names pass through unchanged."""
    return fallback_precision(device) if precision == "auto" else precision


def check_precision(precision: str, device: torch.device) -> None:
    """Whether `device` can run `precision`, checked once as a stage starts (before any data is read);
    the name itself is one of the config field's choices (pipeline.config.check_fields)."""
    if resolve_precision(precision, device) == "fp16" and device.type != "cuda":
        raise PipelineError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.amp.autocast for bf16/fp16, a no-op for fp32 ("auto": see resolve_precision)."""
    return autocast_factory(device, precision)()


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """Map the precision to its dtype once; the returned function makes each step's context."""
    dtype = PRECISIONS[resolve_precision(precision, device)]
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.amp.autocast, device_type=device.type, dtype=dtype)


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device):
    """Per-channel (x/255 - mean)/std as one fused multiply-add: scale and shift shaped (1, C, 1, 1)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -mean_t / std_t
    return scale, shift


def to_model_input(
    batch_nchw_uint8: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 NCHW -> normalised float32, optionally in channels_last memory format."""
    x = torch.addcmul(shift, batch_nchw_uint8.float(), scale)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def nhwc_to_nchw(images) -> torch.Tensor:
    """Canonical uint8 NHWC numpy arrays -> a uint8 NCHW tensor (a view-friendly permute + copy)."""
    t = torch.from_numpy(images) if not isinstance(images, torch.Tensor) else images
    return t.permute(0, 3, 1, 2).contiguous()
