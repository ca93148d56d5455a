"""Learning-rate schedules by name, as per-iteration multipliers of the peak lr.

Each builder returns f(step) -> factor; build_scheduler wraps it (times an optional linear warmup)
in a LambdaLR that the engine steps after every optimizer step. LambdaLR's state (last_epoch,
base_lrs) is plain values, so it checkpoints and resumes exactly; the factor function itself is
rebuilt from the config.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import torch

from pipeline.errors import PipelineError
from pipeline.registry import Registry

SCHEDULES = Registry("schedule")
Factor = Callable[[int], float]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int) -> "WarpedLambdaLR":
    return WarpedLambdaLR(optimizer, lr_factor(cfg, steps_per_epoch), StepWarp())


class WarpedLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose step count goes through a StepWarp (the identity unless a time-budgeted run
    compressed its schedule). The warp's knots travel in state_dict(), so a resume is exact."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Factor, warp: "StepWarp"):
        self._warp = warp
        # a closure, not an object: LambdaLR would pickle an object's __dict__ into its state_dict
        super().__init__(optimizer, lambda step: factor(warp(step)))

    @property
    def warp(self) -> "StepWarp":
        return self._warp

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("_warp", None)
        state["warp_knots"] = [list(k) for k in self._warp.knots]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        self._warp.knots = [list(k) for k in state.pop("warp_knots", [])]
        super().load_state_dict(state)


class StepWarp:
    """Optimizer step -> the schedule's own step: the identity until compress() fits what is left of
    the schedule into another number of steps (fewer: a time-budgeted run falling behind; more: one
    far ahead early on). The lr goes on from where it is, along the same shape, to the same final
    value, only sooner (or later).

    knots: [[optimizer_step, schedule_step], ...], piecewise linear, plain values (checkpointed).
    """

    def __init__(self, knots: list[list[float]] | None = None):
        self.knots = [list(k) for k in knots or []]

    def __call__(self, step: float) -> float:
        if not self.knots or step <= self.knots[0][0]:
            return step
        for (s0, p0), (s1, p1) in zip(self.knots, self.knots[1:]):
            if step <= s1:
                return p0 + (p1 - p0) * (step - s0) / (s1 - s0)
        s_end, p_end = self.knots[-1]
        return p_end + (step - s_end)

    def compress(self, at_step: int, new_total: int, schedule_total: int) -> None:
        """From optimizer step at_step on, reach the schedule's end (schedule_total) at new_total."""
        if new_total <= at_step:
            raise ValueError(f"new_total {new_total} must come after step {at_step}")
        here = self(at_step)
        self.knots = [k for k in self.knots if k[0] < at_step] + [[at_step, here], [new_total, schedule_total]]

    @property
    def end(self) -> int | None:
        """The optimizer step where the compressed schedule ends (None: not compressed)."""
        return int(self.knots[-1][0]) if self.knots else None


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps of a run of `epochs` (fractional epochs round up to a whole step, as airbench)."""
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))


def lr_factor(cfg, steps_per_epoch: int) -> Factor:
    if steps_per_epoch < 1:
        raise PipelineError("no training steps per epoch: the training set is smaller than one batch")
    total = total_steps(cfg.epochs, steps_per_epoch)
    base = SCHEDULES.get(cfg.schedule)(cfg, steps_per_epoch, total)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if warmup <= 0:
        return base
    # Linear warmup from 1/warmup of the lr, multiplied onto whatever the schedule says.
    return lambda step: base(step) * min(1.0, (step + 1) / warmup)


@SCHEDULES.register("constant")
def constant(cfg, steps_per_epoch: int, total: int) -> Factor:
    return lambda step: 1.0


@SCHEDULES.register("step")
def step_decay(cfg, steps_per_epoch: int, total: int) -> Factor:
    """x gamma every `step_epochs` epochs (staircase), e.g. --gamma 0.96 --step-epochs 2."""
    every = cfg.step_epochs * steps_per_epoch
    if every <= 0:
        raise PipelineError("--step-epochs must be positive for the step schedule")
    return lambda step: cfg.gamma ** math.floor(step / every)


@SCHEDULES.register("multistep")
def multistep(cfg, steps_per_epoch: int, total: int) -> Factor:
    """x gamma at each milestone, given as fractions of training (0.5, 0.75 = the ResNet paper)."""
    if any(not 0.0 < m < 1.0 for m in cfg.milestones):
        raise PipelineError(f"--milestones are fractions of training in (0, 1), got {list(cfg.milestones)}")
    marks = sorted(round(m * cfg.epochs) * steps_per_epoch for m in cfg.milestones)
    return lambda step: cfg.gamma ** bisect.bisect_right(marks, step)


@SCHEDULES.register("exponential")
def exponential(cfg, steps_per_epoch: int, total: int) -> Factor:
    """x gamma per epoch, applied smoothly every iteration."""
    return lambda step: cfg.gamma ** (step / steps_per_epoch)


@SCHEDULES.register("cosine")
def cosine(cfg, steps_per_epoch: int, total: int) -> Factor:
    """Half a cosine from lr to min_lr over the steps after the warmup (set --warmup-epochs)."""
    floor = cfg.min_lr / cfg.lr
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    span = max(1, total - warmup)
    return lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, step - warmup) / span)))


@SCHEDULES.register("triangle")
def triangle(cfg, steps_per_epoch: int, total: int) -> Factor:
    """Piecewise linear (airbench): lr_start_factor at step 0, 1 at step int(pct_start*total), then
    lr_end_factor at the last step (total). pct_start 0 is a plain linear decay from the peak."""
    if not 0.0 <= cfg.pct_start < 1.0:
        raise PipelineError(f"--pct-start must be in [0, 1) for the triangle schedule, got {cfg.pct_start}")
    start, end = cfg.lr_start_factor, cfg.lr_end_factor
    peak = int(cfg.pct_start * total)

    def factor(step: int) -> float:
        if step < peak:
            return start + (1.0 - start) * step / peak
        return 1.0 + (end - 1.0) * min(1.0, (step - peak) / max(1, total - peak))

    return factor


@SCHEDULES.register("onecycle")
def onecycle(cfg, steps_per_epoch: int, total: int) -> Factor:
    """Smith's one-cycle, step for step as torch's OneCycleLR (cos annealing, no momentum cycling):
    lr/25 rising to lr until step pct_start*total - 1, then falling to min_lr at the last step."""
    if not 0.0 < cfg.pct_start < 1.0:
        raise PipelineError(f"--pct-start must be in (0, 1), got {cfg.pct_start}")
    start, floor = 1 / 25, cfg.min_lr / cfg.lr
    peak = max(0.0, cfg.pct_start * total - 1)
    last = max(total - 1, peak + 1)

    def factor(step: int) -> float:
        if step <= peak and peak > 0:
            return _cos_between(start, 1.0, step / peak)
        return _cos_between(1.0, floor, min(1.0, (step - peak) / (last - peak)))

    return factor


def _cos_between(a: float, b: float, t: float) -> float:
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))
