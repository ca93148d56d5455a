"""Exponential moving average of a model's weights (and float buffers such as BN statistics).

The decay ramps up as min(decay, (1 + step) / (10 + step)) so that short runs (a few hundred
steps) get a useful average instead of one dominated by the random initialisation. The step is the
engine's global step, so nothing beyond the averaged weights needs checkpointing.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.checkpoint import clean_state_dict, unwrap_model


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_state = self.module.state_dict()
        averaged, averaged_from, copied, copied_from = [], [], [], []
        for key, value in unwrap_model(model).state_dict().items():
            target = ema_state[key]
            if target.is_floating_point():
                averaged.append(target)
                averaged_from.append(value.detach())
            else:  # integer buffers like BN's num_batches_tracked
                copied.append(target)
                copied_from.append(value)
        if averaged:
            torch._foreach_lerp_(averaged, averaged_from, 1.0 - d)
        for target, value in zip(copied, copied_from):
            target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(clean_state_dict(state))
