"""A lab preset (configs/labs/NAME.yaml) as a LabSpec, and its expansion into training points.

A preset holds a report's base settings, its experiments (named variants of that base, each with
the report's own number) and the settings of each scale. Expanding it for a scale gives Points:
one resolved set of TrainConfig overrides each, shared by every experiment that uses it (the
baseline of a one-factor lab appears in most experiments but is trained once).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import load_yaml
from pipeline.errors import PipelineError

LABS_DIR = Path("configs/labs")
SCALES = ("quick", "full")
FIGURES = ("curves", "weights", "tsne")
UNITS = {"fraction": 1.0, "percent": 100.0}
OURS = ("best", "last")  # our number: the best epoch's val accuracy, or the last epoch's
MODEL_OPT = "model_opts."


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: dict[str, Any]  # flat: TrainConfig keys and model_opts.<option>
    report: float | None  # the report's number as a fraction, None where it gives none


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    variants: list[Variant]
    claim: str | None = None  # a two-variant experiment: "<claim>" means the second beat the first
    figures: tuple[str, ...] = ("curves",)
    note: str | None = None


@dataclass(frozen=True)
class Scale:
    data: dict[str, Any]  # DataConfig keys for `pipeline data`
    train: dict[str, Any]  # flat overrides over the base
    cap: dict[str, float]  # numeric keys no variant may exceed at this scale (epochs at quick)
    seeds: int
    expected_time: str


@dataclass(frozen=True)
class Point:
    """One configuration to train (with `seeds` seeds), named by a hash of its settings."""

    key: str
    settings: dict[str, Any]  # flat overrides: base < scale < variant, capped

    @property
    def name(self) -> str:
        return f"p-{self.key}"


@dataclass
class LabSpec:
    name: str
    path: Path
    title: str
    source: str
    metric: str  # what the report's numbers are, in words
    ours: str  # which of our val accuracies stands beside it: "best" epoch or "last" epoch
    base: dict[str, Any]
    scales: dict[str, Scale]
    experiments: list[Experiment]
    notes: list[str] = field(default_factory=list)

    def points(self, scale: str) -> dict[tuple[str, str], Point]:
        """(experiment, variant label) -> its Point at `scale`; equal settings give the same Point."""
        sc = self.scale(scale)
        out = {}
        for exp in self.experiments:
            for var in exp.variants:
                settings = {**self.base, **sc.train, **var.overrides}
                for key, limit in sc.cap.items():
                    if key in settings and settings[key] > limit:
                        settings[key] = type(settings[key])(limit)
                out[(exp.name, var.label)] = Point(settings_hash(settings), settings)
        return out

    def unique_points(self, scale: str) -> list[Point]:
        seen: dict[str, Point] = {}
        for point in self.points(scale).values():
            seen.setdefault(point.key, point)
        return list(seen.values())

    def scale(self, scale: str) -> Scale:
        if scale not in self.scales:
            raise PipelineError(f"{self.path}: no '{scale}' scale; it has {', '.join(self.scales)}")
        return self.scales[scale]


def settings_hash(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def lab_path(name: str, labs_dir: str | Path = LABS_DIR) -> Path:
    path = Path(labs_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(labs_dir).glob("*.yaml"))
        raise PipelineError(f"{path}: no such lab; labs: {', '.join(known) or 'none'}")
    return path


def list_labs(labs_dir: str | Path = LABS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(labs_dir).glob("*.yaml"))


def load_lab(name: str, labs_dir: str | Path = LABS_DIR) -> LabSpec:
    path = lab_path(name, labs_dir)
    return parse_lab(name, path, load_yaml(path))


def parse_lab(name: str, path: Path, data: dict[str, Any]) -> LabSpec:
    """Check every part of a preset, so a typo is one line naming the file, not a failed trial later."""
    where = str(path)
    _known(data, {"title", "source", "metric", "unit", "ours", "base", "scales", "experiments", "notes"}, where)
    for key in ("title", "source", "metric", "base", "scales", "experiments"):
        if key not in data:
            raise PipelineError(f"{where}: missing '{key}'")
    unit = data.get("unit", "fraction")
    if unit not in UNITS:
        raise PipelineError(f"{where}: unit '{unit}' must be one of {', '.join(UNITS)}")
    ours = data.get("ours", "best")
    if ours not in OURS:
        raise PipelineError(f"{where}: ours '{ours}' must be one of {', '.join(OURS)}")
    base = flatten(_mapping(data["base"], f"{where}: base"), f"{where}: base")
    scales = {}
    for scale_name, raw in _mapping(data["scales"], f"{where}: scales").items():
        if scale_name not in SCALES:
            raise PipelineError(f"{where}: scale '{scale_name}' must be one of {', '.join(SCALES)}")
        scales[scale_name] = _scale(raw, f"{where}: scales.{scale_name}")
    missing = [s for s in SCALES if s not in scales]
    if missing:
        raise PipelineError(f"{where}: missing scale {', '.join(missing)}")
    experiments = []
    raw_exps = data["experiments"]
    if not isinstance(raw_exps, list) or not raw_exps:
        raise PipelineError(f"{where}: experiments must be a non-empty list")
    for i, raw in enumerate(raw_exps):
        experiments.append(_experiment(raw, f"{where}: experiments[{i}]", UNITS[unit]))
    names = [e.name for e in experiments]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"{where}: experiment {', '.join(dupes)} is listed twice")
    spec = LabSpec(name=name, path=path, title=str(data["title"]), source=str(data["source"]),
                   metric=str(data["metric"]), ours=ours, base=base, scales=scales, experiments=experiments,
                   notes=[str(n) for n in data.get("notes") or []])
    for scale_name in SCALES:
        for point in spec.unique_points(scale_name):
            check_settings(point.settings, where)
    return spec


def _scale(raw: Any, where: str) -> Scale:
    raw = _mapping(raw, where)
    _known(raw, {"data", "train", "cap", "seeds", "expected_time"}, where)
    data = _mapping(raw.get("data"), f"{where}.data")
    if "competition" not in data:
        raise PipelineError(f"{where}.data: missing 'competition'")
    from pipeline.data.stage import DataConfig

    known = {f.name for f in dataclasses.fields(DataConfig)}
    _known(data, known, f"{where}.data")
    seeds = raw.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise PipelineError(f"{where}.seeds: expected a whole number >= 1, got {seeds!r}")
    cap = _mapping(raw.get("cap") or {}, f"{where}.cap")
    for key, value in cap.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"{where}.cap.{key}: expected a number, got {value!r}")
    return Scale(data=data, train=flatten(_mapping(raw.get("train") or {}, f"{where}.train"), f"{where}.train"),
                 cap=cap, seeds=seeds, expected_time=str(raw.get("expected_time", "")))


def _experiment(raw: Any, where: str, unit: float) -> Experiment:
    raw = _mapping(raw, where)
    _known(raw, {"name", "title", "claim", "variants", "figures", "note"}, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PipelineError(f"{where}: missing 'name'")
    where = f"{where} ({name})"
    figures = tuple(raw.get("figures") or ("curves",))
    bad = [f for f in figures if f not in FIGURES]
    if bad:
        raise PipelineError(f"{where}: figure {', '.join(bad)} must be one of {', '.join(FIGURES)}")
    raw_vars = raw.get("variants")
    if not isinstance(raw_vars, list) or len(raw_vars) < 1:
        raise PipelineError(f"{where}: variants must be a non-empty list")
    variants = []
    for j, v in enumerate(raw_vars):
        vw = f"{where}.variants[{j}]"
        v = _mapping(v, vw)
        _known(v, {"label", "set", "report"}, vw)
        if not v.get("label"):
            raise PipelineError(f"{vw}: missing 'label'")
        report = v.get("report")
        if report is not None and (isinstance(report, bool) or not isinstance(report, (int, float))):
            raise PipelineError(f"{vw}: report must be a number or null, got {report!r}")
        variants.append(Variant(str(v["label"]), flatten(_mapping(v.get("set") or {}, f"{vw}.set"), f"{vw}.set"),
                                None if report is None else float(report) / unit))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise PipelineError(f"{where}: a variant label is used twice")
    claim = raw.get("claim")
    if claim is not None and len(variants) != 2:
        raise PipelineError(f"{where}: a claim compares two variants, this experiment has {len(variants)}")
    return Experiment(name=name, title=str(raw.get("title") or name), variants=variants, claim=claim,
                      figures=figures, note=raw.get("note"))


def flatten(values: dict[str, Any], where: str) -> dict[str, Any]:
    """{model_opts: {bn: true}, lr: 0.1} -> {'model_opts.bn': True, 'lr': 0.1} (sweep keys)."""
    out = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key == "model_opts":
            for opt, v in _mapping(value, f"{where}.model_opts").items():
                out[f"{MODEL_OPT}{opt}"] = v
        else:
            out[key] = value
    return out


def check_settings(settings: dict[str, Any], where: str) -> None:
    """Every key a TrainConfig field (or a model option of the chosen model), every value its type."""
    from pipeline.config import resolve_config
    from pipeline.models import model_options
    from pipeline.sweep.spec import RESERVED_KEYS
    from pipeline.train.config import TrainConfig, check_config

    top = {k: v for k, v in settings.items() if not k.startswith(MODEL_OPT)}
    opts = {k[len(MODEL_OPT):]: v for k, v in settings.items() if k.startswith(MODEL_OPT)}
    reserved = sorted(set(top) & set(RESERVED_KEYS))
    if reserved:
        raise PipelineError(f"{where}: {', '.join(reserved)} is set by the lab itself")
    try:
        cfg = resolve_config(TrainConfig, None, {**top, "model_opts": opts})
        check_config(cfg)
    except PipelineError as e:
        raise PipelineError(f"{where}: {e}") from None
    if not cfg.model.startswith("timm:"):
        unknown = sorted(set(opts) - set(model_options(cfg.model)))
        if unknown:
            raise PipelineError(f"{where}: model '{cfg.model}' has no option {', '.join(unknown)}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PipelineError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _known(values: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise PipelineError(f"{where}: unknown key {', '.join(unknown)}; known: {', '.join(sorted(known))}")
