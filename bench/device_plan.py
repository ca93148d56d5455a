"""The device check's steps under one time allowance: each runs only if its expected seconds fit.

A lent GPU comes with minutes, not hours, so the check is planned ahead: every step says how long
it should take (on one H100, and at tiny scale on a CPU), runs with whatever is left of the
allowance as its hard limit, and a step that no longer fits is recorded as skipped with the
reason. After every step the caller writes what is known so far, so a run cut short still leaves
its JSON.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable


class StepFailed(Exception):
    """A step ran and failed; the message is the one line the JSON and the README show, `figures`
    what it measured before failing (test counts, say)."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None):
        super().__init__(message)
        self.figures = figures or {}


class StepSkipped(Exception):
    """A step that cannot run here (its config is not written yet, say); the message says why."""


@dataclass(frozen=True)
class Step:
    name: str
    gpu_s: float  # expected seconds on one H100 (see PLAN_NOTES in bench/device_check.py)
    tiny_s: float  # expected seconds at tiny scale on a CI machine's CPU
    run: Callable[[float], dict[str, Any]]  # gets the seconds left; returns the step's figures


class Budget:
    """Seconds left of an allowance that started when this was made."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic):
        self.total_s, self.clock, self.start = total_s, clock, clock()

    def used(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total_s - self.used()


def run_step(step: Step, budget: Budget, tiny: bool) -> dict[str, Any]:
    """One step's record: status ok / failed / timed out / skipped, its seconds, its figures."""
    expected = step.tiny_s if tiny else step.gpu_s
    left = budget.left()
    record: dict[str, Any] = {"expected_s": expected, "gpu_plan_s": step.gpu_s}
    if expected > left:
        return record | {"status": "skipped", "seconds": 0.0,
                         "reason": f"needs ~{expected:g} s, {max(left, 0):.0f} s of the {budget.total_s:g} s "
                                   "budget left"}
    start = time.perf_counter()
    try:
        record |= {"status": "ok", **step.run(left)}
    except StepSkipped as e:
        record |= {"status": "skipped", "reason": str(e)}
    except StepFailed as e:
        record |= {"status": "failed", "reason": str(e), **e.figures}
    except subprocess.TimeoutExpired as e:
        record |= {"status": "timed out", "reason": f"stopped at the budget's end after {e.timeout:.0f} s"}
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def run_plan(steps: list[Step], budget: Budget, tiny: bool,
             after_each: Callable[[dict[str, dict]], None]) -> dict[str, dict]:
    """Every step in order under `budget`; `after_each(records so far)` runs after each one."""
    records: dict[str, dict] = {}
    for step in steps:
        print(f"\n== device-check: {step.name} ({budget.left():.0f} s of the budget left)", flush=True)
        records[step.name] = run_step(step, budget, tiny)
        status = records[step.name]["status"]
        reason = records[step.name].get("reason")
        print(f"== {step.name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
        after_each(records)
    return records
