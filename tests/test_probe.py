"""The runtime probe: candidates, timing on a fake clock, the cache, explicit values, fallbacks."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.runtime import fallback_precision, resolve_precision
from pipeline.train import probe
from pipeline.train.probe import Candidate

CPU = torch.device("cpu")


class FakeClock:
    """Time that moves only when a fake step runs: each candidate's step 'takes' its given seconds."""

    def __init__(self):
        self.t = 0.0
        self.calls: dict[Candidate, int] = {}

    def __call__(self) -> float:
        return self.t

    def step(self, c: Candidate, seconds: float):
        def run():
            self.calls[c] = self.calls.get(c, 0) + 1
            self.t += seconds
        return run

    def steps(self, durations: dict[Candidate, float]):
        return {c: self.step(c, d) for c, d in durations.items()}

    def make_step(self, durations: dict[Candidate, float], full_batch: int = 100, fixed: float = 0.0):
        """run_probe's make_step: a step's fake time is `fixed` (the optimizer update, whatever the
        batch) plus a part proportional to its batch."""
        return lambda c, batch: self.step(c, fixed + (durations[c] - fixed) * batch / full_batch)


FP32_CL, FP32_NCHW = Candidate("fp32", True, False), Candidate("fp32", False, False)
BF16_CL, BF16_NCHW = Candidate("bf16", True, False), Candidate("bf16", False, False)


def test_measure_picks_the_fastest_fake_timed_candidate_and_drops_hopeless_ones():
    clock = FakeClock()
    durations = {FP32_CL: 0.20, FP32_NCHW: 0.25, BF16_CL: 0.15, BF16_NCHW: 2.4}  # bf16 nchw: emulated-slow
    medians, spent, complete = probe.measure(clock.steps(durations), limit_s=lambda s: 10.0, clock=clock)
    assert complete and probe.choose(medians) == BF16_CL
    assert medians[FP32_CL] == pytest.approx(0.20) and medians[BF16_CL] == pytest.approx(0.15)
    assert clock.calls[BF16_NCHW] == probe.OTHER_WARMUP + 1  # dropped after its first timed step
    assert spent <= 10.0 + max(durations.values())


def test_measure_keeps_within_its_allowance():
    clock = FakeClock()
    durations = {FP32_CL: 0.2, FP32_NCHW: 0.21, BF16_CL: 0.22, BF16_NCHW: 0.205}
    medians, spent, complete = probe.measure(clock.steps(durations), limit_s=lambda s: 5.0, clock=clock)
    # the allowance is known (and counts) from the end of the first candidate's two warm-up steps
    assert complete and spent <= 5.0 + probe.WARMUP_STEPS * 0.2
    assert all(clock.calls[c] >= probe.OTHER_WARMUP + probe.MIN_TIMED for c in durations)


def test_measure_too_short_a_run_times_only_the_first_candidate():
    clock = FakeClock()
    durations = {FP32_CL: 0.2, BF16_CL: 0.1}
    # a run of 20 steps: 2% of it cannot pay for warm-up + timing of both candidates
    medians, _, complete = probe.measure(clock.steps(durations), limit_s=lambda s: 0.02 * 20 * s, clock=clock)
    assert not complete and list(medians) == [FP32_CL] and BF16_CL not in clock.calls


def test_candidates_fallback_first_and_explicit_values_fixed():
    cands = probe.candidates("auto", None, None, CPU, allow_compile=False)
    assert cands[0] == Candidate(fallback_precision(CPU), True, False)
    assert {c.precision for c in cands} == {"fp32", "bf16"} and {c.channels_last for c in cands} == {True, False}
    assert probe.candidates("bf16", False, False, CPU) == [BF16_NCHW]
    assert {c.compile for c in probe.candidates("fp32", True, None, CPU, allow_compile=True)} == {False, True}


def _run(tmp_path, clock, durations, **kw):
    args = dict(precision="auto", channels_last=None, compile=None, device=CPU,
                key_fields={"model": "m", "model_opts": {}, "batch_size": 100, "micro_batch_size": 0,
                            "input_shape": (3, 32, 32), "optimizer": "sgd"},
                batch_size=100, make_step=clock.make_step(durations), run_steps=100_000,
                path=tmp_path / "probe.json", clock=clock)
    args.update(kw)
    return probe.run_probe(**args)


def test_run_probe_caches_per_key_and_reuses_the_answer(tmp_path):
    clock = FakeClock()
    durations = {FP32_CL: 0.2, FP32_NCHW: 0.3, BF16_CL: 0.1, BF16_NCHW: 0.4}
    first = _run(tmp_path, clock, durations)
    assert first.source == "measured" and first.choice == BF16_CL and first.img_per_s == pytest.approx(1000)
    assert "bf16 channels_last 1000 img/s" in first.line()
    calls = dict(clock.calls)
    again = _run(tmp_path, clock, durations)
    assert again.source == "cache" and again.choice == BF16_CL and clock.calls == calls  # nothing re-measured
    other_batch = _run(tmp_path, clock, durations, key_fields={
        "model": "m", "model_opts": {}, "batch_size": 50, "micro_batch_size": 0, "input_shape": (3, 32, 32),
        "optimizer": "sgd"})
    assert other_batch.source == "measured"  # another batch size is another key
    assert len(json.loads((tmp_path / "probe.json").read_text())) == 2


def test_run_probe_explicit_values_win_and_no_probe_takes_the_fallback(tmp_path):
    clock = FakeClock()
    durations = {FP32_CL: 0.2, FP32_NCHW: 0.3, BF16_CL: 0.1, BF16_NCHW: 0.4}
    fixed = _run(tmp_path, clock, durations, precision="fp32", channels_last=False, compile=False)
    assert fixed.source == "fixed" and fixed.choice == FP32_NCHW and not clock.calls
    skipped = _run(tmp_path, clock, durations, enabled=False)
    assert skipped.source == "skipped" and skipped.choice == Candidate(fallback_precision(CPU), True, False)
    assert not clock.calls and not (tmp_path / "probe.json").exists()
    # with a time budget the fixed choice's speed is still measured: the plan needs it
    timed = _run(tmp_path, clock, durations, precision="fp32", channels_last=False, compile=False, time_budget=60)
    assert timed.img_per_s == pytest.approx(100 / 0.3) and set(clock.calls) == {FP32_NCHW}


def test_run_probe_never_times_compile_itself_but_takes_it_from_measured_speeds(tmp_path):
    path = tmp_path / "probe.json"
    clock = FakeClock()
    durations = {c: 0.1 for c in probe.candidates("fp32", True, None, CPU, allow_compile=True)}
    plain = _run(tmp_path, clock, durations, precision="fp32", channels_last=True)
    assert plain.source == "fixed" and not plain.choice.compile and not clock.calls  # nothing to time
    probe.record_compile_seconds(CPU, 2.0, path)
    probe.record_speeds(CPU, {"model": "m", "model_opts": {}, "batch_size": 100, "micro_batch_size": 0,
                              "input_shape": (3, 32, 32), "optimizer": "sgd"},
                        {"fp32 channels_last": 1000.0, "fp32 channels_last compile": 2000.0}, path)
    fast = _run(tmp_path, clock, durations, precision="fp32", channels_last=True)
    assert fast.choice == Candidate("fp32", True, True) and "2.00x" in fast.compile_note and not clock.calls


def test_cache_path_follows_env_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "c"))
    assert probe.cache_path() == tmp_path / "c" / "probe.json"
    monkeypatch.delenv(probe.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert probe.cache_path() == tmp_path / "xdg" / "pipeline" / "probe.json"


def test_damaged_cache_is_measured_again(tmp_path):
    (tmp_path / "probe.json").write_text("{not json")
    clock = FakeClock()
    durations = {FP32_CL: 0.2, FP32_NCHW: 0.3, BF16_CL: 0.1, BF16_NCHW: 0.4}
    assert _run(tmp_path, clock, durations).source == "measured"
    assert json.loads((tmp_path / "probe.json").read_text())


def test_unprobed_auto_precision_is_never_emulated_bf16_on_a_cpu():
    assert resolve_precision("auto", CPU) == "fp32"
    assert [resolve_precision(p, CPU) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


def test_run_probe_times_a_slice_of_a_batch_too_slow_to_time_whole(tmp_path):
    clock = FakeClock()
    durations = {FP32_CL: 1.6, FP32_NCHW: 1.8, BF16_CL: 0.8, BF16_NCHW: 2.0}  # seconds per 100 images
    result = _run(tmp_path, clock, durations)
    assert result.source == "measured" and result.choice == BF16_CL and result.batch == 25
    assert result.seconds <= probe.MAX_SECONDS + 2.0 * 0.25
    assert result.measured[BF16_CL.name] == pytest.approx(125) and result.img_per_s is None  # a slice's rate
    assert "bf16 channels_last 125 img/s (measured at batch 25" in result.line()


def test_scout_separates_a_steps_fixed_cost_from_its_per_image_cost():
    clock = FakeClock()
    # 0.5 s of every step is the update (Muon-like), 0.5 s more per 1,000 images
    make_step = clock.make_step({FP32_CL: 1.0}, full_batch=1000, fixed=0.5)
    fixed, per_image = probe.scout_costs(make_step, FP32_CL, 1000, clock=clock, sync=lambda: None)
    assert fixed == pytest.approx(0.5) and per_image == pytest.approx(0.5 / 1000)
    # a batch no larger than the scout slice: one size, all of it charged per image
    fixed, per_image = probe.scout_costs(make_step, FP32_CL, 20, clock=clock, sync=lambda: None)
    assert fixed == 0.0 and per_image == pytest.approx((0.5 + 0.5 * 20 / 1000) / 20)


def test_run_probe_affords_a_big_batch_whose_steps_are_mostly_fixed_cost(tmp_path):
    # batch 1000, 0.4 s fixed per step: a 32-image scout step (0.43 s) read as all per-image cost
    # predicts 13 s for a full step, so no slice fits 10 s and the probe would give up; the real
    # full step takes 1.0-1.6 s, and every candidate fits the allowance on a small slice
    clock = FakeClock()
    durations = {FP32_CL: 1.2, FP32_NCHW: 1.6, BF16_CL: 1.0, BF16_NCHW: 1.4}
    result = _run(tmp_path, clock, durations, batch_size=1000, make_step=clock.make_step(
        durations, full_batch=1000, fixed=0.4), key_fields={"model": "m", "model_opts": {}, "batch_size": 1000,
                                                             "micro_batch_size": 500, "input_shape": (3, 32, 32),
                                                             "optimizer": "sgd"})
    assert result.source == "measured" and result.choice == BF16_CL
    assert clock.t <= probe.MAX_SECONDS + 1.6


def test_a_run_too_short_to_probe_borrows_this_models_answer_at_the_nearest_batch(tmp_path):
    clock = FakeClock()
    durations = {FP32_CL: 0.2, FP32_NCHW: 0.3, BF16_CL: 0.1, BF16_NCHW: 0.4}

    def keys(batch, model="m", optimizer="sgd"):
        return {"model": model, "model_opts": {}, "batch_size": batch, "micro_batch_size": 0,
                "input_shape": (3, 32, 32), "optimizer": optimizer}

    for batch in (64, 256):  # two longer runs measured: bf16 channels_last wins
        assert _run(tmp_path, clock, durations, key_fields=keys(batch)).choice == BF16_CL
    short = _run(tmp_path, clock, durations, key_fields=keys(100), run_steps=10)
    assert short.source == "borrowed" and short.choice == BF16_CL and short.batch == 64
    assert "this model's answer for batch 64" in short.line()
    assert "nan" not in short.line() and short.measured == {}  # no scout estimate passed off as measured
    budgeted = _run(tmp_path, clock, durations, key_fields=keys(100), run_steps=10, time_budget=1.0)
    assert budgeted.source == "borrowed" and budgeted.img_per_s == pytest.approx(1000)  # the plan's speed, timed
    other_model = _run(tmp_path, clock, durations, key_fields=keys(100, model="other"), run_steps=10)
    assert other_model.source == "too short" and other_model.choice == probe.candidates(
        "auto", None, None, CPU, allow_compile=False)[0]
    assert "nan" not in other_model.line() and other_model.img_per_s is None
    # another optimizer steps at another speed (Muon's orthogonalisation): nothing borrowed either
    assert _run(tmp_path, clock, durations, key_fields=keys(100, optimizer="muon"), run_steps=10).source == "too short"
    # a run that fixed channels_last measured only that layout: its winner still answers an auto run
    (tmp_path / "probe.json").unlink()
    assert _run(tmp_path, clock, durations, key_fields=keys(64), channels_last=True).choice == BF16_CL
    assert _run(tmp_path, clock, durations, key_fields=keys(100), run_steps=10).source == "borrowed"
    # ... but not a winner the short run does not have among its candidates
    assert _run(tmp_path, clock, durations, key_fields=keys(100), run_steps=10,
                precision="fp32").source == "too short"


def test_predict_auto_takes_the_precision_training_measured_on_this_device(tmp_path):
    from pipeline.machine import device_name
    from pipeline.predict import measured_precision

    ckpt = {"config": {"precision": "bf16"}}
    assert measured_precision(tmp_path, ckpt, CPU) == "auto"  # no manifest: unmeasured
    (tmp_path / "manifest.json").write_text(json.dumps({"probe": {"device": device_name(CPU)}}))
    assert measured_precision(tmp_path, ckpt, CPU) == "bf16"
    (tmp_path / "manifest.json").write_text(json.dumps({"probe": {"device": "NVIDIA H100"}}))
    assert measured_precision(tmp_path, ckpt, CPU) == "auto"  # measured elsewhere: not evidence here


def test_compile_is_chosen_from_measured_speeds_when_it_pays_for_itself(tmp_path):
    path = tmp_path / "probe.json"
    keys = {"model": "m", "model_opts": {}, "batch_size": 100, "micro_batch_size": 0, "input_shape": (3, 32, 32),
            "optimizer": "sgd"}
    eager = probe.ProbeResult(BF16_CL, "measured", 1000.0, {BF16_CL.name: 1000.0}, 1.0, "dev")
    assert probe.with_compile(eager, CPU, keys, run_steps=10_000, path=path) is eager  # nothing measured
    probe.record_speeds(CPU, keys, {BF16_CL.name: 1000.0, Candidate("bf16", True, True).name: 1250.0}, path)
    probe.record_compile_seconds(CPU, 30.0, path)
    # 10,000 steps of 100 images at 1000 img/s = 1000 s; 1.25x saves 200 s > a 30 s compile
    chosen = probe.with_compile(eager, CPU, keys, run_steps=10_000, path=path)
    assert chosen.choice == Candidate("bf16", True, True) and "1.25x" in chosen.compile_note
    assert chosen.img_per_s == pytest.approx(1250.0)
    # 1,000 steps = 100 s saves 20 s < 30 s: not worth compiling
    assert probe.with_compile(eager, CPU, keys, run_steps=1_000, path=path).choice == BF16_CL
