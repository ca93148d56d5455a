"""`python -m pipeline lab NAME --scale quick|full`: a course report's experiments, ours beside theirs.

A lab is a preset, configs/labs/NAME.yaml (see spec.py for its keys): the report's base settings,
its experiments as named variants with the report's own numbers, the figures to draw and the
settings of each scale. The lab trains every distinct configuration once per seed (a "unit") and
writes one result file per unit under results/labs/NAME/ (tracked: a lab is finished over several
sessions or machines, and a unit with a result is never retrained), then results.md, results.csv
and report.html with ours vs the report and a trend line per experiment, rebuilt from those files.

    spec.py     preset parsing and checking, expansion into Points (shared between experiments)
    store.py    the result file of each unit (settings hash, per-epoch metrics, figure data)
    queue.py    the work queue that several workers (processes or machines) share
    run.py      data preparation, claiming and training units, worker processes
    results.py  outcomes per variant, tables, trend lines
    page.py     report.html with the figures
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import click

from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import config_dict, safe_url
from pipeline.errors import PipelineError
from pipeline.lab.store import RESULTS_DIR, machine
from pipeline.run_layout import REPORT_HTML

log = logging.getLogger(__name__)


def write_outputs(lab, started: float | None = None, figures: bool = True,
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.md, results.csv, report.html and manifest.json of the lab as its result files stand now
    (settings: the command's resolved LabConfig, saved in the manifest under what this run settled)."""
    from pipeline.artifacts import atomic_write_text, write_manifest
    from pipeline.lab import results

    collected = results.collect(lab)
    host = machine()
    atomic_write_text(lab.folder / "results.md", results.results_markdown(lab, collected, host))
    atomic_write_text(lab.folder / "results.csv", results.results_csv(collected))
    outputs = ["results.md", "results.csv"]
    if figures:
        from pipeline.lab.page import render_page

        atomic_write_text(lab.folder / REPORT_HTML, render_page(lab, collected, host))
        outputs.append(REPORT_HTML)
    trends = {exp.name: results.trend(exp, collected[exp.name]) for exp in lab.spec.experiments}
    write_manifest(lab.folder, "lab", inputs=[lab.spec.path, *sorted(lab.results.glob("u-*.json"))],
                   outputs=outputs,
                   config={**(settings or {}), "lab": lab.spec.name, "scale": lab.scale, "data": lab.data, "overrides": lab.overrides,
                           "seeds": lab.seeds, "results": str(lab.results)},
                   metrics={"machine": host, "trends": trends,
                            "finished": sum(len(o.accs) for os_ in collected.values() for o in os_)},
                   started=started)
    return collected


@dataclass
class LabConfig:
    name: Optional[str] = setting(None, "The lab, configs/labs/NAME.yaml (the command's argument).")
    scale: str = setting("quick", "quick: small data, 1-2 epochs (checks the lab end to end); full: the report's "
                                  "settings.", choices=("quick", "full"))
    data: Optional[str] = setting(None, "A prepared data folder to use instead of the preset's (e.g. your own "
                                        "Fashion-MNIST).")
    sets: list[str] = setting([], "Override a training key for every run (e.g. device=cuda, workers=0, epochs=1).",
                              flag="--set", multiple=True, metavar="KEY=VALUE")
    labs_dir: str = setting("configs/labs", "Folder of the lab presets.")
    sweeps_dir: str = setting("sweeps", "Working files: run folders, the local queue, the rendered tables.")
    results_dir: str = setting(str(RESULTS_DIR), "One result file per finished unit (commit them: a unit with a "
                                                 "result is never retrained).")
    jobs: int = setting(1, "Worker processes training units side by side, the cores split between them (small "
                           "models).", minimum=1)
    storage: Optional[str] = setting(None, "SQLAlchemy URL of the work queue [sqlite:///<sweeps-dir>/lab-NAME/"
                                           "queue.db]; workers on several machines given one database (e.g. "
                                           "postgresql://user@host/labs) share the lab.", metavar="URL")
    max_units: Optional[int] = setting(None, "Train at most this many units in this call (one worker).", minimum=1)
    seeds: Optional[int] = setting(None, "Seeds per configuration [the preset's for this scale].", minimum=1)
    only: list[str] = setting([], "Train only these experiments' (or variants') units, e.g. --seeds 2 --only "
                                  "'lr:lr 0.01' for a second seed where an ordering is close; the tables show every "
                                  "seed there is.", multiple=True, metavar="EXPERIMENT[:VARIANT]")
    report_only: bool = setting(False, "Only rewrite results.md and report.html from the result files.")
    figures: bool = setting(True, "Write report.html (--no-figures: results.md only).")
    list_only: bool = setting(False, "List the presets and their experiments.", flag="--list")
    readme: Optional[str] = setting(None, "Also write the lab's table between its <!-- lab:NAME:start/end --> "
                                          "markers in this file.", metavar="FILE")
    worker: bool = setting(False, "Only take units from the queue (started by --jobs).", hidden=True)
    queue_name: Optional[str] = setting(None, "The queue a --worker takes units from.", flag="--queue", hidden=True)


@click.command("lab")
@stage_options(LabConfig, argument="name", required=False)
def command(config_file: str | None, **flags: Any) -> None:
    """Run a course lab's experiments and put our numbers beside the report's."""
    from pipeline.lab.spec import list_labs

    cfg = resolve_flags(LabConfig, config_file, flags)
    if cfg.list_only:
        _list_labs(cfg)
        return
    if not cfg.name:
        raise PipelineError(f"name a lab: {', '.join(list_labs(cfg.labs_dir)) or 'none in ' + cfg.labs_dir}")
    if cfg.readme and not Path(cfg.readme).is_file():
        raise PipelineError(f"--readme {cfg.readme}: no such file")
    _run(cfg)


def _list_labs(cfg: LabConfig) -> None:
    from pipeline.lab.spec import list_labs, load_lab

    for lab_name in list_labs(cfg.labs_dir):
        spec = load_lab(lab_name, cfg.labs_dir)
        points = len(spec.unique_points(cfg.scale))
        click.echo(f"{lab_name}: {spec.title} ({len(spec.experiments)} experiments, {points} configurations "
                   f"at {cfg.scale} scale; full: {spec.scale('full').expected_time or 'time not stated'})")


def _run(cfg: LabConfig) -> None:
    from pipeline.lab.run import LabRun, data_folder, lab_folder, prepare_data, run_lab, work
    from pipeline.lab.spec import load_lab
    from pipeline.sweep.spec import parse_sets

    name, scale, sets, report_only = cfg.name, cfg.scale, cfg.sets, cfg.report_only
    spec = load_lab(name, cfg.labs_dir)
    started = time.time()
    # redrawing needs no data (the result files name it): a clean checkout does not rebuild it
    folder = (cfg.data or str(data_folder(spec, scale)[0])) if report_only else prepare_data(spec, scale, cfg.data)
    lab = LabRun(spec, scale, lab_folder(name, scale, cfg.sweeps_dir), folder, parse_sets(sets),
                 cfg.seeds or spec.scale(scale).seeds, Path(cfg.results_dir), only=tuple(cfg.only))
    lab.check_only()
    if cfg.worker:
        if not (cfg.storage and cfg.queue_name):
            raise PipelineError("--worker takes units from a queue run_lab made: give --storage and --queue")
        work(lab, cfg.storage, cfg.queue_name)
        return
    if report_only and not lab.results.is_dir():
        raise PipelineError(f"{lab.results}: no results of this lab at this scale yet")
    lab.folder.mkdir(parents=True, exist_ok=True)
    settings = {**config_dict(cfg), "storage": cfg.storage and safe_url(cfg.storage)}
    if not report_only:
        # the workers rebuild this lab from the same arguments (data resolved, so none prepares it again)
        args = [name, "--scale", scale, "--data", lab.data, "--labs-dir", cfg.labs_dir, "--sweeps-dir",
                cfg.sweeps_dir, "--results-dir", cfg.results_dir, "--seeds", str(lab.seeds),
                *(f"--set={s}" for s in sets), *(f"--only={o}" for o in cfg.only)]
        try:
            run_lab(lab, storage=cfg.storage, jobs=cfg.jobs, max_units=cfg.max_units, worker_args=args)
        except KeyboardInterrupt:
            write_outputs(lab, started, figures=False, settings=settings)
            raise
    collected = write_outputs(lab, started, figures=cfg.figures, settings=settings)
    if cfg.readme:
        from pipeline.artifacts import atomic_write_text
        from pipeline.lab.results import readme_block, replace_block

        text = Path(cfg.readme).read_text(encoding="utf-8")
        atomic_write_text(cfg.readme, replace_block(text, name, readme_block(lab, collected), cfg.readme))
    click.echo((lab.folder / "results.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"-> {lab.folder / 'results.md'}" + ("" if not cfg.figures else f", {lab.folder / REPORT_HTML}"))
