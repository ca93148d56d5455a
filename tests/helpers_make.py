"""Running the Makefile in tests: `make` with every output under a tmp folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


class Make:
    """`make` in the repo with every output under tmp_path (data, runs, params, submission, local.mk)."""

    def __init__(self, repo: Path, tmp: Path):
        self.repo, self.tmp = repo, tmp
        self.base = [f"DATA_ROOT={tmp}/data", f"RUNS_DIR={tmp}/ck", f"PARAMS_DIR={tmp}/params",
                     f"SUBMISSION={tmp}/sub.csv", f"LOCAL_MK={tmp}/local.mk", f"VENV_STAMP={tmp}/stamp",
                     f"PY={sys.executable}"]
        (tmp / "stamp").touch()  # stands in for the installed venv

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        result = subprocess.run(["make", "--no-print-directory", "-C", str(self.repo), *args, *self.base],
                                capture_output=True, text=True, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def params(self) -> dict[str, str]:
        folder = self.tmp / "params"
        return {p.name: p.read_text() for p in sorted(folder.glob("*.args"))} if folder.is_dir() else {}

    def run_config(self, run: str = "r1") -> dict:
        return yaml.safe_load((self.tmp / "ck" / run / "config.yaml").read_text())

    def variable(self, name: str) -> list[str]:
        """A Makefile variable's words, expanded by make itself as a call with these settings would."""
        return self(f"--eval=print-variable: ; @echo $({name})", "-s", "print-variable").stdout.split()


def stages(output: str) -> list[str]:
    """The pipeline commands a make call ran (or, with -n, would run), in order."""
    return [line.split("-m pipeline ")[1].split()[0] for line in output.splitlines() if "-m pipeline " in line]
