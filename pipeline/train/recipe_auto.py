"""`train --recipe auto --time-budget S`: the recipe and epoch count expected to score highest
within S seconds on this machine, from the leaderboard records (pipeline/records.py).

Accuracy at E epochs comes from records of any machine (a recipe learns the same everywhere):
interpolated between the epoch counts measured, never beyond the largest (a longer schedule is
not a measured one) nor below the smallest. Time comes from this machine's records only (seconds
per epoch from each run's curve, plus the fixed start-up and write-up around them), else from the
probe's img/s cached here, scaled by how far the probe missed the real epochs on this machine's
records (it timed bare steps on a fixed batch: no loader, augmentation or evaluation). The chosen
config then runs with --time-budget as any other, so the live budget clock keeps it inside.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import PipelineError
from pipeline.records import best_tta, read_records, recipe_of

EPOCH_STEP = 0.1  # the grid of epoch counts tried between measured ones


@dataclass(frozen=True)
class TimeModel:
    """Seconds of a training stage: fixed + epochs * epoch_s, epoch_s at `images` per epoch."""

    fixed_s: float
    epoch_s: float
    images: int
    basis: str  # how the figures were had, for the one line

    def seconds(self, epochs: float, images: int) -> float:
        return self.fixed_s + epochs * self.epoch_s * images / max(self.images, 1)


@dataclass(frozen=True)
class Choice:
    config: str
    epochs: float
    acc: float
    seconds: float
    budget_s: float
    basis: str
    max_epochs: float = 0.0  # the most epochs the recipe's records measured: the clock may stretch to them

    def line(self) -> str:
        return (f"recipe auto: {Path(self.config).stem} at {self.epochs:g} epochs (expected {100 * self.acc:.1f}% "
                f"val with TTA, ~{self.seconds:.0f} s of {self.budget_s:g} s; {self.basis})")


def accuracy_curve(records: list[dict[str, Any]], config: str) -> list[tuple[float, float]]:
    """(epochs, mean best-TTA val accuracy over seeds and machines), by epochs."""
    by_epochs: dict[float, list[float]] = {}
    for r in records:
        if r.get("config") == config and best_tta(r) is not None and r.get("epochs"):
            by_epochs.setdefault(float(r["epochs"]), []).append(best_tta(r))
    return sorted((e, statistics.fmean(accs)) for e, accs in by_epochs.items())


def expected_acc(curve: list[tuple[float, float]], epochs: float) -> float | None:
    """Linear between measured counts; None outside them (no extrapolation either way)."""
    for (e0, a0), (e1, a1) in zip(curve, curve[1:]):
        if e0 <= epochs <= e1:
            return a0 + (a1 - a0) * (epochs - e0) / (e1 - e0)
    return curve[0][1] if curve and abs(curve[0][0] - epochs) < 1e-9 else None


def time_from_records(here: list[dict[str, Any]]) -> TimeModel | None:
    """Median over this machine's runs of a recipe of their fixed cost and seconds per epoch. A run
    without a curve (a record seeded from a table) charges its whole train time per epoch."""
    fixed, per_epoch, images = [], [], []
    for r in here:
        train_s, epochs = (r.get("seconds") or {}).get("train"), r.get("epochs")
        if not train_s or not epochs:
            continue
        in_epochs = r["curve"][-1]["seconds"] if r.get("curve") else train_s
        fixed.append(max(train_s - in_epochs, 0.0))
        per_epoch.append(in_epochs / float(epochs))
        images.append(int(r.get("train_images") or 0))
    if not per_epoch:
        return None
    return TimeModel(statistics.median(fixed), statistics.median(per_epoch), int(statistics.median(images)),
                     f"{len(per_epoch)} run{'s' if len(per_epoch) > 1 else ''} on this machine")


def honesty(here: list[dict[str, Any]]) -> float | None:
    """Real epochs' img/s over the probe's, median over this machine's records that have both."""
    ratios = [r["train_img_per_s"] / r["probe_img_per_s"] for r in here
              if r.get("train_img_per_s") and r.get("probe_img_per_s")]
    return statistics.median(ratios) if ratios else None


def time_from_probe(rate: float | None, ratio: float | None, images: int) -> TimeModel | None:
    if not rate:
        return None
    note = f"probe {rate:.0f} img/s x {ratio:.2f} (real epochs vs probe here)" if ratio else \
        f"probe {rate:.0f} img/s, uncorrected (no records here)"
    return TimeModel(0.0, images / (rate * (ratio or 1.0)), images, note)


def best_epochs(curve: list[tuple[float, float]], timing: TimeModel, images: int,
                budget_s: float) -> tuple[float, float, float] | None:
    """(epochs, expected accuracy, expected seconds) of the best count that fits, if any."""
    lo, hi = curve[0][0], curve[-1][0]
    grid = {round(lo + i * EPOCH_STEP, 4) for i in range(int((hi - lo) / EPOCH_STEP + 1e-9) + 1)}
    grid |= {e for e, _ in curve}
    best = None
    for epochs in sorted(grid):
        acc, seconds = expected_acc(curve, epochs), timing.seconds(epochs, images)
        if acc is not None and seconds <= budget_s and (best is None or acc > best[1]):
            best = (epochs, acc, seconds)
    return best


def choose(records: list[dict[str, Any]], machine_id: str, budget_s: float, images: int,
           probe_rate: Callable[[str], float | None], root: str | Path = "results/leaderboard") -> Choice:
    """The highest expected accuracy whose expected time fits budget_s (one-line errors otherwise)."""
    runs = [r for r in records if r.get("kind") != "ensemble" and r.get("config")]
    if not runs:
        raise PipelineError(f"--recipe auto: no leaderboard records in {root}/ (`make leaderboard` writes them)")
    here = [r for r in runs if r["machine_id"] == machine_id]
    ratio, best, unknown = honesty(here), None, []
    for config in sorted({r["config"] for r in runs}):
        timing = time_from_records([r for r in here if r["config"] == config]) or \
            time_from_probe(probe_rate(config), ratio, images)
        if timing is None:
            unknown.append(Path(config).stem)
            continue
        curve = accuracy_curve(runs, config)
        found = best_epochs(curve, timing, images, budget_s)
        if found and (best is None or found[1] > best.acc):
            best = Choice(config, found[0], found[1], found[2], budget_s, f"time: {timing.basis}",
                          max_epochs=curve[-1][0])
    if best is None:
        why = f"; no speed known here for {', '.join(unknown)}" if unknown else ""
        raise PipelineError(f"--recipe auto: no recipe in {root}/ fits {budget_s:g} s on this machine "
                            f"at an epoch count its records measured{why}")
    accs = len([r for r in runs if r["config"] == best.config])
    return dataclasses.replace(best, basis=f"accuracy: {accs} run{'s' if accs > 1 else ''}; {best.basis}")


def cached_probe_rate(config: dict[str, Any], input_shape: tuple[int, ...], device_label: str,
                      path: Path) -> float | None:
    """img/s the probe measured here (its cache) for this recipe's model, batch and optimizer."""
    from pipeline.train.probe import cached_rate

    return cached_rate({"device": device_label, "model": config.get("model", "resnet20"),
                        "opts": config.get("model_opts", {}), "batch": config.get("batch_size", 128),
                        "micro_batch": config.get("micro_batch_size", 0), "input": list(input_shape),
                        "optimizer": config.get("optimizer", "sgd")}, path)


def resolve(cfg, config_file: str | None, flags: dict[str, Any]):
    """cfg (a TrainConfig with recipe auto) -> the chosen recipe's config at the chosen epochs,
    under the flags given (data, run, budget, ...); the choice's line is kept in recipe_note,
    hence in config.yaml and the manifest. --resume keeps the choice the run made when it began
    (its config.yaml): records written since must not switch a half-trained run's recipe."""
    from pipeline.artifacts import read_json
    from pipeline.cli_config import resolve_flags
    from pipeline.config import load_yaml
    from pipeline.machine import device_name, machine_id
    from pipeline.run_layout import CONFIG
    from pipeline.runtime import resolve_device
    from pipeline.train.probe import cache_path

    if config_file:
        raise PipelineError(f"--recipe auto chooses the config itself: drop --config {config_file}")
    if not cfg.time_budget:
        raise PipelineError("--recipe auto needs --time-budget SECONDS (the budget it chooses for)")
    saved = Path(cfg.out_dir) / cfg.run / CONFIG
    if cfg.resume and saved.is_file():
        kept = resolve_flags(type(cfg), str(saved), {k: v for k, v in flags.items() if k != "epochs"})
        return dataclasses.replace(kept, recipe_note=f"{kept.recipe_note} (kept on --resume)")
    meta = read_json(Path(cfg.data) / "meta.json")
    counts = meta.get("counts", {})
    images = int(counts.get("all" if cfg.final_fit else "train") or 0)
    h, w, c = meta["image_shape"]
    device = device_name(resolve_device(cfg.device))

    def probe_rate(config: str) -> float | None:
        path = Path(config)
        return cached_probe_rate(load_yaml(path), (c, h, w), device, cache_path()) if path.is_file() else None

    records = [r for r in read_records(cfg.records) if r.get("kind") == "ensemble" or Path(r["config"]).is_file()]
    choice = choose(records, machine_id(), cfg.time_budget, images, probe_rate, cfg.records)
    given = {k: v for k, v in flags.items() if k != "epochs"}
    chosen = resolve_flags(type(cfg), choice.config, {**given, "recipe": "auto"})
    return dataclasses.replace(chosen, epochs=choice.epochs, recipe_max_epochs=choice.max_epochs,
                               recipe_note=choice.line())
