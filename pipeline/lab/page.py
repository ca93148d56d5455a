"""report.html of a lab: per experiment the ours-vs-report table, the trend line and its figures.

Figures (chosen per experiment in the preset): `curves` (every variant's val accuracy and train
loss overlaid), `weights` (all conv/linear weights of each variant's best.pt in one overlaid
histogram: L1's spike at zero against L2's bell), `tsne` (penultimate features at the first,
middle and last saved epoch of each variant). They use each variant's first finished seed.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

from pipeline import plots
from pipeline.errors import PipelineError
from pipeline.lab import results
from pipeline.lab.run import LabRun
from pipeline.lab.spec import Experiment
from pipeline.report.page import render
from pipeline.report.runs import read_metrics
from pipeline.report.sections import Section, table

log = logging.getLogger(__name__)

TSNE_POINTS = {"quick": 300, "full": 1000}


def weight_overlay(weights: list[tuple[str, np.ndarray]], bins: int = 80) -> bytes:
    """One histogram of all conv/linear weights per variant, overlaid (log count)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    lo = min(float(w.min()) for _, w in weights)
    hi = max(float(w.max()) for _, w in weights)
    edges = np.linspace(lo, hi, bins + 1)
    for name, w in weights:
        ax.hist(w, bins=edges, histtype="step", linewidth=1.5, log=True,
                label=f"{name} (share |w|<1e-3: {np.mean(np.abs(w) < 1e-3):.1%})")
    ax.set(xlabel="weight value", ylabel="count (log)", title="conv and linear weights, best.pt")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.to_png(fig)


def all_weights(run_dir: Path) -> np.ndarray:
    from pipeline.predict import load_run_model

    model = load_run_model(run_dir, "best").model
    parts = [p.detach().float().cpu().numpy().ravel() for n, p in model.named_parameters()
             if n.endswith("weight") and p.dim() > 1]
    return np.concatenate(parts)


def first_runs(lab: LabRun, outcomes: list[results.Outcome]) -> list[tuple[str, Path]]:
    """(variant label, run folder of its first finished seed) for the variants that have one."""
    out = []
    for o in outcomes:
        for run in o.runs:
            folder = lab.runs_dir / run
            if (folder / "best.pt").is_file():
                out.append((o.label, folder))
                break
    return out


def experiment_section(lab: LabRun, exp: Experiment, outcomes: list[results.Outcome]) -> Section:
    sec = Section()
    runs = first_runs(lab, outcomes)
    sec.html = (f"<p><b>Trend:</b> {html.escape(results.trend(exp, outcomes))}.</p>"
                + (f"<p>{html.escape(exp.note)}</p>" if exp.note else "")
                + table(results.HEADERS, results.table_rows(outcomes)))
    if not runs:
        sec.note = "no finished run yet"
        return sec
    problems = []
    for figure in exp.figures:
        try:
            if figure == "curves":
                histories = [(label, read_metrics(folder, missing_ok=True)) for label, folder in runs]
                sec.figures[f"{exp.name}-curves.png"] = plots.compare_curves(histories)
            elif figure == "weights":
                sec.figures[f"{exp.name}-weights.png"] = weight_overlay(
                    [(label, all_weights(folder)) for label, folder in runs])
            elif figure == "tsne":
                for label, folder in runs:
                    sec.figures[f"{exp.name}-tsne-{_slug(label)}.png"] = tsne_figure(lab, folder)
        except PipelineError as e:
            problems.append(f"{figure}: {e}")
    if problems:
        sec.note = "; ".join(problems)
    return sec


def tsne_figure(lab: LabRun, run_dir: Path) -> bytes:
    import torch

    from pipeline.report.context import RunContext
    from pipeline.report.sections import tsne

    ctx = RunContext(run_dir, torch.device("cpu"), tsne_points=TSNE_POINTS.get(lab.scale, 300))
    return tsne(ctx).figures["tsne.png"]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def render_page(lab: LabRun, collected: dict[str, list[results.Outcome]], machine: str) -> str:
    spec, sc = lab.spec, lab.spec.scale(lab.scale)
    summary = [("scale", lab.scale), ("data", lab.data), ("seeds", lab.seeds), ("report", spec.source),
               ("report's metric", spec.metric), ("machine", machine)]
    sections = []
    intro = Section(html="<p>" + html.escape(spec.title) + ". Accuracy in %; ours is the "
                    f"{spec.ours} epoch's val accuracy of each run (mean ± half the range over seeds). The reports are single runs: judge by "
                    "directions and orderings.</p>"
                    + "".join(f"<p>{html.escape(n)}</p>" for n in spec.notes))
    if lab.scale != "full":
        intro.note = "Quick scale: small data, few epochs. Only the pipeline and the first hints of the trends."
    sections.append(("about", "About this lab", intro))
    for exp in spec.experiments:
        sections.append((exp.name, exp.title, experiment_section(lab, exp, collected[exp.name])))
    config = {"lab": spec.name, "preset": str(spec.path), "scale": lab.scale, "data": lab.data,
              "expected_time": sc.expected_time, "overrides": lab.overrides,
              "points": {p.name: lab.settings(p) for p in spec.unique_points(lab.scale)}}
    return render(f"Lab {spec.name} ({lab.scale})", summary, sections, config, str(lab.folder))
