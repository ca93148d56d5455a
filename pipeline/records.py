"""Leaderboard records: one JSON per (recipe, epochs, seed) run, kept in a tracked folder
results/leaderboard/<machine_id>/ so figures outlive a checkout and machines never mix.

`make leaderboard` writes them (bench/leaderboard.py); `--recipe auto` plans from them
(train/recipe_auto.py) and the frontier picture is drawn from them. A record holds what
bench/quality.py measured (config, seed, epochs, val accuracy per TTA level, seconds per stage,
img/s, machine) plus the run's per-epoch curve (epoch, val_acc, cumulative seconds) from its
metrics, so seconds per epoch and the fixed start-up cost can be told apart.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import PipelineError

RECORDS_DIR = Path("results/leaderboard")
SCHEMA = 1


def record_name(record: dict[str, Any]) -> str:
    """<recipe>-e<epochs>-s<seed>.json: a run at another epoch count never overwrites this one."""
    if record.get("kind") == "ensemble":  # named by its members: another blend is another record
        members = hashlib.sha256(" ".join(sorted(record["members"])).encode()).hexdigest()[:8]
        return f"ensemble-{len(record['members'])}runs-{members}.json"
    return f"{recipe_of(record)}-e{record['epochs']:g}-s{record['seed']}.json"


def recipe_of(record: dict[str, Any]) -> str:
    return Path(record["config"]).stem if record.get("config") else record.get("recipe", "?")


def curve_from_metrics(rows: Iterable[dict[str, Any]]) -> list[dict[str, float]]:
    """metrics rows -> [{epoch, val_acc, seconds (cumulative, evaluation included), img_per_s}]."""
    curve, total = [], 0.0
    for row in rows:
        total += float(row.get("seconds") or 0.0)
        curve.append({"epoch": row["epoch"], "val_acc": row.get("val_acc"), "seconds": round(total, 3),
                      "img_per_s": row.get("img_per_s")})
    return curve


def write_record(root: str | Path, machine_id: str, record: dict[str, Any]) -> Path:
    """root/<machine_id>/<record_name>: a rerun of the same (recipe, epochs, seed) replaces its record."""
    from pipeline.artifacts import atomic_write_json

    record = {k: v for k, v in record.items() if k not in ("machine_id", "path")}
    return atomic_write_json(Path(root) / machine_id / record_name(record), {"schema": SCHEMA, **record})


def read_records(root: str | Path = RECORDS_DIR) -> list[dict[str, Any]]:
    """Every record under root/<machine_id>/, each with its folder's name as "machine_id"."""
    root = Path(root)
    records = []
    for path in sorted(root.glob("*/*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise PipelineError(f"{path}: not a JSON leaderboard record ({e})") from None
        if not isinstance(record, dict) or "config" not in record and record.get("kind") != "ensemble":
            raise PipelineError(f"{path}: not a leaderboard record (no 'config')")
        records.append({**record, "machine_id": path.parent.name, "path": str(path)})
    return records


def best_tta(record: dict[str, Any]) -> float | None:
    """The record's val accuracy at its best TTA level (what a user of the recipe would submit)."""
    levels = [v for v in (record.get("tta_val_acc") or {}).values() if v is not None]
    return max(levels) if levels else record.get("val_acc")


@dataclass(frozen=True)
class Point:
    """One (recipe, epochs) of one machine, or an ensemble: mean over its seeds."""

    label: str
    config: str | None
    epochs: float | None
    acc: float
    seconds: float
    runs: int
    kind: str = "recipe"


def points(records: Iterable[dict[str, Any]], machine_id: str) -> list[Point]:
    """The frontier's candidates: this machine's runs grouped by (config, epochs), and its ensembles."""
    groups: dict[tuple, list[dict]] = {}
    out = []
    for r in records:
        if r["machine_id"] != machine_id:
            continue
        if r.get("kind") == "ensemble":
            out.append(Point(f"ensemble of {len(r['members'])}", None, None, r["val_acc"], r["seconds"],
                             len(r["members"]), "ensemble"))
        elif best_tta(r) is not None and (r.get("seconds") or {}).get("train"):
            groups.setdefault((r["config"], float(r["epochs"])), []).append(r)
    for (config, epochs), group in groups.items():
        out.append(Point(f"{Path(config).stem} {epochs:g} ep", config, epochs,
                         statistics.fmean(best_tta(g) for g in group),
                         statistics.fmean(g["seconds"]["train"] for g in group),
                         sum(int(g.get("seeds_averaged", 1)) for g in group)))
    return sorted(out, key=lambda p: (p.seconds, -p.acc))


def pareto(candidates: Iterable[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and time: each costs more than the one
    before it on the frontier and is worth it (strictly more accurate)."""
    frontier: list[Point] = []
    for p in sorted(candidates, key=lambda p: (p.seconds, -p.acc)):
        if not frontier or p.acc > frontier[-1].acc:
            frontier.append(p)
    return frontier
