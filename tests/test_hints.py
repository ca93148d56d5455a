"""Advice phrased for how the stage was started: CLI flags, and under make also the make variables."""
from __future__ import annotations

import pytest

from helpers_train import make_prepared, tiny_config
from pipeline.errors import PipelineError
from pipeline.hints import train_flag
from pipeline.train.engine import run_training


def test_train_flags_name_make_variables_under_make(monkeypatch):
    monkeypatch.delenv("MAKELEVEL", raising=False)
    assert [train_flag("--resume"), train_flag("--run", "NAME")] == ["--resume", "--run NAME"]
    monkeypatch.setenv("MAKELEVEL", "1")  # GNU make exports it to every recipe
    assert [train_flag("--resume"), train_flag("--run", "NAME"), train_flag("--lr", "0.05")] == [
        "--resume (make: TRAIN_ARGS=--resume)", "--run NAME (make: RUN=NAME)", "--lr 0.05 (make: TRAIN_ARGS='--lr 0.05')"]


def test_refusal_of_an_existing_run_says_how_to_pass_the_choice_through_make(tmp_path, monkeypatch):
    data = make_prepared(tmp_path / "tiny")
    run_training(tiny_config(data, tmp_path / "ck", epochs=1))
    monkeypatch.setenv("MAKELEVEL", "1")
    with pytest.raises(PipelineError, match=r"already holds last.pt, best.pt; pass --resume \(make: TRAIN_ARGS=--resume\) "
                                            r"to continue that run, --overwrite \(make: TRAIN_ARGS=--overwrite\) .*"
                                            r"--run NAME \(make: RUN=NAME\) for a new one"):
        run_training(tiny_config(data, tmp_path / "ck", epochs=1))
