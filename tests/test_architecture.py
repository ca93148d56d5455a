"""The shape of pipeline/ (issue 23): no import circle, no function over 60 lines, a run folder's
file names spelled in one place."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from helpers_imports import REPO, circles, graph, modules

MAX_FUNCTION_LINES = 60


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




def test_no_function_in_pipeline_is_over_60_lines():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []

# A run folder's file names, as run_layout spells them: nowhere else in code (prose may name them).
LAYOUT_NAMES = {"best.pt", "last.pt", "config.yaml", "manifest.json", "metrics.csv", "metrics.jsonl", "curves.png",
                "predict.json", "val_logits.npy", "val_ids.npy", "val_labels.npy", "test_logits.npy", "test_ids.npy",
                "report.html", "epoch_*.pt"}

def test_run_folder_file_names_are_spelled_only_in_run_layout():
    from pipeline import run_layout

    spelled = {value for value in vars(run_layout).values() if isinstance(value, str)}
    assert LAYOUT_NAMES - {"epoch_*.pt"} <= spelled
    found = []
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "bench").rglob("*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel == "pipeline/run_layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.rpartition("/")[2] in LAYOUT_NAMES:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert found == []


def test_bench_scripts_run_as_modules_of_the_bench_package():
    # bench/ is a package: `python -m bench.x` from the repo finds pipeline/ without a sys.path patch.
    patched = [path.name for path in sorted((REPO / "bench").glob("*.py")) if "sys.path" in path.read_text()]
    assert patched == []
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert " bench/" not in makefile.replace(" bench/results/", "")
