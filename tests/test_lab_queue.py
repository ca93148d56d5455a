"""The lab's work queue under real concurrency: workers in separate processes race for units on one
SQLite study, and every unit is trained exactly once."""
from __future__ import annotations

import multiprocessing as mp
import os
import uuid

import optuna
import pytest
import yaml

from pipeline.cli import main
from pipeline.lab import queue

UNITS = [f"u-{i:04d}-s0" for i in range(60)]


def race(storage: str, name: str, start, out) -> None:
    """One worker: wait for the gun, then claim units until none is left (no training)."""
    study = queue.open_queue(storage, name, UNITS)
    start.wait()
    mine = []
    while (claimed := queue.next_unit(study)) is not None:
        trial_id, unit, _ = claimed
        mine.append(unit)
        queue.finish(study, trial_id, 1.0)
    out.put(mine)


# PIPELINE_TEST_POSTGRES=postgresql://user:pass@127.0.0.1/db runs the race on PostgreSQL too
POSTGRES = os.environ.get("PIPELINE_TEST_POSTGRES")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_racing_claim_every_unit_once(tmp_path, backend):
    if backend == "postgresql" and not POSTGRES:
        pytest.skip("no PostgreSQL here: set PIPELINE_TEST_POSTGRES to a database URL to race on one")
    storage = f"sqlite:///{tmp_path / 'queue.db'}" if backend == "sqlite" else POSTGRES
    name = f"lab-x-{uuid.uuid4().hex}"  # a shared database keeps earlier runs' studies
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    # both open (one creates and fills the queue, the other waits until it is ready), then race
    workers = [ctx.Process(target=race, args=(storage, name, start, out)) for _ in range(2)]
    for w in workers:
        w.start()
    start.wait(timeout=120)
    claimed = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == UNITS  # each unit once: no duplicate, none lost
    assert all(claimed), claimed  # both really took part
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == len(UNITS)  # the loser of the create race enqueued nothing
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}


def test_a_unit_left_running_by_a_dead_worker_is_taken_over_once(tmp_path):
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    study = queue.open_queue(storage, "lab-y", UNITS[:2])
    trial_id, unit, adopted = queue.next_unit(study)
    assert (unit, adopted) == (UNITS[0], False)
    dead = 2 ** 22 + 12345  # above the default pid_max: no live process has it
    study._storage.set_trial_user_attr(trial_id, "pid", dead)
    assert queue.next_unit(study) == (trial_id, UNITS[0], True)  # continued, from its last.pt
    assert not queue.claim_orphan(study, trial_id, dead)  # a second taker loses


def test_jobs_2_trains_each_unit_once_in_two_worker_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = {"title": "t", "source": "s", "metric": "val accuracy",
           "base": {"model": "simplenn", "epochs": 1, "batch_size": 32, "schedule": "constant", "augment": "none",
                    "workers": 0, "probe": False},
           "scales": {"quick": {"data": {"competition": "digits", "limit": 300}, "seeds": 3},
                      "full": {"data": {"competition": "digits"}}},
           "experiments": [{"name": "lr", "variants": [{"label": f"lr {lr}", "set": {"lr": lr}}
                                                       for lr in (0.01, 0.05)]}]}
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "t.yaml").write_text(yaml.safe_dump(lab), encoding="utf-8")
    args = ["lab", "t", "--labs-dir", "labs", "--results-dir", "results", "--no-figures"]
    main([*args, "--jobs", "2"])
    runs = sorted(p.name for p in (tmp_path / "sweeps" / "lab-t-quick" / "runs").iterdir())
    results = sorted(p.stem for p in (tmp_path / "results" / "t-quick").glob("u-*.json"))
    assert len(runs) == 6 and runs == results
    storage = f"sqlite:///{tmp_path / 'sweeps' / 'lab-t-quick' / 'queue.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert len(study.trials) == 6 and len({t.user_attrs["unit"] for t in study.trials}) == 6
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # both workers trained units
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

