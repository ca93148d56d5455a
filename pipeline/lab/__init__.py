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
from pathlib import Path
from typing import Any

import click

from pipeline.errors import PipelineError
from pipeline.lab.store import RESULTS_DIR, machine
from pipeline.run_layout import REPORT_HTML

log = logging.getLogger(__name__)


def write_outputs(lab, started: float | None = None, figures: bool = True) -> dict[str, Any]:
    """results.md, results.csv, report.html and manifest.json of the lab as its result files stand now."""
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
                   config={"lab": lab.spec.name, "scale": lab.scale, "data": lab.data, "overrides": lab.overrides,
                           "seeds": lab.seeds, "results": str(lab.results)},
                   metrics={"machine": host, "trends": trends,
                            "finished": sum(len(o.accs) for os_ in collected.values() for o in os_)},
                   started=started)
    return collected


@click.command("lab")
@click.argument("name", required=False)
@click.option("--scale", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: small data, 1-2 epochs (checks the lab end to end); full: the report's settings.")
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help="A prepared data folder to use instead of the preset's (e.g. your own Fashion-MNIST).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a training key for every run (e.g. device=cuda, workers=0, epochs=1).")
@click.option("--labs-dir", default="configs/labs", show_default=True, type=click.Path(file_okay=False))
@click.option("--sweeps-dir", default="sweeps", show_default=True, type=click.Path(file_okay=False),
              help="Working files: run folders, the local queue, the rendered tables.")
@click.option("--results-dir", default=str(RESULTS_DIR), show_default=True, type=click.Path(file_okay=False),
              help="One result file per finished unit (commit them: a unit with a result is never retrained).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes training units side by side, the cores split between them (small models).")
@click.option("--storage", default=None, metavar="URL",
              help="SQLAlchemy URL of the work queue [sqlite:///<sweeps-dir>/lab-NAME/queue.db]; workers on "
                   "several machines given one database (e.g. postgresql://user@host/labs) share the lab.")
@click.option("--max-units", type=click.IntRange(min=1), default=None,
              help="Train at most this many units in this call (one worker).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per configuration [the preset's for this scale].")
@click.option("--only", multiple=True, metavar="EXPERIMENT[:VARIANT]",
              help="Train only these experiments' (or variants') units, e.g. --seeds 2 --only 'lr:lr 0.01' for a "
                   "second seed where an ordering is close; the tables show every seed there is.")
@click.option("--report-only", is_flag=True, help="Only rewrite results.md and report.html from the result files.")
@click.option("--no-figures", is_flag=True, help="Skip report.html (results.md only).")
@click.option("--list", "list_only", is_flag=True, help="List the presets and their experiments.")
@click.option("--readme", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Also write the lab's table between its <!-- lab:NAME:start/end --> markers in this file.")
@click.option("--worker", is_flag=True, hidden=True, help="Only take units from the queue (started by --jobs).")
@click.option("--queue", "queue_name", default=None, hidden=True, help="The queue a --worker takes units from.")
def command(name, scale, data, sets, labs_dir, sweeps_dir, results_dir, jobs, storage, max_units, seeds, only,
            report_only, no_figures, list_only, readme, worker, queue_name):
    """Run a course lab's experiments and put our numbers beside the report's."""
    from pipeline.lab.run import LabRun, data_folder, lab_folder, prepare_data, run_lab, work
    from pipeline.lab.spec import list_labs, load_lab
    from pipeline.sweep.spec import parse_sets

    if list_only:
        for lab_name in list_labs(labs_dir):
            spec = load_lab(lab_name, labs_dir)
            points = len(spec.unique_points(scale))
            click.echo(f"{lab_name}: {spec.title} ({len(spec.experiments)} experiments, {points} configurations "
                       f"at {scale} scale; full: {spec.scale('full').expected_time or 'time not stated'})")
        return
    if not name:
        raise PipelineError(f"name a lab: {', '.join(list_labs(labs_dir)) or 'none in ' + labs_dir}")
    spec = load_lab(name, labs_dir)
    started = time.time()
    # redrawing needs no data (the result files name it): a clean checkout does not rebuild it
    folder = (data or str(data_folder(spec, scale)[0])) if report_only else prepare_data(spec, scale, data)
    lab = LabRun(spec, scale, lab_folder(name, scale, sweeps_dir), folder, parse_sets(sets),
                 seeds or spec.scale(scale).seeds, Path(results_dir), only=tuple(only))
    lab.check_only()
    if worker:
        if not (storage and queue_name):
            raise PipelineError("--worker takes units from a queue run_lab made: give --storage and --queue")
        work(lab, storage, queue_name)
        return
    if report_only and not lab.results.is_dir():
        raise PipelineError(f"{lab.results}: no results of this lab at this scale yet")
    lab.folder.mkdir(parents=True, exist_ok=True)
    if not report_only:
        # the workers rebuild this lab from the same arguments (data resolved, so none prepares it again)
        args = [name, "--scale", scale, "--data", lab.data, "--labs-dir", labs_dir, "--sweeps-dir", sweeps_dir,
                "--results-dir", results_dir, "--seeds", str(lab.seeds), *(f"--set={s}" for s in sets),
                *(f"--only={o}" for o in only)]
        try:
            run_lab(lab, storage=storage, jobs=jobs, max_units=max_units, worker_args=args)
        except KeyboardInterrupt:
            write_outputs(lab, started, figures=False)
            raise
    collected = write_outputs(lab, started, figures=not no_figures)
    if readme:
        from pipeline.artifacts import atomic_write_text
        from pipeline.lab.results import readme_block, replace_block

        text = Path(readme).read_text(encoding="utf-8")
        atomic_write_text(readme, replace_block(text, name, readme_block(lab, collected), readme))
    click.echo((lab.folder / "results.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"-> {lab.folder / 'results.md'}" + ("" if no_figures else f", {lab.folder / REPORT_HTML}"))
