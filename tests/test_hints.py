"""Advice phrased for how the stage was started: CLI flags, or make variables under make."""
from __future__ import annotations

from pipeline.hints import train_flag


def test_train_flags_become_make_variables_under_make(monkeypatch):
    monkeypatch.delenv("MAKELEVEL", raising=False)
    assert [train_flag("--resume"), train_flag("--run", "NAME")] == ["--resume", "--run NAME"]
    monkeypatch.setenv("MAKELEVEL", "1")  # GNU make exports it to every recipe
    assert [train_flag("--resume"), train_flag("--run", "NAME"), train_flag("--lr", "0.05")] == [
        "TRAIN_ARGS=--resume", "RUN=NAME", "TRAIN_ARGS='--lr 0.05'"]
