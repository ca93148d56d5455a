"""`report`: run every section on one run, write report/<figure>.png and report.html."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_bytes, atomic_write_text, building_dir, file_entry, write_manifest
from pipeline.errors import PipelineError
from pipeline.report import page, runs
from pipeline.report.context import RunContext
from pipeline.report.sections import SECTIONS, Section
from pipeline.run_layout import BEST, METRICS_CSV, REPORT_DIR, REPORT_HTML

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    page: Path
    figures: list[Path]
    seconds: float
    section_seconds: dict[str, float]
    skipped: dict[str, str]  # section -> why it is empty


def check_sections(names) -> list[str]:
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"unknown report section {', '.join(unknown)}; choose from: {', '.join(SECTIONS)}")
    return list(names)


def build_report(run_dir: Path, *, device, tsne_points: int = 1000, skip: tuple[str, ...] = (),
                 settings: dict[str, Any] | None = None) -> ReportResult:
    """RUN/report.html and the figures in RUN/report/, whose manifest holds the command's resolved
    ReportConfig (`settings`) under what this call used."""
    started = time.time()
    skip = check_sections(skip)
    ctx = RunContext(run_dir, device, tsne_points=tsne_points)
    built: list[tuple[str, str, Section]] = []
    timings: dict[str, float] = {}
    for name, (title, make) in SECTIONS.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            sec = make(ctx)
        except PipelineError as e:  # this run lacks what the section needs; the rest still applies
            sec = Section(note=f"not available: {e}")
        timings[name] = round(time.perf_counter() - t0, 2)
        log.info("report %s: %s in %.1fs%s", ctx.name, name, timings[name], f" ({sec.note})" if sec.note else "")
        built.append((name, title, sec))

    if all(sec.note and not sec.figures for _, _, sec in built):
        raise PipelineError(f"{run_dir}: nothing to report; {built[0][0]}: {built[0][2].note}" if built
                            else "every report section was skipped")
    figures_dir = run_dir / REPORT_DIR
    figures = [(name, png) for _, _, sec in built for name, png in sec.figures.items()]
    with building_dir(figures_dir) as tmp:  # the previous report stays intact until this one is complete
        for name, png in figures:
            atomic_write_bytes(tmp / name, png)
        inputs = [p for p in (run_dir / BEST, run_dir / METRICS_CSV) if p.is_file()]
        write_manifest(tmp, "report", inputs=inputs, outputs=[file_entry(tmp / name, tmp) for name, _ in figures],
                       config={**(settings or {}), "run": str(run_dir), "tsne_points": tsne_points, "skip": skip},
                       metrics={"section_seconds": timings}, started=started)
    html = page.render(ctx.name, _summary(ctx), built, ctx.config, REPORT_DIR)
    page_path = atomic_write_text(run_dir / REPORT_HTML, html)
    return ReportResult(
        page=page_path, figures=[figures_dir / name for name, _ in figures],
        seconds=round(time.time() - started, 2), section_seconds=timings,
        skipped={name: sec.note for name, _, sec in built if sec.note},
    )


def _summary(ctx: RunContext) -> list[tuple[str, object]]:
    cfg = ctx.config
    items: list[tuple[str, object]] = [("model", cfg.get("model")), ("data", cfg.get("data"))]
    opts = cfg.get("model_opts") or {}
    if opts:
        items.append(("model options", ", ".join(f"{k}={v}" for k, v in opts.items())))
    rows = runs.read_metrics(ctx.run_dir, missing_ok=True)
    best, metric = runs.best_row(rows)
    if best is not None:
        items.append((f"best {metric}", f"{best[metric]:.4f} (epoch {best['epoch']} of {len(rows)})"))
    items += [(k, cfg.get(k)) for k in ("optimizer", "lr", "weight_decay", "batch_size", "schedule", "augment")
              if cfg.get(k) is not None]
    return items
