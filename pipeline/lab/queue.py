"""The lab's work queue: one Optuna study whose WAITING trials are the units still to train.

Any number of workers (processes here, or machines sharing one `--storage` database) take units
from it until none is left. Every step that two workers could race on is one atomic database
operation, so no unit is trained twice:
  * the study is created once: creating it with a taken name fails (the name's unique key), and
    only the creator enqueues the units, then marks the study ready;
  * a worker claims a unit with one conditional UPDATE (WAITING -> RUNNING, rowcount 1). Optuna's
    own pop (read, then write) lets two SQLite workers both win;
  * a RUNNING unit whose worker died on this host is taken over by swapping the trial's `pid`
    attribute with one conditional UPDATE too, and continues from its run folder's last.pt.
The study is named after the lab, its scale and the set of units it was made for, so a lab whose
missing units changed (results committed meanwhile, more seeds asked) gets a fresh queue. Results
live in pipeline.lab.store, not here: the study is only who-does-what, and may be thrown away.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from typing import Iterator

import optuna
from optuna.trial import TrialState

from pipeline.errors import PipelineError
from pipeline.lab.spec import settings_hash

log = logging.getLogger(__name__)

READY_ATTR = "units"  # study user attr the creator sets once every unit is enqueued
READY_WAIT_S = 120.0


def queue_name(lab: str, scale: str, units: list[str]) -> str:
    return f"lab-{lab}-{scale}-{settings_hash(sorted(units))}"


def open_queue(storage: str, name: str, units: list[str]) -> optuna.Study:
    """The study for these units: created and filled by exactly one worker, loaded by the others."""
    from pipeline.sweep.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(storage)
    try:
        study = uncached(optuna.create_study(storage=rdb, study_name=name, direction="maximize",
                                             load_if_exists=False))
    except optuna.exceptions.DuplicatedStudyError:
        return wait_ready(uncached(optuna.load_study(study_name=name, storage=rdb)))
    for unit in units:
        study.enqueue_trial({}, user_attrs={"unit": unit})
    study.set_user_attr(READY_ATTR, len(units))
    return study


def uncached(study: optuna.Study) -> optuna.Study:
    """The study on the database itself: optuna's cache keeps finished trials as it last saw them,
    and would never see a failed unit that requeue_failed made WAITING again."""
    study._storage = getattr(study._storage, "_backend", study._storage)
    return study


def wait_ready(study: optuna.Study) -> optuna.Study:
    deadline = time.monotonic() + READY_WAIT_S
    while READY_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise PipelineError(f"lab queue {study.study_name}: its creator never finished enqueueing the units "
                                "(a worker killed while starting?); delete the queue (sweeps/lab-NAME/queue.db, or "
                                "this study in the shared --storage database) and rerun: results are not in it")
        time.sleep(0.5)
    return study


def _tables(study: optuna.Study):
    from optuna.storages._rdb import models  # the schema of optuna 5 (pinned): trials and their attrs

    return study._storage.engine, models.TrialModel.__table__, models.TrialUserAttributeModel.__table__


def claim_waiting(study: optuna.Study, trial_id: int) -> bool:
    from sqlalchemy import update

    engine, trials, _ = _tables(study)
    with engine.begin() as conn:
        done = conn.execute(update(trials)
                            .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING)
                            .values(state=TrialState.RUNNING, datetime_start=datetime.datetime.now()))
    return done.rowcount == 1


def requeue_failed(study: optuna.Study) -> int:
    """Failed units back to WAITING (each flip one conditional UPDATE, so two starting labs requeue a
    unit once): a lab run again tries what failed last time; within a run a failure is not retried."""
    from sqlalchemy import update

    engine, trials, _ = _tables(study)
    with engine.begin() as conn:
        done = conn.execute(update(trials).where(trials.c.study_id == study._study_id,
                                                 trials.c.state == TrialState.FAIL)
                            .values(state=TrialState.WAITING, datetime_start=None, datetime_complete=None))
    return done.rowcount


def claim_orphan(study: optuna.Study, trial_id: int, old_pid: int) -> bool:
    from sqlalchemy import update

    engine, _, attrs = _tables(study)
    with engine.begin() as conn:
        done = conn.execute(update(attrs)
                            .where(attrs.c.trial_id == trial_id, attrs.c.key == "pid",
                                   attrs.c.value_json == json.dumps(old_pid))
                            .values(value_json=json.dumps(os.getpid())))
    return done.rowcount == 1


def next_unit(study: optuna.Study) -> tuple[int, str, bool] | None:
    """(trial id, unit name, adopted) of the next unit this worker owns, or None when none is left."""
    from pipeline.sweep.study import orphaned_trials

    for frozen in orphaned_trials(study):
        pid = frozen.user_attrs.get("pid")
        # our own pid too: a unit this process was training when Ctrl-C stopped it, rerun in-process
        if pid is not None and claim_orphan(study, frozen._trial_id, int(pid)):
            log.info("unit %s was left running by a stopped worker (pid %s); continuing it",
                     frozen.user_attrs.get("unit"), pid)
            return frozen._trial_id, frozen.user_attrs["unit"], True
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if claim_waiting(study, frozen._trial_id):
            study._storage.set_trial_user_attr(frozen._trial_id, "host", socket.gethostname())
            study._storage.set_trial_user_attr(frozen._trial_id, "pid", os.getpid())
            return frozen._trial_id, frozen.user_attrs["unit"], False
    return None


def units_of_this_worker(study: optuna.Study) -> Iterator[tuple[int, str, bool]]:
    while (claimed := next_unit(study)) is not None:
        yield claimed


def finish(study: optuna.Study, trial_id: int, value: float | None, error: str | None = None) -> None:
    """COMPLETE with the unit's metric, or FAIL with its error (the lab's table shows it)."""
    if error:
        study._storage.set_trial_user_attr(trial_id, "error", error)
    state = TrialState.COMPLETE if value is not None else TrialState.FAIL
    study._storage.set_trial_state_values(trial_id, state, None if value is None else [value])

