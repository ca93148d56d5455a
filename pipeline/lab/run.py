"""Running a lab: prepare its data, queue the units (configuration, seed) with no result yet, train them.

Results live in `results/labs/<lab>[-quick]/` (pipeline.lab.store), one JSON per unit, and are what
the tables and figures are made of. The working files live in `<sweeps_dir>/lab-NAME[-quick]/`:
    lab.yaml        the lab as run (resolved data folder, scale, seeds, overrides, points)
    queue.db        the work queue (pipeline.lab.queue), unless --storage names a shared database
    runs/u-<hash>-s<seed>/   the run folders the train engine writes (checkpoints, metrics)
    results.md, results.csv, report.html, manifest.json   (pipeline.lab.results / page)
Nothing under sweeps/ is needed again once a unit's result is written: a clean checkout with the
committed results retrains nothing. A killed lab rerun with the same command goes on where it
stopped: an interrupted unit continues from its last.pt. `jobs` worker processes (threads split
between them) train units side by side, for models too small to keep every core busy alone.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.artifacts import atomic_write_text
from pipeline.errors import PipelineError
from pipeline.lab import store
from pipeline.lab.spec import LabSpec, Point
from pipeline.run_layout import LAST

log = logging.getLogger(__name__)


@dataclass
class LabRun:
    spec: LabSpec
    scale: str
    folder: Path
    data: str  # prepared data folder every unit trains on
    overrides: dict[str, Any]  # --set, over every point (machine keys: device, workers, ...)
    seeds: int  # seeds per point: the scale's, or --seeds
    results_dir: Path = field(default_factory=lambda: store.RESULTS_DIR)
    identity: dict[str, Any] | None = field(default=None, repr=False)  # store.data_identity, read once
    only: tuple[str, ...] = ()  # train only these experiments' units ("EXP" or "EXP:variant label")

    @property
    def runs_dir(self) -> Path:
        return self.folder / "runs"

    @property
    def failures(self) -> Path:
        """failures/<unit>.txt: the last error of each unit that failed and has no result (this checkout only)."""
        return self.folder / "failures"

    @property
    def results(self) -> Path:
        return store.results_folder(self.results_dir, self.spec.name, self.scale)

    def settings(self, point: Point) -> dict[str, Any]:
        return {**point.settings, **self.overrides, "data": self.data}

    def data_identity(self) -> dict[str, Any]:
        """The data's identity from its meta.json, or (no data here: a clean checkout redrawing the
        tables) from the result files, which all name it."""
        if self.identity is None:
            if (Path(self.data) / "meta.json").is_file():
                self.identity = store.data_identity(self.data)
            else:
                self.identity = store.identity_of_results(self.results, self.data)
        return self.identity

    def units(self, point: Point, seeds: int | None = None) -> list[store.Unit]:
        settings = store.unit_settings(point, self.overrides)
        return [store.Unit(point, seed, settings, self.data_identity()) for seed in range(seeds or self.seeds)]

    def all_units(self) -> dict[str, store.Unit]:
        """The units this lab trains: every point's seeds, or only the points --only names."""
        return {u.name: u for p in self.spec.unique_points(self.scale) if self.wanted(p) for u in self.units(p)}

    def wanted(self, point: Point) -> bool:
        names = {name for pair in self.variants_of(point) for name in (pair[0], ":".join(pair))}
        return not self.only or bool(names & set(self.only))

    def check_only(self) -> None:
        known = {name for e in self.spec.experiments for v in e.variants for name in (e.name, f"{e.name}:{v.label}")}
        unknown = sorted(set(self.only) - known)
        if unknown:
            raise PipelineError(f"--only {', '.join(unknown)}: not an experiment (or EXPERIMENT:variant) of "
                                f"{self.spec.name}; experiments: {', '.join(e.name for e in self.spec.experiments)}")

    def variants_of(self, point: Point) -> list[list[str]]:
        return [[exp, label] for (exp, label), p in self.spec.points(self.scale).items() if p.key == point.key]

    def figures_of(self, point: Point) -> tuple[str, ...]:
        names = {e for e, _ in self.variants_of(point)}
        return tuple(sorted({f for e in self.spec.experiments if e.name in names for f in e.figures}))


def lab_folder(name: str, scale: str, sweeps_dir: str | Path = "sweeps") -> Path:
    """sweeps/lab-NAME for the full scale, sweeps/lab-NAME-quick for quick: they never share runs."""
    return Path(sweeps_dir) / (f"lab-{name}" if scale == "full" else f"lab-{name}-{scale}")


def data_folder(spec: LabSpec, scale: str):
    """(the scale's data folder, its DataConfig)."""
    from pipeline.config import resolve_config
    from pipeline.data.stage import DataConfig

    cfg = resolve_config(DataConfig, None, spec.scale(scale).data)
    return Path(cfg.data_root) / cfg.competition, cfg


def prepare_data(spec: LabSpec, scale: str, data: str | None) -> str:
    """The data folder: --data as given, else the scale's competition under its data_root,
    built with the data stage when it is not there yet."""
    if data:
        if not (Path(data) / "meta.json").is_file():
            raise PipelineError(f"{data}: not a prepared data folder (no meta.json); run `pipeline data` first")
        return str(data)
    from pipeline.data.stage import run as run_data

    folder, cfg = data_folder(spec, scale)
    if not (folder / "meta.json").is_file():
        log.warning("lab %s: preparing %s (%s)", spec.name, folder, cfg.source or "built-in source")
        run_data(cfg)
    return str(folder)


def missing_units(lab: LabRun) -> list[str]:
    done = store.load_results(lab.results)
    return [name for name in lab.all_units() if name not in done]


def default_storage(lab: LabRun) -> str:
    return f"sqlite:///{(lab.folder / 'queue.db').resolve()}"


def run_lab(lab: LabRun, *, storage: str | None = None, jobs: int = 1, max_units: int | None = None,
            train_fn: Callable[..., dict] | None = None, worker_args: list[str] | None = None) -> int:
    """Train the units with no result (at most max_units in this process); returns how many were missing.

    jobs > 1 starts that many worker processes (`worker_args` rebuild this lab's command line) with
    the cores split between them, and waits for them.
    """
    lab.folder.mkdir(parents=True, exist_ok=True)
    lab.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(lab.folder / "lab.yaml", yaml.safe_dump(
        {"lab": lab.spec.name, "preset": str(lab.spec.path), "scale": lab.scale, "data": lab.data,
         "seeds": lab.seeds, "overrides": lab.overrides, "results": str(lab.results),
         "points": {p.name: lab.settings(p) for p in lab.spec.unique_points(lab.scale)}}, sort_keys=False))
    missing = missing_units(lab)
    total = len(lab.all_units())
    log.info("lab %s [%s]: %d of %d units have results in %s; %d to train", lab.spec.name, lab.scale,
             total - len(missing), total, lab.results, len(missing))
    if not missing:
        return 0
    from pipeline.lab import queue

    storage = storage or default_storage(lab)
    name = queue.queue_name(lab.spec.name, lab.scale, missing)
    study = queue.open_queue(storage, name, missing)
    if requeued := queue.requeue_failed(study):
        log.info("lab %s: trying again %d unit(s) that failed last time", lab.spec.name, requeued)
    if jobs > 1:
        run_workers(jobs, [*(worker_args or []), "--queue", name], storage)
    else:
        work(lab, storage, name, max_units=max_units, train_fn=train_fn)
    return len(missing)


def run_workers(jobs: int, args: list[str], storage: str) -> None:
    """`jobs` copies of this lab's command as queue workers, each with its share of the cores."""
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                  // jobs)
    code = str(Path(__file__).resolve().parents[2])  # this checkout's pipeline, whatever the working folder
    path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}
    command = [sys.executable, "-m", "pipeline", "lab", *args, "--worker", "--storage", storage]
    log.info("lab: %d workers x %d thread(s)", jobs, threads)
    procs = [subprocess.Popen(command, env=env) for _ in range(jobs)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # they got the terminal's SIGINT too; wait for their last.pt to land
            p.wait()
        raise
    bad = [c for c in codes if c != 0]
    if bad:
        raise PipelineError(f"lab: {len(bad)} of {jobs} workers failed (exit codes {bad}); rerun to continue")


def work(lab: LabRun, storage: str, queue_name: str, *, max_units: int | None = None,
         train_fn: Callable[..., dict] | None = None) -> int:
    """This process's share of the queue: claim a unit, train it, write its result; until none is left."""
    from pipeline.lab import queue

    study = queue.open_queue(storage, queue_name, [])  # made by run_lab: only loaded here
    units = lab.all_units()
    trained = 0
    for trial_id, name, adopted in queue.units_of_this_worker(study):
        metric, error = train_unit(lab, units[name], resume=adopted, train_fn=train_fn)
        queue.finish(study, trial_id, metric, error)
        trained += 1
        if max_units is not None and trained >= max_units:
            break
    return trained


def train_unit(lab: LabRun, unit: store.Unit, *, resume: bool = False,
               train_fn: Callable[..., dict] | None = None) -> tuple[float | None, str | None]:
    """Train one unit and write its result; (its metric, None), or (None, the error) if it failed.

    A loss that became NaN/inf is a result (the reports print chance accuracy for it), any other
    error is not: the unit stays missing and the next run tries it again.
    """
    from pipeline.sweep.spec import train_config
    from pipeline.train.epoch import NonFiniteLoss

    if train_fn is None:
        from pipeline.train.engine import run_training as train_fn
    run_dir = lab.runs_dir / unit.name
    resume = resume and (run_dir / LAST).is_file()
    cfg = train_config({**lab.settings(unit.point), "seed": unit.seed}, run=unit.name, out_dir=str(lab.runs_dir),
                       resume=resume, overwrite=not resume)
    log.info("lab %s [%s] %s seed %d: %s", lab.spec.name, lab.scale, unit.name, unit.seed,
             "; ".join(f"{e}: {v}" for e, v in lab.variants_of(unit.point)))
    started = time.time()
    summary: dict[str, Any] | None
    try:
        summary, error = train_fn(cfg), None
    except NonFiniteLoss as e:
        summary, error = None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad unit must not stop the others; the table shows it
        log.warning("lab %s: %s failed: %s", lab.spec.name, unit.name, e)
        return None, note_failure(lab, unit, f"{type(e).__name__}: {e}".splitlines()[0])
    if summary is not None and summary.get("best_val_acc") is None:
        return None, note_failure(lab, unit, "the run finished no epoch")
    (lab.failures / f"{unit.name}.txt").unlink(missing_ok=True)
    store.write_result(lab.results, unit, lab=lab.spec.name, scale=lab.scale, variants=lab.variants_of(unit.point),
                       run_dir=run_dir, summary=summary, error=error, wall_s=time.time() - started,
                       machine=store.machine(), figures=lab.figures_of(unit.point))
    return (summary or {}).get("best_val_acc", 0.0), None


def note_failure(lab: LabRun, unit: store.Unit, error: str) -> str:
    lab.failures.mkdir(parents=True, exist_ok=True)
    atomic_write_text(lab.failures / f"{unit.name}.txt", error + "\n")
    return error


def failures(lab: LabRun) -> dict[str, str]:
    """unit name -> its last error, for the units that failed here and have no result."""
    if not lab.failures.is_dir():
        return {}
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(lab.failures.glob("u-*.txt"))}
