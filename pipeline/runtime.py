"""Where and how tensors run: device choice, autocast precision, and uint8 batches -> model input.

Shared by train, predict and bench so all three feed the model exactly the same way.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

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


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> the fastest safe precision on `device`; other names pass through unchanged.

    bf16 where the hardware computes in it (CUDA with bf16, else fp16; CPUs with AVX512-BF16/AMX).
    On a CPU without native bf16, autocast emulates it: ResNet-20 trained 10-20x slower than fp32
    on the AVX2 dev machine (bench/train_throughput.py), so there "auto" means fp32.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16" if device.type == "cpu" and native_bf16 else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.amp.autocast for bf16/fp16, a no-op for fp32 ("auto": see resolve_precision)."""
    precision = resolve_precision(precision, device)
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision '{precision}'; choose from: auto, {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype is torch.float16:
        raise PipelineError("fp16 autocast is for CUDA; use --precision bf16 on CPU")
    return torch.amp.autocast(device_type=device.type, dtype=dtype)


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
