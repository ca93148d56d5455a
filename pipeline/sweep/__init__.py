"""`python -m pipeline sweep`: many training runs over a grid or a random search, one Optuna study.

Each trial is an ordinary run folder `<out_dir>/<NAME>-<trial number>` made by the train engine;
Optuna only keeps the books. The study lives in `sweeps/NAME/study.db` (SQLite) unless
`--storage URL` names another SQLAlchemy database, which lets several machines share one study.
After every trial `sweeps/NAME/results.csv`, `results.md` and `manifest.json` are rewritten from
the study, so the table is current even when the sweep is killed.

Rerunning the same command resumes: finished trials are never rerun, a trial a killed worker left
RUNNING is continued from its run folder's last.pt, and the grid goes on with the points nobody
started. A name is bound to its search space: another grid, base config or --set is an error.

    spec.py     --grid/--range/--set parsing, SweepSpec, each trial's TrainConfig
    study.py    the Optuna study, taking over orphaned trials, the ask/tell loop, pruning
    results.py  results.csv / results.md rows
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import click

from pipeline.cli_config import resolve_flags, setting, stage_options
from pipeline.config import config_dict


@dataclass
class SweepConfig:
    name: str = setting("", "Sweep name: sweeps/NAME/ and run folders NAME-<trial>.", required=True)
    base_config: Optional[str] = setting(None, "Train config YAML every trial starts from.", metavar="FILE")
    grid: list[str] = setting([], "Values of a TrainConfig key or model_opts.X (repeatable; the grid is all "
                                  "combinations).", multiple=True, metavar="KEY=V1,V2,...")
    n_random: Optional[int] = setting(None, "Sample N trials instead (--grid keys become choices, --range keys "
                                            "intervals).", flag="--random", metavar="N")
    ranges: list[str] = setting([], "An interval --random samples from (repeatable).", flag="--range",
                                multiple=True, metavar="KEY=LOW:HIGH[:log][:int]")
    sampler: str = setting("random", "How --random draws its points.", choices=("random", "tpe"))
    sets: list[str] = setting([], "The same for every trial, over the base config (repeatable).", flag="--set",
                              multiple=True, metavar="KEY=VALUE")
    storage: Optional[str] = setting(None, "SQLAlchemy URL of the study [sqlite:///sweeps/NAME/study.db]; point "
                                           "several machines at one database to split the work.", metavar="URL")
    prune: bool = setting(False, "Stop trials whose val accuracy falls below the median (MedianPruner).")
    prune_warmup: int = setting(1, "Epochs of every trial that are never pruned.")
    seed: int = setting(0, "Seed of the grid order / sampler.")
    sweeps_dir: str = setting("sweeps", "Folder of the sweeps' tables and studies.")
    out_dir: Optional[str] = setting(None, "Where the trials' run folders go [the base config's out_dir].")
    max_trials: Optional[int] = setting(None, "Run at most this many trials in this process.")
    take_over_running: bool = setting(False, "Also continue RUNNING trials of other hosts (only when their "
                                             "workers are dead).")


@click.command("sweep")
@stage_options(SweepConfig)
def command(config_file: str | None, **flags: Any) -> None:
    """Train one run per grid point (or N sampled points) and tabulate them in sweeps/NAME/."""
    from pipeline.sweep.results import results_markdown
    from pipeline.sweep.spec import SweepSpec, parse_grid, parse_ranges, parse_sets
    from pipeline.sweep.study import run_sweep

    cfg = resolve_flags(SweepConfig, config_file, flags)
    spec = SweepSpec(
        name=cfg.name, base_config=cfg.base_config, grid=parse_grid(cfg.grid), ranges=parse_ranges(cfg.ranges),
        fixed=parse_sets(cfg.sets), n_random=cfg.n_random, sampler=cfg.sampler, seed=cfg.seed, prune=cfg.prune,
        prune_warmup=cfg.prune_warmup, out_dir=cfg.out_dir,
    )
    rows = run_sweep(spec, storage=cfg.storage, sweeps_dir=cfg.sweeps_dir, take_over_running=cfg.take_over_running,
                     max_trials=cfg.max_trials, settings=config_dict(cfg))
    click.echo(results_markdown(rows, spec.keys, spec.name), nl=False)
