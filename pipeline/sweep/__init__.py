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

import click


@click.command("sweep")
@click.option("--name", required=True, help="Sweep name: sweeps/NAME/ and run folders NAME-<trial>.")
@click.option("--base-config", type=click.Path(dir_okay=False), default=None,
              help="Train config YAML every trial starts from.")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2,...",
              help="Values of a TrainConfig key or model_opts.X (repeatable; the grid is all combinations).")
@click.option("--random", "n_random", type=int, default=None, metavar="N",
              help="Sample N trials instead (--grid keys become choices, --range keys intervals).")
@click.option("--range", "ranges", multiple=True, metavar="KEY=LOW:HIGH[:log][:int]",
              help="An interval --random samples from (repeatable).")
@click.option("--sampler", type=click.Choice(["random", "tpe"]), default="random", show_default=True,
              help="How --random draws its points.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="The same for every trial, over the base config (repeatable).")
@click.option("--storage", default=None, metavar="URL",
              help="SQLAlchemy URL of the study [sqlite:///sweeps/NAME/study.db]; point several "
                   "machines at one database to split the work.")
@click.option("--prune", is_flag=True, help="Stop trials whose val accuracy falls below the median (MedianPruner).")
@click.option("--prune-warmup", type=int, default=1, show_default=True,
              help="Epochs of every trial that are never pruned.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the grid order / sampler.")
@click.option("--sweeps-dir", type=click.Path(file_okay=False), default="sweeps", show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where the trials' run folders go [the base config's out_dir].")
@click.option("--max-trials", type=int, default=None, help="Run at most this many trials in this process.")
@click.option("--take-over-running", is_flag=True,
              help="Also continue RUNNING trials of other hosts (only when their workers are dead).")
def command(name, base_config, grid, n_random, ranges, sampler, sets, storage, prune, prune_warmup,
            seed, sweeps_dir, out_dir, max_trials, take_over_running):
    """Train one run per grid point (or N sampled points) and tabulate them in sweeps/NAME/."""
    from pipeline.sweep.results import results_markdown
    from pipeline.sweep.spec import SweepSpec, parse_grid, parse_ranges, parse_sets
    from pipeline.sweep.study import run_sweep

    spec = SweepSpec(
        name=name, base_config=base_config, grid=parse_grid(grid), ranges=parse_ranges(ranges),
        fixed=parse_sets(sets), n_random=n_random, sampler=sampler, seed=seed, prune=prune,
        prune_warmup=prune_warmup, out_dir=out_dir,
    )
    rows = run_sweep(spec, storage=storage, sweeps_dir=sweeps_dir, take_over_running=take_over_running,
                     max_trials=max_trials)
    click.echo(results_markdown(rows, spec.keys, spec.name), nl=False)
