"""The sweep's table: one row per trial, best val accuracy first, as results.csv and results.md."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from pipeline.report.runs import best_row, read_metrics

COLUMNS = ("best_val_acc", "best_epoch", "epochs", "wall_s", "state")
NUMERIC = ("trial", "best_val_acc", "best_epoch", "epochs", "wall_s")


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Best score and its epoch, epochs run and summed epoch seconds, from a run's metrics.csv.

    Summed epoch seconds rather than the trial's clock time, so a trial resumed after a kill
    is not charged for the time nobody worked on it.
    """
    rows = read_metrics(run_dir, missing_ok=True)
    best, metric = best_row(rows)
    seconds = [r["seconds"] for r in rows if r.get("seconds") is not None]
    return {
        "best_val_acc": None if best is None else best[metric],
        "best_epoch": None if best is None else int(best["epoch"]),
        "epochs": len(rows),
        "wall_s": round(sum(seconds), 1) if seconds else None,
    }


def trial_rows(trials, keys: list[str], out_dir: Path, name: str) -> list[dict[str, Any]]:
    """Rows for Optuna FrozenTrials (waiting ones aside): trial, run, keys, score, epochs, time, state."""
    rows = []
    for t in trials:
        if t.state.name == "WAITING":
            continue
        run = t.user_attrs.get("run", f"{name}-{t.number}")
        row = {"trial": t.number, "run": run, **{k: t.params.get(k) for k in keys}, **run_summary(out_dir / run)}
        if t.state.name == "COMPLETE" and t.value is not None:
            row["best_val_acc"] = float(t.value)  # what the engine reported, not re-derived
            row["best_epoch"] = t.user_attrs.get("best_epoch", row["best_epoch"])
        if row["wall_s"] is None and t.duration is not None:
            row["wall_s"] = round(t.duration.total_seconds(), 1)
        row["state"] = t.state.name
        row["error"] = t.user_attrs.get("error", "")
        rows.append(row)
    return sort_rows(rows)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best accuracy first; rows without one last; ties by trial number."""
    def key(row):
        acc = row.get("best_val_acc")
        missing = acc is None or math.isnan(acc)
        return (missing, 0.0 if missing else -acc, row["trial"])

    return sorted(rows, key=key)


def results_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    columns = ["trial", "run", *keys, *COLUMNS, "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buf.getvalue()


def results_markdown(rows: list[dict[str, Any]], keys: list[str], name: str) -> str:
    columns = ["trial", "run", *keys, *COLUMNS]
    states = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
    counts = ", ".join(f"{n} {s.lower()}" for s in states if (n := sum(r["state"] == s for r in rows)))
    lines = [f"# Sweep {name}", "", f"{len(rows)} trials ({counts or 'none yet'}), best val accuracy first.", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---:" if c in NUMERIC else "---" for c in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(format_cell(c, row.get(c)) for c in columns) + " |")
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["", "Errors:", ""] + [f"- trial {r['trial']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "best_val_acc":
        return f"{value:.4f}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
