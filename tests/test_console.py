"""What the CLI prints for people and logs: plain lines, progress without a terminal, the result once."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from helpers_train import TINY_MODEL, make_prepared
from pipeline.console import PlainFormatter

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _record(level: int, name: str = "pipeline.train.engine") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "epoch %d/%d", (1, 3), None)


def test_plain_lines_name_level_only_when_it_matters():
    plain = PlainFormatter()
    assert plain.format(_record(logging.INFO)) == "epoch 1/3"
    assert plain.format(_record(logging.WARNING)) == "warning: epoch 1/3"
    assert PlainFormatter(show_names=True).format(_record(logging.DEBUG)) == "debug pipeline.train.engine: epoch 1/3"


def test_train_without_a_terminal_prints_progress_lines_plainly_and_the_result_once(tmp_path):
    data = make_prepared(tmp_path / "tiny", n_train=96)
    # A real `python -m pipeline train` (stderr is a pipe, as under CI or `| tee`), with the
    # progress interval shortened from 30 s so that every step of this tiny run reports.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import helpers_train; "
            "import pipeline.train.engine as engine; engine.PROGRESS_EVERY_S = 1e-9; "
            "from pipeline.cli import main; main(sys.argv[2:])")
    args = ["train", "--data", str(data), "--out-dir", str(tmp_path / "ck"), "--run", "t", "--epochs", "2",
            "--model", TINY_MODEL, "--batch-size", "16", "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--no-channels-last"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MAKELEVEL", None)
    proc = subprocess.run([sys.executable, "-c", code, str(TESTS), *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    progress = [line for line in lines if line.startswith("epoch 1/2 step ")]
    # 96 images / batch 16 = 6 steps: a line after steps 1-5 (the epoch's own line follows step 6)
    assert [line.split(":")[0] for line in progress] == [f"epoch 1/2 step {s}/6" for s in range(1, 6)]
    assert "loss" in progress[0] and "img/s" in progress[0] and "epoch ends in" in progress[0]
    assert any(line.startswith("epoch 2/2 train_loss") for line in lines)
    assert not [line for line in lines if line.startswith(("INFO", "WARNING")) or "pipeline.train" in line]
    everything = proc.stdout + proc.stderr
    assert everything.count("best val accuracy") == 1
