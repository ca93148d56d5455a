"""--time-budget: the planning arithmetic, the schedule compression, the clock, and a real digits run."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers_train import WrappedLoader
from pipeline.train.budget import BudgetClock, plan_steps
from pipeline.train.config import TrainConfig
from pipeline.train.schedules import StepWarp, build_scheduler


def cost(total, *, step_s, epoch_overhead_s, final_s, steps_per_epoch, done_steps=0, done_epochs=0):
    return ((total - done_steps) * step_s + (math.ceil(total / steps_per_epoch) - done_epochs) * epoch_overhead_s
            + final_s)


@pytest.mark.parametrize("available", [3.5, 10.0, 33.3, 100.0, 1000.0])
def test_plan_steps_is_the_largest_run_that_fits(available):
    kw = dict(step_s=0.1, epoch_overhead_s=2.0, final_s=1.0, steps_per_epoch=50)
    total = plan_steps(available, **kw)
    assert cost(total, **kw) <= available
    assert cost(total + 1, **kw) > available  # one more step would not fit


def test_plan_steps_arithmetic_by_hand():
    # 100 s: 1 s final; epoch 1 = 50 steps (5 s) + 2 s eval; per full epoch 7 s -> 14 epochs = 98 s + 1 = 99
    assert plan_steps(100, step_s=0.1, epoch_overhead_s=2.0, final_s=1.0, steps_per_epoch=50) == 14 * 50
    # 104 s: after 14 epochs and the final 1 s, 5 s remain: a 15th epoch's eval (2 s) + 30 steps (3 s)
    assert plan_steps(104, step_s=0.1, epoch_overhead_s=2.0, final_s=1.0, steps_per_epoch=50) == 14 * 50 + 30
    # part-way: 30 steps done in epoch 1, 10 s left -> rest of epoch 1 (2 s) + eval (2 s) + final 1 s,
    # then 5 s: eval 2 s + 30 steps of epoch 2
    assert plan_steps(10, step_s=0.1, epoch_overhead_s=2.0, final_s=1.0, steps_per_epoch=50,
                      done_steps=30, done_epochs=0) == 80
    # never less than one more step, so the schedule can still reach its floor
    assert plan_steps(0.0, step_s=1.0, epoch_overhead_s=1.0, final_s=1.0, steps_per_epoch=5, done_steps=7) == 8
    assert plan_steps(1e6, step_s=0.1, epoch_overhead_s=0, final_s=0, steps_per_epoch=5, max_steps=42) == 42


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "triangle", "multistep"])
def test_compressed_schedule_is_continuous_and_ends_at_the_floor(schedule):
    cfg = TrainConfig(epochs=10, schedule=schedule, lr=0.1, min_lr=0.001, lr_end_factor=0.07)
    model = torch.nn.Linear(2, 2)
    full_opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    full = build_scheduler(full_opt, cfg, steps_per_epoch=10)
    lrs_full = []
    for _ in range(100):
        full_opt.step()
        full.step()
        lrs_full.append(full_opt.param_groups[0]["lr"])
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for step in range(1, 61):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        if step == 40:
            sched.warp.compress(40, 60, 100)  # 60 steps left -> 20
    assert lrs[:40] == lrs_full[:40]
    assert lrs[-1] == pytest.approx(lrs_full[-1])  # the same floor, 40 steps sooner
    assert all(b <= a + 1e-12 for a, b in zip(lrs[39:], lrs[40:])) or schedule == "multistep"
    # the warp goes into the scheduler's state (plain values) and comes back
    state = sched.state_dict()
    assert state["warp_knots"] == [[40, 40], [60, 100]]
    again = build_scheduler(torch.optim.SGD(model.parameters(), lr=cfg.lr), cfg, steps_per_epoch=10)
    again.load_state_dict(state)
    assert again.warp.knots == [[40, 40], [60, 100]] and again.warp.end == 60


def test_step_warp_composes():
    warp = StepWarp()
    assert warp(17) == 17 and warp.end is None
    warp.compress(10, 50, 100)  # 10..50 -> 10..100
    assert warp(30) == pytest.approx(55)
    warp.compress(30, 40, 100)  # from 55 on, reach 100 at step 40
    assert warp(30) == pytest.approx(55) and warp(40) == pytest.approx(100) and warp(35) == pytest.approx(77.5)
    assert warp(5) == 5


class FakeNow:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_clock_plans_then_compresses_when_behind():
    now = FakeNow()
    clock = BudgetClock(budget_s=100, started=now.t, steps_per_epoch=50, batch_size=128, step_s=0.1,
                        epoch_overhead_s=2.0, final_s=1.0, now=now)
    total = clock.plan()
    assert total == plan_steps(90, step_s=0.1, epoch_overhead_s=2.0, final_s=1.0, steps_per_epoch=50)
    assert clock.planned_epochs == total / 50
    assert clock.freeze_plan().startswith(f"budget 100 s -> {total / 50:g} epochs at 1280 img/s")
    # on plan: 10 s for 100 steps (2 epochs incl. 2 x 2 s evals): no replan
    now.t += 14
    clock.end_epoch(5.0, 50, 2.0)
    clock.end_epoch(5.0, 50, 2.0)
    assert clock.check(100, 2) is None
    # then the machine gets 3x slower for an epoch: behind, the total shrinks to what still fits
    now.t += 17
    clock.end_epoch(15.0, 50, 2.0)
    new = clock.check(150, 3)
    assert new is not None and new < total and clock.total_steps == new
    step_s = 25.0 / 150
    assert cost(new, step_s=step_s, epoch_overhead_s=2.0, final_s=2.0, steps_per_epoch=50, done_steps=150,
                done_epochs=3) <= 100 - 31
    record = clock.record()
    assert record["plan"]["steps"] == total and record["final_steps"] == new
    assert record["replans"][0]["old_total"] == total and record["replans"][0]["new_total"] == new
    json.dumps(record)  # plain values for the manifest


def _planned_clock(now):
    clock = BudgetClock(budget_s=100, started=now.t, steps_per_epoch=50, batch_size=128, step_s=0.1,
                        epoch_overhead_s=2.0, final_s=1.0, now=now)
    clock.plan()
    clock.freeze_plan()
    return clock


def test_the_first_steps_start_up_is_not_timed_into_the_live_speed():
    # 20 steps: the first takes 5 s (start-up), the other 19 take 0.1 s, the probe's speed
    runs = {}
    for marked in (False, True):
        now = FakeNow()
        clock = _planned_clock(now)
        planned = clock.total_steps
        if marked:
            clock.mark_warm(5.0, 1)
            clock.mark_warm(9.0, 2)  # only the first call counts
        now.t += 6.9
        runs[marked] = clock.check(20, 0, epoch_train_s=6.9, epoch_steps=20, schedule_done=0.05)
    # timed over all 20 steps (0.345 s each) the run looks 3.45x slow and is squeezed to what fits then
    assert runs[False] == plan_steps(100 - 6.9, step_s=6.9 / 20, epoch_overhead_s=2.0, final_s=2.0,
                                     steps_per_epoch=50, done_steps=20) < planned
    # timed after the first step it runs at the probe's speed, and gets the 10% the plan held back
    assert runs[True] == plan_steps(100 - 6.9, step_s=0.1, epoch_overhead_s=2.0, final_s=2.0,
                                    steps_per_epoch=50, done_steps=20) > planned
    assert clock.record()["first_step_s"] == 5.0


@pytest.mark.parametrize("done, gain, stretched", [
    (0.1, 1.5, True),  # 1.5x the steps fit early on: stretched to what fits at the live speed
    (0.8, 1.5, False),  # as much room, but 80% of the schedule behind: the lr is near its floor
    (0.6, 1.03, True),  # 3% more with 60% behind: still worth taking
    (0.1, 1.01, False),  # 1% more: noise, not worth a replan
])
def test_a_run_ahead_of_its_plan_early_on_is_stretched(done, gain, stretched):
    now = FakeNow()
    clock = _planned_clock(now)
    clock.mark_warm(0.1, 1)
    now.t += 4.0
    fit = plan_steps(100 - 4.0, step_s=0.1, epoch_overhead_s=2.0, final_s=2.0, steps_per_epoch=50, done_steps=40)
    clock.total_steps = planned = int(fit / gain)
    new = clock.check(40, 0, epoch_train_s=4.0, epoch_steps=40, schedule_done=done)
    if stretched:
        assert new == fit and clock.total_steps == fit and clock.replans[-1].old_total == planned
    else:
        assert new is None and clock.total_steps == planned


def _drive(clock, now, pieces, every=20):
    """Train `pieces` [(steps, seconds a step)] in one epoch, checking every `every` steps as the
    epoch loop does; returns the cumulative (training seconds, steps)."""
    seconds, steps = 0.0, 0
    for n, step_s in pieces:
        for _ in range(n):
            seconds, steps = seconds + step_s, steps + 1
            now.t += step_s
            if steps % every == 0:
                clock.check(steps, 0, epoch_train_s=seconds, epoch_steps=steps, schedule_done=0.1)
    return seconds, steps


def test_a_stall_that_is_over_stops_counting_in_the_live_speed():
    now = FakeNow()
    clock = BudgetClock(budget_s=1000, started=now.t, steps_per_epoch=1000, batch_size=128, step_s=0.1,
                        epoch_overhead_s=2.0, final_s=1.0, now=now)
    clock.plan()
    # 40 steps at 0.1 s, a 20-step stall at 1.0 s, then 60 steps at 0.1 s again
    seconds, steps = _drive(clock, now, [(40, 0.1), (20, 1.0), (60, 0.1)])
    assert seconds / steps == pytest.approx(0.25)  # the run's mean still holds the stall
    assert clock.live_step_s(seconds, steps) == pytest.approx(0.1)  # the typical step and the last 40
    # the plan held back 10%: stretched at the first check; squeezed during the stall, planned at
    # the last 40 steps' 22 s; stretched back once the stall left them
    assert [(r.at_step, round(r.step_s, 3)) for r in clock.replans] == [(20, 0.1), (60, 0.55), (100, 0.1)]
    assert clock.replans[-1].new_total > clock.replans[-1].old_total
    assert abs(clock.total_steps - plan_steps(1000 - seconds, step_s=0.1, epoch_overhead_s=2.0, final_s=2.0,
                                              steps_per_epoch=1000, done_steps=120)) <= 1


@pytest.mark.parametrize("slower, seen", [(0.3, 0.3), (0.103, 0.1)])
def test_a_machine_that_slows_for_good_is_seen_at_once_beyond_noise(slower, seen):
    now = FakeNow()
    clock = BudgetClock(budget_s=1000, started=now.t, steps_per_epoch=1000, batch_size=128, step_s=0.1,
                        epoch_overhead_s=2.0, final_s=1.0, now=now)
    clock.plan()
    seconds, steps = _drive(clock, now, [(100, 0.1), (40, slower)])
    # the mean (0.157 s at 0.3) and the typical interval (0.1 s) lag; the last 40 steps say 0.3 s.
    # 3% slower is within their noise (RECENT_NOISE): the typical step stands
    assert clock.live_step_s(seconds, steps) == pytest.approx(seen)
    assert clock.replans[-1].step_s == pytest.approx(seen)


@pytest.mark.parametrize("measured_epochs, final_epochs", [(5.0, 5.0), (0.0, 4.0), (4.5, 4.5)])
def test_recipe_auto_stretches_up_to_the_records_most_epochs_never_past(measured_epochs, final_epochs):
    from pipeline.train.budget import _plan_from_records

    now = FakeNow()
    clock = BudgetClock(budget_s=100, started=now.t, steps_per_epoch=50, batch_size=128, step_s=0.1,
                        epoch_overhead_s=2.0, final_s=1.0, now=now)
    # auto planned 4 epochs (200 steps) from slower runs' median; the records measured up to
    # measured_epochs (0: a config.yaml written before the field existed)
    _plan_from_records(clock, TrainConfig(epochs=4.0, time_budget=100, recipe="auto",
                                          recipe_max_epochs=measured_epochs))
    assert clock.total_steps == clock.planned_steps == 200
    clock.mark_warm(0.05, 1)
    now.t += 3.0  # 40 steps at 0.05 s: half the planned step time, room for ~16 epochs
    clock.check(40, 0, epoch_train_s=2.0, epoch_steps=40, schedule_done=0.2)
    assert clock.total_steps == round(final_epochs * 50)


def test_digits_run_with_a_small_budget_ends_on_time_with_a_finished_schedule(tmp_path):
    from pipeline.data.stage import DataConfig, run as prepare
    from pipeline.train.engine import run_training

    prepare(DataConfig(competition="digits", data_root=str(tmp_path / "data")))
    budget = 10.0
    cfg = TrainConfig(data=str(tmp_path / "data" / "digits"), model="simplenn", out_dir=str(tmp_path / "runs"),
                      run="b", time_budget=budget, batch_size=64, schedule="onecycle", lr=0.05, min_lr=0.0,
                      workers=0, device="cpu", augment="standard")
    summary = run_training(cfg)
    manifest = json.loads((tmp_path / "runs" / "b" / "manifest.json").read_text())
    assert manifest["wall_seconds"] <= budget * 1.2
    record = manifest["budget"]
    assert record["budget_s"] == budget and record["plan"]["epochs"] > 0 and record["actual_s"] <= budget * 1.2
    assert record["plan"]["line"].startswith(f"budget {budget:g} s -> ")
    assert manifest["config"]["epochs"] == record["plan"]["epochs"]  # the plan is the saved config
    assert manifest["config"]["precision"] in ("fp32", "bf16") and manifest["probe"]["choice"]
    rows = (tmp_path / "runs" / "b" / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("lr")]) == pytest.approx(0.0, abs=1e-9)  # onecycle's floor: min_lr
    assert summary["epochs_run"] == len(rows) - 1 >= 1


class _SlowLoader(WrappedLoader):
    """A train loader whose batches take `delay` seconds more from epoch 2 on (a machine slowing down)."""

    def __init__(self, inner, delay):
        super().__init__(inner)
        self.delay = delay

    def __iter__(self):
        import time

        for batch in self.inner:
            if (self.epoch or 0) >= 2:
                time.sleep(self.delay)
            yield batch


def test_a_run_falling_behind_ends_its_schedule_sooner_on_time_and_annealed(tmp_path, monkeypatch):
    from helpers_train import make_prepared, tiny_config
    from pipeline.train import engine

    real = engine.build_train_loader
    monkeypatch.setattr(engine, "build_train_loader", lambda *a, **kw: _SlowLoader(real(*a, **kw), 0.1))
    data = make_prepared(tmp_path / "tiny", n_train=160)
    budget = 4.0
    summary = engine.run_training(tiny_config(data, tmp_path, time_budget=budget, epochs=1, min_lr=0.0,
                                              schedule="cosine", log_every=2))
    record = summary["budget"]
    assert record["replans"] and record["final_steps"] < record["plan"]["steps"]
    assert all(r["new_total"] < r["old_total"] for r in record["replans"][-1:])
    assert summary["wall_seconds"] <= budget * 1.2
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine's floor, reached sooner
    assert load_last_step(tmp_path / "t" / "last.pt") == record["final_steps"]


def load_last_step(path):
    from pipeline.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    assert ckpt["scheduler"]["warp_knots"]  # the compressed schedule is in the checkpoint
    return ckpt["scheduler"]["last_epoch"]
