"""Ours beside the report's: per experiment a table (mean and spread over seeds) and a trend line.

The reports are single runs, so what is compared is the direction of each change and the ordering
of the variants, not the third decimal. A run whose loss diverged counts as chance accuracy
(1 / classes), which is what the reports print for theirs (10.00 on CIFAR-10), and says so.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.lab import store
from pipeline.lab.run import LabRun
from pipeline.lab.spec import Experiment



@dataclass
class Outcome:
    """One variant's seeds at this scale."""

    label: str
    report: float | None
    point: str
    accs: list[float] = field(default_factory=list)  # finished seeds (diverged ones at chance)
    runs: list[str] = field(default_factory=list)  # the units' names (their result files)
    epochs: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    histories: list[list[dict[str, Any]]] = field(default_factory=list)  # per seed: metrics rows
    figures: list[dict[str, Any]] = field(default_factory=list)  # per seed: store.figure_data
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


def chance(unit: store.Unit) -> float:
    return 1.0 / len(unit.data["classes"])


def collect(lab: LabRun) -> dict[str, list[Outcome]]:
    """experiment name -> one Outcome per variant, in the preset's order, from the lab's result files."""
    from pipeline.lab.run import failures

    done = store.load_results(lab.results)
    errors = failures(lab)
    points = lab.spec.points(lab.scale)
    out: dict[str, list[Outcome]] = {}
    for exp in lab.spec.experiments:
        rows = []
        for var in exp.variants:
            point = points[(exp.name, var.label)]
            o = Outcome(var.label, var.report, point.name)
            # the lab's seeds, and any further seed a closer look (--seeds N --only ...) added
            extra = max((r.seed + 1 for r in done.values() if r.unit.startswith(f"u-{lab.units(point, 1)[0].key}-")),
                        default=0)
            for unit in lab.units(point, max(lab.seeds, extra)):
                result = done.get(unit.name)
                if result is None:
                    o.pending += unit.seed < lab.seeds
                    if unit.name in errors:
                        o.failed.append(errors[unit.name])
                    continue
                o.accs.append(result.metric(lab.spec.ours, chance(unit)))
                o.diverged += result.state == store.DIVERGED
                o.runs.append(unit.name)
                o.epochs.append(len(result.epochs))
                o.histories.append(result.epochs)
                o.figures.append(result.record.get("figures") or {})
                if result.wall_s is not None:
                    o.seconds.append(float(result.wall_s))
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
    pairs = ordered_pairs(outcomes)
    if pairs:
        parts.append(f"pairwise order agrees on {sum(pairs.values())}/{len(pairs)} pairs")
    if not theirs:
        parts.append("the report gives no numbers here")
    return "; ".join(parts) if parts else "nothing measured yet"


def ordered_pairs(outcomes: list[Outcome]) -> dict[tuple[str, str], bool]:
    """(x, y) -> does our order of x and y agree with the report's, for the pairs both have measured
    and the report tells apart."""
    ours = {o.label: o.mean for o in outcomes if o.mean is not None}
    theirs = {o.label: o.report for o in outcomes if o.report is not None}
    both = [o.label for o in outcomes if o.label in ours and o.label in theirs]
    return {(x, y): (theirs[x] > theirs[y]) == (ours[x] > ours[y])
            for i, x in enumerate(both) for y in both[i + 1:] if theirs[x] != theirs[y]}


CLOSE = 0.01  # 1 point: about the spread of two seeds on 5,000 val images (binomial s.d. ~0.65 points each)


def close_calls(exp: Experiment, outcomes: list[Outcome]) -> list[str]:
    """Disagreements with the report that our numbers decide by less than CLOSE, while some side has a
    single seed: where a second seed (--seeds 2 --only EXP:VARIANT) is worth its time."""
    by_label = {o.label: o for o in outcomes}
    pairs = ordered_pairs(outcomes)
    if exp.claim and len(outcomes) == 2:
        pairs = {(outcomes[0].label, outcomes[1].label): "(disagree)" not in trend(exp, outcomes)}
    out = []
    for (x, y), agree in pairs.items():
        a, b = by_label[x], by_label[y]
        if agree or a.mean is None or b.mean is None:
            continue
        if abs(a.mean - b.mean) < CLOSE and min(len(a.accs), len(b.accs)) < 2:
            out.append(f"{exp.name}: {x} vs {y} ({100 * abs(a.mean - b.mean):.2f} points apart)")
    return out


def claims(exp: Experiment, outcomes: list[Outcome]) -> tuple[int, int]:
    """(agreeing, measured) claims of one experiment: its stated claim, else each ordered pair."""
    if exp.claim and len(outcomes) == 2:
        line = trend(exp, outcomes)
        return int("(agree)" in line), int("(agree)" in line or "(disagree)" in line)
    if len(outcomes) == 1:
        return 0, 0
    pairs = ordered_pairs(outcomes)
    return sum(pairs.values()), len(pairs)


def agreement(lab: LabRun, collected: dict[str, list[Outcome]]) -> str:
    counts = [claims(exp, collected[exp.name]) for exp in lab.spec.experiments]
    agree, total = sum(a for a, _ in counts), sum(t for _, t in counts)
    return (f"{agree} of {total} claims agree with the report (two-variant claims, and each pair of variants "
            "the report orders)") if total else "no claim measured yet"


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
    lines += ["", f"**Agreement: {agreement(lab, collected)}.**"]
    for exp in spec.experiments:
        outcomes = collected[exp.name]
        lines += ["", f"## {exp.title}", ""]
        if exp.note:
            lines += [exp.note, ""]
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|---|" + "---:|" * 5 + "---|")
        lines += ["| " + " | ".join(r) + " |" for r in table_rows(outcomes)]
        lines += ["", f"Trend: {trend(exp, outcomes)}."]
        lines += [f"Close: {c}; a second seed would settle it." for c in close_calls(exp, outcomes)]
        errors = [f"- {o.label}: {e}" for o in outcomes for e in o.failed]
        if errors:
            lines += ["", "Errors:", ""] + errors
    return "\n".join(lines) + "\n"


def readme_block(lab: LabRun, collected: dict[str, list[Outcome]]) -> str:
    """The lab's section of README.md: every variant ours vs the report, the trend lines, the agreement."""
    units = [o for outs in collected.values() for o in outs]
    machines = sorted({r.record["machine"] for r in store.load_results(lab.results).values()})
    seconds = {run: s for o in units for run, s in zip(o.runs, o.seconds)}  # shared units counted once
    lines = [f"{lab.spec.title}. Report's metric: {lab.spec.metric}; ours: the {lab.spec.ours} epoch's val "
             f"accuracy, one seed unless n is shown. **{agreement(lab, collected)}.** "
             f"{len(seconds)} units, {sum(seconds.values()) / 60:.0f} min of training in all, on "
             f"{'; '.join(machines) or '-'}.", "",
             "| experiment | variant | report | ours | ours - report |", "|---|---|---:|---:|---:|"]
    for exp in lab.spec.experiments:
        for row in table_rows(collected[exp.name]):
            lines.append(f"| {exp.name} | " + " | ".join(row[:4]) + " |")
    lines += ["", "Trends:", ""]
    lines += [f"- {exp.name}: {trend(exp, collected[exp.name])}" for exp in lab.spec.experiments]
    close = [c for exp in lab.spec.experiments for c in close_calls(exp, collected[exp.name])]
    if close:
        lines += ["", "Disagreements closer than one seed's spread (a second seed would settle them):", ""]
        lines += [f"- {c}" for c in close]
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, block: str, where: str) -> str:
    """`text` with the part between <!-- lab:NAME:start --> and <!-- lab:NAME:end --> set to `block`."""
    from pipeline.artifacts import between_markers

    return between_markers(text, f"<!-- lab:{name}:start -->", f"<!-- lab:{name}:end -->", block, where)


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
