"""report.html of a lab: per experiment the ours-vs-report table, the trend line and its figures.

Figures (chosen per experiment in the preset), drawn from the result files alone (pipeline.lab.store),
so a clean checkout rebuilds them: `curves` (every variant's val accuracy and train loss overlaid),
`weights` (all conv/linear weights of each variant's best.pt in one overlaid histogram: L1's spike
at zero against L2's bell), `tsne` (penultimate features at the first, middle and last saved epoch
of each variant). They use each variant's first finished seed.
"""
from __future__ import annotations

import html
import logging
import numpy as np

from pipeline import plots
from pipeline.lab import results
from pipeline.lab.run import LabRun
from pipeline.lab.spec import Experiment
from pipeline.report.page import render
from pipeline.report.sections import Section, table

log = logging.getLogger(__name__)

def weight_overlay(histograms: list[tuple[str, dict]]) -> bytes:
    """One histogram of all conv/linear weights per variant (pipeline.lab.store.weight_histogram), overlaid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    for name, h in histograms:
        edges = np.linspace(h["lo"], h["hi"], len(h["counts"]) + 1)
        ax.stairs(np.maximum(h["counts"], 0.5), edges, linewidth=1.5,  # 0.5: empty bins on a log axis
                  label=f"{name} (share |w|<1e-3: {h['share_below_1e-3']:.1%})")
    ax.set(xlabel="weight value", ylabel="count (log)", title="conv and linear weights, best.pt", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.to_png(fig)


def first_seeds(outcomes: list[results.Outcome]) -> list[tuple[str, list[dict], dict]]:
    """(variant label, its first finished seed's metrics rows and figure data) for the variants that have one."""
    return [(o.label, o.histories[0], o.figures[0]) for o in outcomes if o.histories]


def experiment_section(exp: Experiment, outcomes: list[results.Outcome]) -> Section:
    sec = Section()
    firsts = first_seeds(outcomes)
    sec.html = (f"<p><b>Trend:</b> {html.escape(results.trend(exp, outcomes))}.</p>"
                + (f"<p>{html.escape(exp.note)}</p>" if exp.note else "")
                + table(results.HEADERS, results.table_rows(outcomes)))
    if not firsts:
        sec.note = "no finished run yet"
        return sec
    missing = []
    for figure in exp.figures:
        if figure == "curves":
            sec.figures[f"{exp.name}-curves.png"] = plots.compare_curves([(label, rows) for label, rows, _ in firsts])
            continue
        have = [(label, data[figure]) for label, _, data in firsts if figure in data]
        missing += [f"{figure} of {label}" for label, _, data in firsts if figure not in data]
        if figure == "weights" and have:
            sec.figures[f"{exp.name}-weights.png"] = weight_overlay(have)
        elif figure == "tsne":
            for label, t in have:
                panels = [(p["title"], np.asarray(p["xy"], dtype=float)) for p in t["panels"]]
                sec.figures[f"{exp.name}-tsne-{_slug(label)}.png"] = plots.embedding_panels(
                    panels, np.asarray(t["labels"]), t["classes"])
    if missing:
        sec.note = f"not in the result files (a diverged run keeps none): {', '.join(missing)}"
    return sec


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def render_page(lab: LabRun, collected: dict[str, list[results.Outcome]], machine: str) -> str:
    spec, sc = lab.spec, lab.spec.scale(lab.scale)
    summary = [("scale", lab.scale), ("data", lab.data), ("seeds", lab.seeds), ("results", str(lab.results)),
               ("report", spec.source),
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
        sections.append((exp.name, exp.title, experiment_section(exp, collected[exp.name])))
    config = {"lab": spec.name, "preset": str(spec.path), "scale": lab.scale, "data": lab.data,
              "expected_time": sc.expected_time, "overrides": lab.overrides,
              "points": {p.name: lab.settings(p) for p in spec.unique_points(lab.scale)}}
    return render(f"Lab {spec.name} ({lab.scale})", summary, sections, config, str(lab.folder))
