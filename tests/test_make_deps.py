"""A stage's source list in the Makefile names every module its command imports, so that editing
any of them makes `make` rerun the stage (a stale run must never look fresh)."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from helpers_imports import closure, files, graph
from helpers_make import Make, stages

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

# The Makefile's source list of each stage -> the module holding the stage's command.
STAGE_ENTRIES = {
    "DATA_SRC": "pipeline.data.stage",
    "TRAIN_SRC": "pipeline.train.stage",
    "PREDICT_SRC": "pipeline.predict",
    "ENSEMBLE_SRC": "pipeline.ensemble",
}


@pytest.mark.parametrize("variable, entry", sorted(STAGE_ENTRIES.items()))
def test_a_stage_source_list_names_every_module_its_command_imports(repo_root, tmp_path, variable, entry):
    # `python -m pipeline <stage>` runs pipeline/__main__.py, which finds the stage's command.
    imported = files(closure(["pipeline.__main__", entry], graph()))
    listed = set(Make(repo_root, tmp_path).variable(variable))
    assert sorted(imported - listed) == [], f"the Makefile's {variable} misses modules the stage imports"


@pytest.fixture(scope="module")
def trained_copy(tmp_path_factory):
    """A copy of the repo whose digits chain (data, 1 epoch of lenet5, predict) is up to date."""
    from conftest import REPO

    root = tmp_path_factory.mktemp("repo")
    for name in ("Makefile", "requirements.txt"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    make = Make(root, tmp_path_factory.mktemp("out"))
    make("predict", "COMPETITION=digits", "RUN=r1", "MODEL=lenet5", "EPOCHS=1",
         "TRAIN_ARGS=--batch-size 64 --workers 0 --no-probe", "TTA=none")
    return root, make


@pytest.mark.parametrize("module, target, rerun", [
    # modules TRAIN_SRC lacked before issue 23 (the data stage imports two of them too), and one
    # only predict imports
    ("pipeline/flips.py", "train", ["data", "train"]),
    ("pipeline/machine.py", "train", ["train"]),
    ("pipeline/data/dataset.py", "train", ["data", "train"]),
    ("pipeline/tta.py", "predict", ["predict"]),
])
def test_editing_a_module_the_stage_imports_makes_make_rerun_it(trained_copy, module, target, rerun):
    root, make = trained_copy
    digits = ("COMPETITION=digits", "RUN=r1")
    assert stages(make("-n", target, *digits).stdout) == []  # up to date before the edit
    path = root / module
    before = path.stat()
    try:
        later = time.time() + 5  # an edit: newer than every output
        os.utime(path, (later, later))
        assert stages(make("-n", target, *digits).stdout) == rerun
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
