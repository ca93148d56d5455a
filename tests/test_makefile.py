"""The Makefile is a DAG of real files: `make -n` resolves the chain, and make skips what is fresh."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def make(repo, tmp_path, *args, check=True, epochs=2):
    variables = [f"DATA_ROOT={tmp_path}/data", f"RUNS_DIR={tmp_path}/ck", f"PARAMS_DIR={tmp_path}/params",
                 f"SUBMISSION={tmp_path}/sub.csv", "COMPETITION=digits", "RUN=r1", f"EPOCHS={epochs}",
                 f"VENV_STAMP={tmp_path}/stamp"]
    if not (tmp_path / "stamp").exists():
        (tmp_path / "stamp").touch()  # stands in for the installed venv
    result = subprocess.run(["make", "--no-print-directory", "-C", str(repo), *args, *variables],
                            capture_output=True, text=True)
    if check and result.returncode not in (0, 1):
        raise AssertionError(result.stdout + result.stderr)
    return result


def commands(output: str) -> list[str]:
    return [line.split("-m pipeline ")[1].split()[0] for line in output.splitlines() if "-m pipeline " in line]


def test_dry_run_resolves_the_whole_chain_in_order(repo_root, tmp_path):
    out = make(repo_root, tmp_path, "-n", "submit").stdout
    assert commands(out) == ["data", "train", "predict", "ensemble", "submit"]
    assert "--competition digits" in out and "--epochs 2" in out and f"--out {tmp_path}/sub.csv" in out


def test_fresh_outputs_are_skipped_and_a_parameter_change_reruns_only_downstream(repo_root, tmp_path):
    make(repo_root, tmp_path, "-n", "ensemble")  # writes the parameter files
    # Times in the recent past: parameters and venv, then each output newer than what it depends on (the
    # sources are older still: CI creates the venv between the clone and the tests). A rewritten
    # parameter file is then newer than every output.
    now = time.time()
    for params in [*(tmp_path / "params").iterdir(), tmp_path / "stamp"]:
        os.utime(params, (now - 30, now - 30))
    outputs = [tmp_path / "data/digits/meta.json", tmp_path / "ck/r1/manifest.json",
               tmp_path / "ck/r1/predict.json", tmp_path / "sub.csv"]
    stamp = now - 20
    for i, path in enumerate(outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        os.utime(path, (stamp + i, stamp + i))
    assert make(repo_root, tmp_path, "-q", "ensemble").returncode == 0
    changed = make(repo_root, tmp_path, "-n", "ensemble", epochs=3).stdout
    assert commands(changed) == ["train", "predict", "ensemble"]
