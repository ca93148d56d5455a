"""Running a lab: prepare its data, then one resumable sweep per Point (a grid over the seeds).

Layout of `<sweeps_dir>/lab-NAME[-quick]/`:
    lab.yaml        the preset as run (with the resolved data folder and scale)
    points/p-<hash>/   each Point's sweep (study.db, results.csv/md, manifest.json)
    runs/p-<hash>-<trial>/   the run folders the train engine writes
    results.md, results.csv, report.html, manifest.json   (pipeline.lab.results / page)

A killed lab rerun with the same command goes on where it stopped: finished points are skipped
by their sweeps, an interrupted trial continues from its last.pt.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.artifacts import atomic_write_text
from pipeline.errors import PipelineError
from pipeline.lab.spec import LabSpec, Point

log = logging.getLogger(__name__)


@dataclass
class LabRun:
    spec: LabSpec
    scale: str
    folder: Path
    data: str  # prepared data folder every point trains on
    overrides: dict[str, Any]  # --set, over every point (machine keys: device, workers, ...)
    seeds: int  # seeds per point: the scale's, or --seeds

    @property
    def runs_dir(self) -> Path:
        return self.folder / "runs"

    @property
    def points_dir(self) -> Path:
        return self.folder / "points"

    def settings(self, point: Point) -> dict[str, Any]:
        return {**point.settings, **self.overrides, "data": self.data}


def lab_folder(name: str, scale: str, sweeps_dir: str | Path = "sweeps") -> Path:
    """sweeps/lab-NAME for the full scale, sweeps/lab-NAME-quick for quick: they never share runs."""
    return Path(sweeps_dir) / (f"lab-{name}" if scale == "full" else f"lab-{name}-{scale}")


def prepare_data(spec: LabSpec, scale: str, data: str | None) -> str:
    """The data folder: --data as given, else the scale's competition under its data_root,
    built with the data stage when it is not there yet."""
    if data:
        if not (Path(data) / "meta.json").is_file():
            raise PipelineError(f"{data}: not a prepared data folder (no meta.json); run `pipeline data` first")
        return str(data)
    from pipeline.config import resolve_config
    from pipeline.data.stage import DataConfig, run as run_data

    cfg = resolve_config(DataConfig, None, spec.scale(scale).data)
    folder = Path(cfg.data_root) / cfg.competition
    if not (folder / "meta.json").is_file():
        log.warning("lab %s: preparing %s (%s)", spec.name, folder, cfg.source or "built-in source")
        run_data(cfg)
    return str(folder)


def run_lab(spec: LabSpec, scale: str, *, sweeps_dir: str | Path = "sweeps", data: str | None = None,
            overrides: dict[str, Any] | None = None, max_points: int | None = None, seeds: int | None = None,
            train_fn: Callable[..., dict] | None = None) -> LabRun:
    """Train every point of the lab at `scale` that is not finished (at most max_points this call)."""
    from pipeline.sweep.spec import SweepSpec
    from pipeline.sweep.study import run_sweep

    lab = LabRun(spec, scale, lab_folder(spec.name, scale, sweeps_dir), prepare_data(spec, scale, data),
                 dict(overrides or {}), seeds or spec.scale(scale).seeds)
    lab.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(lab.folder / "lab.yaml", yaml.safe_dump(
        {"lab": spec.name, "preset": str(spec.path), "scale": scale, "data": lab.data, "seeds": lab.seeds,
         "overrides": lab.overrides, "points": {p.name: lab.settings(p) for p in spec.unique_points(scale)}},
        sort_keys=False))
    points = spec.unique_points(scale)
    started = time.time()
    for i, point in enumerate(points[:max_points] if max_points else points, start=1):
        sweep = SweepSpec(name=point.name, grid={"seed": list(range(lab.seeds))}, fixed=lab.settings(point),
                          out_dir=str(lab.runs_dir))
        log.info("lab %s [%s] point %d/%d %s", spec.name, scale, i, len(points), describe(spec, point, scale))
        try:
            run_sweep(sweep, sweeps_dir=lab.points_dir, train_fn=train_fn)
        except PipelineError as e:  # e.g. lr 1 diverging: the table shows it, the other points still run
            log.warning("lab %s: %s (%s)", spec.name, e, describe(spec, point, scale))
    log.info("lab %s [%s]: %d points in %.0fs", spec.name, scale, len(points), time.time() - started)
    return lab


def describe(spec: LabSpec, point: Point, scale: str) -> str:
    """The experiments and variants a point stands for, e.g. 'augmentation: crop+flip; bn: no BN'."""
    uses = [f"{exp}: {label}" for (exp, label), p in spec.points(scale).items() if p.key == point.key]
    return "; ".join(uses)
