"""Which precision, memory format and compile setting trains fastest here: measured, then cached.

No static rule is right for every machine (bf16 is several times faster than fp32 on some CPUs and
many times slower on others; channels_last and torch.compile win or lose by model and device), so
the `auto` values of TrainConfig are settled by timing a few real training steps of the actual
model, batch and input shape on the actual device, each candidate in turn. The answer is cached
per machine, torch version, model, batch and input shape in a user cache file
($PIPELINE_CACHE_DIR, else $XDG_CACHE_HOME/pipeline, else ~/.cache/pipeline: probe.json), so
later runs pay nothing. Explicit values are never probed.

Cost: at most MAX_SECONDS or RUN_SHARE of the planned run, whichever is smaller. A run too short
to afford a meaningful probe takes what this model measured here at the nearest batch size, else
the static fallback (runtime.fallback_*), as does --no-probe.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from pipeline.artifacts import atomic_write_json
from pipeline.machine import device_name
from pipeline.runtime import fallback_channels_last, fallback_compile, fallback_precision

log = logging.getLogger(__name__)

CACHE_ENV = "PIPELINE_CACHE_DIR"
CACHE_FILE = "probe.json"
MAX_SECONDS = 10.0  # probe cost ceiling ...
RUN_SHARE = 0.02  # ... or this share of the planned run, whichever is smaller
WARMUP_STEPS = 2  # untimed steps of the first candidate (its second one sizes the probe)
OTHER_WARMUP = 1  # untimed steps of the others: allocator, oneDNN/cuDNN primitives for their dtype/layout
MIN_TIMED = 2  # timed steps a candidate needs for its median to count
MAX_ROUNDS = 8
DROP_FACTOR = 1.5  # a candidate this much slower than the best median cannot win: stop timing it
SAFETY = 0.7
SCOUT_BATCH = 32  # images in the larger of the two scout slices that size the probe (scout_costs)
MIN_PROBE_BATCH = 16  # below this a slice says little about the real batch: take the fallback
COMPILE_KEY = "compile_seconds"  # cache entry: device -> seconds a compile took there (first step)
SPEEDS_KEY = "speeds"  # cache entry: speed key -> {candidate name: img/s}, compiled ones included (make bench)


@dataclass(frozen=True)
class Candidate:
    precision: str
    channels_last: bool
    compile: bool

    @property
    def name(self) -> str:
        return f"{self.precision} {'channels_last' if self.channels_last else 'nchw'}" + (
            " compile" if self.compile else "")


@dataclass
class ProbeResult:
    choice: Candidate
    source: str  # measured | cache | borrowed (another batch's, run too short) | fixed | skipped (--no-probe) | too short
    img_per_s: float | None = None  # of the choice, training steps only (no loader, no eval)
    measured: dict[str, float] = field(default_factory=dict)  # candidate name -> img/s
    seconds: float = 0.0
    device: str = ""
    cache: str | None = None
    batch: int | None = None  # the batch the steps were timed at (a slice of a batch too slow to time whole;
    # borrowed: the batch size of the run whose answer was taken)
    compile_note: str | None = None  # why compile was chosen (from speeds measured with it, see with_compile)

    def line(self) -> str:
        rate = rate_of(self.record())
        speed = f" {rate:.0f} img/s" if rate else ""
        others = ", ".join(f"{name} {rate:.0f}" for name, rate in self.measured.items()
                           if name != self.choice.name)
        at = f" at batch {self.batch}" if self.batch and self.source == "measured" else ""
        where = {"measured": f"measured{at} in {self.seconds:.1f} s", "cache": f"cached in {self.cache}",
                 "fixed": "all set explicitly", "skipped": "--no-probe: fallback",
                 "borrowed": f"run too short to probe: this model's answer for batch {self.batch} in {self.cache}",
                 "too short": "run too short to probe: fallback"}[self.source]
        note = f"; {self.compile_note}" if self.compile_note else ""
        return f"probe: {self.choice.name}{speed} ({where}{'; ' + others if others else ''}{note}) on {self.device}"

    def record(self) -> dict[str, Any]:
        """Plain values for the run's manifest."""
        return {"choice": asdict(self.choice), "source": self.source, "img_per_s": self.img_per_s,
                "measured": dict(self.measured), "seconds": round(self.seconds, 3), "device": self.device,
                "cache": self.cache, "batch": self.batch, "compile_note": self.compile_note}


def rate_of(record: dict[str, Any]) -> float | None:
    """img/s of a probe answer's choice (a manifest's probe record or a cache entry): the figure at the
    run's batch, else the choice's as timed (on a slice, where the batch was too slow to time whole)."""
    if record.get("img_per_s"):
        return record["img_per_s"]
    try:
        return (record.get("measured") or {}).get(Candidate(**record["choice"]).name)
    except (TypeError, KeyError):
        return None  # no choice, or one of an older layout


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "pipeline"
    return Path(root) / CACHE_FILE


def cache_key(device: torch.device, model: str, model_opts: dict, batch_size: int, micro_batch_size: int,
              input_shape: tuple[int, ...], optimizer: str, candidates: list[Candidate]) -> str:
    return json.dumps({
        "device": device_name(device), "torch": torch.__version__, "model": model, "opts": model_opts,
        "batch": batch_size, "micro_batch": micro_batch_size, "input": list(input_shape),
        "candidates": sorted(c.name for c in candidates), "optimizer": optimizer,
    }, sort_keys=True, default=str)


def read_cache(key: str, path: Path | None = None) -> dict[str, Any] | None:
    path = path or cache_path()
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None  # no cache yet, or a damaged one: measure again


def write_cache(key: str, entry: dict[str, Any], path: Path | None = None) -> None:
    path = path or cache_path()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = entry
    try:
        atomic_write_json(path, entries)
    except OSError as e:  # a read-only home must not stop a run
        log.warning("probe cache %s not written (%s)", path, e)


def candidates(precision: str, channels_last: bool | None, compile: bool | None, device: torch.device,
               allow_compile: bool = True) -> list[Candidate]:
    """Every combination of the auto values (explicit ones fixed); the static fallback first."""
    if precision == "auto":
        if device.type == "cuda":
            half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            precisions = [half, "fp32"]
        else:
            precisions = ["fp32", "bf16"]
        first = fallback_precision(device)
        precisions.sort(key=lambda p: p != first)
    else:
        precisions = [precision]
    formats = [channels_last] if channels_last is not None else sorted(
        (True, False), key=lambda v: v != fallback_channels_last(device))
    compiles = [compile] if compile is not None else ([False, True] if allow_compile else [fallback_compile(device)])
    return [Candidate(p, f, c) for c in compiles for f in formats for p in precisions]


def measure(
    steps: dict[Candidate, Callable[[], None]],
    *,
    limit_s: Callable[[float], float],
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> tuple[dict[Candidate, float], float, bool]:
    """Time one training step of every candidate, round-robin (so a load change on a shared machine
    hits all alike). Returns (candidate -> median seconds per step, seconds spent, complete).

    `limit_s(step_seconds)` turns the first candidate's warm step time into the probe's allowance
    (it depends on how long the run will be); if the allowance cannot buy OTHER_WARMUP + MIN_TIMED
    steps of every candidate, only the first candidate's warm-up ran and complete is False.
    """
    start = clock()
    names = list(steps)

    def timed(candidate: Candidate) -> float:
        t0 = clock()
        steps[candidate]()
        sync()
        return clock() - t0

    warm: dict[Candidate, list[float]] = {c: [] for c in names}
    first = names[0]
    for _ in range(WARMUP_STEPS):
        warm[first].append(timed(first))
    step_s = warm[first][-1]
    allowance = limit_s(step_s)
    # limit_s is what is left of the allowance now (the warm-up above already spent)
    needed = ((len(names) - 1) * OTHER_WARMUP + len(names) * MIN_TIMED) * step_s
    times: dict[Candidate, list[float]] = {c: [] for c in names}
    if needed > allowance:  # the warm-up is the only figure (of the first candidate)
        return {first: step_s}, clock() - start, False
    timed_from = clock()
    for c in names[1:]:
        for _ in range(OTHER_WARMUP):
            warm[c].append(timed(c))  # one-time costs: not a figure to judge by
    alive = list(names)
    for _ in range(MAX_ROUNDS):
        for c in alive:
            times[c].append(timed(c))
        best = min(statistics.median(times[c]) for c in alive)
        alive = [c for c in alive if statistics.median(times[c]) <= DROP_FACTOR * best]
        next_round = sum(statistics.median(times[c]) for c in alive)
        if clock() - timed_from + next_round > allowance and all(len(times[c]) >= MIN_TIMED for c in alive):
            break
    medians = {c: statistics.median(times[c]) for c in names if times[c]}
    return medians, clock() - start, True


def compile_seconds(device: torch.device, path: Path | None = None) -> float | None:
    """How long a torch.compile took on this device when last measured (probe or `make bench`)."""
    entry = read_cache(COMPILE_KEY, path) or {}
    return entry.get(device_name(device))


def record_compile_seconds(device: torch.device, seconds: float, path: Path | None = None) -> None:
    entry = dict(read_cache(COMPILE_KEY, path) or {})
    entry[device_name(device)] = round(seconds, 2)
    write_cache(COMPILE_KEY, entry, path)


def speed_key(device: torch.device, model: str, model_opts: dict, batch_size: int, micro_batch_size: int,
              input_shape: tuple[int, ...], optimizer: str) -> str:
    return json.dumps({"device": device_name(device), "torch": torch.__version__, "model": model, "opts": model_opts,
                       "batch": batch_size, "micro_batch": micro_batch_size, "input": list(input_shape),
                       "optimizer": optimizer}, sort_keys=True, default=str)


def record_speeds(device: torch.device, key_fields: dict[str, Any], rates: dict[str, float],
                  path: Path | None = None) -> None:
    """Keep whole-training-step img/s of candidates, compiled ones included, measured outside a run's
    probe (`make bench` times compiled variants, which no probe allowance can afford)."""
    entries = dict(read_cache(SPEEDS_KEY, path) or {})
    entries[speed_key(device, **key_fields)] = {name: round(rate, 1) for name, rate in rates.items()}
    write_cache(SPEEDS_KEY, entries, path)


def with_compile(result: ProbeResult, device: torch.device, key_fields: dict[str, Any], run_steps: int,
                 time_budget: float = 0.0, path: Path | None = None) -> ProbeResult:
    """compile auto: a compile costs more than a probe may spend, so it is chosen from speeds measured
    with and without it on this machine for this model, batch and shape (record_speeds), when the
    time it saves over the planned run exceeds the compile time measured here."""
    rates = (read_cache(SPEEDS_KEY, path) or {}).get(speed_key(device, **key_fields)) or {}
    compiled = Candidate(result.choice.precision, result.choice.channels_last, True)
    seconds = compile_seconds(device, path)
    eager, fast = rates.get(result.choice.name), rates.get(compiled.name)
    if result.choice.compile or not (eager and fast and seconds is not None):
        return result
    run_s = time_budget or run_steps * key_fields["batch_size"] / eager
    saved = run_s * (1 - eager / fast)
    if saved <= seconds:
        return result
    note = (f"compile: {fast / eager:.2f}x in measured speeds, saves ~{saved:.0f} s of a ~{run_s:.0f} s run "
            f"for a ~{seconds:.0f} s compile")
    return ProbeResult(compiled, result.source, result.img_per_s and result.img_per_s * fast / eager,
                       result.measured, result.seconds, result.device, result.cache, result.batch, note)


def scout_costs(make_step: Callable[[Candidate, int], Callable[[], None]], candidate: Candidate, batch_size: int,
                *, clock: Callable[[], float], sync: Callable[[], None]) -> tuple[float, float]:
    """(seconds per step whatever its size, seconds per image) of `candidate`, from warm steps on
    slices of half SCOUT_BATCH and SCOUT_BATCH (small: the scout is paid out of the allowance).
    Two sizes separate the fixed part of a step (the optimizer update - Muon's orthogonalisation
    above all -, per-layer dispatch) from the part that grows with the batch; one small step would
    charge the fixed part to each of its few images and overestimate a full step many times over,
    and the probe would give up on a run it could well afford."""
    sizes = [SCOUT_BATCH // 2, SCOUT_BATCH] if batch_size >= SCOUT_BATCH else [batch_size]
    seconds: dict[int, float] = {}
    for size in sizes:
        step = make_step(candidate, size)
        for _ in range(WARMUP_STEPS):  # the last one counts: the first pays one-time setup
            t0 = clock()
            step()
            sync()
            seconds[size] = clock() - t0
    if len(sizes) == 2:
        small, large = sizes
        per_image = (seconds[large] - seconds[small]) / (large - small)
        if per_image > 0:  # else noise swamped the difference: charge it all per image, as one size does
            return max(seconds[small] - per_image * small, 0.0), per_image
    return 0.0, seconds[sizes[-1]] / sizes[-1]


def cache_entries(path: Path) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(key fields, entry) of every probe answer in the cache file (other kinds of entry skipped)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for key, entry in (entries.items() if isinstance(entries, dict) else ()):
        try:
            fields = json.loads(key)
        except ValueError:
            continue
        if isinstance(fields, dict) and "candidates" in fields and isinstance(entry, dict):
            yield fields, entry


def nearest_answer(key: str, path: Path) -> tuple[Candidate, int] | None:
    """A measured choice for the same device, torch, model, options, input and slicing at the batch
    size nearest this key's, among this key's candidates (a run too short to probe borrows it), with
    that batch size. A run that fixed a value (channels_last: true) measured fewer candidates; its
    winner is still a measured answer for the values it shares."""
    want = json.loads(key)
    allowed, batch = set(want.pop("candidates")), want.pop("batch")
    found = []
    for fields, entry in cache_entries(path):
        try:
            fields = dict(fields)
            fields.pop("candidates")
            other_batch = fields.pop("batch")
            choice = Candidate(**entry["choice"]) if fields == want else None
        except (TypeError, KeyError):
            continue  # an entry of an older layout
        if choice is not None and choice.name in allowed:
            found.append((abs(other_batch - batch), other_batch, choice))
    if not found:
        return None
    _, batch, choice = min(found, key=lambda f: f[:2])
    return choice, batch


def cached_rate(want: dict[str, Any], path: Path) -> float | None:
    """img/s of the first cached answer whose key has every field of `want` (any torch, any
    candidates), as rate_of reads it: what the probe measured here for a model, batch and input."""
    for fields, entry in cache_entries(path):
        if all(fields.get(k) == v for k, v in want.items()):
            rate = rate_of(entry)
            if rate:
                return float(rate)
    return None


def choose(medians: dict[Candidate, float]) -> Candidate:
    return min(medians, key=medians.get)


def run_probe(
    *,
    precision: str,
    channels_last: bool | None,
    compile: bool | None,
    device: torch.device,
    key_fields: dict[str, Any],
    batch_size: int,
    make_step: Callable[[Candidate, int], Callable[[], None]],
    run_steps: int,
    time_budget: float = 0.0,
    enabled: bool = True,
    path: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Settle the auto values: explicit ones win, a cached answer is reused, else measure.

    key_fields: model, opts, batch_size, micro_batch_size, input_shape, optimizer (what the speed
    depends on: Muon's per-step orthogonalisation changes both the speed and the fixed cost of a step).
    make_step(candidate, batch) -> a function running one real training step of that candidate on a
    batch of that many images. A step too slow for the allowance to time every candidate at the full
    batch is timed on halves of it (the ranking, not the absolute speed, is what the probe is for).
    run_steps: optimizer steps of the planned run (sizes the allowance when there is no time_budget).
    With a time_budget the chosen candidate's speed is always measured (the plan needs it).
    """
    probe = _Probe(device, key_fields, batch_size, make_step, run_steps, time_budget, path or cache_path(), clock)
    # compile is never timed inside the allowance (a compile per candidate would take it all): with
    # compile auto, with_compile decides from speeds measured with it on this machine (make bench)
    cands = candidates(precision, channels_last, compile, device, allow_compile=False)
    auto = len(cands) > 1  # an auto value with a single candidate (compile not affordable) is no choice
    if not auto or not enabled:
        # the explicit values, or the static fallback for the auto ones
        result = probe.fixed(cands[0], "fixed" if not auto else "skipped")
        return probe.with_compile(result) if compile is None and enabled else result
    key = cache_key(device, candidates=cands, **key_fields)
    result = probe.cached(key)
    if result is None:
        result = probe.measured(cands, key)
        if result.source != "measured":
            return result
    return probe.with_compile(result) if compile is None else result


@dataclass
class _Probe:
    """One run's probe: what its steps share, and the steps (a fixed answer, a cached one, a
    measured one). Every figure of seconds counts from its creation."""

    device: torch.device
    key_fields: dict[str, Any]
    batch_size: int
    make_step: Callable[[Candidate, int], Callable[[], None]]
    run_steps: int
    time_budget: float
    path: Path
    clock: Callable[[], float]
    name: str = field(init=False)  # the device's, as the results name it
    limit: float = field(init=False)  # the allowance's ceiling, before the run's share is known
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.name = device_name(self.device)
        self.limit = min(MAX_SECONDS, RUN_SHARE * self.time_budget) if self.time_budget else MAX_SECONDS
        self.started = self.clock()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def spent(self) -> float:
        return self.clock() - self.started

    def speed_of(self, candidate: Candidate) -> float | None:
        """img/s of `candidate` at the run's batch, measured now: only a time budget's plan needs it."""
        if not self.time_budget:
            return None
        step = {candidate: self.make_step(candidate, self.batch_size)}
        medians, _, _ = measure(step, limit_s=lambda s: 1.5 * (WARMUP_STEPS + MIN_TIMED) * s, clock=self.clock,
                                sync=self.sync)
        return self.batch_size / medians[candidate]

    def with_compile(self, result: ProbeResult) -> ProbeResult:
        return with_compile(result, self.device, self.key_fields, self.run_steps, self.time_budget, self.path)

    def fixed(self, choice: Candidate, source: str) -> ProbeResult:
        rate = self.speed_of(choice)
        return ProbeResult(choice, source, rate, {choice.name: round(rate, 1)} if rate else {}, self.spent(),
                           self.name)

    def cached(self, key: str) -> ProbeResult | None:
        hit = read_cache(key, self.path)
        if not hit:
            return None
        try:
            choice = Candidate(**hit["choice"])
        except (TypeError, KeyError):
            return None  # an entry of an older layout: measure again
        rate = hit.get("img_per_s") or self.speed_of(choice)  # measured on a slice: the plan needs the batch's
        return ProbeResult(choice, "cache", rate, dict(hit.get("measured", {})), self.spent(), self.name,
                           str(self.path), hit.get("batch"))

    def measured(self, cands: list[Candidate], key: str) -> ProbeResult:
        """Time every candidate (on a slice of the batch if the allowance needs it), or borrow what
        a longer run measured here when even that does not fit."""
        # Scout steps on two small slices tell how long a full step takes, hence the allowance, and the
        # largest power-of-2 slice of the batch at which every candidate can be timed within it.
        fixed, per_image = scout_costs(self.make_step, cands[0], self.batch_size, clock=self.clock, sync=self.sync)

        def full_step_s(batch: int) -> float:
            return fixed + per_image * batch

        allowance = min(self.limit, RUN_SHARE * (self.time_budget or self.run_steps * full_step_s(self.batch_size)))
        # the scout's estimate from small slices is a rough guide: keep a margin
        per_step = SAFETY * (allowance - self.spent()) / (WARMUP_STEPS + (len(cands) - 1) * OTHER_WARMUP
                                                          + len(cands) * MIN_TIMED)
        batch = self.batch_size
        while batch // 2 >= MIN_PROBE_BATCH and full_step_s(batch) > per_step:
            batch //= 2
        complete = full_step_s(batch) <= per_step
        medians = {cands[0]: full_step_s(batch)}
        if complete:
            medians, _, complete = measure({c: self.make_step(c, batch) for c in cands}, clock=self.clock,
                                           sync=self.sync, limit_s=lambda step_s: allowance - self.spent())
        if not complete and (known := nearest_answer(key, self.path)) is not None:  # what a longer run measured here
            choice, at = known
            return ProbeResult(choice, "borrowed", self.speed_of(choice), {}, self.spent(), self.name, str(self.path),
                               batch=at)
        return self.verdict(cands, key, batch, medians, complete)

    def verdict(self, cands: list[Candidate], key: str, batch: int, medians: dict[Candidate, float],
                complete: bool) -> ProbeResult:
        """The fastest candidate if every one was timed (cached for later runs), else the fallback."""
        rates = {c.name: round(batch / s, 1) for c, s in medians.items()}
        choice = choose(medians) if complete else cands[0]
        # a slice's or a scout's rate is not the batch's
        rate = rates[choice.name] if batch == self.batch_size else None
        if self.time_budget and (batch != self.batch_size or not complete):
            rate = self.speed_of(choice)  # the plan needs the speed at the real batch, not a slice's or a scout's
        if not complete:
            return ProbeResult(choice, "too short", rate, rates, self.spent(), self.name, batch=batch)
        result = ProbeResult(choice, "measured", rate, rates, self.spent(), self.name,
                             str(self.path), batch=batch if batch != self.batch_size else None)
        write_cache(key, {"choice": asdict(choice), "img_per_s": result.img_per_s, "measured": rates,
                          "seconds": round(result.seconds, 2), "batch": result.batch,
                          "date": time.strftime("%Y-%m-%d")}, self.path)
        return result
