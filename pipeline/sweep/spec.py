"""What a sweep varies: --grid / --range / --set parsing, SweepSpec, and each trial's TrainConfig.

Keys are TrainConfig fields or `model_opts.<option>`; values are YAML scalars (1e-4 is a float).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.errors import PipelineError

MODEL_OPT = "model_opts."
# Set by the sweep itself for every trial, so they cannot be varied.
RESERVED_KEYS = ("run", "out_dir", "resume", "overwrite")
# Fields a worker may set for its own machine without changing what the study measures.
MACHINE_KEYS = (*RESERVED_KEYS, "device", "workers")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Random searches check their configs at the corners of the space; this caps how many.
MAX_CORNER_CHECKS = 64


def parse_scalar(text: str) -> Any:
    """A YAML scalar, except that 1e-4 is a float (PyYAML's YAML 1.1 reads it as a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                pass
    if isinstance(value, (list, dict)):
        raise PipelineError(f"'{text}': expected a single value (number, word, true/false, null)")
    return value


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not value.strip():
        raise PipelineError(f"{flag} '{text}': expected KEY=VALUE")
    return key, value.strip()


def check_key(key: str, flag: str) -> None:
    """A sweep key is a TrainConfig field or model_opts.<option>."""
    from pipeline.train.config import TrainConfig

    if key.startswith(MODEL_OPT):
        if not key[len(MODEL_OPT):]:
            raise PipelineError(f"{flag} '{key}': name the model option, e.g. model_opts.bn")
        return
    if key in RESERVED_KEYS:
        raise PipelineError(f"{flag} '{key}': set by the sweep for every trial, cannot be varied")
    if key == "model_opts":
        raise PipelineError(f"{flag} '{key}': give single options as model_opts.<name>")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        known = sorted(fields - set(RESERVED_KEYS) - {"model_opts"})
        raise PipelineError(f"{flag} '{key}': unknown key; known: {', '.join(known)}, model_opts.<name>")


def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """('lr=0.1,0.01', 'model_opts.bn=true,false') -> {'lr': [0.1, 0.01], 'model_opts.bn': [True, False]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, text = _split_assignment(item, "--grid")
        check_key(key, "--grid")
        if key in grid:
            raise PipelineError(f"--grid '{key}' is given twice; list all its values in one flag")
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise PipelineError(f"--grid '{item}': empty value in the list")
        values = [parse_scalar(part) for part in parts]
        if len({json.dumps(v) for v in values}) != len(values):
            raise PipelineError(f"--grid '{item}': a value is listed twice")
        grid[key] = values
    return grid


@dataclass(frozen=True)
class Range:
    """An interval --random samples from: low..high, optionally log-scaled and/or integer."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def distribution(self):
        import optuna

        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


def parse_ranges(items: tuple[str, ...] | list[str]) -> dict[str, Range]:
    """('lr=1e-3:1:log', 'epochs=2:8:int') -> {'lr': Range(0.001, 1.0, log=True), ...}."""
    ranges: dict[str, Range] = {}
    for item in items:
        key, text = _split_assignment(item, "--range")
        check_key(key, "--range")
        parts = text.split(":")
        flags = set(parts[2:])
        if len(parts) < 2 or not flags <= {"log", "int"}:
            raise PipelineError(f"--range '{item}': expected KEY=LOW:HIGH[:log][:int]")
        low, high = parse_scalar(parts[0]), parse_scalar(parts[1])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise PipelineError(f"--range '{item}': LOW and HIGH must be numbers")
        if not low < high:
            raise PipelineError(f"--range '{item}': LOW must be below HIGH")
        if "log" in flags and low <= 0:
            raise PipelineError(f"--range '{item}': a log range needs LOW > 0")
        if "int" in flags and not (float(low).is_integer() and float(high).is_integer()):
            raise PipelineError(f"--range '{item}': an int range needs whole-number bounds")
        if key in ranges:
            raise PipelineError(f"--range '{key}' is given twice")
        ranges[key] = Range(float(low), float(high), log="log" in flags, integer="int" in flags)
    return ranges


def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, the same for every trial."""
    fixed: dict[str, Any] = {}
    for item in items:
        key, value = _split_assignment(item, "--set")
        check_key(key, "--set")
        fixed[key] = parse_scalar(value)
    return fixed


@dataclass
class SweepSpec:
    name: str
    base_config: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    ranges: dict[str, Range] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    n_random: int | None = None  # None: a grid search
    sampler: str = "random"  # random | tpe, used with n_random
    seed: int = 0
    prune: bool = False
    prune_warmup: int = 1  # epochs of every trial that are never pruned
    out_dir: str | None = None  # None: the base config's out_dir

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise PipelineError(f"--name '{self.name}': use letters, digits, '.', '_' and '-' only")
        if self.n_random is None:
            if self.ranges:
                raise PipelineError("--range needs --random N (a grid cannot sample an interval)")
            if not self.grid:
                raise PipelineError("nothing to sweep: give --grid KEY=V1,V2,... or --random N --range ...")
        elif self.n_random < 1:
            raise PipelineError("--random N needs N >= 1")
        elif not (self.grid or self.ranges):
            raise PipelineError("--random N needs --range KEY=LOW:HIGH or --grid KEY=V1,V2 to sample from")
        both = sorted(set(self.grid) & set(self.ranges))
        if both:
            raise PipelineError(f"{', '.join(both)}: given as both --grid and --range")
        clash = sorted((set(self.grid) | set(self.ranges)) & set(self.fixed))
        if clash:
            raise PipelineError(f"{', '.join(clash)}: both varied and fixed with --set")
        if self.sampler not in ("random", "tpe"):
            raise PipelineError(f"unknown sampler '{self.sampler}'; choose random or tpe")
        if self.prune_warmup < 0:
            raise PipelineError("--prune-warmup must be >= 0")

    @property
    def keys(self) -> list[str]:
        """The varied keys, in the order of the results table."""
        return list(self.grid) + list(self.ranges)

    @property
    def is_grid(self) -> bool:
        return self.n_random is None

    @property
    def grid_points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    @property
    def n_trials(self) -> int:
        return len(self.grid_points) if self.is_grid else int(self.n_random)

    def distributions(self) -> dict[str, Any]:
        import optuna

        dists = {k: optuna.distributions.CategoricalDistribution(v) for k, v in self.grid.items()}
        dists.update({k: r.distribution() for k, r in self.ranges.items()})
        return dists


def trial_config(spec: SweepSpec, params: dict[str, Any], run: str | None, resume: bool = False,
                 overwrite: bool = False):
    """One trial's TrainConfig: defaults < --base-config < --set < the trial's params."""
    fields = {"run": run, "resume": resume, "overwrite": overwrite}
    if spec.out_dir:
        fields["out_dir"] = spec.out_dir
    return train_config({**spec.fixed, **params}, spec.base_config, **fields)


def train_config(values: dict[str, Any], base_config: str | None = None, **fields: Any):
    """A TrainConfig from flat settings (model_opts.<name> keys): defaults < base_config < values < fields."""
    from pipeline.config import load_yaml, resolve_config
    from pipeline.train.config import TrainConfig

    top = {k: v for k, v in values.items() if not k.startswith(MODEL_OPT)}
    opts = {k[len(MODEL_OPT):]: v for k, v in values.items() if k.startswith(MODEL_OPT)}
    file_values = load_yaml(base_config) if base_config else {}
    model_opts = {**(file_values.get("model_opts") or {}), **opts}
    cfg = resolve_config(TrainConfig, base_config, {**top, "model_opts": model_opts, **fields})
    # resolve_config reads None as "not given"; a swept or --set null still applies.
    nulls = {k: None for k, v in top.items() if v is None}
    return dataclasses.replace(cfg, **nulls) if nulls else cfg


def base_config(spec: SweepSpec):
    """The config every trial starts from (base file and --set, no varied key)."""
    return trial_config(spec, {}, run=None)


def check_trials_buildable(spec: SweepSpec) -> None:
    """Every grid point (or corner of a random search) must give a valid config, before any training."""
    from pipeline.models import model_options

    if spec.is_grid:
        samples = spec.grid_points
    else:
        corners = dict(spec.grid)
        corners.update({k: [r.low, r.high] for k, r in spec.ranges.items()})
        samples = itertools.islice(
            (dict(zip(corners, vals)) for vals in itertools.product(*corners.values())), MAX_CORNER_CHECKS
        )
    for params in samples:
        cfg = trial_config(spec, params, run="check")
        if cfg.model.startswith("timm:"):
            continue  # timm checks its own keyword arguments when the model is built
        known = model_options(cfg.model)
        unknown = sorted(set(cfg.model_opts) - set(known))
        if unknown:
            raise PipelineError(
                f"model '{cfg.model}' has no option {', '.join(unknown)}; options: {', '.join(known) or 'none'}"
            )


def study_signature(spec: SweepSpec) -> dict[str, Any]:
    """What a study measures; a rerun under the same name must match it (only --random N may grow)."""
    from pipeline.config import config_dict

    base = {k: v for k, v in config_dict(base_config(spec)).items() if k not in MACHINE_KEYS}
    signature = {
        "base": base,
        "grid": spec.grid,
        "ranges": {k: dataclasses.asdict(r) for k, r in spec.ranges.items()},
        "search": "grid" if spec.is_grid else spec.sampler,
        "prune": [spec.prune, spec.prune_warmup],
    }
    return json.loads(json.dumps(signature))  # tuples -> lists, as the storage gives them back
