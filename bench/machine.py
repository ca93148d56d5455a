"""What machine a figure was measured on: CPU model and the flags that decide speed, or the GPU."""
from __future__ import annotations

import os

import torch

# SPEED_FLAGS: re-exported
from pipeline.machine import SPEED_FLAGS, cpu_model, machine_id, machine_label  # noqa: F401


def machine_summary() -> dict:
    name, flags = cpu_model()
    summary = {"cpu": name, "cpu_flags": flags, "cores": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    summary["label"] = machine_label()  # the records' folder (machine_id) is named from it
    summary["id"] = machine_id(summary["label"])
    return summary
