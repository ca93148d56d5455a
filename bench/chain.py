"""The chain as bench runs it: the Makefile's own stages, called with one recipe's variables.

make is the one runner of the chain and the one judge of what is stale (a stage's sources, its
upstream files and the arguments it last ran with, see the Makefile), so `make quality` and `make
leaderboard` rerun exactly what `make train` / `make predict` would, and reuse the rest.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Chain:
    """`make TARGET` in the repo with these variables (RUN, CONFIG, TRAIN_ARGS, TTA, SUBMISSION, ...).

    what_if: files make treats as just changed (its -W), e.g. a config to force its run's retraining.
    """

    def __init__(self, variables: dict[str, str], what_if: tuple[str, ...] = ()):
        self.variables = {"PY": sys.executable, **variables}
        self.what_if = what_if

    def command(self, target: str, *flags: str) -> list[str]:
        return ["make", "--no-print-directory", "-C", str(REPO), *flags,
                *(f"--what-if={path}" for path in self.what_if), target,
                *(f"{key}={value}" for key, value in self.variables.items())]

    def up_to_date(self, target: str) -> bool:
        """Whether make would run nothing for `target` (its question mode)."""
        return subprocess.run(self.command(target, "-q"), env=_env(), capture_output=True).returncode == 0

    def run(self, target: str) -> float:
        """Make `target` (and whatever it needs); the wall seconds it took."""
        print(f"\n== make {target} {' '.join(f'{k}={v}' for k, v in self.variables.items() if k != 'PY')}",
              flush=True)
        start = time.perf_counter()
        subprocess.run(self.command(target), env=_env(), check=True)
        return round(time.perf_counter() - start, 1)


def _env() -> dict[str, str]:
    # A make started from make (make quality) must not inherit the outer call's flags (-n, -j, ...).
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
