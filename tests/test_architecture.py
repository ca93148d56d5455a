"""The shape of pipeline/: no import circle (issue 23)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers_imports import REPO, circles, graph, modules


def test_no_module_of_pipeline_imports_itself_round_a_circle():
    assert circles(graph()) == []


def test_the_graph_sees_a_circle_where_there_is_one(tmp_path):
    package = tmp_path / "pipeline"
    (package / "train").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train" / "__init__.py").write_text("")
    (package / "train" / "engine.py").write_text("from pipeline.train.resume import x\n")
    (package / "train" / "resume.py").write_text("def f():\n    from pipeline.train import engine\n")
    assert circles(graph(tmp_path)) == [["pipeline.train.engine", "pipeline.train.resume"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_imports_alone_in_a_fresh_interpreter(name):
    # A circle at module level shows as an ImportError when the loop is entered from the wrong end.
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

