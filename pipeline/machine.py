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


def machine_label() -> str:
    """What a speed figure was measured on, as one line: the GPU's name, else the CPU model, core
    count and speed flags (bench/machine.py's label, which the leaderboard has always printed)."""
    import os

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name, flags = cpu_model()
    return f"{name}, {os.cpu_count()} cores ({' '.join(flags) or 'no AVX2'})"


def machine_id(label: str | None = None) -> str:
    """A folder name for `label`'s figures: a readable slug, then a hash of the whole label, so
    two machines whose slugs agree (same model name, other flags or core count) never share one."""
    import hashlib
    import re

    label = label if label is not None else machine_label()
    words = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b", " ", label.split(",")[0], flags=re.I)
    slug = "-".join(re.findall(r"[a-z0-9]+", words.lower()))[:32].strip("-") or "machine"
    cores = re.search(r"(\d+) cores", label)
    return f"{slug}{'-' + cores.group(1) + 'c' if cores else ''}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"
