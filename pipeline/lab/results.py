"""Ours beside the report's: per experiment a table (mean and spread over seeds) and a trend line.

The reports are single runs, so what is compared is the direction of each change and the ordering
of the variants, not the third decimal. A run whose loss diverged counts as chance accuracy
(1 / classes), which is what the reports print for theirs (10.00 on CIFAR-10), and says so.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.lab.run import LabRun
from pipeline.lab.spec import Experiment

DIVERGED = "loss became"  # the start of the engine's NonFiniteLoss message


@dataclass
class Outcome:
    """One variant's seeds at this scale."""

    label: str
    report: float | None
    point: str
    accs: list[float] = field(default_factory=list)  # finished seeds (diverged ones at chance)
    runs: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    diverged: int = 0
    failed: list[str] = field(default_factory=list)  # other errors
    pending: int = 0  # seeds not finished yet (or never started)

    @property
    def mean(self) -> float | None:
        return sum(self.accs) / len(self.accs) if self.accs else None

    @property
    def spread(self) -> float | None:
        """Half the range over seeds (None with one seed)."""
        return (max(self.accs) - min(self.accs)) / 2 if len(self.accs) > 1 else None


def chance(lab: LabRun) -> float:
    meta = json.loads((Path(lab.data) / "meta.json").read_text(encoding="utf-8"))
    return 1.0 / len(meta["classes"])


def point_rows(lab: LabRun, point: str) -> list[dict[str, str]]:
    path = lab.points_dir / point / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def last_val_acc(run_dir: Path) -> float:
    """The last epoch's val accuracy (what a report quoting "accuracy at epoch 29" measured)."""
    from pipeline.report.runs import read_metrics

    rows = [r for r in read_metrics(run_dir) if r.get("val_acc") is not None]
    return float(rows[-1]["val_acc"]) if rows else float("nan")


def collect(lab: LabRun) -> dict[str, list[Outcome]]:
    """experiment name -> one Outcome per variant, in the preset's order."""
    seeds = lab.seeds
    floor = chance(lab)
    points = lab.spec.points(lab.scale)
    out: dict[str, list[Outcome]] = {}
    for exp in lab.spec.experiments:
        rows = []
        for var in exp.variants:
            point = points[(exp.name, var.label)]
            o = Outcome(var.label, var.report, point.name)
            done = 0
            for row in point_rows(lab, point.name):
                if row["state"] == "COMPLETE" and row["best_val_acc"]:
                    o.accs.append(float(row["best_val_acc"]) if lab.spec.ours == "best"
                                  else last_val_acc(lab.runs_dir / row["run"]))
                    o.epochs.append(int(float(row["epochs"] or 0)))
                elif row["state"] == "FAIL" and row.get("error", "").split(": ", 1)[-1].startswith(DIVERGED):
                    o.accs.append(floor)
                    o.diverged += 1
                elif row["state"] == "FAIL":
                    o.failed.append(row.get("error") or "failed")
                else:
                    continue
                done += 1
                o.runs.append(row["run"])
                if row.get("wall_s"):
                    o.seconds.append(float(row["wall_s"]))
            o.pending = max(0, seeds - done)
            rows.append(o)
        out[exp.name] = rows
    return out


def trend(exp: Experiment, outcomes: list[Outcome]) -> str:
    """One line: does ours move the way the report's did?"""
    ours = {o.label: o.mean for o in outcomes if o.mean is not None}
    theirs = {o.label: o.report for o in outcomes if o.report is not None}
    if exp.claim and len(outcomes) == 2:
        a, b = outcomes
        rep = _yes(theirs.get(b.label), theirs.get(a.label))
        our = _yes(ours.get(b.label), ours.get(a.label))
        line = f"{exp.claim}: report {rep}, ours {our}"
        if rep in ("yes", "no") and our in ("yes", "no"):
            line += " (agree)" if rep == our else " (disagree)"
        spreads = [o.spread for o in outcomes if o.spread is not None]
        if our in ("yes", "no") and spreads and abs(ours[b.label] - ours[a.label]) <= max(spreads):
            line += "; our difference is within the seed spread"
        return line
    if len(outcomes) == 1:
        o = outcomes[0]
        return f"report {pct(o.report)}, ours {pct(o.mean)}"
    parts = []
    if theirs:
        parts.append(f"best: report {max(theirs, key=theirs.get)}")
    if ours:
        parts.append(f"{'ours' if theirs else 'best ours'} {max(ours, key=ours.get)}")
    both = [o.label for o in outcomes if o.label in ours and o.label in theirs]
    pairs = [(x, y) for i, x in enumerate(both) for y in both[i + 1:] if theirs[x] != theirs[y]]
    if pairs:
        agree = sum((theirs[x] > theirs[y]) == (ours[x] > ours[y]) for x, y in pairs)
        parts.append(f"pairwise order agrees on {agree}/{len(pairs)} pairs")
    if not theirs:
        parts.append("the report gives no numbers here")
    return "; ".join(parts) if parts else "nothing measured yet"


def _yes(new: float | None, old: float | None) -> str:
    if new is None or old is None:
        return "-"
    if new == old:
        return "tie"  # e.g. 200 val images at quick scale: a 0.5% grid
    return "yes" if new > old else "no"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def ours_cell(o: Outcome) -> str:
    if o.mean is None:
        return "failed" if o.failed else "pending"
    text = pct(o.mean)
    if o.spread is not None:
        text += f" ± {100 * o.spread:.2f}"
    notes = []
    if len(o.accs) > 1:
        notes.append(f"n={len(o.accs)}")
    if o.diverged:
        notes.append(f"{o.diverged} diverged")
    if o.pending:
        notes.append(f"{o.pending} pending")
    return text + (f" ({', '.join(notes)})" if notes else "")


HEADERS = ["variant", "report", "ours", "ours - report", "epochs", "seconds", "runs"]


def table_rows(outcomes: list[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        diff = "-" if o.mean is None or o.report is None else f"{100 * (o.mean - o.report):+.2f}"
        epochs = "/".join(str(e) for e in o.epochs) or "-"
        seconds = f"{sum(o.seconds) / len(o.seconds):.0f}" if o.seconds else "-"
        rows.append([o.label, pct(o.report), ours_cell(o), diff, epochs, seconds, ", ".join(o.runs) or o.point])
    return rows


def results_markdown(lab: LabRun, collected: dict[str, list[Outcome]], machine: str) -> str:
    spec = lab.spec
    lines = [
        f"# Lab {spec.name} ({lab.scale} scale)", "",
        f"{spec.title}. Report: {spec.source}.", "",
        f"Numbers are accuracy in %: the report's {spec.metric}; ours the {spec.ours} epoch's val accuracy of each run "
        f"on `{lab.data}` ({lab.seeds} seed{'s' if lab.seeds > 1 else ''}: mean ± half the range). "
        f"Machine: {machine}.",
    ]
    if lab.scale != "full":
        lines += ["", "Quick scale: small data and few epochs, to check the lab end to end; its numbers "
                      "are not comparable with the report's, only its directions are a first hint."]
    for note in spec.notes:
        lines += ["", f"- {note}"]
    for exp in spec.experiments:
        outcomes = collected[exp.name]
        lines += ["", f"## {exp.title}", ""]
        if exp.note:
            lines += [exp.note, ""]
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|---|" + "---:|" * 5 + "---|")
        lines += ["| " + " | ".join(r) + " |" for r in table_rows(outcomes)]
        lines += ["", f"Trend: {trend(exp, outcomes)}."]
        errors = [f"- {o.label}: {e}" for o in outcomes for e in o.failed]
        if errors:
            lines += ["", "Errors:", ""] + errors
    return "\n".join(lines) + "\n"


def results_csv(collected: dict[str, list[Outcome]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "variant", "report", "ours_mean", "ours_spread", "n", "diverged", "pending",
                     "point", "runs"])
    for exp, outcomes in collected.items():
        for o in outcomes:
            writer.writerow([exp, o.label, _num(o.report), _num(o.mean), _num(o.spread), len(o.accs), o.diverged,
                             o.pending, o.point, " ".join(o.runs)])
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"
