"""Running a sweep: an Optuna study (ask/tell) keeps the books, the train engine does each trial.

Trial states: RUNNING while a worker trains it, then COMPLETE, PRUNED (MedianPruner on val
accuracy) or FAIL (the error is kept as the trial's `error` attribute and shown in the table).
A worker records its host and pid on the trial it claims; a RUNNING trial whose worker is gone
is taken over by the next worker on that host and continued from its run folder's last.pt.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from pipeline.artifacts import atomic_write_text, file_entry, write_manifest
from pipeline.config import safe_url
from pipeline.errors import PipelineError
from pipeline.run_layout import LAST
from pipeline.sweep import results
from pipeline.sweep.spec import SweepSpec, base_config, check_trials_buildable, study_signature, trial_config

log = logging.getLogger(__name__)

# A trial asked for but never claimed (no pid) is its worker's for this long, then anyone's.
UNCLAIMED_GRACE_S = 60.0
# MedianPruner compares against this many finished trials before it prunes anything.
PRUNE_STARTUP_TRIALS = 3

TrainFn = Callable[..., dict]  # run_training(cfg, on_epoch_end=...) -> summary dict


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its study.stop() in after_trial: stop() only works inside
    study.optimize, and the sweep's ask/tell loop ends by itself when no grid point is left."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(spec: SweepSpec, existing_trials: int) -> optuna.samplers.BaseSampler:
    if spec.is_grid:
        return AskTellGridSampler(spec.grid, seed=spec.seed)
    # A restarted sweep must not redraw the points its first process already drew.
    seed = spec.seed + existing_trials
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if not spec.prune:
        return optuna.pruners.NopPruner()
    # Steps are 1-based epochs and MedianPruner leaves steps < n_warmup_steps alone.
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                       n_warmup_steps=spec.prune_warmup + 1)


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def open_study(spec: SweepSpec, storage: str, out_dir: Path) -> optuna.Study:
    """Create the study or load it; a stored study with another search space is refused."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(storage)
    names = {s.study_name for s in optuna.get_all_study_summaries(rdb)}
    existing = 0
    if spec.name in names:
        existing = len(optuna.load_study(study_name=spec.name, storage=rdb).trials)
    else:
        taken = sorted(p.name for p in out_dir.glob(f"{spec.name}-*") if p.is_dir())
        if taken:
            raise PipelineError(
                f"{out_dir}: run folders {', '.join(taken[:3])} exist but study '{spec.name}' does not; "
                "use another --name or move them away"
            )
    study = optuna.create_study(
        storage=rdb, study_name=spec.name, direction="maximize", load_if_exists=True,
        sampler=make_sampler(spec, existing), pruner=make_pruner(spec),
    )
    signature = study_signature(spec)
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", signature)
    elif stored != signature:
        changed = sorted(k for k in signature if stored.get(k) != signature[k])
        if "base" in changed:
            base = sorted(k for k in signature["base"] if stored["base"].get(k) != signature["base"][k])
            changed[changed.index("base")] = f"base config ({', '.join(base)})"
        raise PipelineError(
            f"study '{spec.name}' was started with a different {', '.join(changed)}; "
            "rerun with the original flags or use a new --name"
        )
    return study


def open_storage(storage: str) -> optuna.storages.RDBStorage:
    """The study database at this SQLAlchemy URL (created if new); a failure names the URL."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
            optuna.get_all_study_summaries(rdb)  # connects: a wrong URL fails here, not mid-sweep
            return rdb
        except ImportError as e:  # no driver for this database: say which to install
            raise PipelineError(f"--storage {safe_url(storage)}: {e} (PostgreSQL: pip install 'psycopg[binary]')") \
                from None
        except Exception as e:  # SQLAlchemy/driver errors: name the URL, not a traceback
            # workers starting together on an empty database race to create its tables: the loser
            # fails once (a unique key of optuna's schema version), then finds them made
            if attempt < 2:
                time.sleep(1 + attempt)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PipelineError(f"--storage {safe_url(storage)}: cannot open ({first})") from None
    raise AssertionError("unreachable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, just not ours
        return True
    return True


def orphaned_trials(study: optuna.Study, take_over_running: bool = False) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials nobody works on: their process on this host is gone (or is this one)."""
    host, me = socket.gethostname(), os.getpid()
    now = datetime.datetime.now()
    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_pid = t.user_attrs.get("pid")
        if owner_pid is None:  # asked for, never claimed: its worker died in between (or is claiming it now)
            if (now - (t.datetime_start or now)).total_seconds() > UNCLAIMED_GRACE_S:
                orphans.append(t)
            continue
        if t.user_attrs.get("host") == host:
            if owner_pid == me or not _pid_alive(int(owner_pid)):
                orphans.append(t)
        elif take_over_running:  # another host's worker; only the user knows it is gone
            orphans.append(t)
    return orphans


def trials_left(study: optuna.Study, spec: SweepSpec) -> int:
    """Trials still to start: grid points nobody has started, or N minus the trials started."""
    started = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    )
    if not spec.is_grid:
        return max(0, spec.n_trials - len(started))
    keys = list(spec.grid)
    taken = {json.dumps([t.params[k] for k in keys]) for t in started if set(keys) <= set(t.params)}
    return sum(json.dumps([p[k] for k in keys]) not in taken for p in spec.grid_points)


@dataclass
class TrialOutcome:
    number: int
    run: str
    state: str
    params: dict[str, Any]
    best_val_acc: float | None = None
    best_epoch: int | None = None
    error: str | None = None

    def line(self, keys: list[str]) -> str:
        point = " ".join(f"{k}={results.format_cell(k, self.params.get(k))}" for k in keys)
        acc = "-" if self.best_val_acc is None else f"{self.best_val_acc:.4f} (epoch {self.best_epoch})"
        tail = f": {self.error}" if self.error else ""
        return f"trial {self.number} {self.run} [{point}] val_acc {acc} {self.state}{tail}"


def run_sweep(
    spec: SweepSpec,
    *,
    storage: str | None = None,
    sweeps_dir: str | os.PathLike = "sweeps",
    take_over_running: bool = False,
    max_trials: int | None = None,
    train_fn: TrainFn | None = None,
    settings: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run this worker's share of the sweep's remaining trials; returns the rows of the whole table.

    max_trials caps the trials this call runs (None: until the sweep is done). train_fn defaults
    to pipeline.train.engine.run_training. settings: the command's resolved SweepConfig, saved in
    the manifest.
    """
    started = time.time()
    sweep_dir = Path(sweeps_dir) / spec.name
    check_trials_buildable(spec)
    out_dir = Path(base_config(spec).out_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(sweep_dir)
    study = open_study(spec, storage, out_dir)
    if train_fn is None:
        from pipeline.train.engine import run_training as train_fn

    outcomes: list[TrialOutcome] = []
    while max_trials is None or len(outcomes) < max_trials:
        orphans = orphaned_trials(study, take_over_running)
        if orphans:
            trial, run, resume = adopt(study, orphans[0], out_dir)
            # Without last.pt (killed in epoch 1, maybe after best.pt) the trial starts afresh.
            restart = not resume
        elif trials_left(study, spec) > 0:
            trial = study.ask(spec.distributions())
            run, resume, restart = f"{spec.name}-{trial.number}", False, False
        else:
            break
        trial.set_user_attr("run", run)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        try:
            outcome = run_trial(study, trial, spec, run, out_dir, train_fn, resume=resume, overwrite=restart)
        finally:  # on Ctrl-C too: the table then shows the interrupted trial as RUNNING
            rows = write_outputs(study, spec, sweep_dir, out_dir, storage, started, settings)
        outcomes.append(outcome)
        log.info(outcome.line(spec.keys))
    if outcomes and all(o.state == "FAIL" for o in outcomes):
        raise PipelineError(f"sweep {spec.name}: all {len(outcomes)} trials failed; first: {outcomes[0].error}")
    rows = write_outputs(study, spec, sweep_dir, out_dir, storage, started, settings)
    log.info("sweep %s: %d trials in %s (%d run by this process, %.1fs)", spec.name, len(rows),
             sweep_dir / "results.md", len(outcomes), time.time() - started)
    return rows


def adopt(study: optuna.Study, frozen: optuna.trial.FrozenTrial, out_dir: Path) -> tuple[optuna.Trial, str, bool]:
    """Continue a RUNNING trial of a dead worker, from its run folder's last.pt when there is one."""
    run = frozen.user_attrs.get("run") or f"{study.study_name}-{frozen.number}"
    resume = (out_dir / run / LAST).is_file()
    log.info("trial %d (%s) was left running by a stopped worker; %s", frozen.number, run,
             "resuming it from last.pt" if resume else "starting it again")
    # Trial(study, id) reattaches to the stored trial, keeping its params and reported epochs.
    return optuna.Trial(study, frozen._trial_id), run, resume


def run_trial(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec, run: str, out_dir: Path,
              train_fn: TrainFn, *, resume: bool = False, overwrite: bool = False) -> TrialOutcome:
    params = dict(trial.params)
    outcome = TrialOutcome(trial.number, run, "RUNNING", params)

    def on_epoch_end(epoch: int, row: dict) -> None:
        score = row.get("ema_val_acc", row.get("val_acc"))  # what best.pt is chosen by
        if score is None or not math.isfinite(float(score)):
            return
        with warnings.catch_warnings():
            # A trial restarted after a kill reports its early epochs again; Optuna keeps the first.
            warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
            trial.report(float(score), int(epoch))
        if trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {float(score):.4f} at epoch {epoch} is below the median")

    try:
        cfg = trial_config(spec, params, run=run, resume=resume, overwrite=overwrite)
        summary = train_fn(cfg, on_epoch_end=on_epoch_end)
    except optuna.TrialPruned:
        outcome.state = "PRUNED"
        study.tell(trial, state=TrialState.PRUNED)
    except Exception as e:  # noqa: BLE001 - one bad point must not stop the others; the table shows it
        outcome.state, outcome.error = "FAIL", f"{type(e).__name__}: {e}".splitlines()[0]
        log.debug("trial %d failed", trial.number, exc_info=True)
        trial.set_user_attr("error", outcome.error)
        study.tell(trial, state=TrialState.FAIL)
    else:
        if summary.get("best_val_acc") is None:
            outcome.state, outcome.error = "FAIL", "the run finished no epoch"
            trial.set_user_attr("error", outcome.error)
            study.tell(trial, state=TrialState.FAIL)
            return outcome
        outcome.state = "COMPLETE"
        outcome.best_val_acc, outcome.best_epoch = float(summary["best_val_acc"]), int(summary["best_epoch"])
        trial.set_user_attr("best_epoch", outcome.best_epoch)
        study.tell(trial, outcome.best_val_acc)
        return outcome
    so_far = results.run_summary(out_dir / run)
    outcome.best_val_acc, outcome.best_epoch = so_far["best_val_acc"], so_far["best_epoch"]
    return outcome


def write_outputs(study: optuna.Study, spec: SweepSpec, sweep_dir: Path, out_dir: Path, storage: str,
                  started: float, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """results.csv, results.md and manifest.json of the whole study (all workers' trials)."""
    rows = results.trial_rows(study.get_trials(deepcopy=False), spec.keys, out_dir, spec.name)
    atomic_write_text(sweep_dir / "results.csv", results.results_csv(rows, spec.keys))
    atomic_write_text(sweep_dir / "results.md", results.results_markdown(rows, spec.keys, spec.name))
    best = next((r for r in rows if r["best_val_acc"] is not None), None)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    write_manifest(
        sweep_dir, "sweep",
        inputs=[spec.base_config] if spec.base_config else [],
        outputs=[file_entry(sweep_dir / name, sweep_dir) for name in ("results.csv", "results.md")],
        config={**(settings or {}), "name": spec.name, "storage": safe_url(storage), "out_dir": str(out_dir),
                "n_trials": spec.n_trials, "fixed": spec.fixed, **study_signature(spec)},
        metrics={"trials": len(rows), "states": states, "best_run": best and best["run"],
                 "best_val_acc": best and best["best_val_acc"]},
        started=started, seed=spec.seed,
    )
    return rows
