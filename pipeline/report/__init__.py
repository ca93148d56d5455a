"""`python -m pipeline report RUN` and `python -m pipeline compare RUN RUN...`.

report writes <runs-dir>/RUN/report.html, one self-contained page (figures embedded as base64
PNGs), and the same figures as PNGs in <runs-dir>/RUN/report/. compare overlays several runs'
curves in one PNG and prints a markdown table of what differs between them.

    runs.py      reading run folders (metrics.csv, config.yaml, epoch_<N>.pt), torch-free
    context.py   one run's config, metrics, best model, data and val predictions, loaded lazily
    sections.py  the page's sections, in order (add one with @section)
    features.py  penultimate-layer features and t-SNE
    page.py      the HTML page
    build.py     runs the sections, writes the PNGs, the page and report/manifest.json
    compare.py   `compare`
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import config_dict


def _sections():
    from pipeline.report.sections import SECTIONS
    return list(SECTIONS)


@dataclass
class ReportConfig:
    run: str = setting("", "Run folder name under --runs-dir (the command's argument).", required=True)
    runs_dir: str = setting("checkpoints", "Where run folders live.")
    device: str = setting("cpu", "auto, cpu, cuda or cuda:N.")
    tsne_points: int = setting(1000, "Val images in the t-SNE maps.", minimum=5)
    skip: list[str] = setting([], "Leave a section out (repeatable).", choices=_sections, multiple=True,
                              metavar="SECTION")


@click.command("report")
@stage_options(ReportConfig, argument="run", required=False)
def command(config_file: str | None, **flags: Any) -> None:
    """Write RUN/report.html: curves, LR, confusion, mistakes, augmentations, weights, t-SNE, params."""
    from pipeline.report.build import build_report
    from pipeline.report.runs import find_run
    from pipeline.runtime import resolve_device

    cfg = resolve_flags(ReportConfig, config_file, flags)
    run_dir = find_run(cfg.run, cfg.runs_dir)
    result = build_report(run_dir, device=resolve_device(cfg.device), tsne_points=cfg.tsne_points,
                          skip=tuple(cfg.skip), settings=config_dict(cfg))
    for name, why in result.skipped.items():
        click.echo(f"{name}: {why}")
    click.echo(f"wrote {result.page} and {len(result.figures)} figures in {run_dir / 'report'} "
               f"in {result.seconds:.1f}s")


@dataclass
class CompareConfig:
    runs: list[str] = setting([], "Run folder names under --runs-dir (the command's arguments).")
    runs_dir: str = setting("checkpoints", "Where run folders live.")
    out: str = setting("compare.png", "Overlay figure; the table also goes to the same name with .md.",
                       metavar="FILE")


@click.command("compare")
@stage_options(CompareConfig, argument="runs", nargs=-1, required=True)
def compare_command(config_file: str | None, **flags: Any) -> None:
    """Overlay runs' val accuracy and train loss, and tabulate them (run, model, key config, best)."""
    from pipeline.report.compare import compare_runs

    cfg = resolve_flags(CompareConfig, config_file, flags)
    table, figure = compare_runs(cfg.runs, cfg.runs_dir, Path(cfg.out))
    click.echo(table)
    click.echo(f"wrote {figure} and {figure.with_suffix('.md')}")
