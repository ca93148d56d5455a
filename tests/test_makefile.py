"""The Makefile as users drive it: real `make` calls on digits (one epoch of lenet5), plus dry runs.

Each stage's recipe saves the options it ran with (PARAMS_DIR/<stage>.args) only after it succeeds;
a call that gives a stage's variables with other values makes it stale; a call that gives none
takes the stage as it is on disk.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from helpers_make import Make, stages

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


@pytest.fixture
def make(repo_root, tmp_path):
    return Make(repo_root, tmp_path)


DIGITS = ("COMPETITION=digits", "RUN=r1")
FAST = ("MODEL=lenet5", "EPOCHS=1", "TRAIN_ARGS=--batch-size 64 --workers 0")


def test_dry_run_resolves_the_whole_chain_and_writes_nothing(make, tmp_path):
    out = make("-n", "submit", *DIGITS, *FAST).stdout
    assert stages(out) == ["data", "train", "predict", "ensemble", "submit"]
    assert "--competition digits" in out and "--epochs 1" in out and f"--out {tmp_path}/sub.csv" in out
    assert "--replace" in out  # a stale run is retrained into a staging folder, never refused
    assert make.params() == {} and not (tmp_path / "data").exists()


def test_unset_variables_leave_the_config_in_charge(make, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: lenet5\nepochs: 1\nbatch_size: 64\nworkers: 0\n")
    out = make("-n", "train", "COMPETITION=digits", f"CONFIG={config}").stdout
    train = next(line for line in out.splitlines() if "-m pipeline train" in line)
    assert f"--config {config}" in train and "--model" not in train and "--epochs" not in train
    assert "--run digits-lenet5" in train  # the run is named after the config's model


def test_the_chain_on_digits_reruns_only_what_changed(make, tmp_path):
    first = make("ensemble", *DIGITS, *FAST)
    assert stages(first.stdout) == ["data", "train", "predict", "ensemble"]
    saved = make.params()
    assert saved["train-r1.args"].split() == ["--model", "lenet5", "--epochs", "1", "--batch-size", "64",
                                               "--workers", "0"]

    # Up to date: nothing runs, and neither a dry run nor a real one rewrites anything.
    assert stages(make("ensemble", *DIGITS, *FAST).stdout) == []
    assert make("-q", "ensemble", *DIGITS, *FAST, check=False).returncode == 0
    assert make.params() == saved

    # Downstream targets with no training variables take the run as it is on disk.
    assert stages(make("predict", *DIGITS).stdout) == []
    assert stages(make("-n", "ensemble", "COMPETITION=digits").stdout) == []  # the blend of r1, saved

    # A changed EPOCHS makes train stale: -n says so and changes nothing ...
    longer = (*DIGITS, "MODEL=lenet5", "EPOCHS=2", "TRAIN_ARGS=--batch-size 64 --workers 0")
    assert stages(make("-n", "ensemble", *longer).stdout) == ["train", "predict", "ensemble"]
    assert make.params() == saved
    # ... and the real call retrains in place of the old run instead of refusing it.
    assert stages(make("ensemble", *longer).stdout) == ["train", "predict", "ensemble"]
    assert make.run_config()["epochs"] == 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["r1"]  # no staging folder left

    # Ensemble arguments are tracked: a new ENSEMBLE_ARGS reblends, and is then the saved choice.
    assert stages(make("ensemble", "COMPETITION=digits", "ENSEMBLE_ARGS=--method logit").stdout) == ["ensemble"]
    assert make.params()["ensemble-" + f"{tmp_path}/sub.csv".replace("/", "_") + ".opts.args"].split() == [
        "--method", "logit"]
    assert stages(make("ensemble", "COMPETITION=digits").stdout) == []

    # A blend names other runs: each is predicted with its own options; an untrained one is named.
    make("train", "COMPETITION=digits", "RUN=r2", *FAST)
    assert stages(make("ensemble", "COMPETITION=digits", "RUNS=r1 r2").stdout) == ["predict", "ensemble"]
    missing = make("ensemble", "COMPETITION=digits", "RUNS=r1 nope", check=False)
    assert missing.returncode != 0 and f"{tmp_path}/ck/nope: no trained run there" in missing.stdout

    # Newer data makes the run stale even when no variable changed: retrained with its saved options.
    meta = tmp_path / "data" / "digits" / "meta.json"
    future = time.time() + 5
    os.utime(meta, (future, future))
    assert stages(make("train", *DIGITS).stdout) == ["train"]
    assert make.run_config()["epochs"] == 2


def test_a_failed_stage_saves_nothing(make, tmp_path):
    make("data", "COMPETITION=digits")
    before = make.params()
    failed = make("train", *DIGITS, "MODEL=no-such-model", "EPOCHS=1", check=False)
    assert failed.returncode != 0 and "no-such-model" in failed.stdout + failed.stderr
    assert make.params() == before and not (tmp_path / "ck" / "r1").exists()


def test_make_use_saves_choices_that_later_calls_read(make, tmp_path):
    def saved():  # (the harness gives SUBMISSION on every call, so it is saved too)
        return [line for line in (tmp_path / "local.mk").read_text().splitlines() if not line.startswith("SUBMISSION")]
    make("use", "COMPETITION=digits", "MODEL=lenet5")
    assert saved() == ["COMPETITION := digits", "MODEL := lenet5"]
    out = make("-n", "train").stdout
    assert "--competition digits" in out and "--model lenet5" in out and "--run digits-lenet5" in out
    assert "--model resnet20" in make("-n", "train", "MODEL=resnet20").stdout  # the command line wins
    make("use", "MODEL=")  # an empty value forgets a choice
    assert saved() == ["COMPETITION := digits"]
