"""What machine this is, in the words a speed figure needs: CPU model and its speed flags, or the GPU."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

# The CPU flags that decide which precision is fast: bf16 is computed natively only with
# avx512_bf16/amx_bf16, and emulated (slowly) elsewhere.
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


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' or 'Intel(R) Xeon(R) ... [avx2 avx512f] x2 threads': what a speed depends on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, flags = cpu_model()
    return f"{name} [{' '.join(flags) or 'no avx2'}] x{torch.get_num_threads()} threads"
