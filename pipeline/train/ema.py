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
        self._pairs = None
        self._source = None

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self._pairs is None or self._source is not model:
            self._pairs = self._tensor_lists(model)
            self._source = model
        averaged, averaged_from, copied, copied_from = self._pairs
        if averaged:
            torch._foreach_lerp_(averaged, averaged_from, 1.0 - self.decay_at(step))
        if copied:
            torch._foreach_copy_(copied, copied_from)

    def _tensor_lists(self, model: nn.Module):
        """(EMA floats, model floats, EMA ints, model ints): state_dict tensors share storage with
        the live parameters and buffers, so the lists are built once, not every step."""
        ema_state = self.module.state_dict()
        averaged, averaged_from, copied, copied_from = [], [], [], []
        for key, value in unwrap_model(model).state_dict().items():
            target = ema_state[key]
            if target.is_floating_point():
                averaged.append(target)
                averaged_from.append(value)
            else:  # integer buffers like BN's num_batches_tracked
                copied.append(target)
                copied_from.append(value)
        return averaged, averaged_from, copied, copied_from

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(clean_state_dict(state))


class Lookahead:
    """airbench's lookahead-style EMA of a model's float state (weights and BN statistics).

    From the first step after `start_step` that is a multiple of `every`, the EMA starts as a copy
    of the weights; at each later multiple of `every` the EMA moves towards the weights,
    ema = rho * ema + (1 - rho) * weights with rho = decay**every * (step / total)**power (little
    averaging early, strong at the end), and the weights are set to the EMA, as in the Lookahead
    optimizer. end_epoch() copies the EMA back once more, so at every epoch boundary weights and
    EMA are equal and a checkpoint of the weights is all a resume needs (see resume()).
    """

    def __init__(self, model: nn.Module, *, every: int, start_step: int, total_steps: int,
                 decay: float = 0.95, power: float = 3.0):
        # state_dict() tensors share storage with the live parameters/buffers: built once.
        self.targets = [t for t in unwrap_model(model).state_dict().values() if t.is_floating_point()]
        self.every, self.start_step, self.total_steps = every, start_step, total_steps
        self.decay, self.power = decay, power
        self.average: list[torch.Tensor] | None = None

    def rho(self, step: int) -> float:
        return self.decay ** self.every * (step / self.total_steps) ** self.power

    def due(self, step: int) -> bool:
        return step > self.start_step and step % self.every == 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if not self.due(step):
            return
        if self.average is None:
            self.average = [t.detach().clone() for t in self.targets]
            return
        torch._foreach_lerp_(self.average, self.targets, 1.0 - self.rho(step))
        torch._foreach_copy_(self.targets, self.average)

    @torch.no_grad()
    def end_epoch(self) -> None:
        if self.average is not None:
            torch._foreach_copy_(self.targets, self.average)

    def resume(self, step: int) -> None:
        """Rebuild the state after `step` steps, at an epoch boundary (weights == EMA there)."""
        first = (self.start_step // self.every + 1) * self.every  # first due step
        self.average = [t.detach().clone() for t in self.targets] if step >= first else None
