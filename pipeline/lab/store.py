"""Lab results that outlive a checkout: one small JSON per finished (configuration, seed).

    results/labs/<lab>/u-<hash>-s<seed>.json        (full scale; tracked by git)
    results/labs/<lab>-quick/u-<hash>-s<seed>.json  (quick scale; git-ignored)

<hash> covers what decides the result: the point's settings, the --set overrides that are not
machine choices (device, workers, precision... see MACHINE_KEYS) and the data it was trained on
(competition, counts, classes). A lab skips every unit whose file exists, so it can be finished
over several sessions or machines, and its tables and figures are rebuilt from these files alone:
each holds the per-epoch metrics, the report's metric, and what the figures need (a histogram of
the weights, a t-SNE of the features) so no checkpoint has to be kept.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_text, git_sha
from pipeline.errors import PipelineError
from pipeline.lab.spec import Point, settings_hash

log = logging.getLogger(__name__)

FORMAT = 1
RESULTS_DIR = Path("results/labs")
# How a run is computed, not what it computes: never part of a unit's identity.
MACHINE_KEYS = ("device", "workers", "precision", "channels_last", "compile", "probe", "log_every",
                "save_every", "eval_batch_size")
COMPLETE, DIVERGED = "complete", "diverged"
WEIGHT_BINS = 100
TSNE_POINTS = {"quick": 300, "full": 500}  # per panel; 500 keeps a result file under ~80 KB (77 KB measured)


def machine() -> str:
    """CPU model, its speed flags and usable cores (and the GPU, when there is one): what a wall time needs."""
    from pipeline.machine import cpu_model  # torch: only when a result is written

    name, flags = cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{name} ({', '.join(flags) or 'no avx2'}), {cores} cores"
    import torch

    return text + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")


def results_folder(results_dir: str | Path, lab: str, scale: str) -> Path:
    return Path(results_dir) / (lab if scale == "full" else f"{lab}-{scale}")


def data_identity(data_dir: str | Path) -> dict[str, Any]:
    """What a result depends on in the data folder (not its path, which differs between machines)."""
    path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return {"competition": meta["competition"], "counts": meta["counts"], "classes": meta["classes"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not a readable data meta.json ({e})") from None


def identity_of_results(folder: Path, data: str) -> dict[str, Any]:
    """The one data identity the result files in `folder` name (to redraw tables without the data)."""
    seen = {json.dumps(r.record.get("data"), sort_keys=True) for r in load_results(folder).values()}
    if len(seen) != 1:
        raise PipelineError(f"{data}: no prepared data here, and {folder} holds "
                            f"{'no result' if not seen else 'results of several data sets'} to take its identity from")
    return json.loads(seen.pop())


def unit_settings(point: Point, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings a unit trains with, less the machine's own choices."""
    return {k: v for k, v in {**point.settings, **overrides}.items() if k not in MACHINE_KEYS}


@dataclass(frozen=True)
class Unit:
    """One (configuration, seed) of a lab: the smallest piece of work and of result."""

    point: Point
    seed: int
    settings: dict[str, Any]  # unit_settings(point, overrides)
    data: dict[str, Any]  # data_identity

    @property
    def key(self) -> str:
        return settings_hash({"settings": self.settings, "data": self.data})

    @property
    def name(self) -> str:
        return f"u-{self.key}-s{self.seed}"

    def path(self, folder: Path) -> Path:
        return folder / f"{self.name}.json"


@dataclass
class Result:
    unit: str
    state: str  # complete | diverged
    seed: int
    best_val_acc: float | None
    last_val_acc: float | None
    best_epoch: int | None
    epochs: list[dict[str, Any]]  # metrics.csv rows
    wall_s: float | None
    record: dict[str, Any]  # the whole JSON

    def metric(self, ours: str, chance: float) -> float:
        """The number beside the report's: a diverged run counts as chance, as the reports print."""
        if self.state == DIVERGED:
            return chance
        value = self.best_val_acc if ours == "best" else self.last_val_acc
        return float("nan") if value is None else value


def write_result(folder: Path, unit: Unit, *, lab: str, scale: str, variants: list[list[str]], run_dir: Path,
                 summary: dict[str, Any] | None, error: str | None, wall_s: float, machine: str,
                 figures: tuple[str, ...] = ()) -> Path:
    """The unit's JSON from its finished run folder (summary None + error: the loss diverged)."""
    from pipeline.report.runs import read_config, read_metrics

    rows = read_metrics(run_dir, missing_ok=True)
    scored = [r for r in rows if r.get("val_acc") is not None and not math.isnan(r["val_acc"])]
    best = max(scored, key=lambda r: (r["val_acc"], -r["epoch"])) if scored else None
    config = read_config(run_dir)
    record = {
        "format": FORMAT,
        "lab": lab, "scale": scale, "unit": unit.name, "seed": unit.seed,
        "variants": variants,
        "state": DIVERGED if summary is None else COMPLETE,
        "error": error,
        "settings": unit.settings, "settings_hash": unit.key, "data": unit.data,
        "best_val_acc": (summary or {}).get("best_val_acc", best and best["val_acc"]),
        "best_epoch": (summary or {}).get("best_epoch", best and best["epoch"]),
        "last_val_acc": scored[-1]["val_acc"] if scored else None,
        "epochs": rows,
        "wall_s": round(wall_s, 1),
        "runtime": {k: config.get(k) for k in ("precision", "channels_last", "compile", "device")},
        "machine": machine,
        "git_sha": git_sha(Path(__file__).resolve().parent),  # the code's commit, wherever the lab runs
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": figure_data(run_dir, figures, TSNE_POINTS.get(scale, 300)) if summary is not None else {},
    }
    path = unit.path(folder)
    atomic_write_text(path, json.dumps(record, indent=1, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)


def figure_data(run_dir: Path, figures: tuple[str, ...], tsne_points: int) -> dict[str, Any]:
    """What the lab page's figures need from the checkpoints, small enough to commit."""
    makers = {"weights": lambda: weight_histogram(run_dir), "tsne": lambda: tsne_panels(run_dir, tsne_points)}
    out: dict[str, Any] = {}
    for name in figures:
        if name in makers:
            try:
                out[name] = makers[name]()
            except PipelineError as e:  # the result stands without its figure; the page says which is missing
                log.warning("%s: no %s figure data (%s)", run_dir, name, e)
    return out


def weight_histogram(run_dir: Path) -> dict[str, Any]:
    """All conv/linear weights of best.pt as WEIGHT_BINS counts between their min and max."""
    import numpy as np

    weights = all_weights(run_dir)
    counts, edges = np.histogram(weights, bins=WEIGHT_BINS)
    return {"lo": float(edges[0]), "hi": float(edges[-1]), "counts": counts.tolist(),
            "n": int(weights.size), "share_below_1e-3": float(np.mean(np.abs(weights) < 1e-3))}


def all_weights(run_dir: Path):
    import numpy as np

    from pipeline.predict import load_run_model

    model = load_run_model(run_dir, "best").model
    parts = [p.detach().float().cpu().numpy().ravel() for n, p in model.named_parameters()
             if n.endswith("weight") and p.dim() > 1]
    return np.concatenate(parts)


def tsne_panels(run_dir: Path, points: int) -> dict[str, Any]:
    """t-SNE of the penultimate features at the early/middle/late checkpoints, coordinates rounded."""
    import torch

    from pipeline.report.context import RunContext
    from pipeline.report.sections import tsne_embeddings

    ctx = RunContext(run_dir, torch.device("cpu"), tsne_points=points)
    panels, labels = tsne_embeddings(ctx)
    return {"classes": ctx.classes, "labels": labels.tolist(),
            "panels": [{"title": title, "xy": [[round(float(a), 2), round(float(b), 2)] for a, b in xy]}
                       for title, xy in panels]}


def load_results(folder: Path) -> dict[str, Result]:
    """unit name -> Result for every readable JSON in the folder (a damaged file is named, then skipped)."""
    out = {}
    for path in sorted(Path(folder).glob("u-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            out[record["unit"]] = Result(
                unit=record["unit"], state=record["state"], seed=int(record["seed"]),
                best_val_acc=record.get("best_val_acc"), last_val_acc=record.get("last_val_acc"),
                best_epoch=record.get("best_epoch"), epochs=record.get("epochs") or [],
                wall_s=record.get("wall_s"), record=record)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: not a lab result, skipped (%s)", path, e)
    return out
