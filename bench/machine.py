"""What machine a figure was measured on: CPU model and the flags that decide speed, or the GPU."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model() -> tuple[str, list[str]]:
    """(model name, the SPEED_FLAGS it has) from /proc/cpuinfo; platform's guess elsewhere."""
    info = Path("/proc/cpuinfo")
    name, flags = platform.processor() or platform.machine(), set()
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and name:
                break
    return name, [f for f in SPEED_FLAGS if f in flags]


def machine_summary() -> dict:
    name, flags = cpu_model()
    summary = {"cpu": name, "cpu_flags": flags, "cores": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    summary["label"] = summary["gpu"] or f"{name}, {summary['cores']} cores ({' '.join(flags) or 'no AVX2'})"
    return summary
