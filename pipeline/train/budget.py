"""Training to a time budget: size the run to fit, then keep it inside while it runs.

plan_steps is the arithmetic: the most optimizer steps whose training, per-epoch evaluation and
checkpoints, and the final write-up fit in the time left. BudgetClock applies it twice: before
training, from the probe's speed (the plan, e.g. "budget 600 s -> 7.4 epochs at 650 img/s"), and
during training from the speed actually seen. If the run falls behind, what is left of the lr
schedule is compressed into fewer steps (schedules.StepWarp: the same shape, down to the same
floor), so the run ends early but finished - annealed, evaluated, checkpointed - and is never cut
off mid-epoch.

plan_budget makes the plan at the start of a run (measuring what an epoch's evaluation and
checkpoints cost); check_in_epoch and check_at_epoch_end keep a running trainer inside it.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pipeline.config import load_yaml
from pipeline.data.dataset import PreparedData
from pipeline.run_layout import CONFIG
from pipeline.runtime import autocast
from pipeline.train import distributed
from pipeline.train.config import TrainConfig
from pipeline.train.probe import ProbeResult
from pipeline.train.schedules import total_steps

log = logging.getLogger(__name__)

# The probe times training steps only; the loader, augmentation and Python around them are not
# in its figure, so the first plan keeps this share of the time in hand. Checks during the run
# correct it with the speed actually seen.
PLAN_SHARE = 0.9
MIN_STEPS_TO_REPLAN = 5  # live steps needed before the live speed replaces the probe's
# The live speed is the typical interval between checks (a step-weighted median: a stall that is
# over stops counting; timed as the run's mean, 20 steps that took 65 s instead of ~21 kept a 600 s
# auto run squeezed to its end, 32 s unused), unless the last RECENT_STEPS steps ran slower by more
# than their noise (airbench94's 43-step epochs vary by +/-3% on the AMX Xeon): then theirs, so a
# machine that slows for good is seen at once.
RECENT_STEPS = 40
RECENT_NOISE = 0.05
# A run ahead of its plan (a pessimistic first estimate, a machine that sped up) is stretched to
# use the budget, but only while a good part of its schedule lies ahead (stretching an lr already
# at its floor buys nothing) and only for a gain above noise (a stretch and a squeeze in turn
# would be noise). At 1.05
# and 0.5 the 60-minute and 10-minute --recipe auto runs left 4.5% and 7% of their budgets unused.
STRETCH_BEFORE = 0.75  # share of the schedule done
STRETCH_MIN_GAIN = 1.02
MAX_EPOCHS = 100_000


def plan_steps(available_s: float, *, step_s: float, epoch_overhead_s: float, final_s: float,
               steps_per_epoch: int, done_steps: int = 0, done_epochs: int = 0,
               max_steps: int | None = None) -> int:
    """The largest total step count T > done_steps such that

        (T - done_steps) * step_s + (ceil(T / steps_per_epoch) - done_epochs) * epoch_overhead_s + final_s

    fits in available_s (one evaluation + checkpoint per epoch started, a partial last epoch
    included). At least done_steps + 1: a run always ends with a step that reaches the floor.
    """
    if steps_per_epoch < 1 or step_s <= 0:
        raise ValueError("steps_per_epoch and step_s must be positive")
    best = done_steps + 1
    first_epoch = done_steps // steps_per_epoch + 1
    limit = max_steps if max_steps is not None else MAX_EPOCHS * steps_per_epoch
    for epoch in range(first_epoch, first_epoch + MAX_EPOCHS):
        room = available_s - final_s - (epoch - done_epochs) * epoch_overhead_s
        fit = done_steps + math.floor(room / step_s + 1e-9)
        total = min(epoch * steps_per_epoch, fit, limit)
        if total <= (epoch - 1) * steps_per_epoch or total <= done_steps:
            break  # not even one step of this epoch fits, nor of any later one
        best = max(best, total)
        if total < epoch * steps_per_epoch or total >= limit:
            break
    return best


@dataclass
class Replan:
    at_step: int
    elapsed_s: float
    old_total: int
    new_total: int
    step_s: float

    def record(self) -> dict[str, Any]:
        return {"at_step": self.at_step, "elapsed_s": round(self.elapsed_s, 2), "old_total": self.old_total,
                "new_total": self.new_total, "step_s": round(self.step_s, 5)}


@dataclass
class BudgetClock:
    """The time budget of one run: its plan, and checks against it while the run goes on.

    started: time.time() when the run began (setup and probe count against the budget).
    """

    budget_s: float
    started: float
    steps_per_epoch: int
    batch_size: int
    step_s: float  # planning estimate, from the probe
    epoch_overhead_s: float  # evaluation + checkpoints per epoch (estimate, then measured)
    final_s: float  # the run's last write-up (curves, manifest)
    total_steps: int = 0
    planned_epochs: float = 0.0
    planned_steps: int = 0  # the plan as first made, kept beside any replans
    plan_line: str = ""
    schedule_steps: int = 0  # the lr schedule's own length (a compressed one reaches its end sooner)
    max_steps: int | None = None  # --recipe auto: never past the epochs its records measured
    replans: list[Replan] = field(default_factory=list)
    now: Callable[[], float] = time.time
    _train_s: float = 0.0  # training seconds measured so far (finished epochs)
    _train_steps: int = 0
    # The run's first step (first batch, the kernels' first runs, torch.compile's compilation) is
    # paid for in elapsed() already, so the live speed is timed after it. On the AMX Xeon it costs
    # little (airbench94 0.99 s against 0.91 s, airbench96 3.6 s against 3.7 s); compiled, it holds
    # the compilation, which timed into 20 steps would squeeze the schedule at the first check.
    _warm: tuple[float, int] | None = None  # (training seconds, steps) when the first step ended
    _overheads: list[float] = field(default_factory=list)
    _marks: list[tuple[float, int]] = field(default_factory=list)  # (training seconds, steps) at each check

    def plan(self) -> int:
        """Size the run from the estimates: total optimizer steps (sets planned_epochs too)."""
        available = (self.budget_s - self.elapsed()) * PLAN_SHARE
        self.total_steps = plan_steps(available, step_s=self.step_s, epoch_overhead_s=self.epoch_overhead_s,
                                      final_s=self.final_s, steps_per_epoch=self.steps_per_epoch,
                                      max_steps=self.max_steps)
        self.planned_epochs = round(self.total_steps / self.steps_per_epoch, 4)
        return self.total_steps

    def start(self, tr, schedule_steps: int, resumed: bool = False) -> int:
        """Attach to trainer `tr` (its scheduler already loaded on a resume); the run's total steps."""
        self.schedule_steps = schedule_steps
        end = tr.scheduler.warp.end
        self.total_steps = end if end is not None else min(self.total_steps or schedule_steps, schedule_steps)
        if tr.lookahead is not None:
            tr.lookahead.total_steps = self.total_steps
        tr.budget = self
        return self.total_steps

    def elapsed(self) -> float:
        return self.now() - self.started

    def line(self) -> str:
        return (f"budget {self.budget_s:.0f} s -> {self.planned_epochs:g} epochs at "
                f"{self.batch_size / self.step_s:.0f} img/s ({self.total_steps} steps, "
                f"{self.elapsed():.1f} s spent before training)")

    def end_epoch(self, train_s: float, train_steps: int, overhead_s: float) -> None:
        """Record an epoch's measured training time and its evaluation + checkpoint time."""
        self._train_s += train_s
        self._train_steps += train_steps
        self._overheads.append(overhead_s)

    def mark_warm(self, epoch_train_s: float, epoch_steps: int) -> None:
        """The run's start-up is behind (called once, after its first step): time the live speed from here."""
        if self._warm is None:
            self._warm = (self._train_s + epoch_train_s, self._train_steps + epoch_steps)

    def check(self, done_steps: int, done_epochs: int, epoch_train_s: float = 0.0,
              epoch_steps: int = 0, schedule_done: float = 1.0) -> int | None:
        """A new total step count if the run, at its live speed, would overrun (smaller), or is
        far ahead early on (larger, see STRETCH_BEFORE); else None.

        done_steps: optimizer steps taken; epoch_train_s/epoch_steps: the running epoch so far;
        schedule_done: the share of the lr schedule behind (the warp's position / its length).
        """
        seconds, steps = self._train_s + epoch_train_s, self._train_steps + epoch_steps
        step_s = self.live_step_s(seconds, steps)
        if not self._marks or steps > self._marks[-1][1]:
            self._marks.append((seconds, steps))
        if step_s is None:
            return None
        overhead = max(self._overheads) if self._overheads else self.epoch_overhead_s
        final = max(self.final_s, overhead)
        fit = plan_steps(self.budget_s - self.elapsed(), step_s=step_s, epoch_overhead_s=overhead, final_s=final,
                         steps_per_epoch=self.steps_per_epoch, done_steps=done_steps, done_epochs=done_epochs,
                         max_steps=self.max_steps)
        stretch = schedule_done < STRETCH_BEFORE and fit >= STRETCH_MIN_GAIN * self.total_steps
        if fit >= self.total_steps and not stretch:
            return None
        self.replans.append(Replan(done_steps, self.elapsed(), self.total_steps, fit, step_s))
        self.total_steps = fit
        return fit

    def live_step_s(self, seconds: float, steps: int) -> float | None:
        """Seconds per step to plan the rest with, given the training seconds and steps so far
        (None: too few steps yet); see RECENT_STEPS. Timed after the first step once enough follow it."""
        start = (0.0, 0)
        if self._warm is not None and steps - self._warm[1] >= MIN_STEPS_TO_REPLAN:
            start = self._warm
        if steps - start[1] < MIN_STEPS_TO_REPLAN:
            return None
        marks = [start, *(m for m in self._marks if start[1] < m[1] < steps), (seconds, steps)]
        intervals = sorted(((s1 - s0) / (n1 - n0), n1 - n0) for (s0, n0), (s1, n1) in zip(marks, marks[1:]))
        half = (steps - start[1]) / 2  # the intervals' steps add up to steps - start[1]
        typical = next(step_s for (step_s, _), seen in zip(intervals, accumulate(n for _, n in intervals))
                       if seen >= half)
        since = next((m for m in reversed(marks) if steps - m[1] >= RECENT_STEPS), start)
        recent = (seconds - since[0]) / (steps - since[1])
        return recent if recent > typical * (1 + RECENT_NOISE) else typical

    def record(self) -> dict[str, Any]:
        """Plain values for the manifest: the budget, the plan, what happened."""
        return {
            "budget_s": self.budget_s,
            "plan": {"epochs": self.planned_epochs, "steps": self.planned_steps,
                     "img_per_s": round(self.batch_size / self.step_s, 1),
                     "epoch_overhead_s": round(self.epoch_overhead_s, 3), "line": self.plan_line},
            "replans": [r.record() for r in self.replans],
            "first_step_s": round(self._warm[0], 3) if self._warm is not None else None,
            "final_steps": self.total_steps,
            "actual_s": round(self.elapsed(), 2),
        }

    def freeze_plan(self) -> str:
        """Remember the plan as first made (the record keeps it beside any replans); its line."""
        self.planned_steps = self.total_steps
        self.plan_line = self.line()
        return self.plan_line


def plan_budget(cfg: TrainConfig, module: nn.Module, probed: ProbeResult, data: PreparedData,
                steps_per_epoch: int, n_val: int, device: torch.device, dist_info, run_dir: Path,
                started: float) -> tuple[TrainConfig, BudgetClock]:
    """--time-budget: epochs sized so training, evaluations, checkpoints and the write-up fit
    (printed as one line); a resumed run keeps the epochs it was planned with."""
    clock = None
    if dist_info.is_main:
        overhead_s = _epoch_overhead_s(cfg, module, data, n_val, device)
        clock = BudgetClock(budget_s=cfg.time_budget, started=started, steps_per_epoch=steps_per_epoch,
                            batch_size=cfg.batch_size * dist_info.world_size,
                            step_s=cfg.batch_size / probed.img_per_s, epoch_overhead_s=overhead_s,
                            final_s=overhead_s)
        if cfg.recipe == "auto" and not cfg.resume:
            _plan_from_records(clock, cfg)
        elif cfg.resume:
            epochs = float(load_yaml(run_dir / CONFIG)["epochs"])
            clock.total_steps = total_steps(epochs, steps_per_epoch)
            clock.planned_epochs = epochs
            clock.plan_line = f"budget {cfg.time_budget:g} s: resuming the planned {epochs:g} epochs"
            log.info("%s", clock.plan_line)
        else:
            clock.plan()
            log.info("%s", clock.freeze_plan())
    clock = distributed.broadcast_object(clock)
    return dataclasses.replace(cfg, epochs=clock.planned_epochs), clock


def _plan_from_records(clock: BudgetClock, cfg: TrainConfig) -> None:
    """--recipe auto: the epochs it chose from the epochs actually seen on this machine (its records),
    not from the probe, whose bare steps run faster than real epochs; the live checks still keep
    the run inside the budget. A run found ahead of its plan may stretch up to the most epochs the
    recipe's records measured (its accuracy is known there), never past: the plan comes from the
    median speed of earlier runs, and a run going faster than that should spend the budget."""
    clock.total_steps = total_steps(cfg.epochs, clock.steps_per_epoch)
    clock.max_steps = total_steps(max(cfg.epochs, cfg.recipe_max_epochs), clock.steps_per_epoch)
    clock.planned_epochs = cfg.epochs
    clock.freeze_plan()
    clock.plan_line = f"budget {cfg.time_budget:g} s -> {cfg.epochs:g} epochs, as --recipe auto planned them"
    log.info("%s", clock.plan_line)


def _epoch_overhead_s(cfg: TrainConfig, module: nn.Module, data: PreparedData, n_val: int,
                      device: torch.device) -> float:
    """One evaluation pass and two checkpoint writes (best + last) per epoch, measured here
    (`module` is already in its final memory format; eval mode changes no state)."""
    batch = min(cfg.eval_batch_size, n_val)
    x = torch.randn(batch, *data.input_size, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = module.training
    module.eval()
    with torch.inference_mode(), autocast(device, cfg.precision):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    module.train(was_training)
    eval_s = min(times) * math.ceil(n_val / batch) * (2 if cfg.ema > 0 else 1)  # the EMA is evaluated too
    t0 = time.perf_counter()
    torch.save({"model": module.state_dict(), "twice": module.state_dict()}, io.BytesIO())
    save_s = 2 * (time.perf_counter() - t0)
    return eval_s + save_s


def check_in_epoch(tr, step: int, epoch_s: float) -> int:
    """In-epoch check of tr.budget (tr: the run's train.trainer.Trainer) after `step` steps of this
    epoch: how many steps this epoch may take (fewer than planned if the run fell behind and its
    schedule was compressed)."""
    clock = tr.budget
    done = tr.global_step
    first = done - step
    if clock.check(done, first // clock.steps_per_epoch, epoch_s, step, _schedule_done(tr)) is not None:
        _compress(tr)
    return clock.total_steps - first


def check_at_epoch_end(tr, train: dict, epoch_start: float, main: bool) -> None:
    """Record the epoch's measured times, then check the budget at the boundary (rank 0 decides)."""
    clock = tr.budget
    overhead = time.perf_counter() - epoch_start - train["seconds"]
    clock.end_epoch(train["seconds"], train["steps"], overhead)
    new_total = clock.check(tr.global_step, math.ceil(tr.global_step / clock.steps_per_epoch),
                            schedule_done=_schedule_done(tr)) if main else None
    new_total = distributed.broadcast_object(new_total)
    if new_total is not None:
        clock.total_steps = new_total
        _compress(tr)


def _schedule_done(tr) -> float:
    return tr.scheduler.warp(tr.global_step) / max(1, tr.budget.schedule_steps)


def _compress(tr) -> None:
    """Fit the rest of the lr schedule (and lookahead's horizon) into tr.budget.total_steps steps:
    squeezed when behind the budget, stretched when far ahead early on."""
    clock = tr.budget
    # the lr at this step stays what it is (the warp keeps it); later steps reach the floor sooner
    tr.scheduler.warp.compress(tr.global_step, clock.total_steps, clock.schedule_steps)
    if tr.lookahead is not None:
        tr.lookahead.total_steps = clock.total_steps
    last = clock.replans[-1] if clock.replans else None
    if last is not None:
        log.info("%s the time budget at step %d (%.1f s): the schedule now ends at step %d instead of %d",
                 "behind" if last.new_total < last.old_total else "ahead of", last.at_step, last.elapsed_s,
                 last.new_total, last.old_total)
