"""bench/quality.py and bench/leaderboard.py run the chain through the Makefile's stages (bench/chain.py):
make is the one runner and the one judge of what is stale."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bench import quality

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


@pytest.mark.parametrize("module", ["bench.quality", "bench.leaderboard"])
def test_help(module, repo_root):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=repo_root, capture_output=True, text=True)
    assert out.returncode == 0 and "--rerun" in out.stdout and "--source" in out.stdout


def test_quality_runs_the_makefile_stages_and_reuses_what_make_finds_up_to_date(tmp_path, capsys):
    (tmp_path / "stamp").touch()  # stands in for the installed venv
    config = tmp_path / "tiny.yaml"
    config.write_text("model: lenet5\nepochs: 1\nbatch_size: 64\nworkers: 0\nprobe: false\ndevice: cpu\n")
    figures = tmp_path / "figures.json"
    argv = ["--competition", "digits", "--config", str(config), "--run", "q", "--seed", "1", "--tta", "none,flip",
            "--data-root", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "ck"),
            "--params-dir", str(tmp_path / "params"), "--submissions-dir", str(tmp_path / "sub"),
            "--out", str(figures), "--make-var", f"VENV_STAMP={tmp_path}/stamp",
            "--make-var", f"LOCAL_MK={tmp_path}/local.mk"]
    quality.main(argv)
    out = capsys.readouterr().out
    assert "== make train" in out and "== make predict" in out and "== make validate" in out
    result = json.loads(figures.read_text())
    assert set(result["tta_val_acc"]) == {"none", "flip"} and result["seconds"]["train"] > 0
    assert (tmp_path / "sub" / "q-predictions.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "params").glob("*.args"))  # make saved what each stage ran with
    trained = (tmp_path / "ck" / "q" / "manifest.json").stat().st_mtime_ns

    quality.main(argv)  # nothing stale: make reruns nothing and the figures stay
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "ck" / "q" / "manifest.json").stat().st_mtime_ns == trained
    assert json.loads(figures.read_text()) == result
