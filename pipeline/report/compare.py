"""`compare`: several runs' curves on one figure and one markdown table of what differs between them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.report import runs
from pipeline.run_layout import MANIFEST

# Never "key config": they name files or machines, not the experiment.
NOT_CONFIG = {"run", "out_dir", "resume", "overwrite", "device", "workers", "log_every", "eval_batch_size",
              "save_every"}
# Shown when the runs agree on everything (or there is only one run).
DEFAULT_KEYS = ("optimizer", "lr", "weight_decay", "epochs")


@dataclass
class RunRecord:
    name: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    wall_seconds: float | None

    @property
    def flat_config(self) -> dict[str, Any]:
        """The config with model options as model_opts.<name> keys, so single options can differ."""
        flat = {k: v for k, v in self.config.items() if k != "model_opts" and k not in NOT_CONFIG}
        flat.update({f"model_opts.{k}": v for k, v in (self.config.get("model_opts") or {}).items()})
        return flat


def load_record(run: str, runs_dir: str | Path) -> RunRecord:
    path = runs.find_run(run, runs_dir)
    metrics = runs.read_metrics(path)
    return RunRecord(path.name, path, runs.read_config(path), metrics, _wall_seconds(path, metrics))


def _wall_seconds(path: Path, metrics: list[dict[str, Any]]) -> float | None:
    """The training manifest's wall time; for an unfinished run the sum of its epoch times."""
    manifest = path / MANIFEST
    if manifest.is_file():
        from pipeline.artifacts import read_json

        info = read_json(manifest)
        if info.get("stage") == "train" and info.get("wall_seconds") is not None:
            return float(info["wall_seconds"])
    seconds = [r["seconds"] for r in metrics if r.get("seconds") is not None]
    return round(sum(seconds), 1) if seconds else None


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between the runs (model aside), in config order."""
    flats = [r.flat_config for r in records]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    missing = object()
    return [k for k in keys if k != "model" and len({repr(f.get(k, missing)) for f in flats}) > 1]


def compare_table(records: list[RunRecord]) -> str:
    from pipeline.info import markdown_table

    keys = differing_keys(records) or [k for k in DEFAULT_KEYS if any(k in r.config for r in records)]
    rows = []
    for r in records:
        best, metric = runs.best_row(r.metrics)
        flat = r.flat_config
        rows.append([
            r.name, r.config.get("model", ""),
            *(_cell(flat.get(k)) for k in keys),
            None if best is None else round(best[metric], 4),
            None if best is None else best["epoch"],
            None if r.wall_seconds is None else round(r.wall_seconds, 1),
        ])
    return markdown_table(["run", "model", *keys, "best val acc", "epoch", "wall s"], rows)


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return value


def compare_runs(names: list[str], runs_dir: str | Path, out: Path) -> tuple[str, Path]:
    """Write the overlay figure to `out` and the table beside it (<out>.md); return (table, figure)."""
    from pipeline import plots
    from pipeline.artifacts import atomic_write_bytes, atomic_write_text

    if not names:
        raise PipelineError("name at least one run to compare")
    if len(set(names)) != len(names):
        raise PipelineError("a run is named twice")
    if out.suffix.lower() != ".png":
        raise PipelineError(f"--out {out}: expected a .png file name")
    records = [load_record(name, runs_dir) for name in names]
    atomic_write_bytes(out, plots.compare_curves([(r.name, r.metrics) for r in records]))
    table = compare_table(records)
    atomic_write_text(out.with_suffix(".md"), table + "\n")
    return table, out
